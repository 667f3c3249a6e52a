//! Wakes long-polling pulls when their queue grows. A pull subscribes before it re-checks the
//! queue, and apply publishes the new length before it notifies, so no wake-up is lost.

use std::collections::HashMap;

use parking_lot::Mutex;
use tokio::sync::watch;

#[derive(Default)]
pub struct QueueNotifier {
    watches: Mutex<HashMap<(String, u32), watch::Sender<u64>>>,
}

impl QueueNotifier {
    /// Called after apply made offsets below `max_offset` readable.
    pub fn advanced(&self, topic: &str, queue_id: u32, max_offset: u64) {
        if let Some(sender) = self.watches.lock().get(&(topic.to_string(), queue_id)) {
            sender.send_replace(max_offset);
        }
    }

    /// A receiver whose value is the queue's length as last announced.
    pub fn subscribe(&self, topic: &str, queue_id: u32) -> watch::Receiver<u64> {
        self.watches
            .lock()
            .entry((topic.to_string(), queue_id))
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }
}
