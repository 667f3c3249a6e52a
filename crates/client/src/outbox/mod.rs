//! The outbox, or local transaction message table: the application writes its business rows
//! and the messages they imply in one transaction of its own database, and a relay sends the
//! messages afterwards. A rolled-back transaction leaves no message; a committed one is sent
//! even if the process dies right after the commit, and no check-back logic is needed.
//!
//! ```no_run
//! # #[cfg(feature = "outbox-postgres")]
//! # async fn example(pool: sqlx::PgPool, client: ferromq_client::Client) -> Result<(), Box<dyn std::error::Error>> {
//! use ferromq_client::outbox::{Outbox, OutboxConfig, OutboxMessage};
//! use ferromq_client::Message;
//!
//! let outbox = Outbox::new(pool.clone(), OutboxConfig::default())?;
//! outbox.migrate().await?;
//!
//! let mut transaction = pool.begin().await?;
//! sqlx::query("INSERT INTO orders (id) VALUES (42)").execute(&mut *transaction).await?;
//! let message = Message::new("orders", r#"{"id":42}"#).with_tag("created").with_key("order-42");
//! outbox.enqueue(&mut *transaction, OutboxMessage::new(message).sharding_key("order-42")).await?;
//! transaction.commit().await?;
//!
//! let relay = outbox.start_relay(&client); // claims, sends, tracks, cleans up
//! # relay.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! Every row has a dedup key (generated, or chosen with [`OutboxMessage::dedup_key`]) that
//! becomes the first key of every copy sent, so an idempotent consumer
//! ([`crate::Idempotent`] keys by the first key) drops the duplicates a relay crash or a
//! re-send can produce. Row states: `pending → sent → consumed`, or `failed` (the error is
//! kept in `last_error`) and `dead_lettered` (a tracked group gave up on it).

mod config;
mod counters;
mod database;
mod housekeeping;
#[cfg(feature = "outbox-postgres")]
mod postgres;
mod relay;
#[cfg(feature = "outbox-sqlite")]
mod sqlite;
mod tracker;
mod transaction;

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use ferromq_protocol::message::MessageIdGenerator;
use ferromq_protocol::{Message, MessageId};
use sqlx::Pool;

pub use config::OutboxConfig;
pub use counters::RelayCounters;
pub use database::OutboxDatabase;
pub use relay::Relay;
pub use transaction::OutboxTransactionListener;

use crate::producer::SendReceipt;
use database::{Counted, NewRow, RawRow, SentAs};

/// The types of [`OutboxDatabase`]'s methods, for FerroMQ's own tests of the claim contract;
/// not a stable API.
#[doc(hidden)]
pub mod internals {
    pub use super::database::{RawRow, RecordedSends, SendOutcome, SentAs, TrackOutcome};

    /// Milliseconds since the epoch, as the outbox stores times.
    pub fn now_ms() -> i64 {
        super::now_ms()
    }
}

/// The property every copy sent from the outbox carries: the row's dedup key.
pub const OUTBOX_KEY_PROPERTY: &str = "__OUTBOX_KEY";

/// `sent_by` of a row recorded beside a broker transaction's half message.
pub(crate) const TRANSACTION_SENDER: &str = "transaction";

/// The schema version this SDK writes and reads.
pub const SCHEMA_VERSION: i64 = 3;

/// Milliseconds since the epoch, as stored in the table.
pub(crate) fn now_ms() -> i64 {
    i64::try_from(ferromq_protocol::message::now_millis()).unwrap_or(i64::MAX)
}

fn to_ms(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("outbox database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("invalid outbox message: {0}")]
    InvalidMessage(String),
    #[error("an outbox row with dedup key {0:?} exists already")]
    DuplicateKey(String),
    #[error("invalid outbox configuration: {0}")]
    Config(String),
    #[error("outbox row {id} cannot be read: {reason}")]
    CorruptRow { id: i64, reason: String },
    #[error("the outbox schema is at version {found}, newer than this SDK's {known}")]
    SchemaTooNew { found: i64, known: i64 },
}

/// A row's id: its position in enqueue order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OutboxId(pub i64);

impl std::fmt::Display for OutboxId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Where a row is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutboxStatus {
    /// Waiting for a relay (first send, a retry after back-off, or a re-send).
    Pending,
    /// Acknowledged by a broker.
    Sent,
    /// Every tracked consumer group acknowledged it.
    Consumed,
    /// Given up: attempts or re-sends exhausted, or a message that can never be sent.
    Failed,
    /// A tracked group retried it until its dead-letter queue took it.
    DeadLettered,
}

impl OutboxStatus {
    pub const ALL: [OutboxStatus; 5] = [
        OutboxStatus::Pending,
        OutboxStatus::Sent,
        OutboxStatus::Consumed,
        OutboxStatus::Failed,
        OutboxStatus::DeadLettered,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OutboxStatus::Pending => "pending",
            OutboxStatus::Sent => "sent",
            OutboxStatus::Consumed => "consumed",
            OutboxStatus::Failed => "failed",
            OutboxStatus::DeadLettered => "dead_lettered",
        }
    }
}

impl FromStr for OutboxStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<OutboxStatus, String> {
        OutboxStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| format!("unknown outbox status {s:?}"))
    }
}

/// A message to enqueue, with how to send it.
#[derive(Debug, Clone)]
pub struct OutboxMessage {
    message: Message,
    sharding_key: Option<String>,
    deliver_at: Option<Deliver>,
    dedup_key: Option<String>,
}

#[derive(Debug, Clone, Copy)]
enum Deliver {
    After(Duration),
    At(SystemTime),
}

impl From<Message> for OutboxMessage {
    fn from(message: Message) -> OutboxMessage {
        OutboxMessage::new(message)
    }
}

impl OutboxMessage {
    pub fn new(message: Message) -> OutboxMessage {
        OutboxMessage {
            message,
            sharding_key: None,
            deliver_at: None,
            dedup_key: None,
        }
    }

    /// Sent to the queue this key hashes to, only after every earlier row with the same key was
    /// sent: consumers see a key's messages in enqueue order.
    pub fn sharding_key(mut self, key: impl Into<String>) -> OutboxMessage {
        self.sharding_key = Some(key.into());
        self
    }

    /// Visible to consumers this long after it was enqueued (not after it was sent).
    pub fn delay(mut self, delay: Duration) -> OutboxMessage {
        self.deliver_at = Some(Deliver::After(delay));
        self
    }

    /// Visible to consumers from `at` on.
    pub fn deliver_at(mut self, at: SystemTime) -> OutboxMessage {
        self.deliver_at = Some(Deliver::At(at));
        self
    }

    /// The key idempotent consumers recognise duplicates by, unique in the table (default: a
    /// generated one). Choose one to make enqueueing itself idempotent: a second row with the
    /// same key is refused with [`OutboxError::DuplicateKey`] while the first row is in the
    /// table (housekeeping removes it after the retention).
    pub fn dedup_key(mut self, key: impl Into<String>) -> OutboxMessage {
        self.dedup_key = Some(key.into());
        self
    }
}

/// A row of the outbox table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    pub id: OutboxId,
    pub dedup_key: String,
    pub topic: String,
    pub tag: Option<String>,
    /// The application's keys (the dedup key goes in front of them when sent).
    pub keys: Vec<String>,
    pub properties: BTreeMap<String, String>,
    pub body: Bytes,
    pub sharding_key: Option<String>,
    pub deliver_at_ms: Option<i64>,
    pub status: OutboxStatus,
    /// Send attempts since it was enqueued or last re-sent.
    pub attempts: u32,
    /// Times it was sent again because it was not consumed.
    pub resends: u32,
    /// Not claimed before this (0: due at once).
    pub next_attempt_ms: i64,
    /// The message id of the last acknowledged send.
    pub message_id: Option<MessageId>,
    pub broker_group: Option<String>,
    pub queue_id: Option<u32>,
    pub queue_offset: Option<u64>,
    /// The relay that sent it (`transaction` for a broker transaction's half message).
    pub sent_by: Option<String>,
    pub created_ms: i64,
    pub sent_ms: Option<i64>,
    /// The last consumption check (first: when it was sent).
    pub checked_ms: Option<i64>,
    /// A sent row: when consumption tracking looks at it next.
    pub next_check_ms: i64,
    pub finished_ms: Option<i64>,
    pub last_error: Option<String>,
}

/// Rows per status and the age of the oldest pending one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboxStats {
    pub pending: u64,
    pub sent: u64,
    pub consumed: u64,
    pub failed: u64,
    pub dead_lettered: u64,
    /// Since the oldest pending row meant to go out at once was enqueued (a re-sent or retried
    /// row counts from its enqueue: its message is undelivered since); delayed rows left out.
    pub oldest_pending_age: Option<Duration>,
}

impl OutboxStats {
    pub fn count(&self, status: OutboxStatus) -> u64 {
        match status {
            OutboxStatus::Pending => self.pending,
            OutboxStatus::Sent => self.sent,
            OutboxStatus::Consumed => self.consumed,
            OutboxStatus::Failed => self.failed,
            OutboxStatus::DeadLettered => self.dead_lettered,
        }
    }
}

/// The outbox table in one database. Cheap to clone.
pub struct Outbox<DB: OutboxDatabase> {
    pool: Pool<DB>,
    config: Arc<OutboxConfig>,
    keys: Arc<MessageIdGenerator>,
}

impl<DB: OutboxDatabase> Clone for Outbox<DB> {
    fn clone(&self) -> Self {
        Outbox {
            pool: self.pool.clone(),
            config: self.config.clone(),
            keys: self.keys.clone(),
        }
    }
}

impl<DB: OutboxDatabase> std::fmt::Debug for Outbox<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<DB: OutboxDatabase> Outbox<DB> {
    /// The outbox in `pool`'s database (create its tables with [`Outbox::migrate`], or apply
    /// the SQL under `crates/client/migrations/outbox/` with your own migrations).
    pub fn new(pool: Pool<DB>, config: OutboxConfig) -> Result<Outbox<DB>, OutboxError> {
        config.validate().map_err(OutboxError::Config)?;
        Ok(Outbox {
            pool,
            config: Arc::new(config),
            keys: Arc::new(MessageIdGenerator::default()),
        })
    }

    pub fn pool(&self) -> &Pool<DB> {
        &self.pool
    }

    pub fn config(&self) -> &OutboxConfig {
        &self.config
    }

    /// Creates or upgrades the outbox tables. Safe to call from every instance at start: they
    /// take turns, and a schema already in place is left alone.
    pub async fn migrate(&self) -> Result<(), OutboxError> {
        let found = DB::migrate(&self.pool).await?;
        if found > SCHEMA_VERSION {
            return Err(OutboxError::SchemaTooNew {
                found,
                known: SCHEMA_VERSION,
            });
        }
        Ok(())
    }

    /// Adds `message` to the outbox on `connection`, normally inside the application's own
    /// transaction (`&mut *transaction`): it is sent only if that transaction commits. Checks
    /// the limits every broker enforces (names, keys, properties, the default 4 MiB body), so a
    /// message no broker would take is refused here; a broker configured tighter refuses it when
    /// it is sent (the row then fails). A dedup key still in the table is refused with
    /// [`OutboxError::DuplicateKey`] without failing the transaction. With a sharding key, the
    /// transactions enqueueing for that key take turns until they end (PostgreSQL: an advisory
    /// lock), so the key's rows are sent in the order the transactions commit.
    pub async fn enqueue(
        &self,
        connection: &mut DB::Connection,
        message: impl Into<OutboxMessage>,
    ) -> Result<OutboxId, OutboxError> {
        let row = self.new_row(message.into(), now_ms())?;
        if let Some(key) = &row.sharding_key {
            DB::lock_sharding_key(&mut *connection, key).await?;
        }
        match DB::insert(connection, &row).await? {
            Some(id) => Ok(OutboxId(id)),
            None => Err(OutboxError::DuplicateKey(row.dedup_key)),
        }
    }

    /// Gives a message for a broker transaction its dedup key (first key and
    /// [`OUTBOX_KEY_PROPERTY`]), for [`Outbox::record_transactional`] and the check-backs of
    /// [`OutboxTransactionListener`]. Sharding keys and delays are not for transactions.
    pub fn prepare_transactional(
        &self,
        message: impl Into<OutboxMessage>,
    ) -> Result<Message, OutboxError> {
        let message = message.into();
        if message.sharding_key.is_some() || message.deliver_at.is_some() {
            return Err(OutboxError::InvalidMessage(
                "a transactional message has no sharding key or delay".into(),
            ));
        }
        let row = self.new_row(message, now_ms())?;
        message_of(&row.raw()).map_err(OutboxError::InvalidMessage)
    }

    /// Records, inside the local transaction, that `message` (prepared with
    /// [`Outbox::prepare_transactional`]) was stored as the half message of `receipt`: a
    /// check-back then answers `Commit`. The row is `sent` but not finished until a broker is
    /// seen storing the committed message (or, on a tracked topic, its groups consuming it); if
    /// the broker rolled it back or parked it after all, the row is re-sent like a lost one.
    pub async fn record_transactional(
        &self,
        connection: &mut DB::Connection,
        message: &Message,
        receipt: &SendReceipt,
    ) -> Result<OutboxId, OutboxError> {
        let Some(dedup_key) = message.properties.get(OUTBOX_KEY_PROPERTY).cloned() else {
            return Err(OutboxError::InvalidMessage(
                "the message was not prepared with Outbox::prepare_transactional".into(),
            ));
        };
        let now = now_ms();
        let mut properties = message.properties.clone();
        properties.remove(OUTBOX_KEY_PROPERTY);
        let keys: Vec<String> = message
            .keys
            .iter()
            .filter(|k| **k != dedup_key)
            .cloned()
            .collect();
        let row = NewRow {
            dedup_key,
            topic: message.topic.clone(),
            tag: message.tag.clone(),
            keys: json(&keys)?,
            properties: json(&properties)?,
            body: message.body.to_vec(),
            sharding_key: None,
            deliver_at_ms: None,
            created_ms: now,
            next_attempt_ms: now,
            sent: Some(SentAs {
                message_id: receipt.message_id.to_string(),
                broker_group: receipt.broker_group.clone(),
                queue_id: i64::from(receipt.queue_id),
                queue_offset: i64::try_from(receipt.queue_offset).unwrap_or(i64::MAX),
                sent_by: TRANSACTION_SENDER.into(),
                sent_ms: now,
                first_check_ms: self.config.first_check_at(now),
                // Confirmed once a broker stores the committed message.
                finished: false,
            }),
        };
        match DB::insert(connection, &row).await? {
            Some(id) => Ok(OutboxId(id)),
            None => Err(OutboxError::DuplicateKey(row.dedup_key)),
        }
    }

    /// The row `id`, if it exists.
    pub async fn row(&self, id: OutboxId) -> Result<Option<OutboxRow>, OutboxError> {
        DB::row_by_id(&self.pool, id.0)
            .await?
            .map(decode_row)
            .transpose()
    }

    /// The row with this dedup key, if it exists.
    pub async fn row_by_dedup_key(
        &self,
        dedup_key: &str,
    ) -> Result<Option<OutboxRow>, OutboxError> {
        DB::row_by_dedup_key(&self.pool, dedup_key)
            .await?
            .map(decode_row)
            .transpose()
    }

    /// Rows per status and the age of the oldest pending row (counts the whole table).
    pub async fn stats(&self) -> Result<OutboxStats, OutboxError> {
        Ok(self.stats_of(DB::stats(&self.pool, Counted::Every).await?))
    }

    fn stats_of(&self, raw: database::RawStats) -> OutboxStats {
        let mut stats = OutboxStats {
            oldest_pending_age: raw.oldest_pending_created_ms.map(|created| {
                Duration::from_millis(u64::try_from(now_ms().saturating_sub(created)).unwrap_or(0))
            }),
            ..OutboxStats::default()
        };
        for (status, count) in raw.by_status {
            let count = u64::try_from(count).unwrap_or(0);
            match status.parse::<OutboxStatus>() {
                Ok(OutboxStatus::Pending) => stats.pending = count,
                Ok(OutboxStatus::Sent) => stats.sent = count,
                Ok(OutboxStatus::Consumed) => stats.consumed = count,
                Ok(OutboxStatus::Failed) => stats.failed = count,
                Ok(OutboxStatus::DeadLettered) => stats.dead_lettered = count,
                // The CHECK constraint allows no other; a hand-altered table is not our count.
                Err(_) => {}
            }
        }
        stats
    }

    /// Makes `failed` rows pending again with fresh attempts and re-sends: one, or every one
    /// with `None`. Returns how many.
    pub async fn retry_failed(&self, id: Option<OutboxId>) -> Result<u64, OutboxError> {
        Ok(DB::retry_failed(&self.pool, id.map(|id| id.0)).await?)
    }

    /// Deletes `failed` rows, giving up on their messages: one, or every one with `None`. A row
    /// that failed before it was ever sent holds back the later rows of its sharding key until
    /// it is retried or discarded. Returns how many.
    pub async fn discard_failed(&self, id: Option<OutboxId>) -> Result<u64, OutboxError> {
        Ok(DB::discard_failed(&self.pool, id.map(|id| id.0)).await?)
    }

    /// The row to insert for `message`, checked against every broker limit as it will be sent.
    fn new_row(&self, message: OutboxMessage, now: i64) -> Result<NewRow, OutboxError> {
        let OutboxMessage {
            message,
            sharding_key,
            deliver_at,
            dedup_key,
        } = message;
        let dedup_key = dedup_key.unwrap_or_else(|| format!("outbox-{}", self.keys.next_id()));
        if sharding_key.as_deref() == Some("") {
            return Err(OutboxError::InvalidMessage("empty sharding key".into()));
        }
        let deliver_at_ms = deliver_at.map(|deliver| match deliver {
            Deliver::After(delay) => {
                now.saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX))
            }
            Deliver::At(at) => to_ms(at),
        });
        if sharding_key.is_some() && deliver_at_ms.is_some() {
            return Err(OutboxError::InvalidMessage(
                "a message is either ordered (sharding key) or delayed, not both".into(),
            ));
        }
        // Due far ahead: it waits here, not at the broker, which schedules only so far ahead.
        // Otherwise it is due at once, from 0 whatever the relays' clocks say, so that it never
        // holds back its key (see `ferromq_outbox_holding`).
        let ahead = i64::try_from(self.config.schedule_ahead_ms).unwrap_or(i64::MAX);
        let next_attempt_ms = deliver_at_ms
            .map(|at| at.saturating_sub(ahead))
            .filter(|from| *from > now)
            .unwrap_or(0);
        let row = NewRow {
            dedup_key,
            topic: message.topic.clone(),
            tag: message.tag.clone(),
            keys: json(&message.keys)?,
            properties: json(&message.properties)?,
            body: message.body.to_vec(),
            sharding_key,
            deliver_at_ms,
            created_ms: now,
            next_attempt_ms,
            sent: None,
        };
        // Validate the message exactly as the relay will build it.
        let sent = message_of(&row.raw()).map_err(OutboxError::InvalidMessage)?;
        sent.validate(ferromq_protocol::message::DEFAULT_MAX_MESSAGE_BYTES)
            .map_err(|err| OutboxError::InvalidMessage(err.to_string()))?;
        Ok(row)
    }
}

fn json<T: serde::Serialize>(value: &T) -> Result<String, OutboxError> {
    serde_json::to_string(value).map_err(|err| OutboxError::InvalidMessage(err.to_string()))
}

impl NewRow {
    /// The stored form of this row before it has an id.
    fn raw(&self) -> RawRow {
        RawRow {
            dedup_key: self.dedup_key.clone(),
            topic: self.topic.clone(),
            tag: self.tag.clone(),
            keys: self.keys.clone(),
            properties: self.properties.clone(),
            body: self.body.clone(),
            ..RawRow::default()
        }
    }
}

/// The message a row sends: the application's message with the dedup key as its first key and
/// in [`OUTBOX_KEY_PROPERTY`].
pub(crate) fn message_of(row: &RawRow) -> Result<Message, String> {
    if let Some(reason) = &row.unreadable {
        return Err(reason.clone());
    }
    let keys: Vec<String> =
        serde_json::from_str(&row.keys).map_err(|err| format!("keys column: {err}"))?;
    let mut properties: BTreeMap<String, String> =
        serde_json::from_str(&row.properties).map_err(|err| format!("properties column: {err}"))?;
    if properties.contains_key(OUTBOX_KEY_PROPERTY) {
        return Err(format!(
            "the property {OUTBOX_KEY_PROPERTY} is the outbox's own"
        ));
    }
    properties.insert(OUTBOX_KEY_PROPERTY.to_string(), row.dedup_key.clone());
    let mut all_keys = Vec::with_capacity(keys.len() + 1);
    all_keys.push(row.dedup_key.clone());
    all_keys.extend(keys.into_iter().filter(|k| *k != row.dedup_key));
    let message = Message {
        topic: row.topic.clone(),
        tag: row.tag.clone(),
        keys: all_keys,
        properties,
        body: Bytes::from(row.body.clone()),
    };
    message
        .validate(usize::MAX)
        .map_err(|err| err.to_string())?;
    Ok(message)
}

/// A stored row as the application sees it; a value no SDK wrote is reported, not guessed.
fn decode_row(raw: RawRow) -> Result<OutboxRow, OutboxError> {
    let corrupt = |reason: String| OutboxError::CorruptRow { id: raw.id, reason };
    if let Some(reason) = raw.unreadable.clone() {
        return Err(corrupt(reason));
    }
    let keys: Vec<String> =
        serde_json::from_str(&raw.keys).map_err(|err| corrupt(format!("keys: {err}")))?;
    let properties: BTreeMap<String, String> = serde_json::from_str(&raw.properties)
        .map_err(|err| corrupt(format!("properties: {err}")))?;
    let status = raw.status.parse::<OutboxStatus>().map_err(corrupt)?;
    let message_id = raw
        .message_id
        .as_deref()
        .map(MessageId::from_str)
        .transpose()
        .map_err(|err| corrupt(format!("message_id: {err}")))?;
    let queue_id = raw
        .queue_id
        .map(u32::try_from)
        .transpose()
        .map_err(|err| corrupt(format!("queue_id: {err}")))?;
    let queue_offset = raw
        .queue_offset
        .map(u64::try_from)
        .transpose()
        .map_err(|err| corrupt(format!("queue_offset: {err}")))?;
    let count = |value: i64| u32::try_from(value).unwrap_or(u32::MAX);
    Ok(OutboxRow {
        id: OutboxId(raw.id),
        dedup_key: raw.dedup_key,
        topic: raw.topic,
        tag: raw.tag,
        keys,
        properties,
        body: Bytes::from(raw.body),
        sharding_key: raw.sharding_key,
        deliver_at_ms: raw.deliver_at_ms,
        status,
        attempts: count(raw.attempts),
        resends: count(raw.resends),
        next_attempt_ms: raw.next_attempt_ms,
        message_id,
        broker_group: raw.broker_group,
        queue_id,
        queue_offset,
        sent_by: raw.sent_by,
        created_ms: raw.created_ms,
        sent_ms: raw.sent_ms,
        checked_ms: raw.checked_ms,
        next_check_ms: raw.next_check_ms,
        finished_ms: raw.finished_ms,
        last_error: raw.last_error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(keys: &str, properties: &str) -> RawRow {
        RawRow {
            id: 7,
            dedup_key: "outbox-1".into(),
            topic: "orders".into(),
            keys: keys.into(),
            properties: properties.into(),
            status: "pending".into(),
            ..RawRow::default()
        }
    }

    #[test]
    fn the_dedup_key_leads_the_keys_of_the_message_sent() {
        let message = message_of(&row(r#"["order-42","outbox-1"]"#, r#"{"a":"b"}"#)).unwrap();
        assert_eq!(message.keys, vec!["outbox-1", "order-42"]);
        assert_eq!(message.properties[OUTBOX_KEY_PROPERTY], "outbox-1");
        assert_eq!(message.properties["a"], "b");
    }

    #[test]
    fn an_edited_row_is_reported_not_trusted() {
        assert!(message_of(&row("not json", "{}")).is_err());
        assert!(message_of(&row("[]", r#"{"__OUTBOX_KEY":"x"}"#)).is_err());
        let mut bad = row("[]", "{}");
        bad.status = "maybe".into();
        assert!(matches!(
            decode_row(bad),
            Err(OutboxError::CorruptRow { id: 7, .. })
        ));
        let mut bad = row("[]", "{}");
        bad.message_id = Some("zz".into());
        assert!(decode_row(bad).is_err());
        assert_eq!(
            decode_row(row("[]", "{}")).unwrap().status,
            OutboxStatus::Pending
        );
    }

    #[test]
    fn statuses_read_back_as_written() {
        for status in OutboxStatus::ALL {
            assert_eq!(status.as_str().parse::<OutboxStatus>(), Ok(status));
        }
    }
}
