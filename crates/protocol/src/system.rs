//! Names the broker reserves: per-group retry and dead-letter topics, and the properties it
//! adds to the copies it makes of a message.

/// Topics starting with this are the broker's; producers cannot send to them.
pub const RESERVED_TOPIC_PREFIX: char = '%';
const RETRY_PREFIX: &str = "%RETRY%";
const DLQ_PREFIX: &str = "%DLQ%";

/// The topic a group's failed messages wait in between retries.
pub fn retry_topic(group: &str) -> String {
    format!("{RETRY_PREFIX}{group}")
}

/// The topic a group's messages go to after their last retry.
pub fn dlq_topic(group: &str) -> String {
    format!("{DLQ_PREFIX}{group}")
}

/// Between a broadcast group's name and a member's name in the group its offsets are kept
/// under (each broadcast member consumes everything, so each keeps its own offsets).
pub const BROADCAST_MARK: &str = "%BROADCAST%";

/// The offsets group of broadcast member `member` of `group`.
pub fn broadcast_offsets_group(group: &str, member: &str) -> String {
    format!("{group}{BROADCAST_MARK}{member}")
}

/// The consumer group an offsets group belongs to (itself, unless it is a broadcast member's).
pub fn group_of_offsets_group(offsets_group: &str) -> &str {
    offsets_group
        .split_once(BROADCAST_MARK)
        .map_or(offsets_group, |(group, _)| group)
}

/// The group whose retry topic this is.
pub fn retry_group(topic: &str) -> Option<&str> {
    topic.strip_prefix(RETRY_PREFIX)
}

/// The group whose dead-letter topic this is.
pub fn dlq_group(topic: &str) -> Option<&str> {
    topic.strip_prefix(DLQ_PREFIX)
}

pub fn is_reserved_topic(topic: &str) -> bool {
    topic.starts_with(RESERVED_TOPIC_PREFIX)
}

/// The topic a retried or dead-lettered copy was first sent to.
pub const PROPERTY_ORIGIN_TOPIC: &str = "__ORIGIN_TOPIC";
/// The queue and offset of the original message in its topic.
pub const PROPERTY_ORIGIN_QUEUE: &str = "__ORIGIN_QUEUE";
pub const PROPERTY_ORIGIN_OFFSET: &str = "__ORIGIN_OFFSET";

/// On a request message: who waits for the reply, and which request it answers.
pub const PROPERTY_REPLY_TO: &str = "__REPLY_TO";
pub const PROPERTY_CORRELATION_ID: &str = "__CORRELATION_ID";

/// RocketMQ's delay levels: `1s 5s 10s 30s 1m 2m 3m 4m 5m 6m 7m 8m 9m 10m 20m 30m 1h 2h`.
pub const DEFAULT_DELAY_LEVELS_MS: [u64; 18] = [
    1_000, 5_000, 10_000, 30_000, 60_000, 120_000, 180_000, 240_000, 300_000, 360_000, 420_000,
    480_000, 540_000, 600_000, 1_200_000, 1_800_000, 3_600_000, 7_200_000,
];

/// A failed message's n-th retry (1-based) waits for delay level `n + 2`, as in RocketMQ:
/// 10 s, 30 s, 1 min, 2 min … 2 h for the 16th (and the last level beyond that).
pub fn retry_delay_ms(levels: &[u64], reconsume_times: u32) -> u64 {
    let level = (reconsume_times as usize + 2).min(levels.len());
    level
        .checked_sub(1)
        .and_then(|i| levels.get(i))
        .copied()
        .unwrap_or(10_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_along_the_delay_levels() {
        let levels = DEFAULT_DELAY_LEVELS_MS;
        assert_eq!(retry_delay_ms(&levels, 1), 10_000);
        assert_eq!(retry_delay_ms(&levels, 2), 30_000);
        assert_eq!(retry_delay_ms(&levels, 16), 7_200_000);
        assert_eq!(retry_delay_ms(&levels, 40), 7_200_000);
        assert_eq!(retry_delay_ms(&[], 1), 10_000);
    }

    #[test]
    fn system_topic_names_round_trip() {
        assert_eq!(retry_group(&retry_topic("g")), Some("g"));
        assert_eq!(dlq_group(&dlq_topic("g")), Some("g"));
        assert_eq!(retry_group("orders"), None);
        assert!(is_reserved_topic(&dlq_topic("g")));
    }
}
