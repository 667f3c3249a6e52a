-- FerroMQ outbox, schema version 2: the rows that can hold back their sharding key's later rows.
-- A row meant to go out at once is due from 0 (version 2 enqueues it so, whatever the clocks
-- say), so this index holds only rows backing off or delayed, leased, or failed before any send:
-- few, and the claim's per-row check of a key's earlier rows looks them up by key here instead
-- of walking every earlier row of the key (sent ones included).
CREATE INDEX IF NOT EXISTS ferromq_outbox_holding ON ferromq_outbox (sharding_key, id)
    WHERE sharding_key IS NOT NULL
      AND ((status = 'pending' AND (next_attempt_ms > 0 OR lease_until_ms IS NOT NULL))
           OR (status = 'failed' AND sent_ms IS NULL));
