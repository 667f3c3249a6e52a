//! What the outbox asks of a database: one implementation per sqlx driver (`postgres.rs`,
//! `sqlite.rs`). Statements both databases understand are written once, in
//! [`shared_statements!`], the claim's flow among them; each driver writes only what differs
//! (schema and migration lock, the claim's id-list statements, recording sends, housekeeping).

use std::future::Future;

use sqlx::Pool;

/// The raw form of a row, as stored. Decoded into [`super::OutboxRow`] by the caller, so a
/// row someone edited by hand is reported, not trusted.
#[doc(hidden)]
#[derive(Debug, Clone, Default)]
pub struct RawRow {
    pub id: i64,
    pub dedup_key: String,
    pub topic: String,
    pub tag: Option<String>,
    pub keys: String,
    pub properties: String,
    pub body: Vec<u8>,
    pub sharding_key: Option<String>,
    pub deliver_at_ms: Option<i64>,
    pub status: String,
    pub attempts: i64,
    pub resends: i64,
    pub next_attempt_ms: i64,
    pub message_id: Option<String>,
    pub broker_group: Option<String>,
    pub queue_id: Option<i64>,
    pub queue_offset: Option<i64>,
    pub sent_by: Option<String>,
    pub created_ms: i64,
    pub sent_ms: Option<i64>,
    pub checked_ms: Option<i64>,
    pub next_check_ms: i64,
    pub finished_ms: Option<i64>,
    pub last_error: Option<String>,
    /// Why a column could not be decoded (the first such), if one could not: the fields
    /// that could not are left at their defaults.
    pub unreadable: Option<String>,
}

/// A row to insert: pending (enqueued for the relay) or already sent (the half message of a
/// broker transaction).
#[doc(hidden)]
#[derive(Debug, Clone)]
pub struct NewRow {
    pub dedup_key: String,
    pub topic: String,
    pub tag: Option<String>,
    pub keys: String,
    pub properties: String,
    pub body: Vec<u8>,
    pub sharding_key: Option<String>,
    pub deliver_at_ms: Option<i64>,
    pub created_ms: i64,
    /// Not claimed before this (a message due much later waits in the table).
    pub next_attempt_ms: i64,
    pub sent: Option<SentAs>,
}

/// Where an acknowledged send was stored.
#[doc(hidden)]
#[derive(Debug, Clone)]
pub struct SentAs {
    pub message_id: String,
    pub broker_group: String,
    pub queue_id: i64,
    pub queue_offset: i64,
    pub sent_by: String,
    pub sent_ms: i64,
    /// When consumption tracking first looks at it.
    pub first_check_ms: i64,
    /// The acknowledgement finishes the row: no consumer group of its topic is tracked.
    pub finished: bool,
}

/// What a relay learned about a row it claimed. Recorded only while the row is still pending
/// under this relay's name: once another relay claimed it (after the lease ran out), the late
/// outcome is dropped rather than overwrite the other's.
#[doc(hidden)]
#[derive(Debug, Clone)]
pub enum SendOutcome {
    Sent {
        id: i64,
        sent: SentAs,
    },
    /// Try again from `next_attempt_ms` on.
    Retry {
        id: i64,
        attempts: i64,
        next_attempt_ms: i64,
        error: String,
    },
    /// Given up: attempts exhausted, or the row can never be sent.
    Failed {
        id: i64,
        attempts: i64,
        now_ms: i64,
        error: String,
    },
    /// Not tried (an earlier row of its sharding key failed, or the lease ran short).
    Release {
        id: i64,
    },
}

/// What [`OutboxDatabase::record_sends`] changed: outcomes of rows whose lease another relay
/// took meanwhile are not recorded, and not counted.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecordedSends {
    /// Rows updated, whatever the outcome.
    pub updated: u64,
    /// Rows marked `failed`.
    pub failed: u64,
}

/// A sent row as consumption tracking sees it.
#[doc(hidden)]
#[derive(Debug, Clone)]
pub struct SentRow {
    pub id: i64,
    pub message_id: String,
    pub broker_group: String,
    pub queue_id: Option<i64>,
    pub queue_offset: Option<i64>,
    pub sent_by: Option<String>,
    pub topic: String,
    pub deliver_at_ms: Option<i64>,
    pub sent_ms: i64,
    pub resends: i64,
    /// As [`RawRow::unreadable`]: tracking cannot decide about such a row and fails it.
    pub unreadable: Option<String>,
}

/// What consumption tracking decided about a sent row. Recorded only while the row is still
/// `sent` with the same message id (any, for `Unreadable`: failing it twice does no harm), so
/// two relays' trackers cannot both re-send it.
#[doc(hidden)]
#[derive(Debug, Clone)]
pub enum TrackOutcome {
    /// A broker stores it, and nothing tracks its consumption: finished.
    Confirmed {
        id: i64,
        message_id: String,
        now_ms: i64,
    },
    Consumed {
        id: i64,
        message_id: String,
        now_ms: i64,
    },
    DeadLettered {
        id: i64,
        message_id: String,
        now_ms: i64,
        error: String,
    },
    /// Not consumed yet, for a reason that needs no action; look again at `next_check_ms`.
    Checked {
        id: i64,
        message_id: String,
        now_ms: i64,
        next_check_ms: i64,
        note: Option<String>,
    },
    /// Lost: back to pending, to be sent again with the same dedup key.
    Resend {
        id: i64,
        message_id: String,
        now_ms: i64,
        reason: String,
    },
    /// Lost again after every re-send allowed.
    GiveUp {
        id: i64,
        message_id: String,
        now_ms: i64,
        error: String,
    },
    /// A column tracking reads could not be decoded (perhaps the message id itself, so the
    /// decision is recorded whatever message id the row holds).
    Unreadable { id: i64, now_ms: i64, error: String },
}

/// How a tracking decision changes its row.
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub struct TrackEffect<'a> {
    pub status: &'static str,
    /// Sets `finished_ms`.
    pub finishes: bool,
    /// The new `last_error` (cleared when `None`).
    pub note: Option<&'a str>,
    /// Back to pending for another send.
    pub resend: bool,
    /// The new `next_check_ms` (unchanged when `None`).
    pub next_check_ms: Option<i64>,
}

impl TrackOutcome {
    /// The row decided about: (id, the message id it was decided for, when). No message id:
    /// the row's could not be read, and the decision holds for any.
    pub fn row(&self) -> (i64, Option<&str>, i64) {
        match self {
            TrackOutcome::Confirmed {
                id,
                message_id,
                now_ms,
            }
            | TrackOutcome::Consumed {
                id,
                message_id,
                now_ms,
            }
            | TrackOutcome::DeadLettered {
                id,
                message_id,
                now_ms,
                ..
            }
            | TrackOutcome::Checked {
                id,
                message_id,
                now_ms,
                ..
            }
            | TrackOutcome::Resend {
                id,
                message_id,
                now_ms,
                ..
            }
            | TrackOutcome::GiveUp {
                id,
                message_id,
                now_ms,
                ..
            } => (*id, Some(message_id), *now_ms),
            TrackOutcome::Unreadable { id, now_ms, .. } => (*id, None, *now_ms),
        }
    }

    pub fn effect(&self) -> TrackEffect<'_> {
        let effect = |status, finishes, note, resend| TrackEffect {
            status,
            finishes,
            note,
            resend,
            next_check_ms: None,
        };
        match self {
            TrackOutcome::Confirmed { .. } => effect("sent", true, None, false),
            TrackOutcome::Consumed { .. } => effect("consumed", true, None, false),
            TrackOutcome::DeadLettered { error, .. } => {
                effect("dead_lettered", true, Some(error.as_str()), false)
            }
            TrackOutcome::Checked {
                note,
                next_check_ms,
                ..
            } => TrackEffect {
                next_check_ms: Some(*next_check_ms),
                ..effect("sent", false, note.as_deref(), false)
            },
            TrackOutcome::Resend { reason, .. } => {
                effect("pending", false, Some(reason.as_str()), true)
            }
            TrackOutcome::GiveUp { error, .. } | TrackOutcome::Unreadable { error, .. } => {
                effect("failed", true, Some(error.as_str()), false)
            }
        }
    }
}

/// Which rows [`OutboxDatabase::stats`] counts.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    /// Every status, for [`super::Outbox::stats`] (reads the whole table).
    Every,
    /// Pending, failed and dead-lettered rows only, for the gauges: those an index counts
    /// cheaply.
    NeedingAttention,
}

/// Rows per status and the oldest pending row meant to go out at once (not a delayed one).
#[doc(hidden)]
#[derive(Debug, Clone, Default)]
pub struct RawStats {
    pub by_status: Vec<(String, i64)>,
    pub oldest_pending_created_ms: Option<i64>,
}

mod sealed {
    pub trait Sealed {}
}

#[cfg(feature = "outbox-postgres")]
impl sealed::Sealed for sqlx::Postgres {}
#[cfg(feature = "outbox-sqlite")]
impl sealed::Sealed for sqlx::Sqlite {}

/// A database the outbox can live in: `sqlx::Postgres` (feature `outbox-postgres`) or
/// `sqlx::Sqlite` (feature `outbox-sqlite`). Its methods are the outbox's own.
pub trait OutboxDatabase: sqlx::Database + sealed::Sealed {
    /// Creates or upgrades the tables; returns the schema version now in place.
    #[doc(hidden)]
    fn migrate(pool: &Pool<Self>) -> impl Future<Output = Result<i64, sqlx::Error>> + Send;

    /// Applies the migrations newer than the recorded schema version, inside the caller's
    /// transaction (which holds the lock that keeps concurrent migrations apart).
    #[doc(hidden)]
    fn apply_migrations(
        connection: &mut Self::Connection,
        migrations: &'static [(i64, &'static str)],
    ) -> impl Future<Output = Result<i64, sqlx::Error>> + Send;

    /// Makes the enqueues of one sharding key take turns until the caller's transaction ends,
    /// so their ids follow their commit order (a relay sends a key's rows in id order).
    #[doc(hidden)]
    fn lock_sharding_key(
        connection: &mut Self::Connection,
        key: &str,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;

    /// Inserts a row; `None` if a row with its dedup key exists (without failing the
    /// surrounding transaction).
    #[doc(hidden)]
    fn insert(
        connection: &mut Self::Connection,
        row: &NewRow,
    ) -> impl Future<Output = Result<Option<i64>, sqlx::Error>> + Send;

    /// For each of `keys`, the lowest id of its unsent rows (pending, or failed before any send)
    /// that are not among `claimed`: what holds back a claim's later rows of the key.
    #[doc(hidden)]
    fn first_unsent_rows(
        connection: &mut Self::Connection,
        keys: &[String],
        claimed: &[i64],
    ) -> impl Future<Output = Result<Vec<(String, i64)>, sqlx::Error>> + Send;

    /// Leases rows `ids` to `owner` until `lease_until_ms` and returns them.
    #[doc(hidden)]
    fn lease_rows(
        connection: &mut Self::Connection,
        owner: &str,
        lease_until_ms: i64,
        ids: &[i64],
    ) -> impl Future<Output = Result<Vec<RawRow>, sqlx::Error>> + Send;

    /// Leases up to `limit` pending, due rows to `owner` until `lease_until_ms`, in id order,
    /// skipping every row of a sharding key after an earlier unsent row of the key that is not
    /// claimed here (backing off, leased elsewhere, or failed before any send).
    #[doc(hidden)]
    fn claim(
        pool: &Pool<Self>,
        owner: &str,
        now_ms: i64,
        lease_until_ms: i64,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<RawRow>, sqlx::Error>> + Send;

    /// Records send outcomes of rows `owner` still holds, in one transaction.
    #[doc(hidden)]
    fn record_sends(
        pool: &Pool<Self>,
        owner: &str,
        outcomes: &[SendOutcome],
    ) -> impl Future<Output = Result<RecordedSends, sqlx::Error>> + Send;

    /// Marks rows `owner` still holds as sent, inside the caller's transaction; returns how many
    /// rows were updated.
    #[doc(hidden)]
    fn record_sent(
        connection: &mut Self::Connection,
        owner: &str,
        sent: &[(i64, &SentAs)],
    ) -> impl Future<Output = Result<u64, sqlx::Error>> + Send;

    /// Takes up to `limit` sent rows neither consumed nor confirmed whose next check is due by
    /// `now_ms` (the longest due first), marking them checked at `now_ms` and due again at
    /// `hold_until_ms`, so that the trackers of other relays pass over them this round (and
    /// take them up again should this one stop before it records its decisions).
    #[doc(hidden)]
    fn take_sent_rows(
        pool: &Pool<Self>,
        now_ms: i64,
        hold_until_ms: i64,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<SentRow>, sqlx::Error>> + Send;

    /// Records tracking decisions in one transaction; says for each whether it was applied
    /// (not, when another tracker decided about the row first).
    #[doc(hidden)]
    fn record_tracking(
        pool: &Pool<Self>,
        outcomes: &[TrackOutcome],
    ) -> impl Future<Output = Result<Vec<bool>, sqlx::Error>> + Send;

    /// Deletes (or moves to the archive table) up to `limit` rows that finished before
    /// `cutoff_ms`: consumed, dead-lettered, or sent and confirmed.
    #[doc(hidden)]
    fn remove_finished(
        pool: &Pool<Self>,
        cutoff_ms: i64,
        archive: bool,
        limit: i64,
    ) -> impl Future<Output = Result<u64, sqlx::Error>> + Send;

    /// The `counted` rows per status, and the oldest pending one.
    #[doc(hidden)]
    fn stats(
        pool: &Pool<Self>,
        counted: Counted,
    ) -> impl Future<Output = Result<RawStats, sqlx::Error>> + Send;

    #[doc(hidden)]
    fn row_by_id(
        pool: &Pool<Self>,
        id: i64,
    ) -> impl Future<Output = Result<Option<RawRow>, sqlx::Error>> + Send;

    #[doc(hidden)]
    fn row_by_dedup_key(
        pool: &Pool<Self>,
        dedup_key: &str,
    ) -> impl Future<Output = Result<Option<RawRow>, sqlx::Error>> + Send;

    /// Makes failed rows (one, or all when `id` is `None`) pending again, due at once, with
    /// fresh attempts and re-sends.
    #[doc(hidden)]
    fn retry_failed(
        pool: &Pool<Self>,
        id: Option<i64>,
    ) -> impl Future<Output = Result<u64, sqlx::Error>> + Send;

    /// Deletes failed rows (one, or all when `id` is `None`).
    #[doc(hidden)]
    fn discard_failed(
        pool: &Pool<Self>,
        id: Option<i64>,
    ) -> impl Future<Output = Result<u64, sqlx::Error>> + Send;
}

/// Every column [`RawRow`] holds, as a literal for `concat!`.
macro_rules! row_columns {
    () => {
        "id, dedup_key, topic, tag, keys, properties, body, sharding_key, deliver_at_ms, status,
         attempts, resends, next_attempt_ms, message_id, broker_group, queue_id, queue_offset,
         sent_by, created_ms, sent_ms, checked_ms, next_check_ms, finished_ms, last_error"
    };
}

/// Every column of the table (and of its archive), as a literal for `concat!`.
macro_rules! all_columns {
    () => {
        concat!(
            $crate::outbox::database::row_columns!(),
            ", lease_owner, lease_until_ms"
        )
    };
}

/// An unsent row, one that can hold back its key's later rows whatever its times: pending, or
/// failed before any send (a row that failed after it was sent has its key's later rows out
/// behind it already).
macro_rules! unsent_row {
    () => {
        "(status = 'pending' OR (status = 'failed' AND sent_ms IS NULL))"
    };
}

/// The rows a claim at time `$1` may take: pending, due, not leased, and not behind an earlier
/// unsent row of their sharding key that cannot be taken now (backing off, leased, or failed
/// before any send: a row that failed after it was sent, its re-sends lost, holds nothing back,
/// since the key's later rows went out behind it already). Filtering before the `LIMIT` keeps a
/// stuck key from filling every claim with rows it must skip. An earlier row that can be taken
/// now comes first in id order, so it is in the same claim.
///
/// The earlier rows are looked up in `ferromq_outbox_holding` (its condition is repeated
/// verbatim, so that SQLite uses it too): only rows that may hold a key back, so the check costs
/// the same whether the key has sent ten rows before or a million, and neither database's
/// planner is tempted to walk them.
macro_rules! claimable_rows {
    () => {
        "status = 'pending' AND next_attempt_ms <= $1
         AND (lease_until_ms IS NULL OR lease_until_ms <= $1)
         AND (sharding_key IS NULL OR NOT EXISTS (
             SELECT 1 FROM ferromq_outbox earlier
             WHERE earlier.sharding_key = ferromq_outbox.sharding_key
               AND earlier.id < ferromq_outbox.id
               AND ((earlier.status = 'pending'
                     AND (earlier.next_attempt_ms > 0 OR earlier.lease_until_ms IS NOT NULL))
                    OR (earlier.status = 'failed' AND earlier.sent_ms IS NULL))
               AND (earlier.status = 'failed' OR earlier.next_attempt_ms > $1
                    OR earlier.lease_until_ms > $1)))"
    };
}

/// The statements PostgreSQL and SQLite share (both take `$n` parameters), as methods of
/// `OutboxDatabase` for the driver `$db`. `$db` is a type, so each expansion is checked
/// against its own driver's encoders and decoders. `begin` starts a claim's transaction (SQLite:
/// `BEGIN IMMEDIATE`, taking the write lock at once); `row_lock` ends a query that picks rows to
/// change (PostgreSQL: `FOR UPDATE SKIP LOCKED`, so concurrent pickers take different rows).
macro_rules! shared_statements {
    ($db:ty, begin: $begin:literal, row_lock: $row_lock:literal) => {
        async fn apply_migrations(
            connection: &mut <$db as sqlx::Database>::Connection,
            migrations: &'static [(i64, &'static str)],
        ) -> Result<i64, sqlx::Error> {
            sqlx::raw_sql(
                "CREATE TABLE IF NOT EXISTS ferromq_outbox_migrations (
                     version BIGINT PRIMARY KEY,
                     applied_ms BIGINT NOT NULL
                 )",
            )
            .execute(&mut *connection)
            .await?;
            let applied: i64 = sqlx::query_scalar(
                "SELECT COALESCE(MAX(version), 0) FROM ferromq_outbox_migrations",
            )
            .fetch_one(&mut *connection)
            .await?;
            let mut version = applied;
            for (next, sql) in migrations.iter().filter(|(v, _)| *v > applied) {
                sqlx::raw_sql(*sql).execute(&mut *connection).await?;
                sqlx::query(
                    "INSERT INTO ferromq_outbox_migrations (version, applied_ms) VALUES ($1, $2)",
                )
                .bind(next)
                .bind($crate::outbox::now_ms())
                .execute(&mut *connection)
                .await?;
                version = *next;
            }
            Ok(version)
        }

        async fn claim(
            pool: &sqlx::Pool<$db>,
            owner: &str,
            now_ms: i64,
            lease_until_ms: i64,
            limit: i64,
        ) -> Result<Vec<$crate::outbox::database::RawRow>, sqlx::Error> {
            use $crate::outbox::database::{candidate_keys, claimable, claimable_rows};
            // An idle relay asks with a plain read, without a transaction or a lock. In id
            // order: PostgreSQL then walks the pending index itself, and marks the entries of
            // rows sent since as dead as it passes them, instead of visiting every one of them
            // in the table at each probe until a vacuum (after a backlog of 50 000 rows was
            // sent: 1.3 ms instead of 5.8 ms a probe).
            let probe = sqlx::query(concat!(
                "SELECT id FROM ferromq_outbox WHERE ",
                claimable_rows!(),
                " ORDER BY id LIMIT 1"
            ))
            .bind(now_ms)
            .fetch_optional(pool)
            .await?;
            if probe.is_none() {
                return Ok(Vec::new());
            }
            let mut transaction = pool.begin_with($begin).await?;
            // With a row lock, rows another relay is claiming right now are skipped, not waited
            // for. A key of the wrong type (SQLite keeps what a writer outside the SDK stored)
            // reads as none: its row is claimed on its own and fails alone once read in full,
            // instead of failing every claim.
            let candidates: Vec<(i64, Option<String>)> = sqlx::query(concat!(
                "SELECT id, sharding_key FROM ferromq_outbox WHERE ",
                claimable_rows!(),
                " ORDER BY id LIMIT $2 ",
                $row_lock
            ))
            .bind(now_ms)
            .bind(limit)
            .fetch_all(&mut *transaction)
            .await?
            .iter()
            .map(|row| {
                // Its error is dropped here: reading the claimed row in full reports it.
                let key: Option<String> = lenient_column(row, "sharding_key", &mut None);
                Ok((sqlx::Row::try_get::<i64, _>(row, "id")?, key))
            })
            .collect::<Result<_, sqlx::Error>>()?;
            if candidates.is_empty() {
                transaction.rollback().await?;
                return Ok(Vec::new());
            }
            let keys = candidate_keys(&candidates);
            let first_blocker: std::collections::HashMap<String, i64> = if keys.is_empty() {
                std::collections::HashMap::new()
            } else {
                let ids: Vec<i64> = candidates.iter().map(|(id, _)| *id).collect();
                // A row skipped above (locked by another claim) is still pending here, so it
                // holds back the later rows of its key.
                Self::first_unsent_rows(&mut *transaction, &keys, &ids)
                    .await?
                    .into_iter()
                    .collect()
            };
            let ids = claimable(&candidates, &first_blocker);
            let mut rows = Self::lease_rows(&mut *transaction, owner, lease_until_ms, &ids).await?;
            transaction.commit().await?;
            rows.sort_by_key(|row| row.id);
            Ok(rows)
        }

        async fn insert(
            connection: &mut <$db as sqlx::Database>::Connection,
            row: &$crate::outbox::database::NewRow,
        ) -> Result<Option<i64>, sqlx::Error> {
            let sent = row.sent.as_ref();
            let status = if sent.is_some() { "sent" } else { "pending" };
            sqlx::query_scalar::<_, i64>(
                "INSERT INTO ferromq_outbox (dedup_key, topic, tag, keys, properties, body,
                     sharding_key, deliver_at_ms, status, created_ms, next_attempt_ms,
                     message_id, broker_group, queue_id, queue_offset, sent_by, sent_ms, checked_ms,
                     next_check_ms)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $17,
                         $18)
                 ON CONFLICT (dedup_key) DO NOTHING
                 RETURNING id",
            )
            .bind(&row.dedup_key)
            .bind(&row.topic)
            .bind(&row.tag)
            .bind(&row.keys)
            .bind(&row.properties)
            .bind(&row.body)
            .bind(&row.sharding_key)
            .bind(row.deliver_at_ms)
            .bind(status)
            .bind(row.created_ms)
            .bind(row.next_attempt_ms)
            .bind(sent.map(|s| s.message_id.clone()))
            .bind(sent.map(|s| s.broker_group.clone()))
            .bind(sent.map(|s| s.queue_id))
            .bind(sent.map(|s| s.queue_offset))
            .bind(sent.map(|s| s.sent_by.clone()))
            .bind(sent.map(|s| s.sent_ms))
            .bind(sent.map_or(0, |s| s.first_check_ms))
            .fetch_optional(&mut *connection)
            .await
        }

        async fn record_sends(
            pool: &sqlx::Pool<$db>,
            owner: &str,
            outcomes: &[$crate::outbox::database::SendOutcome],
        ) -> Result<$crate::outbox::database::RecordedSends, sqlx::Error> {
            use $crate::outbox::database::SendOutcome;
            let mut transaction = pool.begin().await?;
            let sent: Vec<(i64, &$crate::outbox::database::SentAs)> = outcomes
                .iter()
                .filter_map(|outcome| match outcome {
                    SendOutcome::Sent { id, sent } => Some((*id, sent)),
                    _ => None,
                })
                .collect();
            let mut recorded = $crate::outbox::database::RecordedSends::default();
            if !sent.is_empty() {
                recorded.updated = Self::record_sent(&mut *transaction, owner, &sent).await?;
            }
            for outcome in outcomes {
                let query = match outcome {
                    SendOutcome::Sent { .. } => continue,
                    SendOutcome::Retry {
                        id,
                        attempts,
                        next_attempt_ms,
                        error,
                    } => sqlx::query(
                        "UPDATE ferromq_outbox SET attempts = $3, next_attempt_ms = $4,
                             last_error = $5, lease_owner = NULL, lease_until_ms = NULL
                         WHERE id = $1 AND lease_owner = $2 AND status = 'pending'",
                    )
                    .bind(id)
                    .bind(owner)
                    .bind(attempts)
                    .bind(next_attempt_ms)
                    .bind(error),
                    SendOutcome::Failed {
                        id,
                        attempts,
                        now_ms,
                        error,
                    } => sqlx::query(
                        "UPDATE ferromq_outbox SET status = 'failed', attempts = $3,
                             finished_ms = $4, last_error = $5,
                             lease_owner = NULL, lease_until_ms = NULL
                         WHERE id = $1 AND lease_owner = $2 AND status = 'pending'",
                    )
                    .bind(id)
                    .bind(owner)
                    .bind(attempts)
                    .bind(now_ms)
                    .bind(error),
                    SendOutcome::Release { id } => sqlx::query(
                        "UPDATE ferromq_outbox SET lease_owner = NULL, lease_until_ms = NULL
                         WHERE id = $1 AND lease_owner = $2 AND status = 'pending'",
                    )
                    .bind(id)
                    .bind(owner),
                };
                let updated = query.execute(&mut *transaction).await?.rows_affected();
                recorded.updated += updated;
                if matches!(outcome, SendOutcome::Failed { .. }) {
                    recorded.failed += updated;
                }
            }
            transaction.commit().await?;
            Ok(recorded)
        }

        async fn take_sent_rows(
            pool: &sqlx::Pool<$db>,
            now_ms: i64,
            hold_until_ms: i64,
            limit: i64,
        ) -> Result<Vec<$crate::outbox::database::SentRow>, sqlx::Error> {
            let rows = sqlx::query(concat!(
                "UPDATE ferromq_outbox SET checked_ms = $1, next_check_ms = $2 WHERE id IN (
                     SELECT id FROM ferromq_outbox
                     WHERE status = 'sent' AND finished_ms IS NULL AND next_check_ms <= $1
                     ORDER BY next_check_ms, id
                     LIMIT $3 ",
                $row_lock,
                ") RETURNING id, message_id, broker_group, queue_id, queue_offset, sent_by, topic,
                             deliver_at_ms, sent_ms, resends"
            ))
            .bind(now_ms)
            .bind(hold_until_ms)
            .bind(limit)
            .fetch_all(pool)
            .await?;
            rows.iter().map(sent_row).collect()
        }

        async fn stats(
            pool: &sqlx::Pool<$db>,
            counted: $crate::outbox::database::Counted,
        ) -> Result<$crate::outbox::database::RawStats, sqlx::Error> {
            use $crate::outbox::database::Counted;
            let counts = match counted {
                Counted::Every => "SELECT status, COUNT(*) FROM ferromq_outbox GROUP BY status",
                Counted::NeedingAttention => {
                    "SELECT status, COUNT(*) FROM ferromq_outbox
                     WHERE status IN ('pending', 'failed', 'dead_lettered')
                     GROUP BY status"
                }
            };
            let by_status = sqlx::query_as::<_, (String, i64)>(counts)
                .fetch_all(pool)
                .await?;
            let oldest_pending_created_ms = sqlx::query_scalar::<_, Option<i64>>(
                "SELECT MIN(created_ms) FROM ferromq_outbox
                 WHERE status = 'pending' AND deliver_at_ms IS NULL",
            )
            .fetch_one(pool)
            .await?;
            Ok($crate::outbox::database::RawStats {
                by_status,
                oldest_pending_created_ms,
            })
        }

        async fn row_by_id(
            pool: &sqlx::Pool<$db>,
            id: i64,
        ) -> Result<Option<$crate::outbox::database::RawRow>, sqlx::Error> {
            let row = sqlx::query(concat!(
                "SELECT ",
                $crate::outbox::database::row_columns!(),
                " FROM ferromq_outbox WHERE id = $1"
            ))
            .bind(id)
            .fetch_optional(pool)
            .await?;
            row.as_ref().map(raw_row).transpose()
        }

        async fn row_by_dedup_key(
            pool: &sqlx::Pool<$db>,
            dedup_key: &str,
        ) -> Result<Option<$crate::outbox::database::RawRow>, sqlx::Error> {
            let row = sqlx::query(concat!(
                "SELECT ",
                $crate::outbox::database::row_columns!(),
                " FROM ferromq_outbox WHERE dedup_key = $1"
            ))
            .bind(dedup_key)
            .fetch_optional(pool)
            .await?;
            row.as_ref().map(raw_row).transpose()
        }

        async fn retry_failed(
            pool: &sqlx::Pool<$db>,
            id: Option<i64>,
        ) -> Result<u64, sqlx::Error> {
            let result = sqlx::query(
                "UPDATE ferromq_outbox SET status = 'pending', attempts = 0, resends = 0,
                     next_attempt_ms = 0, finished_ms = NULL, last_error = NULL
                 WHERE status = 'failed' AND (CAST($1 AS BIGINT) IS NULL OR id = $1)",
            )
            .bind(id)
            .execute(pool)
            .await?;
            Ok(result.rows_affected())
        }

        async fn discard_failed(
            pool: &sqlx::Pool<$db>,
            id: Option<i64>,
        ) -> Result<u64, sqlx::Error> {
            let result = sqlx::query(
                "DELETE FROM ferromq_outbox
                 WHERE status = 'failed' AND (CAST($1 AS BIGINT) IS NULL OR id = $1)",
            )
            .bind(id)
            .execute(pool)
            .await?;
            Ok(result.rows_affected())
        }
    };
}

/// Decodes, for the driver `$db`, the rows that relays and trackers read. A column of the wrong
/// type (SQLite keeps whatever a writer outside the SDK put in) makes a row `unreadable`
/// rather than failing the whole statement, so one bad row fails alone instead of stopping
/// every claim, or every tracking round, it is part of.
macro_rules! raw_row_decoder {
    ($db:ty) => {
        /// The column's value, or its type's default with the first error kept.
        fn lenient_column<'r, T>(
            row: &'r <$db as sqlx::Database>::Row,
            name: &'static str,
            unreadable: &mut Option<String>,
        ) -> T
        where
            T: sqlx::Decode<'r, $db> + sqlx::Type<$db> + Default,
        {
            use sqlx::Row;
            row.try_get(name).unwrap_or_else(|err| {
                unreadable.get_or_insert(err.to_string());
                T::default()
            })
        }

        /// Decodes a row selected with [`row_columns!`].
        fn raw_row(
            row: &<$db as sqlx::Database>::Row,
        ) -> Result<$crate::outbox::database::RawRow, sqlx::Error> {
            use sqlx::Row;
            let mut unreadable = None;
            Ok($crate::outbox::database::RawRow {
                // Without its id a row cannot even be marked: that fails the statement.
                id: row.try_get("id")?,
                dedup_key: lenient_column(row, "dedup_key", &mut unreadable),
                topic: lenient_column(row, "topic", &mut unreadable),
                tag: lenient_column(row, "tag", &mut unreadable),
                keys: lenient_column(row, "keys", &mut unreadable),
                properties: lenient_column(row, "properties", &mut unreadable),
                body: lenient_column(row, "body", &mut unreadable),
                sharding_key: lenient_column(row, "sharding_key", &mut unreadable),
                deliver_at_ms: lenient_column(row, "deliver_at_ms", &mut unreadable),
                status: lenient_column(row, "status", &mut unreadable),
                attempts: lenient_column(row, "attempts", &mut unreadable),
                resends: lenient_column(row, "resends", &mut unreadable),
                next_attempt_ms: lenient_column(row, "next_attempt_ms", &mut unreadable),
                message_id: lenient_column(row, "message_id", &mut unreadable),
                broker_group: lenient_column(row, "broker_group", &mut unreadable),
                queue_id: lenient_column(row, "queue_id", &mut unreadable),
                queue_offset: lenient_column(row, "queue_offset", &mut unreadable),
                sent_by: lenient_column(row, "sent_by", &mut unreadable),
                created_ms: lenient_column(row, "created_ms", &mut unreadable),
                sent_ms: lenient_column(row, "sent_ms", &mut unreadable),
                checked_ms: lenient_column(row, "checked_ms", &mut unreadable),
                next_check_ms: lenient_column(row, "next_check_ms", &mut unreadable),
                finished_ms: lenient_column(row, "finished_ms", &mut unreadable),
                last_error: lenient_column(row, "last_error", &mut unreadable),
                unreadable,
            })
        }

        /// Decodes a row `take_sent_rows` returns.
        fn sent_row(
            row: &<$db as sqlx::Database>::Row,
        ) -> Result<$crate::outbox::database::SentRow, sqlx::Error> {
            use sqlx::Row;
            let mut unreadable = None;
            let message_id: Option<String> = lenient_column(row, "message_id", &mut unreadable);
            let broker_group: Option<String> = lenient_column(row, "broker_group", &mut unreadable);
            let sent_ms: Option<i64> = lenient_column(row, "sent_ms", &mut unreadable);
            Ok($crate::outbox::database::SentRow {
                id: row.try_get("id")?,
                message_id: message_id.unwrap_or_default(),
                broker_group: broker_group.unwrap_or_default(),
                queue_id: lenient_column(row, "queue_id", &mut unreadable),
                queue_offset: lenient_column(row, "queue_offset", &mut unreadable),
                sent_by: lenient_column(row, "sent_by", &mut unreadable),
                topic: lenient_column(row, "topic", &mut unreadable),
                deliver_at_ms: lenient_column(row, "deliver_at_ms", &mut unreadable),
                sent_ms: sent_ms.unwrap_or(0),
                resends: lenient_column(row, "resends", &mut unreadable),
                unreadable,
            })
        }
    };
}

pub(crate) use {
    all_columns, claimable_rows, raw_row_decoder, row_columns, shared_statements, unsent_row,
};

/// Of the candidates a claim locked, the ids it may take: every row without a sharding key, and a
/// keyed row only if no unsent row of its key that this claim did not lock comes before it
/// (`first_blocker`: the lowest such id per key). [`claimable_rows!`] has already left out the
/// rows behind a row backing off, leased or failed before any send; this catches a row another
/// claim is locking at the same moment (PostgreSQL's `SKIP LOCKED` passes over it).
pub(crate) fn claimable(
    candidates: &[(i64, Option<String>)],
    first_blocker: &std::collections::HashMap<String, i64>,
) -> Vec<i64> {
    candidates
        .iter()
        .filter(|(id, key)| match key {
            None => true,
            Some(key) => first_blocker.get(key).is_none_or(|blocker| id < blocker),
        })
        .map(|(id, _)| *id)
        .collect()
}

/// The distinct sharding keys among claim candidates.
pub(crate) fn candidate_keys(candidates: &[(i64, Option<String>)]) -> Vec<String> {
    let mut keys: Vec<String> = candidates.iter().filter_map(|(_, k)| k.clone()).collect();
    keys.sort();
    keys.dedup();
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sharding_key_is_held_back_by_its_first_unclaimed_unsent_row() {
        let candidates = vec![
            (1, None),
            (2, Some("a".to_string())),
            (3, Some("b".to_string())),
            (5, Some("a".to_string())),
            (6, None),
            (8, Some("b".to_string())),
        ];
        // Row 4 (key a) backs off; rows of b have nothing before them.
        let blockers = std::collections::HashMap::from([("a".to_string(), 4)]);
        assert_eq!(claimable(&candidates, &blockers), vec![1, 2, 3, 6, 8]);
        assert_eq!(candidate_keys(&candidates), vec!["a", "b"]);
    }
}
