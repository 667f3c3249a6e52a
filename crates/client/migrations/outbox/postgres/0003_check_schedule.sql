-- FerroMQ outbox, schema version 3: consumption checks on a schedule. A sent row is looked at
-- again when its next_check_ms comes (sooner while it is young, at most every
-- resend_after_ms once it has waited long), not every track_interval_ms: rows waiting behind
-- a lagging consumer group no longer keep the tracker rewriting them back to back.
-- Rows sent before the upgrade are due at once (0) and get their schedule at their next look.
ALTER TABLE ferromq_outbox ADD COLUMN IF NOT EXISTS next_check_ms BIGINT NOT NULL DEFAULT 0;
ALTER TABLE ferromq_outbox_archive ADD COLUMN IF NOT EXISTS next_check_ms BIGINT NOT NULL DEFAULT 0;
-- Consumption tracking: sent rows neither consumed nor confirmed yet, by when they are due.
CREATE INDEX IF NOT EXISTS ferromq_outbox_tracking ON ferromq_outbox (next_check_ms, id)
    WHERE status = 'sent' AND finished_ms IS NULL;
-- Version 2's tracking order (by last check), no longer read.
DROP INDEX IF EXISTS ferromq_outbox_unconfirmed;
