-- FerroMQ outbox (local transaction message table), schema version 1, SQLite.
-- Applied by Outbox::migrate(), or copy it into your own migrations (then skip migrate()).
-- Times are milliseconds since the Unix epoch, from the clocks of the processes that write them.

CREATE TABLE IF NOT EXISTS ferromq_outbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT, -- enqueue order, never reused
    dedup_key       TEXT NOT NULL UNIQUE,              -- first message key of every copy sent
    topic           TEXT NOT NULL,
    tag             TEXT,
    keys            TEXT NOT NULL,                     -- JSON array: the application's keys
    properties      TEXT NOT NULL,                     -- JSON object
    body            BLOB NOT NULL,
    sharding_key    TEXT,                              -- ordered: sent after every earlier row of this key
    deliver_at_ms   INTEGER,                           -- delayed: visible to consumers from then on
    status          TEXT NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'sent', 'consumed', 'failed', 'dead_lettered')),
    attempts        INTEGER NOT NULL DEFAULT 0,        -- send attempts since enqueue or the last re-send
    resends         INTEGER NOT NULL DEFAULT 0,        -- times sent again because it was not consumed
    next_attempt_ms INTEGER NOT NULL,                  -- back-off: not claimed before this
    lease_owner     TEXT,                              -- the relay sending it now
    lease_until_ms  INTEGER,
    message_id      TEXT,                              -- of the last acknowledged send
    broker_group    TEXT,
    queue_id        INTEGER,
    queue_offset    INTEGER,
    sent_by         TEXT,                              -- the relay that sent it
    created_ms      INTEGER NOT NULL,
    sent_ms         INTEGER,
    checked_ms      INTEGER,                           -- last consumption check
    finished_ms     INTEGER,                           -- done: confirmed or consumed, failed, dead-lettered
    last_error      TEXT
);

-- The relay's claim: pending rows in enqueue order.
CREATE INDEX IF NOT EXISTS ferromq_outbox_pending ON ferromq_outbox (id) WHERE status = 'pending';
-- Earlier unsent rows of a sharding key hold back the later ones.
CREATE INDEX IF NOT EXISTS ferromq_outbox_unsent_by_key ON ferromq_outbox (sharding_key, id)
    WHERE status IN ('pending', 'failed') AND sharding_key IS NOT NULL;
-- Consumption tracking: sent rows neither consumed nor confirmed yet, least recently checked first.
CREATE INDEX IF NOT EXISTS ferromq_outbox_unconfirmed ON ferromq_outbox (checked_ms, id)
    WHERE status = 'sent' AND finished_ms IS NULL;
-- Housekeeping: finished rows by age.
CREATE INDEX IF NOT EXISTS ferromq_outbox_finished ON ferromq_outbox (finished_ms, id)
    WHERE status IN ('sent', 'consumed', 'dead_lettered');
-- The gauges: rows that need attention, and the oldest pending one.
CREATE INDEX IF NOT EXISTS ferromq_outbox_attention ON ferromq_outbox (status, created_ms)
    WHERE status IN ('pending', 'failed', 'dead_lettered');

-- Where housekeeping moves finished rows when asked to archive rather than delete.
CREATE TABLE IF NOT EXISTS ferromq_outbox_archive AS SELECT * FROM ferromq_outbox WHERE 0;
CREATE UNIQUE INDEX IF NOT EXISTS ferromq_outbox_archive_id ON ferromq_outbox_archive (id);
CREATE INDEX IF NOT EXISTS ferromq_outbox_archive_finished ON ferromq_outbox_archive (finished_ms);
