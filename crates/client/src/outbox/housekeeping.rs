//! Housekeeping: removes finished rows once they are older than the retention (deleting them,
//! or moving them to `ferromq_outbox_archive`), a slice at a time so no statement holds locks
//! for long, and refreshes the gauges of the rows that need attention (pending, failed,
//! dead-lettered: counted from an index, not by reading the table).

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::counters::record_rows;
use super::database::{Counted, OutboxDatabase};
use super::{now_ms, Outbox, OutboxError};

/// Rows removed per statement.
const SLICE: i64 = 1_000;

pub(crate) async fn housekeeping_loop<DB: OutboxDatabase>(
    outbox: Outbox<DB>,
    stop: CancellationToken,
) {
    let interval = Duration::from_millis(outbox.config.housekeeping_interval_ms);
    loop {
        match DB::stats(&outbox.pool, Counted::NeedingAttention).await {
            Ok(raw) => record_rows(&outbox.stats_of(raw)),
            Err(err) => warn!(%err, "outbox row count failed"),
        }
        if let Err(err) = remove_finished(&outbox, &stop).await {
            warn!(%err, "outbox housekeeping failed");
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Removes every finished row older than the retention; returns how many.
async fn remove_finished<DB: OutboxDatabase>(
    outbox: &Outbox<DB>,
    stop: &CancellationToken,
) -> Result<u64, OutboxError> {
    let config = &outbox.config;
    let cutoff = now_ms().saturating_sub(i64::try_from(config.retention_ms).unwrap_or(i64::MAX));
    let mut removed = 0;
    while !stop.is_cancelled() {
        let n = DB::remove_finished(&outbox.pool, cutoff, config.archive, SLICE).await?;
        removed += n;
        if n < SLICE as u64 {
            break;
        }
    }
    if removed > 0 {
        debug!(
            removed,
            archived = config.archive,
            "finished outbox rows removed"
        );
    }
    Ok(removed)
}
