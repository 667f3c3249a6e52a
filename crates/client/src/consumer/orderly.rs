//! Orderly consumption: a member consumes a queue only while it holds the queue's lock at the
//! broker (logged through Raft, so a new leader keeps it). A new owner waits until the old one
//! has finished its message, committed and given the lock back, or until the lease ran out, so
//! two members never handle one queue at once and a queue's messages reach the handler in
//! offset order.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ferromq_protocol::{
    headers::{QueueLocksRequest, QueueLocksResponse},
    RequestCode,
};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::{QueueKey, Shared};
use crate::error::ClientError;

fn lease(shared: &Shared) -> Duration {
    Duration::from_millis(shared.config.queue_lock_lease_ms.max(1))
}

/// A lock counts as held until this long before its lease ends: a renewal may be late.
fn margin(lease: Duration) -> Duration {
    lease / 6
}

/// What a lock request does.
#[derive(Clone, Copy, PartialEq, Eq)]
enum LockChange {
    Take,
    /// Extends locks still held here; one given back meanwhile is not taken again.
    Renew,
    Give,
}

/// Takes, renews or gives back the locks of queues of one broker group; returns the queues this
/// member holds afterwards and notes until when.
async fn change_locks(
    shared: &Shared,
    broker_group: &str,
    queue_ids: Vec<u32>,
    change: LockChange,
) -> Result<Vec<u32>, ClientError> {
    let unlock = change == LockChange::Give;
    let header = QueueLocksRequest {
        group: shared.group.clone(),
        member_id: shared.member_id.clone(),
        topic: shared.topic.clone(),
        queue_ids,
        lease_ms: shared.config.queue_lock_lease_ms,
    };
    let code = if unlock {
        RequestCode::UnlockQueues
    } else {
        RequestCode::LockQueues
    };
    let asked_at = Instant::now();
    let answer: QueueLocksResponse = shared
        .client
        .request_group_leader(&shared.topic, broker_group, code, &header)
        .await?
        .decode()?;
    if !unlock {
        let lease = Duration::from_millis(answer.lease_ms);
        let until = asked_at + lease - margin(lease);
        let mut locks = shared.locks.lock();
        for queue_id in &answer.locked {
            let key = QueueKey {
                broker_group: broker_group.to_string(),
                queue_id: *queue_id,
            };
            if change == LockChange::Take || locks.contains_key(&key) {
                locks.insert(key, until);
            }
        }
    }
    Ok(answer.locked)
}

/// Waits until this member holds the lock of `key` (another may still be finishing with it).
/// False if `stop` came first.
pub(super) async fn acquire(shared: &Shared, key: &QueueKey, stop: &CancellationToken) -> bool {
    loop {
        match change_locks(
            shared,
            &key.broker_group,
            vec![key.queue_id],
            LockChange::Take,
        )
        .await
        {
            Ok(locked) if locked.contains(&key.queue_id) => return true,
            Ok(_) => {
                debug!(topic = %shared.topic, queue = key.queue_id, "queue locked by another member; waiting")
            }
            Err(err) => {
                debug!(topic = %shared.topic, queue = key.queue_id, %err, "cannot lock the queue yet")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = stop.cancelled() => return false,
        }
    }
}

/// Whether this member holds the lock of `key` now.
pub(super) fn holds(shared: &Shared, key: &QueueKey) -> bool {
    shared
        .locks
        .lock()
        .get(key)
        .is_some_and(|until| *until > Instant::now())
}

fn by_broker_group(keys: Vec<QueueKey>) -> BTreeMap<String, Vec<u32>> {
    let mut groups: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for key in keys {
        groups
            .entry(key.broker_group)
            .or_default()
            .push(key.queue_id);
    }
    groups
}

/// Renews every held lock, three times per lease. A lock the broker no longer grants is
/// dropped here; its queue's pull task then stops and the rebalance starts it afresh.
pub(super) async fn renewal_loop(shared: std::sync::Arc<Shared>) {
    let every = lease(&shared) / 3;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shared.shutdown.cancelled() => return,
        }
        let held: Vec<QueueKey> = shared.locks.lock().keys().cloned().collect();
        for (broker_group, queue_ids) in by_broker_group(held) {
            match change_locks(&shared, &broker_group, queue_ids.clone(), LockChange::Renew).await {
                Ok(locked) => {
                    let mut locks = shared.locks.lock();
                    for queue_id in queue_ids.iter().filter(|q| !locked.contains(q)) {
                        debug!(topic = %shared.topic, queue = queue_id, "queue lock lost");
                        locks.remove(&QueueKey {
                            broker_group: broker_group.clone(),
                            queue_id: *queue_id,
                        });
                    }
                }
                Err(err) => {
                    debug!(%broker_group, %err, "lock renewal failed; locks run out at their lease")
                }
            }
        }
    }
}

/// Gives the locks of `keys` back (after their consumed offsets were committed), so the next
/// owner need not wait for the lease. Failures only delay it until the lease ends.
pub(super) async fn release(shared: &Shared, keys: Vec<QueueKey>) {
    {
        let mut locks = shared.locks.lock();
        for key in &keys {
            locks.remove(key);
        }
    }
    for (broker_group, queue_ids) in by_broker_group(keys) {
        if let Err(err) = change_locks(shared, &broker_group, queue_ids, LockChange::Give).await {
            debug!(%broker_group, %err, "unlock failed; the locks run out at their lease");
        }
    }
}

/// Waits (up to the consume timeout) until the handler is done with every queue of `keys`.
pub(super) async fn wait_until_idle(shared: &Shared, keys: &[QueueKey]) {
    let deadline = Instant::now() + Duration::from_millis(shared.config.consume_timeout_ms);
    while shared
        .busy
        .lock()
        .as_ref()
        .is_some_and(|busy| keys.contains(busy))
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
