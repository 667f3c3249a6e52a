//! The leader's timer: delivers scheduled messages (delayed sends, consumer retries) to their
//! queues when they fall due, as logged deliver entries, and recalls them on request. Decisions
//! about half messages of transactions (commit, rollback, park) follow the same rules.
//!
//! Exactly once across failover, without asking the applied state "was this delivered?" (which
//! replay after a crash could answer differently): a new leader first gets an entry of its own
//! term applied, a barrier. Every delivery or cancel an earlier leader got committed is then
//! applied, so the schedule it reads holds only messages still waiting, and whatever an earlier
//! leader proposed without committing is gone for good. Within its term the leader remembers the
//! messages it has proposed and not yet seen applied, and offers none of them twice; every
//! proposal is pinned to that term, so a leader that lost and regained leadership in between
//! cannot log a stale decision. A proposal that fails ends that bookkeeping: the next barrier
//! starts over.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use ferromq_protocol::{message::now_millis, MessageId};
use ferromq_raftlog::{ProposeError, Role};
use ferromq_store::{
    command::{
        encode_cancel_scheduled, encode_commit_half, encode_deliver, encode_end_half,
        CancelScheduled, EndHalf,
    },
    ApplyOutcome, ScheduledMessage,
};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::core::BrokerCore;

/// Most due messages one pass of the timer reads.
const SCAN_LIMIT: usize = 8192;
/// How long a cancel waits for a new leader's barrier before answering "not ready".
const READY_PATIENCE: Duration = Duration::from_secs(2);
/// Largest deliver entry (bytes of records), about the largest send; a bigger record goes alone.
const MAX_DELIVER_BYTES: usize = 4 * 1024 * 1024;

/// A message a decision is on its way for: (id, topic, due time; 0 for a half message).
type Pending = ([u8; 16], String, u64);

#[derive(Default)]
pub struct Scheduler {
    state: Mutex<TimerState>,
}

#[derive(Default)]
struct TimerState {
    /// The term whose barrier is applied; 0 when there is none.
    ready_term: u64,
    /// Messages with a deliver or cancel proposed in `ready_term` and not applied yet.
    in_flight: HashSet<Pending>,
    /// Every waiting message due before this is in `in_flight`: scans start here rather than
    /// at the beginning, past the deletions of everything delivered (which RocksDB would
    /// otherwise step over on every pass until it compacts them away).
    scan_from_ms: u64,
}

/// What to do with a half message.
#[derive(Debug, Clone, Copy)]
pub enum Decision<'a> {
    Commit,
    Rollback,
    /// Undecided after every check-back: moved to this topic.
    Park(&'a str),
}

/// Why a cancel (or a transaction's end) did not happen.
#[derive(Debug)]
pub enum CancelError {
    NotLeader(Option<u64>),
    /// A new leader is still applying what earlier leaders committed.
    NotReady,
    /// Not waiting (delivered, cancelled, or never scheduled to that topic; a transaction
    /// already ended).
    NotFound,
    /// Its delivery is being logged right now.
    Delivering,
    Propose(ProposeError),
    Store(ferromq_store::StoreError),
    /// Logged, and refused the same way by every replica.
    Rejected(String),
}

impl Scheduler {
    /// Whether this node leads in `term` with its barrier applied.
    fn ready(&self, term: u64) -> bool {
        self.state.lock().ready_term == term && term > 0
    }

    fn reset(&self) {
        let mut state = self.state.lock();
        state.ready_term = 0;
        state.in_flight.clear();
        state.scan_from_ms = 0;
    }

    /// Recalls the message `id` scheduled for `topic`.
    pub async fn cancel(
        &self,
        core: &BrokerCore,
        topic: &str,
        id: MessageId,
    ) -> Result<(), CancelError> {
        self.decide_once(
            core,
            |message: &ScheduledMessage| (id.0, topic.to_string(), message.due_ms),
            || core.store.scheduled_by_id(&id.0, topic),
            |message| {
                encode_cancel_scheduled(&CancelScheduled {
                    due_ms: message.due_ms,
                    id: id.0,
                    topic: topic.to_string(),
                })
            },
        )
        .await
        .map(|_| ())
    }

    /// Commits (appends to its queue, or to `park_topic` instead) or rolls back the half
    /// message `id` of `topic`.
    pub async fn end_transaction(
        &self,
        core: &BrokerCore,
        topic: &str,
        id: MessageId,
        decision: Decision<'_>,
    ) -> Result<(), CancelError> {
        self.decide_once(
            core,
            |_| (id.0, topic.to_string(), 0),
            || core.store.half(&id.0, topic),
            |half| match decision {
                Decision::Commit => {
                    encode_commit_half(half, &half.topic, half.queue_id, now_millis())
                }
                Decision::Park(park_topic) => encode_commit_half(half, park_topic, 0, now_millis()),
                Decision::Rollback => encode_end_half(&EndHalf {
                    id: id.0,
                    topic: topic.to_string(),
                }),
            },
        )
        .await
        .map(|_| ())
    }

    /// Proposes one decision about a waiting message (`lookup` finds it in the applied state),
    /// at most once: not before this leader's barrier, and not while another decision about it
    /// is on its way.
    async fn decide_once<T>(
        &self,
        core: &BrokerCore,
        key_of: impl FnOnce(&T) -> Pending,
        lookup: impl FnOnce() -> Result<Option<T>, ferromq_store::StoreError>,
        payload: impl FnOnce(&T) -> Vec<u8>,
    ) -> Result<ApplyOutcome, CancelError> {
        // A leader that has just been elected gets its barrier applied within milliseconds.
        let deadline = tokio::time::Instant::now() + READY_PATIENCE;
        let status = loop {
            let status = core.raft.status();
            if status.role != Role::Leader {
                return Err(CancelError::NotLeader(
                    Some(status.leader_id).filter(|id| *id != 0),
                ));
            }
            if self.ready(status.term) || tokio::time::Instant::now() >= deadline {
                break status;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let (waiting, key) = {
            let mut state = self.state.lock();
            if state.ready_term != status.term {
                return Err(CancelError::NotReady);
            }
            // Looked up under the lock, so the timer cannot be holding an older read of it.
            let waiting = lookup()
                .map_err(CancelError::Store)?
                .ok_or(CancelError::NotFound)?;
            let key = key_of(&waiting);
            if !state.in_flight.insert(key.clone()) {
                return Err(CancelError::Delivering);
            }
            (waiting, key)
        };
        match core.propose_in_term(payload(&waiting), status.term).await {
            Ok(ApplyOutcome::Rejected(reason)) => {
                // Applied as a refusal (its topic is gone): nothing changed.
                self.state.lock().in_flight.remove(&key);
                Err(CancelError::Rejected(reason))
            }
            Ok(outcome) => {
                self.state.lock().in_flight.remove(&key);
                Ok(outcome)
            }
            Err(err) => {
                self.reset();
                Err(CancelError::Propose(err))
            }
        }
    }

    /// Whether this member leads with its barrier applied (decisions may be proposed).
    pub fn is_ready(&self, core: &BrokerCore) -> bool {
        let status = core.raft.status();
        status.role == Role::Leader && self.ready(status.term)
    }

    /// Takes the due messages not already on their way, marking them as on their way.
    fn take_due(&self, core: &BrokerCore, now_ms: u64, term: u64) -> Vec<ScheduledMessage> {
        let mut state = self.state.lock();
        if state.ready_term != term {
            return Vec::new();
        }
        // Messages scheduled since the last pass may be due earlier than where it stopped.
        state.scan_from_ms = state.scan_from_ms.min(core.store.take_schedule_hint());
        let limit = SCAN_LIMIT + state.in_flight.len();
        let due = match core.store.scheduled_due(state.scan_from_ms, now_ms, limit) {
            Ok(due) => due,
            Err(err) => {
                warn!(%err, "cannot read the schedule");
                return Vec::new();
            }
        };
        // Everything due before the last one read was read; past a full page, more may wait
        // at that same due time.
        state.scan_from_ms = match due.last() {
            Some(last) if due.len() >= limit => last.due_ms,
            _ => now_ms.saturating_add(1),
        };
        due.into_iter()
            .filter(|m| state.in_flight.insert((m.id, m.topic.clone(), m.due_ms)))
            .collect()
    }
}

/// Groups due messages into deliver entries: one queue each, bounded in count and bytes.
fn deliver_batches(due: Vec<ScheduledMessage>, max_count: usize) -> Vec<Vec<ScheduledMessage>> {
    let mut by_queue: BTreeMap<(String, u32), Vec<Vec<ScheduledMessage>>> = BTreeMap::new();
    for message in due {
        let batches = by_queue
            .entry((message.topic.clone(), message.queue_id))
            .or_default();
        let full = batches.last().is_none_or(|batch| {
            batch.len() >= max_count
                || batch.iter().map(|m| m.record.len()).sum::<usize>() + message.record.len()
                    > MAX_DELIVER_BYTES
        });
        if full {
            batches.push(Vec::new());
        }
        if let Some(batch) = batches.last_mut() {
            batch.push(message);
        }
    }
    by_queue.into_values().flatten().collect()
}

/// Runs on every member; acts only while this member leads.
pub async fn timer_loop(core: Arc<BrokerCore>, shutdown: CancellationToken) {
    let interval = Duration::from_millis(core.config.schedule.timer_interval_ms);
    let scheduler = &core.scheduler;
    let mut last_gauge = std::time::Instant::now() - Duration::from_secs(1);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.cancelled() => return,
        }
        if last_gauge.elapsed() >= Duration::from_secs(1) {
            last_gauge = std::time::Instant::now();
            core.metrics
                .scheduled_messages
                .set(core.store.scheduled_estimate() as i64);
        }
        let status = core.raft.status();
        if status.role != Role::Leader {
            if scheduler.state.lock().ready_term != 0 {
                scheduler.reset();
            }
            continue;
        }
        if !scheduler.ready(status.term) {
            scheduler.reset();
            // An empty entry is a no-op command; logged in this term or not at all.
            match core.propose_in_term(Vec::new(), status.term).await {
                Ok(_) => {
                    scheduler.state.lock().ready_term = status.term;
                    debug!(term = status.term, "timer barrier applied");
                }
                Err(err) => debug!(%err, "timer barrier not applied"),
            }
            continue;
        }
        let now_ms = now_millis();
        let due = scheduler.take_due(&core, now_ms, status.term);
        if due.is_empty() {
            continue;
        }
        let batches = deliver_batches(due, core.config.schedule.deliver_batch);
        let proposals = batches.into_iter().map(|batch| {
            let core = &core;
            async move {
                let payload = encode_deliver(&batch, now_millis());
                let outcome = core.propose_in_term(payload, status.term).await;
                (batch, outcome)
            }
        });
        for (batch, outcome) in futures::future::join_all(proposals).await {
            match outcome {
                Ok(outcome) => {
                    if let ApplyOutcome::Rejected(reason) = &outcome {
                        warn!(%reason, count = batch.len(), "scheduled messages dropped at delivery");
                    }
                    let visible_ms = now_millis();
                    let mut state = scheduler.state.lock();
                    for message in &batch {
                        state.in_flight.remove(&(
                            message.id,
                            message.topic.clone(),
                            message.due_ms,
                        ));
                        let late = visible_ms.saturating_sub(message.due_ms);
                        core.metrics.timer_lateness.observe(late as f64 / 1000.0);
                    }
                    core.metrics.scheduled_delivered.inc_by(batch.len() as u64);
                }
                Err(err) => {
                    debug!(%err, "delivery not applied; starting over after a barrier");
                    scheduler.reset();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(topic: &str, queue_id: u32, n: u8, bytes: usize) -> ScheduledMessage {
        ScheduledMessage {
            due_ms: u64::from(n),
            id: [n; 16],
            topic: topic.into(),
            queue_id,
            record: vec![0; bytes],
        }
    }

    #[test]
    fn deliveries_are_grouped_per_queue_in_due_order_and_bounded() {
        let due = vec![
            message("A", 0, 1, 10),
            message("B", 0, 2, 10),
            message("A", 0, 3, 10),
            message("A", 1, 4, 10),
            message("A", 0, 5, 10),
            message("A", 0, 6, MAX_DELIVER_BYTES),
        ];
        let batches = deliver_batches(due, 2);
        let ids: Vec<Vec<u8>> = batches
            .iter()
            .map(|b| b.iter().map(|m| m.id[0]).collect())
            .collect();
        assert_eq!(ids, vec![vec![1, 3], vec![5], vec![6], vec![4], vec![2]]);
    }
}
