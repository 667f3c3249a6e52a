//! What a relay counts, kept twice: in atomics for [`super::Relay::counters`], and through the
//! `metrics` facade for whatever recorder the application installed (Prometheus or other).
//! Every process reads the same table, so the row gauges of several relays agree: aggregate
//! them with `max`, not `sum`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;

use super::{OutboxStats, OutboxStatus};

pub(crate) const ROWS: &str = "mq_outbox_rows";
pub(crate) const OLDEST_PENDING_AGE: &str = "mq_outbox_oldest_pending_age_seconds";
pub(crate) const SENDS: &str = "mq_outbox_sends_total";
pub(crate) const RESENDS: &str = "mq_outbox_resends_total";
pub(crate) const SEND_FAILURES: &str = "mq_outbox_send_failures_total";
pub(crate) const FAILED: &str = "mq_outbox_failed_total";
pub(crate) const CONSUMED: &str = "mq_outbox_consumed_total";
pub(crate) const DEAD_LETTERED: &str = "mq_outbox_dead_lettered_total";
pub(crate) const CHECKS: &str = "mq_outbox_checks_total";

/// What one relay did since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayCounters {
    /// Rows sent and acknowledged by a broker (re-sends included).
    pub sends: u64,
    /// Rows returned to pending because they were sent but not consumed in time.
    pub resends: u64,
    /// Send attempts that failed (each is retried after back-off, or ends the row).
    pub send_failures: u64,
    /// Rows given up on (`failed`).
    pub failed: u64,
    /// Rows found consumed by every tracked group.
    pub consumed: u64,
    /// Rows a tracked group dead-lettered.
    pub dead_lettered: u64,
    /// Looks of consumption tracking at sent rows (each writes its row twice).
    pub checks: u64,
}

#[derive(Default)]
pub(crate) struct Counters {
    sends: AtomicU64,
    resends: AtomicU64,
    send_failures: AtomicU64,
    failed: AtomicU64,
    consumed: AtomicU64,
    dead_lettered: AtomicU64,
    checks: AtomicU64,
}

impl Counters {
    pub(crate) fn new() -> Counters {
        static DESCRIBE: Once = Once::new();
        DESCRIBE.call_once(describe);
        Counters::default()
    }

    /// Adds what a round of sending or tracking did.
    pub(crate) fn add(&self, delta: RelayCounters) {
        let pairs = [
            (&self.sends, SENDS, delta.sends),
            (&self.resends, RESENDS, delta.resends),
            (&self.send_failures, SEND_FAILURES, delta.send_failures),
            (&self.failed, FAILED, delta.failed),
            (&self.consumed, CONSUMED, delta.consumed),
            (&self.dead_lettered, DEAD_LETTERED, delta.dead_lettered),
            (&self.checks, CHECKS, delta.checks),
        ];
        for (atomic, name, n) in pairs {
            if n > 0 {
                atomic.fetch_add(n, Ordering::Relaxed);
                ::metrics::counter!(name).increment(n);
            }
        }
    }

    pub(crate) fn snapshot(&self) -> RelayCounters {
        RelayCounters {
            sends: self.sends.load(Ordering::Relaxed),
            resends: self.resends.load(Ordering::Relaxed),
            send_failures: self.send_failures.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            consumed: self.consumed.load(Ordering::Relaxed),
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
            checks: self.checks.load(Ordering::Relaxed),
        }
    }
}

/// Sets the gauges of the rows that need attention from a fresh count.
pub(crate) fn record_rows(stats: &OutboxStats) {
    for status in [
        OutboxStatus::Pending,
        OutboxStatus::Failed,
        OutboxStatus::DeadLettered,
    ] {
        ::metrics::gauge!(ROWS, "status" => status.as_str()).set(stats.count(status) as f64);
    }
    let age = stats
        .oldest_pending_age
        .map_or(0.0, |age| age.as_secs_f64());
    ::metrics::gauge!(OLDEST_PENDING_AGE).set(age);
}

fn describe() {
    use ::metrics::{describe_counter, describe_gauge, Unit};
    describe_gauge!(
        ROWS,
        Unit::Count,
        "outbox rows pending, failed or dead-lettered"
    );
    describe_gauge!(
        OLDEST_PENDING_AGE,
        Unit::Seconds,
        "age of the oldest pending outbox row (0 when none)"
    );
    describe_counter!(SENDS, Unit::Count, "outbox rows sent and acknowledged");
    describe_counter!(
        RESENDS,
        Unit::Count,
        "outbox rows sent again because they were not consumed in time"
    );
    describe_counter!(SEND_FAILURES, Unit::Count, "failed outbox send attempts");
    describe_counter!(FAILED, Unit::Count, "outbox rows given up on");
    describe_counter!(
        CONSUMED,
        Unit::Count,
        "outbox rows consumed by every tracked group"
    );
    describe_counter!(
        DEAD_LETTERED,
        Unit::Count,
        "outbox rows a tracked group dead-lettered"
    );
    describe_counter!(
        CHECKS,
        Unit::Count,
        "looks of outbox consumption tracking at sent rows"
    );
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn the_catalogue_lists_exactly_these_metrics() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/metrics.md");
        let catalogue = std::fs::read_to_string(path).expect("docs/metrics.md");
        let section = catalogue
            .split("## Client SDK: outbox")
            .nth(1)
            .expect("an outbox section");
        let documented: BTreeSet<&str> = section
            .lines()
            .filter_map(|line| line.strip_prefix("| `"))
            .filter_map(|line| line.split('`').next())
            .collect();
        let recorded = BTreeSet::from([
            ROWS,
            OLDEST_PENDING_AGE,
            SENDS,
            RESENDS,
            SEND_FAILURES,
            FAILED,
            CONSUMED,
            DEAD_LETTERED,
            CHECKS,
        ]);
        assert_eq!(documented, recorded);
    }
}
