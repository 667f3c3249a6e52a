//! The outbox on PostgreSQL: rows are claimed with `FOR UPDATE SKIP LOCKED` (concurrent relays
//! pass over each other's rows instead of waiting) and then leased; migrations hold an advisory
//! lock, so application instances starting together apply them once.

use std::collections::HashSet;

use sqlx::{PgConnection, Pool, Postgres};

use super::database::{
    all_columns, raw_row_decoder, row_columns, shared_statements, unsent_row, OutboxDatabase,
    RawRow, SentAs, TrackOutcome,
};

/// Key of the advisory lock migrations hold ("FerroMQ outbox" in ASCII, truncated).
const MIGRATION_LOCK: i64 = 0x4665_7272_6f4f_7574;
/// First half of the two-part advisory lock keys of sharding keys ("FeMQ"): apart from the
/// application's own one-part locks and from other two-part namespaces.
const SHARDING_KEY_LOCKS: i32 = 0x4665_4d51;

/// The schema migrations, in order: (version, SQL).
const POSTGRES_MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        include_str!("../../migrations/outbox/postgres/0001_outbox.sql"),
    ),
    (
        2,
        include_str!("../../migrations/outbox/postgres/0002_holding_rows.sql"),
    ),
    (
        3,
        include_str!("../../migrations/outbox/postgres/0003_check_schedule.sql"),
    ),
];

raw_row_decoder!(Postgres);

impl OutboxDatabase for Postgres {
    async fn migrate(pool: &Pool<Postgres>) -> Result<i64, sqlx::Error> {
        let mut transaction = pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut *transaction)
            .await?;
        let version = Self::apply_migrations(&mut *transaction, POSTGRES_MIGRATIONS).await?;
        transaction.commit().await?;
        Ok(version)
    }

    async fn first_unsent_rows(
        connection: &mut PgConnection,
        keys: &[String],
        claimed: &[i64],
    ) -> Result<Vec<(String, i64)>, sqlx::Error> {
        sqlx::query_as(concat!(
            "SELECT sharding_key, MIN(id) FROM ferromq_outbox
             WHERE sharding_key = ANY($1) AND ",
            unsent_row!(),
            " AND NOT (id = ANY($2))
             GROUP BY sharding_key"
        ))
        .bind(keys)
        .bind(claimed)
        .fetch_all(connection)
        .await
    }

    async fn lease_rows(
        connection: &mut PgConnection,
        owner: &str,
        lease_until_ms: i64,
        ids: &[i64],
    ) -> Result<Vec<RawRow>, sqlx::Error> {
        let rows = sqlx::query(concat!(
            "UPDATE ferromq_outbox SET lease_owner = $1, lease_until_ms = $2
             WHERE id = ANY($3)
             RETURNING ",
            row_columns!()
        ))
        .bind(owner)
        .bind(lease_until_ms)
        .bind(ids)
        .fetch_all(connection)
        .await?;
        rows.iter().map(raw_row).collect()
    }

    async fn remove_finished(
        pool: &Pool<Postgres>,
        cutoff_ms: i64,
        archive: bool,
        limit: i64,
    ) -> Result<u64, sqlx::Error> {
        // One statement: the rows archived are exactly the rows deleted.
        let sql = if archive {
            concat!(
                "WITH doomed AS (
                     SELECT id FROM ferromq_outbox
                     WHERE status IN ('sent', 'consumed', 'dead_lettered') AND finished_ms < $1
                     ORDER BY finished_ms, id LIMIT $2
                     FOR UPDATE SKIP LOCKED),
                 moved AS (
                     DELETE FROM ferromq_outbox WHERE id IN (SELECT id FROM doomed)
                     RETURNING ",
                all_columns!(),
                ")
                 INSERT INTO ferromq_outbox_archive (",
                all_columns!(),
                ") SELECT ",
                all_columns!(),
                " FROM moved"
            )
        } else {
            "DELETE FROM ferromq_outbox WHERE id IN (
                 SELECT id FROM ferromq_outbox
                 WHERE status IN ('sent', 'consumed', 'dead_lettered') AND finished_ms < $1
                 ORDER BY finished_ms, id LIMIT $2
                 FOR UPDATE SKIP LOCKED)"
        };
        let result = sqlx::query(sql)
            .bind(cutoff_ms)
            .bind(limit)
            .execute(pool)
            .await?;
        Ok(result.rows_affected())
    }

    async fn lock_sharding_key(
        connection: &mut PgConnection,
        key: &str,
    ) -> Result<(), sqlx::Error> {
        // Held until the enqueuing transaction ends. Ids come from a sequence when rows are
        // inserted, not when they commit: without this, of two transactions enqueueing for one
        // key, the later id could commit (and be sent) first.
        sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
            .bind(SHARDING_KEY_LOCKS)
            .bind(key)
            .execute(connection)
            .await
            .map(|_| ())
    }

    async fn record_sent(
        connection: &mut PgConnection,
        owner: &str,
        sent: &[(i64, &SentAs)],
    ) -> Result<u64, sqlx::Error> {
        // One statement for the whole batch: a round trip per row would cost more than the
        // broker's send. (`… IS TRUE`, here and in `record_tracking`, keeps the planner on the
        // primary key: with statistics older than a burst of rows it would walk every row of a
        // status through the partial index on it for each statement, 1.9 s instead of 2 ms for
        // 200 rows among 50 000.)
        let column = |f: fn(&SentAs) -> i64| sent.iter().map(|(_, s)| f(s)).collect::<Vec<i64>>();
        let ids: Vec<i64> = sent.iter().map(|(id, _)| *id).collect();
        let message_ids: Vec<&str> = sent.iter().map(|(_, s)| s.message_id.as_str()).collect();
        let groups: Vec<&str> = sent.iter().map(|(_, s)| s.broker_group.as_str()).collect();
        let senders: Vec<&str> = sent.iter().map(|(_, s)| s.sent_by.as_str()).collect();
        let finished: Vec<bool> = sent.iter().map(|(_, s)| s.finished).collect();
        let result = sqlx::query(
            "UPDATE ferromq_outbox AS o SET status = 'sent', attempts = o.attempts + 1,
                 message_id = u.message_id, broker_group = u.broker_group, queue_id = u.queue_id,
                 queue_offset = u.queue_offset, sent_by = u.sent_by, sent_ms = u.sent_ms,
                 checked_ms = u.sent_ms, next_check_ms = u.first_check_ms, last_error = NULL,
                 finished_ms = CASE WHEN u.finished THEN u.sent_ms ELSE NULL END,
                 lease_owner = NULL, lease_until_ms = NULL
             FROM UNNEST($2::BIGINT[], $3::TEXT[], $4::TEXT[], $5::BIGINT[], $6::BIGINT[],
                         $7::TEXT[], $8::BIGINT[], $9::BOOLEAN[], $10::BIGINT[])
                  AS u(id, message_id, broker_group, queue_id, queue_offset, sent_by, sent_ms,
                       finished, first_check_ms)
             WHERE o.id = u.id AND o.lease_owner = $1 AND (o.status = 'pending') IS TRUE",
        )
        .bind(owner)
        .bind(&ids)
        .bind(&message_ids)
        .bind(&groups)
        .bind(column(|s| s.queue_id))
        .bind(column(|s| s.queue_offset))
        .bind(&senders)
        .bind(column(|s| s.sent_ms))
        .bind(&finished)
        .bind(column(|s| s.first_check_ms))
        .execute(connection)
        .await?;
        Ok(result.rows_affected())
    }

    async fn record_tracking(
        pool: &Pool<Postgres>,
        outcomes: &[TrackOutcome],
    ) -> Result<Vec<bool>, sqlx::Error> {
        // One statement for the round, as for sends: with a round trip per row, a relay
        // tracked only a few hundred rows per second.
        let n = outcomes.len();
        let (mut ids, mut message_ids, mut times) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let (mut statuses, mut finishes, mut notes, mut resends, mut next_checks) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for outcome in outcomes {
            let (id, message_id, now_ms) = outcome.row();
            let effect = outcome.effect();
            ids.push(id);
            message_ids.push(message_id);
            times.push(now_ms);
            statuses.push(effect.status);
            finishes.push(effect.finishes);
            notes.push(effect.note);
            resends.push(effect.resend);
            next_checks.push(effect.next_check_ms);
        }
        // A re-send starts the row over as pending: fresh attempts, due at once.
        let applied: Vec<i64> = sqlx::query_scalar(
            "UPDATE ferromq_outbox AS o SET status = u.status, checked_ms = u.now_ms,
                 finished_ms = CASE WHEN u.finishes THEN u.now_ms ELSE o.finished_ms END,
                 last_error = u.note,
                 resends = CASE WHEN u.resend THEN o.resends + 1 ELSE o.resends END,
                 attempts = CASE WHEN u.resend THEN 0 ELSE o.attempts END,
                 next_attempt_ms = CASE WHEN u.resend THEN 0 ELSE o.next_attempt_ms END,
                 next_check_ms = COALESCE(u.next_check_ms, o.next_check_ms)
             FROM UNNEST($1::BIGINT[], $2::TEXT[], $3::BIGINT[], $4::TEXT[], $5::BOOLEAN[],
                         $6::TEXT[], $7::BOOLEAN[], $8::BIGINT[])
                  AS u(id, message_id, now_ms, status, finishes, note, resend, next_check_ms)
             WHERE o.id = u.id AND (u.message_id IS NULL OR o.message_id = u.message_id)
                   AND (o.status = 'sent') IS TRUE
             RETURNING o.id",
        )
        .bind(&ids)
        .bind(&message_ids)
        .bind(&times)
        .bind(&statuses)
        .bind(&finishes)
        .bind(&notes)
        .bind(&resends)
        .bind(&next_checks)
        .fetch_all(pool)
        .await?;
        let applied: HashSet<i64> = applied.into_iter().collect();
        Ok(ids.iter().map(|id| applied.contains(id)).collect())
    }

    shared_statements!(Postgres, begin: "BEGIN", row_lock: "FOR UPDATE SKIP LOCKED");
}
