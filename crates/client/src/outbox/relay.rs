//! The relay: claims pending rows (a lease, so no other relay sends them meanwhile), sends them
//! in batches, and records each outcome while it still holds the lease. Rows of one sharding key
//! go one after the other to the key's queue; a failure stops the key's rows behind it.
//! A failed attempt backs off (doubling up to a cap); when a whole round fails, the relay itself
//! pauses too, so a broker outage costs a few attempts per row, not a storm.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use ferromq_protocol::message::send_body_len;
use ferromq_protocol::{Message, Status};
use ferromq_transport::TransportError;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::config::LEASE_MARGIN;
use super::counters::{Counters, RelayCounters};
use super::database::{OutboxDatabase, RawRow, RecordedSends, SendOutcome, SentAs};
use super::{housekeeping, message_of, now_ms, tracker, Outbox, OutboxConfig};
use crate::client::Client;
use crate::config::ProducerConfig;
use crate::error::ClientError;
use crate::producer::{Producer, SendReceipt};

/// Lanes of one round sent at the same time.
const PARALLEL_LANES: usize = 16;
/// Longest pause of a relay whose rounds keep failing.
const MAX_ROUND_PAUSE: Duration = Duration::from_secs(30);

/// A running relay: its sending loop, tracking of sent rows (consumption for tracked topics,
/// storage for broker transactions' rows) and housekeeping. Stop it with [`Relay::shutdown`]; dropping it stops it too, without waiting.
pub struct Relay {
    owner: String,
    stop: CancellationToken,
    tasks: TaskTracker,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay").field("owner", &self.owner).finish()
    }
}

impl Relay {
    /// This relay's name in the table's `lease_owner` and `sent_by` columns.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// What this relay did so far.
    pub fn counters(&self) -> RelayCounters {
        self.counters.snapshot()
    }

    /// Stops claiming, lets the sends under way finish and records them, then returns.
    pub async fn shutdown(self) {
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl<DB: OutboxDatabase> Outbox<DB> {
    /// Starts a relay on the current tokio runtime, sending through `client`. Run as many as you
    /// like, in as many processes: a row is sent by one at a time.
    pub fn start_relay(&self, client: &Client) -> Relay {
        let owner = format!("{}-{}", client.config().client_id, self.keys.next_id());
        let stop = client.inner.shutdown.child_token();
        let tasks = TaskTracker::new();
        let counters = Arc::new(Counters::new());
        let producer = client.producer_with(ProducerConfig {
            send_timeout_ms: self.config.send_timeout_ms,
            ..ProducerConfig::default()
        });
        info!(%owner, "outbox relay started");
        tasks.spawn(send_loop(
            self.clone(),
            producer,
            owner.clone(),
            stop.clone(),
            counters.clone(),
        ));
        tasks.spawn(tracker::track_loop(
            self.clone(),
            client.clone(),
            stop.clone(),
            counters.clone(),
        ));
        tasks.spawn(housekeeping::housekeeping_loop(self.clone(), stop.clone()));
        Relay {
            owner,
            stop,
            tasks,
            counters,
        }
    }
}

/// What one round did.
#[derive(Debug, Default)]
struct Round {
    claimed: usize,
    sent: usize,
    failed_attempts: usize,
}

async fn send_loop<DB: OutboxDatabase>(
    outbox: Outbox<DB>,
    producer: Producer,
    owner: String,
    stop: CancellationToken,
    counters: Arc<Counters>,
) {
    let config = outbox.config.clone();
    let poll = Duration::from_millis(config.poll_interval_ms);
    let mut pause = Duration::ZERO;
    while !stop.is_cancelled() {
        let wait = match send_round(&outbox, &producer, &owner, &stop, &counters).await {
            Ok(round) if round.claimed > 0 && round.sent == 0 && round.failed_attempts > 0 => {
                pause = next_pause(pause, &config);
                debug!(?pause, "every send of the round failed; pausing");
                pause
            }
            Ok(round) => {
                pause = Duration::ZERO;
                if round.claimed >= config.batch_size as usize {
                    Duration::ZERO
                } else {
                    poll
                }
            }
            Err(err) => {
                pause = next_pause(pause, &config);
                warn!(%err, ?pause, "outbox relay round failed");
                pause
            }
        };
        if !wait.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.cancelled() => {}
            }
        }
    }
    info!(%owner, "outbox relay stopped");
}

fn next_pause(pause: Duration, config: &OutboxConfig) -> Duration {
    let first = Duration::from_millis(config.backoff_initial_ms);
    let cap = Duration::from_millis(config.backoff_max_ms).min(MAX_ROUND_PAUSE);
    (pause * 2).max(first).min(cap)
}

/// Claims a batch, sends it and records the outcomes.
async fn send_round<DB: OutboxDatabase>(
    outbox: &Outbox<DB>,
    producer: &Producer,
    owner: &str,
    stop: &CancellationToken,
    counters: &Counters,
) -> Result<Round, sqlx::Error> {
    let config = &outbox.config;
    let now = now_ms();
    let lease = Duration::from_millis(config.lease_ms);
    let claimed_at = Instant::now();
    let rows = DB::claim(
        &outbox.pool,
        owner,
        now,
        now.saturating_add(config.lease_ms as i64),
        i64::from(config.batch_size),
    )
    .await?;
    if rows.is_empty() {
        return Ok(Round::default());
    }
    // The last send starts early enough to end, at its timeout, before the lease does.
    let send_timeout = Duration::from_millis(config.send_timeout_ms);
    let start_sends_before = claimed_at + lease.saturating_sub(send_timeout + LEASE_MARGIN);
    let round = Round {
        claimed: rows.len(),
        ..Round::default()
    };
    let outcomes = send_rows(
        producer,
        config,
        owner,
        rows,
        SendWindow {
            start_before: start_sends_before,
            stop,
        },
    )
    .await;

    #[cfg(feature = "failpoints")]
    fail::fail_point!("outbox::before_record_sends", |_| {
        // A crash between the broker's acknowledgement and the table's update.
        std::process::abort()
    });

    let record_before = claimed_at + lease.saturating_sub(LEASE_MARGIN);
    let recorded = record_outcomes(outbox, owner, &outcomes, record_before).await?;
    let mut delta = RelayCounters {
        failed: recorded.failed,
        ..RelayCounters::default()
    };
    let mut round = round;
    for outcome in &outcomes {
        match outcome {
            SendOutcome::Sent { .. } => {
                delta.sends += 1;
                round.sent += 1;
            }
            SendOutcome::Retry { .. } => {
                delta.send_failures += 1;
                round.failed_attempts += 1;
            }
            SendOutcome::Failed { error, id, .. } => {
                warn!(id, %error, "outbox row failed for good");
                delta.send_failures += 1;
                round.failed_attempts += 1;
            }
            SendOutcome::Release { .. } => {}
        }
    }
    counters.add(delta);
    Ok(round)
}

/// Records outcomes, retrying a database error while the lease lasts: after that, another relay
/// sends the rows again (a duplicate, which is the price of not losing them).
async fn record_outcomes<DB: OutboxDatabase>(
    outbox: &Outbox<DB>,
    owner: &str,
    outcomes: &[SendOutcome],
    before: Instant,
) -> Result<RecordedSends, sqlx::Error> {
    loop {
        match DB::record_sends(&outbox.pool, owner, outcomes).await {
            Ok(recorded) => {
                if recorded.updated < outcomes.len() as u64 {
                    debug!(
                        updated = recorded.updated,
                        outcomes = outcomes.len(),
                        "some leases ran out before their outcomes were recorded"
                    );
                }
                return Ok(recorded);
            }
            Err(err) if Instant::now() + Duration::from_millis(200) < before => {
                warn!(%err, "recording outbox send outcomes failed; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(err) => return Err(err),
        }
    }
}

/// Until when sends may start, and the relay's stop signal.
#[derive(Clone, Copy)]
struct SendWindow<'a> {
    start_before: Instant,
    stop: &'a CancellationToken,
}

impl SendWindow<'_> {
    fn open(&self) -> bool {
        Instant::now() < self.start_before && !self.stop.is_cancelled()
    }
}

/// Rows sent together and how.
enum Lane {
    /// Rows of one sharding key, in id order: one after the other to the key's queue.
    Ordered(String, Vec<(RawRow, Message)>),
    /// Rows without a key, of one topic, visible at once: batches to any queue.
    Unordered(Vec<(RawRow, Message)>),
    /// One row visible later.
    Scheduled(Box<(RawRow, Message)>, i64),
}

/// Sends claimed rows (in id order) and returns one outcome per row.
async fn send_rows(
    producer: &Producer,
    config: &OutboxConfig,
    owner: &str,
    rows: Vec<RawRow>,
    window: SendWindow<'_>,
) -> Vec<SendOutcome> {
    let now = now_ms();
    let mut outcomes = Vec::new();
    let mut ordered: BTreeMap<String, Vec<(RawRow, Message)>> = BTreeMap::new();
    let mut unordered: BTreeMap<String, Vec<(RawRow, Message)>> = BTreeMap::new();
    // Keys with a row that cannot be sent: nothing after it goes this round.
    let mut broken_keys = HashSet::new();
    let mut lanes = Vec::new();
    for row in rows {
        if row
            .sharding_key
            .as_ref()
            .is_some_and(|key| broken_keys.contains(key))
        {
            outcomes.push(SendOutcome::Release { id: row.id });
            continue;
        }
        let message = match message_of(&row) {
            Ok(message) => message,
            Err(reason) => {
                if let Some(key) = &row.sharding_key {
                    broken_keys.insert(key.clone());
                }
                outcomes.push(SendOutcome::Failed {
                    id: row.id,
                    attempts: row.attempts.saturating_add(1),
                    now_ms: now,
                    error: format!("row cannot be sent: {reason}"),
                });
                continue;
            }
        };
        match (&row.sharding_key, row.deliver_at_ms) {
            (Some(key), _) => ordered.entry(key.clone()).or_default().push((row, message)),
            (None, Some(at)) if at > now => {
                lanes.push(Lane::Scheduled(Box::new((row, message)), at))
            }
            (None, _) => unordered
                .entry(row.topic.clone())
                .or_default()
                .push((row, message)),
        }
    }
    lanes.extend(
        ordered
            .into_iter()
            .map(|(key, rows)| Lane::Ordered(key, rows)),
    );
    lanes.extend(unordered.into_values().map(Lane::Unordered));
    let sender = Sender {
        producer,
        config,
        owner,
        window,
    };
    let results: Vec<Vec<SendOutcome>> = futures::stream::iter(lanes)
        .map(|lane| sender.lane(lane))
        .buffer_unordered(PARALLEL_LANES)
        .collect()
        .await;
    outcomes.extend(results.into_iter().flatten());
    outcomes
}

/// What sending needs; one per round.
struct Sender<'a> {
    producer: &'a Producer,
    config: &'a OutboxConfig,
    owner: &'a str,
    window: SendWindow<'a>,
}

impl Sender<'_> {
    async fn lane(&self, lane: Lane) -> Vec<SendOutcome> {
        let limits = BatchLimits {
            body_bytes: ProducerConfig::default().max_message_bytes,
            send_bytes: self.producer.max_batch_bytes(),
        };
        match lane {
            Lane::Scheduled(scheduled, at) => {
                let (row, message) = *scheduled;
                if !self.window.open() {
                    return vec![SendOutcome::Release { id: row.id }];
                }
                let at = UNIX_EPOCH + Duration::from_millis(u64::try_from(at).unwrap_or(0));
                let sent = self.bounded(self.producer.send_at(message, at)).await;
                let sent = sent.and_then(|result| result.map_err(|err| err.error));
                self.outcomes(&[row], sent.map(|receipt| vec![receipt]))
            }
            Lane::Unordered(rows) => {
                let mut outcomes = Vec::with_capacity(rows.len());
                for chunk in chunks(rows, limits) {
                    if self.window.open() {
                        outcomes.extend(self.chunk(chunk, None).await);
                    } else {
                        outcomes.extend(
                            chunk
                                .iter()
                                .map(|(row, _)| SendOutcome::Release { id: row.id }),
                        );
                    }
                }
                outcomes
            }
            Lane::Ordered(key, rows) => {
                let mut outcomes = Vec::with_capacity(rows.len());
                let mut blocked = false;
                for chunk in chunks(rows, limits) {
                    if blocked || !self.window.open() {
                        // Never send a key's later rows before its earlier ones.
                        outcomes.extend(
                            chunk
                                .iter()
                                .map(|(row, _)| SendOutcome::Release { id: row.id }),
                        );
                        continue;
                    }
                    let sent = self.chunk(chunk, Some(&key)).await;
                    blocked = sent.iter().any(|o| !matches!(o, SendOutcome::Sent { .. }));
                    outcomes.extend(sent);
                }
                outcomes
            }
        }
    }

    /// Sends a chunk as one batch (to the key's queue when `key` is set). When the broker
    /// refuses the batch as such (its bodies together too large for the broker's limit, say),
    /// its rows go one at a time, so a bad row fails alone; of a key's rows, none goes after
    /// one that failed.
    async fn chunk(&self, chunk: Vec<(RawRow, Message)>, key: Option<&str>) -> Vec<SendOutcome> {
        let (rows, messages): (Vec<RawRow>, Vec<Message>) = chunk.into_iter().unzip();
        let messages = match self.send(messages, key).await {
            Err((messages, error)) if rows.len() > 1 && is_refusal(&error) => messages,
            result => return self.outcomes(&rows, result.map_err(|(_, error)| error)),
        };
        debug!(
            rows = rows.len(),
            "batch refused; sending its rows one at a time"
        );
        let mut outcomes = Vec::with_capacity(rows.len());
        let mut blocked = false;
        for (row, message) in rows.into_iter().zip(messages) {
            if blocked || !self.window.open() {
                outcomes.push(SendOutcome::Release { id: row.id });
                continue;
            }
            let result = self.send(vec![message], key).await;
            blocked = key.is_some() && result.is_err();
            outcomes.extend(self.outcomes(&[row], result.map_err(|(_, error)| error)));
        }
        outcomes
    }

    /// One batch send, bounded by the send timeout (the route lookup included); a failure gives
    /// the messages back.
    async fn send(
        &self,
        messages: Vec<Message>,
        key: Option<&str>,
    ) -> Result<Vec<SendReceipt>, (Vec<Message>, ClientError)> {
        let send = async {
            match key {
                Some(key) => self.producer.send_batch_ordered(messages, key).await,
                None => self.producer.send_batch(messages).await,
            }
            .map_err(|err| (err.messages, err.error))
        };
        match self.bounded(send).await {
            Ok(result) => result,
            // The messages went with the cancelled send; nothing retries them this round.
            Err(timeout) => Err((Vec::new(), timeout)),
        }
    }

    /// `send`'s result, or a timeout error once the send timeout passed (route lookup
    /// included, which the producer's own deadline does not cover).
    async fn bounded<F: std::future::Future>(&self, send: F) -> Result<F::Output, ClientError> {
        let limit = Duration::from_millis(self.config.send_timeout_ms);
        tokio::time::timeout(limit, send)
            .await
            .map_err(|_| ClientError::Transport(TransportError::Timeout(limit)))
    }

    /// One outcome per row of a send that stored them all or none.
    fn outcomes(
        &self,
        rows: &[RawRow],
        result: Result<Vec<SendReceipt>, ClientError>,
    ) -> Vec<SendOutcome> {
        let now = now_ms();
        match result {
            Ok(receipts) => rows
                .iter()
                .zip(receipts)
                .map(|(row, receipt)| SendOutcome::Sent {
                    id: row.id,
                    sent: SentAs {
                        message_id: receipt.message_id.to_string(),
                        broker_group: receipt.broker_group,
                        queue_id: i64::from(receipt.queue_id),
                        queue_offset: i64::try_from(receipt.queue_offset).unwrap_or(i64::MAX),
                        sent_by: self.owner.to_string(),
                        sent_ms: now,
                        first_check_ms: self.config.first_check_at(now),
                        finished: self.config.tracked_groups(&row.topic).is_empty(),
                    },
                })
                .collect(),
            Err(error) => {
                debug!(%error, rows = rows.len(), "outbox send failed");
                rows.iter()
                    .map(|row| failure(self.config, row, &error, now))
                    .collect()
            }
        }
    }
}

/// How much one batch send may carry.
#[derive(Debug, Clone, Copy)]
struct BatchLimits {
    /// The bodies together: the broker's limit for a batch (its message size limit).
    body_bytes: usize,
    /// The encoded messages together: what one frame holds (properties count here too, so
    /// many small messages with large properties need several sends).
    send_bytes: usize,
}

/// Consecutive rows of one topic that one send can carry, within both of `limits` (a message
/// over a limit goes alone, to be refused or not on its own).
fn chunks(rows: Vec<(RawRow, Message)>, limits: BatchLimits) -> Vec<Vec<(RawRow, Message)>> {
    let mut chunks: Vec<Vec<(RawRow, Message)>> = Vec::new();
    let (mut body_bytes, mut send_bytes) = (0, 0);
    for (row, message) in rows {
        let (body, encoded) = (message.body.len(), send_body_len(&message));
        let fits = chunks.last().is_some_and(|chunk| {
            chunk[0].1.topic == message.topic
                && body_bytes + body <= limits.body_bytes
                && send_bytes + encoded <= limits.send_bytes
        });
        if !fits {
            chunks.push(Vec::new());
            (body_bytes, send_bytes) = (0, 0);
        }
        body_bytes += body;
        send_bytes += encoded;
        if let Some(chunk) = chunks.last_mut() {
            chunk.push((row, message));
        }
    }
    chunks
}

/// The broker (or the SDK) refuses the message itself: sending it again cannot help.
fn is_refusal(error: &ClientError) -> bool {
    matches!(error, ClientError::InvalidMessage(_))
        || matches!(
            error.status(),
            Some(Status::ParameterError | Status::MessageTooLarge)
        )
}

/// A failed attempt: retried after back-off, or the end of the row when attempts are exhausted
/// or the message itself was refused. Other failures (no route, no permission, a broker down)
/// are the surroundings' and are retried: an operator can fix them.
fn failure(config: &OutboxConfig, row: &RawRow, error: &ClientError, now: i64) -> SendOutcome {
    let attempts = row.attempts.saturating_add(1);
    let exhausted = config.max_attempts > 0 && attempts >= i64::from(config.max_attempts);
    if exhausted || is_refusal(error) {
        return SendOutcome::Failed {
            id: row.id,
            attempts,
            now_ms: now,
            error: format!("attempt {attempts}: {error}"),
        };
    }
    let wait = config.backoff(u32::try_from(attempts).unwrap_or(u32::MAX));
    SendOutcome::Retry {
        id: row.id,
        attempts,
        next_attempt_ms: now.saturating_add(wait.as_millis() as i64),
        error: format!("attempt {attempts}: {error}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: i64, topic: &str, body_bytes: usize) -> (RawRow, Message) {
        let raw = RawRow {
            id,
            topic: topic.into(),
            ..RawRow::default()
        };
        (raw, Message::new(topic, vec![0u8; body_bytes]))
    }

    fn ids(chunks: Vec<Vec<(RawRow, Message)>>) -> Vec<Vec<i64>> {
        chunks
            .iter()
            .map(|chunk| chunk.iter().map(|(row, _)| row.id).collect())
            .collect()
    }

    #[test]
    fn batches_keep_to_one_topic_and_the_byte_limit() {
        let rows = vec![
            row(1, "a", 40),
            row(2, "a", 40),
            row(3, "a", 40),
            row(4, "b", 10),
            row(5, "a", 200),
            row(6, "a", 1),
        ];
        let limits = BatchLimits {
            body_bytes: 100,
            send_bytes: usize::MAX,
        };
        assert_eq!(
            ids(chunks(rows, limits)),
            vec![vec![1, 2], vec![3], vec![4], vec![5], vec![6]]
        );
    }

    #[test]
    fn properties_count_toward_what_one_send_carries() {
        // Small bodies, large properties: the bodies fit any batch, the encoding does not.
        let rows: Vec<(RawRow, Message)> = (1..=5)
            .map(|id| {
                let (raw, message) = row(id, "a", 10);
                (raw, message.with_property("trace", "x".repeat(1_000)))
            })
            .collect();
        let per_message = send_body_len(&rows[0].1);
        let limits = BatchLimits {
            body_bytes: 1_000,
            send_bytes: 2 * per_message,
        };
        assert_eq!(
            ids(chunks(rows, limits)),
            vec![vec![1, 2], vec![3, 4], vec![5]]
        );
    }

    #[test]
    fn failures_back_off_then_give_up() {
        let config = OutboxConfig {
            max_attempts: 3,
            ..OutboxConfig::default()
        };
        let mut raw = RawRow {
            id: 9,
            attempts: 0,
            ..RawRow::default()
        };
        let unreachable = ClientError::NoRoute("orders".into());
        match failure(&config, &raw, &unreachable, 1_000) {
            SendOutcome::Retry {
                attempts,
                next_attempt_ms,
                ..
            } => {
                assert_eq!(attempts, 1);
                assert_eq!(next_attempt_ms, 2_000);
            }
            other => panic!("{other:?}"),
        }
        raw.attempts = 2;
        assert!(matches!(
            failure(&config, &raw, &unreachable, 0),
            SendOutcome::Failed { attempts: 3, .. }
        ));
        raw.attempts = 0;
        let invalid = ClientError::InvalidMessage("too big".into());
        assert!(matches!(
            failure(&config, &raw, &invalid, 0),
            SendOutcome::Failed { attempts: 1, .. }
        ));
    }
}
