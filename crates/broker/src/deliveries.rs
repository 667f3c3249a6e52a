//! How far this broker has delivered each group's queues, for `mq_consumer_inflight_messages`:
//! delivered past the group's committed offset means handed out and not yet acknowledged.

use std::collections::HashMap;

use ferromq_store::{Store, StoreError};
use parking_lot::Mutex;

/// At most this many (group, topic, queue) entries; pulls for others are not tracked.
const MAX_TRACKED: usize = 100_000;

/// (group, topic, queue id) → the offset after the last message delivered.
#[derive(Default)]
pub struct Deliveries {
    delivered: Mutex<HashMap<(String, String, u32), u64>>,
}

impl Deliveries {
    pub fn record(&self, group: &str, topic: &str, queue_id: u32, next_offset: u64) {
        let mut delivered = self.delivered.lock();
        let key = (group.to_string(), topic.to_string(), queue_id);
        if delivered.len() >= MAX_TRACKED && !delivered.contains_key(&key) {
            return;
        }
        let at = delivered.entry(key).or_insert(0);
        *at = (*at).max(next_offset);
    }

    /// Messages delivered and not committed, per (topic, group). Queues whose deliveries are
    /// all committed (or were reset below), of deleted topics, or of `broadcast` groups (whose
    /// members commit each under their own name, so pulls cannot be matched to commits) are
    /// forgotten, so the table holds only what is in flight.
    pub fn in_flight(
        &self,
        store: &Store,
        broadcast: &std::collections::HashSet<String>,
    ) -> Result<Vec<(String, String, u64)>, StoreError> {
        let snapshot: Vec<((String, String, u32), u64)> = self
            .delivered
            .lock()
            .iter()
            .map(|(key, at)| (key.clone(), *at))
            .collect();
        let mut totals: HashMap<(String, String), u64> = HashMap::new();
        let mut settled = Vec::new();
        for ((group, topic, queue_id), delivered) in snapshot {
            if broadcast.contains(&group) || store.topic(&topic).is_none() {
                settled.push(((group, topic, queue_id), delivered));
                continue;
            }
            let committed = store
                .consumer_offset(&group, &topic, queue_id)?
                .unwrap_or(0);
            let pending = delivered.saturating_sub(committed);
            if pending == 0 {
                settled.push(((group.clone(), topic.clone(), queue_id), delivered));
            }
            *totals.entry((topic, group)).or_insert(0) += pending;
        }
        let mut delivered = self.delivered.lock();
        for (key, at) in settled {
            // Only if nothing was delivered meanwhile.
            if delivered.get(&key) == Some(&at) {
                delivered.remove(&key);
            }
        }
        Ok(totals
            .into_iter()
            .map(|((topic, group), pending)| (topic, group, pending))
            .collect())
    }
}
