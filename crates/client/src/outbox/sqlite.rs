//! The outbox on SQLite: a claim runs in a `BEGIN IMMEDIATE` transaction (SQLite has one
//! writer at a time, so claims by relays in several processes take turns) and leases its rows;
//! id lists travel as JSON arrays read with `json_each`.
//!
//! Open the pool with WAL journaling and a busy timeout (`SqliteConnectOptions::journal_mode`,
//! `busy_timeout`) when several processes share the file.

use sqlx::{Pool, Sqlite, SqliteConnection};

use super::database::{
    all_columns, raw_row_decoder, row_columns, shared_statements, unsent_row, OutboxDatabase,
    RawRow, SentAs, TrackOutcome,
};

/// The schema migrations, in order: (version, SQL).
const SQLITE_MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        include_str!("../../migrations/outbox/sqlite/0001_outbox.sql"),
    ),
    (
        2,
        include_str!("../../migrations/outbox/sqlite/0002_holding_rows.sql"),
    ),
    (
        3,
        include_str!("../../migrations/outbox/sqlite/0003_check_schedule.sql"),
    ),
];

raw_row_decoder!(Sqlite);

/// A list of values as the JSON array `json_each` reads.
fn json_list<T: serde::Serialize>(values: &[T]) -> Result<String, sqlx::Error> {
    serde_json::to_string(values).map_err(|err| sqlx::Error::Encode(Box::new(err)))
}

impl OutboxDatabase for Sqlite {
    async fn migrate(pool: &Pool<Sqlite>) -> Result<i64, sqlx::Error> {
        let mut transaction = pool.begin_with("BEGIN IMMEDIATE").await?;
        let version = Self::apply_migrations(&mut *transaction, SQLITE_MIGRATIONS).await?;
        transaction.commit().await?;
        Ok(version)
    }

    async fn first_unsent_rows(
        connection: &mut SqliteConnection,
        keys: &[String],
        claimed: &[i64],
    ) -> Result<Vec<(String, i64)>, sqlx::Error> {
        // The `status IN` term repeats `ferromq_outbox_unsent_by_key`'s condition verbatim:
        // SQLite uses a partial index only for a query that states its condition.
        sqlx::query_as(concat!(
            "SELECT sharding_key, MIN(id) FROM ferromq_outbox
             WHERE sharding_key IN (SELECT value FROM json_each($1))
               AND status IN ('pending', 'failed') AND ",
            unsent_row!(),
            " AND id NOT IN (SELECT value FROM json_each($2))
             GROUP BY sharding_key"
        ))
        .bind(json_list(keys)?)
        .bind(json_list(claimed)?)
        .fetch_all(connection)
        .await
    }

    async fn lease_rows(
        connection: &mut SqliteConnection,
        owner: &str,
        lease_until_ms: i64,
        ids: &[i64],
    ) -> Result<Vec<RawRow>, sqlx::Error> {
        let rows = sqlx::query(concat!(
            "UPDATE ferromq_outbox SET lease_owner = $1, lease_until_ms = $2
             WHERE id IN (SELECT value FROM json_each($3))
             RETURNING ",
            row_columns!()
        ))
        .bind(owner)
        .bind(lease_until_ms)
        .bind(json_list(ids)?)
        .fetch_all(connection)
        .await?;
        rows.iter().map(raw_row).collect()
    }

    async fn remove_finished(
        pool: &Pool<Sqlite>,
        cutoff_ms: i64,
        archive: bool,
        limit: i64,
    ) -> Result<u64, sqlx::Error> {
        // The write lock is held from the start, so both statements see the same rows.
        let mut transaction = pool.begin_with("BEGIN IMMEDIATE").await?;
        if archive {
            sqlx::query(concat!(
                "INSERT INTO ferromq_outbox_archive (",
                all_columns!(),
                ") SELECT ",
                all_columns!(),
                " FROM ferromq_outbox WHERE id IN (
                     SELECT id FROM ferromq_outbox
                     WHERE status IN ('sent', 'consumed', 'dead_lettered') AND finished_ms < $1
                     ORDER BY finished_ms, id LIMIT $2)"
            ))
            .bind(cutoff_ms)
            .bind(limit)
            .execute(&mut *transaction)
            .await?;
        }
        let result = sqlx::query(
            "DELETE FROM ferromq_outbox WHERE id IN (
                 SELECT id FROM ferromq_outbox
                 WHERE status IN ('sent', 'consumed', 'dead_lettered') AND finished_ms < $1
                 ORDER BY finished_ms, id LIMIT $2)",
        )
        .bind(cutoff_ms)
        .bind(limit)
        .execute(&mut *transaction)
        .await?;
        transaction.commit().await?;
        Ok(result.rows_affected())
    }

    async fn lock_sharding_key(
        _connection: &mut SqliteConnection,
        _key: &str,
    ) -> Result<(), sqlx::Error> {
        // SQLite has one writer at a time: enqueues already commit in id order.
        Ok(())
    }

    async fn record_sent(
        connection: &mut SqliteConnection,
        owner: &str,
        sent: &[(i64, &SentAs)],
    ) -> Result<u64, sqlx::Error> {
        // Statements cost no round trip here: one per row is as fast as anything.
        let mut updated = 0;
        for (id, sent) in sent {
            updated += sqlx::query(
                "UPDATE ferromq_outbox SET status = 'sent', attempts = attempts + 1,
                     message_id = $3, broker_group = $4, queue_id = $5, queue_offset = $6,
                     sent_by = $7, sent_ms = $8, checked_ms = $8, next_check_ms = $10,
                     last_error = NULL,
                     finished_ms = CASE WHEN $9 THEN $8 ELSE NULL END,
                     lease_owner = NULL, lease_until_ms = NULL
                 WHERE id = $1 AND lease_owner = $2 AND status = 'pending'",
            )
            .bind(id)
            .bind(owner)
            .bind(&sent.message_id)
            .bind(&sent.broker_group)
            .bind(sent.queue_id)
            .bind(sent.queue_offset)
            .bind(&sent.sent_by)
            .bind(sent.sent_ms)
            .bind(sent.finished)
            .bind(sent.first_check_ms)
            .execute(&mut *connection)
            .await?
            .rows_affected();
        }
        Ok(updated)
    }

    async fn record_tracking(
        pool: &Pool<Sqlite>,
        outcomes: &[TrackOutcome],
    ) -> Result<Vec<bool>, sqlx::Error> {
        // One statement per row, as for sends: no round trips here.
        let mut transaction = pool.begin().await?;
        let mut applied = Vec::with_capacity(outcomes.len());
        for outcome in outcomes {
            let (id, message_id, now_ms) = outcome.row();
            let effect = outcome.effect();
            // A re-send starts the row over as pending: fresh attempts, due at once.
            let updated = sqlx::query(
                "UPDATE ferromq_outbox SET status = $4, checked_ms = $3,
                     finished_ms = CASE WHEN $5 THEN $3 ELSE finished_ms END,
                     last_error = $6,
                     resends = CASE WHEN $7 THEN resends + 1 ELSE resends END,
                     attempts = CASE WHEN $7 THEN 0 ELSE attempts END,
                     next_attempt_ms = CASE WHEN $7 THEN 0 ELSE next_attempt_ms END,
                     next_check_ms = COALESCE($8, next_check_ms)
                 WHERE id = $1 AND ($2 IS NULL OR message_id = $2) AND status = 'sent'",
            )
            .bind(id)
            .bind(message_id)
            .bind(now_ms)
            .bind(effect.status)
            .bind(effect.finishes)
            .bind(effect.note)
            .bind(effect.resend)
            .bind(effect.next_check_ms)
            .execute(&mut *transaction)
            .await?;
            applied.push(updated.rows_affected() > 0);
        }
        transaction.commit().await?;
        Ok(applied)
    }

    shared_statements!(Sqlite, begin: "BEGIN IMMEDIATE", row_lock: "");
}
