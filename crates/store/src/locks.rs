//! Queue locks of orderly consumers: a queue of a topic is consumed by one member of a group at a
//! time, and only while that member holds the queue's lock, so a queue moving between members
//! never has two of them handling its messages at once.
//!
//! Part of the applied state, so every replica agrees and a new leader keeps the locks: changes
//! are logged, decided against the time stamped in the entry by the leader (not the local
//! clock), and the table is saved with each checkpoint and snapshot base.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One held lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueLock {
    pub group: String,
    pub topic: String,
    pub queue_id: u32,
    pub member: String,
    /// The lock is free from this time on (ms since the epoch) unless renewed.
    pub expires_ms: u64,
}

/// A member asks for (or gives back) locks on queues of one topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueLockChange {
    pub group: String,
    pub topic: String,
    pub member: String,
    pub queue_ids: Vec<u32>,
    /// The leader's time when it proposed the change.
    pub now_ms: u64,
    pub lease_ms: u64,
    /// Give the locks back instead of taking or renewing them.
    pub unlock: bool,
}

type LockKey = (String, String, u32);

#[derive(Debug, Default)]
pub struct LockTable {
    /// (group, topic, queue) → (member, expires)
    locks: BTreeMap<LockKey, (String, u64)>,
}

impl LockTable {
    /// Applies a change; returns the queues of the request the member holds afterwards.
    pub fn apply(&mut self, change: &QueueLockChange) -> Vec<u32> {
        // Forget what expired, so the table stays as small as the locks in use.
        self.locks
            .retain(|_, (_, expires)| *expires > change.now_ms);
        let mut held = Vec::new();
        for queue_id in &change.queue_ids {
            let key = (change.group.clone(), change.topic.clone(), *queue_id);
            let mine = self
                .locks
                .get(&key)
                .is_none_or(|(member, _)| *member == change.member);
            if !mine {
                continue;
            }
            if change.unlock {
                self.locks.remove(&key);
            } else {
                let expires = change.now_ms.saturating_add(change.lease_ms);
                self.locks.insert(key, (change.member.clone(), expires));
                held.push(*queue_id);
            }
        }
        held
    }

    pub fn snapshot(&self) -> Vec<QueueLock> {
        self.locks
            .iter()
            .map(
                |((group, topic, queue_id), (member, expires_ms))| QueueLock {
                    group: group.clone(),
                    topic: topic.clone(),
                    queue_id: *queue_id,
                    member: member.clone(),
                    expires_ms: *expires_ms,
                },
            )
            .collect()
    }

    pub fn restore(locks: &[QueueLock]) -> LockTable {
        LockTable {
            locks: locks
                .iter()
                .map(|l| {
                    (
                        (l.group.clone(), l.topic.clone(), l.queue_id),
                        (l.member.clone(), l.expires_ms),
                    )
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(member: &str, queues: &[u32], now_ms: u64, unlock: bool) -> QueueLockChange {
        QueueLockChange {
            group: "g".into(),
            topic: "t".into(),
            member: member.into(),
            queue_ids: queues.to_vec(),
            now_ms,
            lease_ms: 100,
            unlock,
        }
    }

    #[test]
    fn a_queue_has_one_holder_until_it_is_given_back_or_expires() {
        let mut table = LockTable::default();
        assert_eq!(table.apply(&change("a", &[0, 1], 0, false)), vec![0, 1]);
        assert_eq!(table.apply(&change("b", &[1, 2], 10, false)), vec![2]);
        // Renewal keeps it past the first lease.
        assert_eq!(table.apply(&change("a", &[1], 90, false)), vec![1]);
        assert_eq!(
            table.apply(&change("b", &[1], 150, false)),
            Vec::<u32>::new()
        );
        // Someone else's unlock changes nothing; the holder's frees it at once.
        table.apply(&change("b", &[1], 160, true));
        assert_eq!(
            table.apply(&change("b", &[1], 161, false)),
            Vec::<u32>::new()
        );
        table.apply(&change("a", &[1], 162, true));
        assert_eq!(table.apply(&change("b", &[1], 163, false)), vec![1]);
        // Expired: anyone may take it.
        assert_eq!(table.apply(&change("c", &[0], 500, false)), vec![0]);
        let restored = LockTable::restore(&table.snapshot());
        assert_eq!(restored.snapshot(), table.snapshot());
    }
}
