//! The idempotent-producer window: the first message id of every recent send, so a send
//! retried after an unknown outcome (a timeout) is answered with the original offsets instead of
//! being stored twice.
//!
//! Part of the applied state, so every replica makes the same decision: "recent" is measured
//! against the store time stamped in the entry (not the local clock), the window has fixed
//! limits (not configuration that could differ between replicas), and it is saved with each
//! checkpoint and rebuilt by replay.

use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Serialize};

/// A send is recognised as a retry for this long after it was stored.
pub const DEDUP_WINDOW_MS: u64 = 60_000;
/// At most this many sends are remembered (about 14 MB); the oldest are forgotten first.
pub const DEDUP_MAX_SENDS: usize = 200_000;

/// Where a send's messages went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSend {
    pub first_id: [u8; 16],
    pub queue_id: u32,
    pub first_offset: u64,
    pub count: u32,
    pub store_ts_ms: u64,
}

#[derive(Debug, Default)]
pub struct DedupWindow {
    by_id: HashMap<[u8; 16], StoredSend>,
    /// Oldest first; the same sends as `by_id`.
    order: VecDeque<[u8; 16]>,
}

impl DedupWindow {
    /// The earlier send with this first message id, if it is still within the window at `now`.
    pub fn lookup(&self, first_id: &[u8; 16], now_ms: u64) -> Option<StoredSend> {
        self.by_id
            .get(first_id)
            .filter(|send| send.store_ts_ms.saturating_add(DEDUP_WINDOW_MS) >= now_ms)
            .copied()
    }

    /// Remembers a send and forgets what fell out of the window.
    pub fn insert(&mut self, send: StoredSend) {
        if self.by_id.insert(send.first_id, send).is_none() {
            self.order.push_back(send.first_id);
        }
        self.expire(send.store_ts_ms);
    }

    fn expire(&mut self, now_ms: u64) {
        while let Some(oldest) = self.order.front() {
            let expired = self
                .by_id
                .get(oldest)
                .is_none_or(|send| send.store_ts_ms.saturating_add(DEDUP_WINDOW_MS) < now_ms);
            if !expired && self.order.len() <= DEDUP_MAX_SENDS {
                break;
            }
            if let Some(id) = self.order.pop_front() {
                self.by_id.remove(&id);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// The remembered sends, oldest first (saved with a checkpoint).
    pub fn snapshot(&self) -> Vec<StoredSend> {
        self.order
            .iter()
            .filter_map(|id| self.by_id.get(id).copied())
            .collect()
    }

    pub fn restore(sends: Vec<StoredSend>) -> DedupWindow {
        let mut window = DedupWindow::default();
        for send in sends {
            if window.by_id.insert(send.first_id, send).is_none() {
                window.order.push_back(send.first_id);
            }
        }
        window
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send(id: u8, ts: u64) -> StoredSend {
        StoredSend {
            first_id: [id; 16],
            queue_id: 1,
            first_offset: u64::from(id) * 10,
            count: 2,
            store_ts_ms: ts,
        }
    }

    #[test]
    fn a_send_is_found_within_the_window_and_not_after() {
        let mut window = DedupWindow::default();
        window.insert(send(1, 1_000));
        assert_eq!(
            window.lookup(&[1; 16], 1_000 + DEDUP_WINDOW_MS),
            Some(send(1, 1_000))
        );
        assert_eq!(window.lookup(&[1; 16], 1_001 + DEDUP_WINDOW_MS), None);
        assert_eq!(window.lookup(&[2; 16], 1_000), None);
    }

    #[test]
    fn old_sends_are_forgotten_as_time_moves_on() {
        let mut window = DedupWindow::default();
        window.insert(send(1, 0));
        window.insert(send(2, DEDUP_WINDOW_MS + 1));
        assert_eq!(window.len(), 1);
        assert_eq!(
            window
                .lookup(&[2; 16], DEDUP_WINDOW_MS + 1)
                .map(|s| s.first_offset),
            Some(20)
        );
    }

    #[test]
    fn snapshot_and_restore_keep_the_order() {
        let mut window = DedupWindow::default();
        for id in 1..=5 {
            window.insert(send(id, u64::from(id)));
        }
        let restored = DedupWindow::restore(window.snapshot());
        assert_eq!(restored.snapshot(), window.snapshot());
    }
}
