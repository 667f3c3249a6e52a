//! Outbox settings: a plain serde struct, like the rest of the SDK's configuration.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboxConfig {
    /// Rows a relay claims and sends at a time.
    pub batch_size: u32,
    /// How often an idle relay looks for new rows.
    pub poll_interval_ms: u64,
    /// How long a claim lasts. A relay that dies mid-send leaves its rows to the other relays
    /// after this; a live relay starts no send that could end after it.
    pub lease_ms: u64,
    /// Budget of one send to the broker, the producer's own retries included.
    pub send_timeout_ms: u64,
    /// Failed send attempts after which a row is `failed` (0: never give up). The defaults
    /// keep trying for about 8 hours.
    pub max_attempts: u32,
    /// Back-off after the first failed attempt; it doubles with each failure up to
    /// `backoff_max_ms`.
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    /// Per topic, the consumer groups whose consumption makes its rows `consumed` (learned from
    /// the brokers' message trace). A row of a topic not listed is finished once a broker
    /// acknowledged it (a broker transaction's row, once a broker stores the committed message).
    /// A broadcast group is named by its members' offsets groups, `<group>%BROADCAST%<member>`.
    pub track_groups: BTreeMap<String, Vec<String>>,
    /// The shortest wait between two checks of a sent row for consumption or storage (the
    /// first comes this long after the send). A row not consumed yet is looked at again after a
    /// quarter of its wait so far, within these bounds and `resend_after_ms`, and when it
    /// becomes overdue.
    pub track_interval_ms: u64,
    /// Sent rows checked per round.
    pub track_batch: u32,
    /// A row not consumed (or, untracked, not stored) this long after it became visible is
    /// sent again with the same dedup key if it is lost: its broker group does not store it,
    /// or a tracked group's offset moved past it unacknowledged. A wait the brokers explain (a
    /// backlog, a retry cycle, no answer) leaves it `sent`.
    pub resend_after_ms: u64,
    /// Re-sends after which a row found lost again is `failed`.
    pub max_resends: u32,
    /// A delayed message due further ahead than this waits in the table and is sent this long
    /// before it is due. At most 6 days, and well under the brokers' `schedule.max_delay_ms`
    /// (a broker refuses a send due further ahead by its clock, and the row fails).
    pub schedule_ahead_ms: u64,
    /// Rows finished this long ago (consumed, dead-lettered — the message waits in the group's
    /// dead-letter queue — or sent to an untracked topic and confirmed) are removed. Failed rows
    /// are kept for an operator.
    pub retention_ms: u64,
    /// Move removed rows to `ferromq_outbox_archive` instead of deleting them.
    pub archive: bool,
    /// How often finished rows are removed and the row gauges refreshed.
    pub housekeeping_interval_ms: u64,
    /// A broker's check-back of a half message with no outbox row is answered `Rollback` once
    /// the message is this old (`Unknown` before: the local transaction may still be running).
    pub transaction_grace_ms: u64,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        OutboxConfig {
            batch_size: 100,
            poll_interval_ms: 100,
            lease_ms: 30_000,
            send_timeout_ms: 3_000,
            max_attempts: 100,
            backoff_initial_ms: 1_000,
            backoff_max_ms: 300_000,
            track_groups: BTreeMap::new(),
            track_interval_ms: 5_000,
            track_batch: 200,
            resend_after_ms: 300_000,
            max_resends: 3,
            schedule_ahead_ms: 3_600_000,
            retention_ms: 7 * 24 * 3600 * 1000,
            archive: false,
            housekeeping_interval_ms: 10_000,
            transaction_grace_ms: 60_000,
        }
    }
}

/// A day under the brokers' default `schedule.max_delay_ms` (7 days): a broker refuses a
/// delayed send due further ahead by its own clock, so the margin absorbs the relay's claim
/// delay and a broker clock behind the relay's.
const MAX_SCHEDULE_AHEAD_MS: u64 = 6 * 24 * 3600 * 1000;

/// The longest duration any setting takes (10 years): times are computed as milliseconds in
/// `i64` and instants, which a larger value would overflow.
const MAX_DURATION_MS: u64 = 10 * 365 * 24 * 3600 * 1000;

/// Time a lease keeps beyond the last send's deadline, for clock differences between relays.
pub(crate) const LEASE_MARGIN: Duration = Duration::from_secs(1);

impl OutboxConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=10_000).contains(&self.batch_size) || !(1..=10_000).contains(&self.track_batch) {
            return Err("batch_size and track_batch must be 1..=10000".into());
        }
        let intervals = [
            self.poll_interval_ms,
            self.send_timeout_ms,
            self.backoff_initial_ms,
            self.track_interval_ms,
            self.housekeeping_interval_ms,
            self.schedule_ahead_ms,
        ];
        if intervals.contains(&0) {
            return Err("intervals, timeouts and back-off must be positive".into());
        }
        let durations = [
            ("poll_interval_ms", self.poll_interval_ms),
            ("lease_ms", self.lease_ms),
            ("send_timeout_ms", self.send_timeout_ms),
            ("backoff_initial_ms", self.backoff_initial_ms),
            ("backoff_max_ms", self.backoff_max_ms),
            ("track_interval_ms", self.track_interval_ms),
            ("resend_after_ms", self.resend_after_ms),
            ("retention_ms", self.retention_ms),
            ("housekeeping_interval_ms", self.housekeeping_interval_ms),
            ("transaction_grace_ms", self.transaction_grace_ms),
        ];
        if let Some((name, _)) = durations.iter().find(|(_, ms)| *ms > MAX_DURATION_MS) {
            return Err(format!(
                "{name} must not exceed {MAX_DURATION_MS} (10 years)"
            ));
        }
        if self.schedule_ahead_ms > MAX_SCHEDULE_AHEAD_MS {
            return Err(format!(
                "schedule_ahead_ms must not exceed {MAX_SCHEDULE_AHEAD_MS} (6 days: brokers schedule at most 7 days ahead by default, and their clocks may be behind)"
            ));
        }
        if self.backoff_max_ms < self.backoff_initial_ms {
            return Err("backoff_max_ms must be at least backoff_initial_ms".into());
        }
        let needed = 2 * self.send_timeout_ms + LEASE_MARGIN.as_millis() as u64;
        if self.lease_ms < needed {
            return Err(format!(
                "lease_ms must be at least twice send_timeout_ms plus 1000 ({needed})"
            ));
        }
        for (topic, groups) in &self.track_groups {
            ferromq_protocol::message::validate_topic(topic)
                .map_err(|err| format!("track_groups: {err}"))?;
            if groups.is_empty() {
                return Err(format!("track_groups: no group for topic {topic:?}"));
            }
            for group in groups {
                ferromq_protocol::message::validate_group(group)
                    .map_err(|err| format!("track_groups.{topic}: {err}"))?;
            }
        }
        Ok(())
    }

    /// The groups tracked on `topic` (none: the topic is not tracked).
    pub(crate) fn tracked_groups(&self, topic: &str) -> &[String] {
        self.track_groups.get(topic).map_or(&[], Vec::as_slice)
    }

    /// When consumption tracking first looks at a row sent at `sent_ms`.
    pub(crate) fn first_check_at(&self, sent_ms: i64) -> i64 {
        sent_ms.saturating_add(millis(self.track_interval_ms))
    }

    /// When consumption tracking looks again at a row found not consumed yet at `now`, whose
    /// message became visible to consumers at `visible_ms`. After a quarter of its wait so far:
    /// a message consumed late is noticed within a quarter of its age, while rows waiting
    /// behind a lagging group are looked at ever less often — at most every
    /// `track_interval_ms`, at least every `resend_after_ms` — instead of keeping the tracker
    /// rewriting them back to back. Never later than the moment it becomes overdue, and not
    /// before it is visible: nothing happens to a message before then.
    pub(crate) fn next_check_at(&self, visible_ms: i64, now: i64) -> i64 {
        let interval = millis(self.track_interval_ms);
        let resend_after = millis(self.resend_after_ms);
        if now < visible_ms {
            return visible_ms.saturating_add(interval);
        }
        let mut wait = now.saturating_sub(visible_ms) / 4;
        let overdue_at = self.overdue_at(visible_ms);
        if now < overdue_at {
            wait = wait.min(overdue_at - now);
        }
        now.saturating_add(wait.clamp(interval, resend_after.max(interval)))
    }

    /// When a row whose message became visible at `visible_ms`, not consumed yet, is looked at
    /// as maybe lost.
    pub(crate) fn overdue_at(&self, visible_ms: i64) -> i64 {
        visible_ms.saturating_add(millis(self.resend_after_ms))
    }

    /// The wait before the next attempt after `attempts` failed ones.
    pub(crate) fn backoff(&self, attempts: u32) -> Duration {
        let doublings = attempts.saturating_sub(1).min(32);
        let ms = self
            .backoff_initial_ms
            .saturating_mul(1u64 << doublings)
            .min(self.backoff_max_ms);
        Duration::from_millis(ms)
    }
}

/// A validated duration setting as milliseconds in `i64` (validation keeps it in range).
fn millis(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let config = OutboxConfig::default();
        let waits: Vec<u64> = (1..=11).map(|n| config.backoff(n).as_secs()).collect();
        assert_eq!(waits, vec![1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(config.backoff(1000), Duration::from_secs(300));
        // The defaults keep a row alive through an outage of several hours.
        let total: Duration = (1..config.max_attempts).map(|n| config.backoff(n)).sum();
        assert!(total > Duration::from_secs(7 * 3600), "{total:?}");
    }

    #[test]
    fn a_row_waiting_long_is_checked_ever_less_often() {
        let config = OutboxConfig::default();
        let (interval, resend_after) = (5_000, 300_000);
        // Young rows: every track_interval_ms.
        assert_eq!(config.first_check_at(1_000), 1_000 + interval);
        assert_eq!(config.next_check_at(0, 10_000), 10_000 + interval);
        // Then a quarter of the wait, but looked at again when overdue.
        assert_eq!(config.next_check_at(0, 100_000), 125_000);
        assert_eq!(config.next_check_at(0, 280_000), resend_after);
        // Long waits: every resend_after_ms.
        assert_eq!(config.next_check_at(0, 3_600_000), 3_600_000 + resend_after);
        // Not visible yet (delayed): nothing to look at before it is.
        assert_eq!(config.next_check_at(60_000, 1_000), 60_000 + interval);

        // A row waiting an hour behind a lagging group: 31 checks.
        let (mut now, mut checks) = (config.first_check_at(0), 0);
        while now < 3_600_000 {
            checks += 1;
            now = config.next_check_at(0, now);
        }
        assert_eq!(checks, 31, "every 5 s it would be 720");
    }

    #[test]
    fn a_lease_shorter_than_two_sends_is_refused() {
        let config = OutboxConfig {
            lease_ms: 6_000,
            ..OutboxConfig::default()
        };
        assert!(config.validate().unwrap_err().contains("lease_ms"));
        assert!(OutboxConfig::default().validate().is_ok());
        // A value meant as "forever" would overflow the time arithmetic: refused by name.
        let forever = OutboxConfig {
            transaction_grace_ms: u64::MAX,
            ..OutboxConfig::default()
        };
        assert!(forever
            .validate()
            .unwrap_err()
            .contains("transaction_grace_ms must not exceed"));
        let forever = OutboxConfig {
            send_timeout_ms: u64::MAX,
            lease_ms: u64::MAX,
            ..OutboxConfig::default()
        };
        assert!(forever.validate().unwrap_err().contains("lease_ms"));
        // A broker whose clock is behind would refuse a send scheduled its full 7 days ahead.
        let too_far = OutboxConfig {
            schedule_ahead_ms: 7 * 24 * 3600 * 1000,
            ..OutboxConfig::default()
        };
        assert!(too_far
            .validate()
            .unwrap_err()
            .contains("schedule_ahead_ms must not exceed"));
        for (topic, groups) in [
            ("orders", vec!["bad group!"]),
            ("bad topic!", vec!["stock"]),
            ("orders", vec![]),
        ] {
            let config = OutboxConfig {
                track_groups: BTreeMap::from([(
                    topic.to_string(),
                    groups.iter().map(|g| g.to_string()).collect(),
                )]),
                ..OutboxConfig::default()
            };
            assert!(config.validate().is_err(), "{topic} {groups:?}");
        }
    }
}
