//! Consumption tracking: a sent row of a tracked topic becomes `consumed` once the brokers'
//! message trace says every tracked group acknowledged it, `dead_lettered` once one gave up on
//! it. A row still not consumed `resend_after_ms` after it became visible is sent again only
//! when it is lost: no broker stores it, or a group moved past it without acknowledging it. A
//! group that simply has not reached it yet (backlog, or no consumer running) explains the
//! wait; re-sending would only add a duplicate behind the original. Untracked rows the relay
//! sent are finished by the broker's acknowledgement; a broker transaction's row is finished
//! (confirmed) once a broker stores the committed message, and re-sent if none does in time.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use ferromq_protocol::headers::{DeliveryState, GroupTrace, MessageTrace};
use ferromq_protocol::system::group_of_offsets_group;
use ferromq_protocol::MessageId;
use futures::future::OptionFuture;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::counters::{Counters, RelayCounters};
use super::database::{OutboxDatabase, SentRow, TrackOutcome};
use super::{now_ms, Outbox, OutboxConfig, OutboxError, TRANSACTION_SENDER};
use crate::client::Client;
use crate::error::ClientError;

/// Traces asked for at the same time.
const PARALLEL_TRACES: usize = 16;

pub(crate) async fn track_loop<DB: OutboxDatabase>(
    outbox: Outbox<DB>,
    client: Client,
    stop: CancellationToken,
    counters: Arc<Counters>,
) {
    let interval = Duration::from_millis(outbox.config.track_interval_ms);
    let mut full = false;
    loop {
        // After a full round more rows are due at once: go on without waiting.
        if !full {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = stop.cancelled() => return,
            }
        }
        // A round waits on brokers; shutdown does not wait for it (its results are written in
        // one transaction at the end, so an abandoned round writes nothing).
        let round = tokio::select! {
            round = track_round(&outbox, &client) => round,
            _ = stop.cancelled() => return,
        };
        full = match round {
            Ok((delta, rows)) => {
                counters.add(delta);
                rows >= outbox.config.track_batch as usize
            }
            Err(err) => {
                warn!(%err, "outbox consumption tracking failed");
                false
            }
        };
    }
}

/// Checks the sent rows due for a look and records what was found; returns what it counted
/// and how many rows it took.
async fn track_round<DB: OutboxDatabase>(
    outbox: &Outbox<DB>,
    client: &Client,
) -> Result<(RelayCounters, usize), OutboxError> {
    let config = &outbox.config;
    let now = now_ms();
    let rows = DB::take_sent_rows(
        &outbox.pool,
        now,
        config.first_check_at(now),
        i64::from(config.track_batch),
    )
    .await?;
    if rows.is_empty() {
        return Ok((RelayCounters::default(), 0));
    }
    let checks = rows.len();
    // A row tracking cannot read fails at once, its error naming the column; the others go on.
    let (unreadable, rows): (Vec<SentRow>, Vec<SentRow>) =
        rows.into_iter().partition(|row| row.unreadable.is_some());
    let mut outcomes: Vec<TrackOutcome> = unreadable
        .into_iter()
        .map(|row| TrackOutcome::Unreadable {
            id: row.id,
            now_ms: now,
            error: format!(
                "row cannot be tracked: {}",
                row.unreadable.unwrap_or_default()
            ),
        })
        .collect();
    let mut checker = Checker {
        client,
        config,
        committed: HashMap::new(),
    };
    // A row no tracked group has reached needs no trace: nothing can have happened to it yet.
    // (While a group is far behind, its rows then cost the brokers nothing.)
    let mut unreached = Vec::with_capacity(rows.len());
    for row in &rows {
        unreached.push(checker.unreached(row, now).await);
    }
    // The traces (a request to one leader each) go out together; decisions come after.
    // (Indexes, not references, cross into the stream: the futures must not borrow from the
    // closure's argument.)
    let traces: Vec<Option<Result<MessageTrace, Untraced>>> = futures::stream::iter(0..rows.len())
        .map(|i| OptionFuture::from((!unreached[i]).then(|| trace_of(client, &rows[i]))))
        .buffered(PARALLEL_TRACES)
        .collect()
        .await;
    for (row, trace) in rows.iter().zip(traces) {
        outcomes.push(match trace {
            Some(trace) => checker.decide(row, trace, now_ms()).await,
            None => checked(config, row, now, None),
        });
    }
    let applied = DB::record_tracking(&outbox.pool, &outcomes).await?;
    let mut delta = RelayCounters {
        checks: checks as u64,
        ..RelayCounters::default()
    };
    // Count only decisions that took effect: another relay's tracker may have decided first.
    for (outcome, _) in outcomes.iter().zip(applied).filter(|(_, applied)| *applied) {
        match outcome {
            TrackOutcome::Consumed { .. } => delta.consumed += 1,
            TrackOutcome::DeadLettered { id, error, .. } => {
                warn!(id, %error, "outbox message dead-lettered");
                delta.dead_lettered += 1;
            }
            TrackOutcome::Resend { id, reason, .. } => {
                info!(id, %reason, "outbox message lost; sending it again");
                delta.resends += 1;
            }
            TrackOutcome::GiveUp { id, error, .. } => {
                warn!(id, %error, "outbox message lost for good");
                delta.failed += 1;
            }
            TrackOutcome::Unreadable { id, error, .. } => {
                warn!(id, %error, "outbox row unreadable; failed");
                delta.failed += 1;
            }
            TrackOutcome::Confirmed { .. } | TrackOutcome::Checked { .. } => {}
        }
    }
    Ok((delta, checks))
}

/// Not consumed yet, for a reason that needs no action: the row waits for the next look.
fn checked(config: &OutboxConfig, row: &SentRow, now: i64, note: Option<String>) -> TrackOutcome {
    TrackOutcome::Checked {
        id: row.id,
        message_id: row.message_id.clone(),
        now_ms: now,
        next_check_ms: config.next_check_at(visible_at(row), now),
        note,
    }
}

/// When the row's message became (or becomes) visible to consumers.
fn visible_at(row: &SentRow) -> i64 {
    row.deliver_at_ms.unwrap_or(0).max(row.sent_ms)
}

/// Why a row has no trace this round.
enum Untraced {
    /// The row's message id is not one: no round will ever trace it.
    UnreadableId(String),
    /// The brokers did not answer; the next round asks again.
    Failed(String),
}

/// The row's message as the leader of the broker group that acknowledged the send sees it:
/// that group stores it (a scheduled message, or a transaction's committed one, too), so only
/// its leader needs asking, and its answer alone can say the message is not stored.
async fn trace_of(client: &Client, row: &SentRow) -> Result<MessageTrace, Untraced> {
    let id = MessageId::from_str(&row.message_id).map_err(|_| {
        Untraced::UnreadableId(format!("unreadable message id {:?}", row.message_id))
    })?;
    client
        .trace_in_group(&row.topic, &row.broker_group, id)
        .await
        .map_err(|err| {
            Untraced::Failed(format!(
                "broker group {} did not answer the trace: {err}",
                row.broker_group
            ))
        })
}

/// Committed offsets by (broker group, queue id); `None`: never committed.
type QueueOffsets = HashMap<(String, u32), Option<u64>>;

/// Decides about sent rows, remembering the groups' committed offsets for one round.
struct Checker<'a> {
    client: &'a Client,
    config: &'a OutboxConfig,
    /// (group, topic) → committed offset per (broker group, queue).
    committed: HashMap<(String, String), QueueOffsets>,
}

impl Checker<'_> {
    async fn decide(
        &mut self,
        row: &SentRow,
        trace: Result<MessageTrace, Untraced>,
        now: i64,
    ) -> TrackOutcome {
        let (id, message_id) = (row.id, row.message_id.clone());
        let trace = match trace {
            Ok(trace) => trace,
            Err(Untraced::UnreadableId(error)) => {
                return TrackOutcome::GiveUp {
                    id,
                    message_id: message_id.clone(),
                    now_ms: now,
                    error,
                }
            }
            Err(Untraced::Failed(note)) => return checked(self.config, row, now, Some(note)),
        };
        let groups = self.config.tracked_groups(&row.topic);
        if let Some(done) = settled(groups, &trace, id, &message_id, now) {
            return done;
        }
        if let Some(open) = &trace.transaction {
            // The broker still asks the producers; a re-send now would duplicate its commit.
            return checked(
                self.config,
                row,
                now,
                Some(format!(
                    "transaction still open in broker group {} after {} check-backs",
                    row.broker_group, open.checks
                )),
            );
        }
        if let Some(note) = broadcast_note(groups, &trace) {
            return checked(self.config, row, now, Some(note));
        }
        if now < self.overdue_at(row) {
            return checked(self.config, row, now, None);
        }
        let lost = match self.lost(row, groups, &trace).await {
            Ok(Some(reason)) => reason,
            Ok(None) => {
                return checked(
                    self.config,
                    row,
                    now,
                    Some("not consumed yet: the tracked groups have not reached it".into()),
                )
            }
            Err(note) => return checked(self.config, row, now, Some(note)),
        };
        // A group's commit (or the broker's store) may have landed after the trace was read:
        // look once more.
        if let Ok(again) = trace_of(self.client, row).await {
            if let Some(done) = settled(groups, &again, id, &message_id, now) {
                return done;
            }
        }
        if row.resends >= i64::from(self.config.max_resends) {
            return TrackOutcome::GiveUp {
                id,
                message_id,
                now_ms: now,
                error: format!("{lost}; not consumed after {} re-sends", row.resends),
            };
        }
        TrackOutcome::Resend {
            id,
            message_id,
            now_ms: now,
            reason: lost,
        }
    }

    /// When a row not consumed yet is looked at as maybe lost.
    fn overdue_at(&self, row: &SentRow) -> i64 {
        self.config.overdue_at(visible_at(row))
    }

    /// Whether no tracked group has reached the row's message yet, by the groups' committed
    /// offsets on its queue (none, or not past it). Only for a row sent straight to a queue
    /// that is not overdue: the offset of a delayed or transactional row is not known from its
    /// send, and an overdue row is traced to see whether its broker group still stores it.
    async fn unreached(&mut self, row: &SentRow, now: i64) -> bool {
        let groups = self.config.tracked_groups(&row.topic);
        let (Some(queue_id), Some(queue_offset)) = (row.queue_id, row.queue_offset) else {
            return false;
        };
        let (Ok(queue_id), Ok(queue_offset)) =
            (u32::try_from(queue_id), u64::try_from(queue_offset))
        else {
            return false;
        };
        if groups.is_empty()
            || row.deliver_at_ms.is_some()
            || row.sent_by.as_deref() == Some(TRANSACTION_SENDER)
            || now >= self.overdue_at(row)
        {
            return false;
        }
        for group in groups {
            let committed = self
                .committed_offset(group, &row.topic, &row.broker_group, queue_id)
                .await;
            if !matches!(committed, Ok(offset) if offset.is_none_or(|offset| offset <= queue_offset))
            {
                return false;
            }
        }
        true
    }

    /// Why an overdue message is lost, `None` if the wait is explained, or an error note when
    /// this round cannot tell.
    async fn lost(
        &mut self,
        row: &SentRow,
        groups: &[String],
        trace: &MessageTrace,
    ) -> Result<Option<String>, String> {
        let Some(stored) = &trace.stored else {
            if !trace.scheduled.is_empty() {
                return Ok(None);
            }
            return Ok(Some(format!(
                "message {} is not stored in broker group {}",
                row.message_id, row.broker_group
            )));
        };
        for group in groups {
            let seen = trace.groups.iter().find(|g| g.group == *group);
            if seen.is_some_and(waiting_for_group) {
                continue;
            }
            let committed = self
                .committed_offset(group, &stored.topic, &row.broker_group, stored.queue_id)
                .await
                .map_err(|err| format!("lag of group {group} unknown: {err}"))?;
            if committed.is_some_and(|offset| offset > stored.queue_offset) {
                return Ok(Some(format!(
                    "consumer group {group} moved past it (offset {}) without acknowledging it",
                    stored.queue_offset
                )));
            }
        }
        Ok(None)
    }

    /// What `group` committed on a queue of `topic` (`None`: never committed).
    async fn committed_offset(
        &mut self,
        group: &str,
        topic: &str,
        broker_group: &str,
        queue_id: u32,
    ) -> Result<Option<u64>, ClientError> {
        let key = (group.to_string(), topic.to_string());
        if !self.committed.contains_key(&key) {
            let lags = self.client.lag(group, topic).await?;
            let offsets = lags
                .into_iter()
                .map(|lag| ((lag.broker_group, lag.queue.queue_id), lag.queue.committed))
                .collect();
            self.committed.insert(key.clone(), offsets);
        }
        Ok(self
            .committed
            .get(&key)
            .and_then(|offsets| offsets.get(&(broker_group.to_string(), queue_id)))
            .copied()
            .flatten())
    }
}

/// Without tracked groups: `Confirmed` once a broker stores the message. With them: `Consumed`
/// when every group acknowledged it, `DeadLettered` when one gave up on it. `None` while it is
/// on its way.
fn settled(
    groups: &[String],
    trace: &MessageTrace,
    id: i64,
    message_id: &str,
    now: i64,
) -> Option<TrackOutcome> {
    let message_id = message_id.to_string();
    if groups.is_empty() {
        let stored = trace.stored.is_some() || !trace.scheduled.is_empty();
        return stored.then_some(TrackOutcome::Confirmed {
            id,
            message_id,
            now_ms: now,
        });
    }
    let state = |group: &str| {
        trace
            .groups
            .iter()
            .find(|g| g.group == group)
            .map(|g| g.state)
    };
    if groups
        .iter()
        .all(|g| state(g) == Some(DeliveryState::Consumed))
    {
        return Some(TrackOutcome::Consumed {
            id,
            message_id,
            now_ms: now,
        });
    }
    let dead = groups
        .iter()
        .find(|g| state(g) == Some(DeliveryState::DeadLettered))?;
    Some(TrackOutcome::DeadLettered {
        id,
        message_id,
        now_ms: now,
        error: format!("dead-lettered by consumer group {dead}"),
    })
}

/// Why a row of a tracked group that consumes in broadcast mode can never settle, if one does:
/// such a group has no offsets of its own (each member commits under
/// `<group>%BROADCAST%<member>`), so the trace lists its members and never the group.
fn broadcast_note(groups: &[String], trace: &MessageTrace) -> Option<String> {
    groups.iter().find_map(|group| {
        if trace.groups.iter().any(|g| g.group == *group) {
            return None;
        }
        let members: Vec<&str> = trace
            .groups
            .iter()
            .filter(|g| group_of_offsets_group(&g.group) == group)
            .map(|g| g.group.as_str())
            .collect();
        (!members.is_empty()).then(|| {
            format!(
                "consumer group {group} consumes in broadcast mode: track its members by name \
                 instead ({})",
                members.join(", ")
            )
        })
    })
}

/// The group has the message and will finish with it: consumed already, or in its retry cycle
/// (a retry due, or a copy delivered through the retry topic: the original's offset is then
/// passed although the message is not acknowledged yet).
fn waiting_for_group(trace: &GroupTrace) -> bool {
    matches!(
        trace.state,
        DeliveryState::Consumed | DeliveryState::Retrying
    ) || trace.deliveries > 1
        || trace.retry_due_ms.is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(state: DeliveryState, deliveries: u32, retry_due_ms: Option<u64>) -> GroupTrace {
        GroupTrace {
            group: "stock".into(),
            state,
            deliveries,
            attempts: Vec::new(),
            retry_due_ms,
            dead_lettered_ms: None,
        }
    }

    #[test]
    fn a_message_in_its_retry_cycle_is_not_lost() {
        assert!(waiting_for_group(&group(DeliveryState::Consumed, 1, None)));
        assert!(waiting_for_group(&group(
            DeliveryState::Retrying,
            1,
            Some(9)
        )));
        // Delivered again through the retry topic, not acknowledged yet.
        assert!(waiting_for_group(&group(DeliveryState::Pending, 2, None)));
        // Only the original, not acknowledged: the group's offset decides.
        assert!(!waiting_for_group(&group(DeliveryState::Pending, 1, None)));
    }

    #[test]
    fn a_tracked_broadcast_group_gets_a_note_naming_its_members() {
        let trace = MessageTrace {
            id: MessageId([0; 16]),
            stored: None,
            scheduled: Vec::new(),
            transaction: None,
            groups: [
                "caches%BROADCAST%host-a",
                "caches%BROADCAST%host-b",
                "stock",
            ]
            .into_iter()
            .map(|name| GroupTrace {
                group: name.into(),
                ..group(DeliveryState::Consumed, 1, None)
            })
            .collect(),
        };
        let note = |tracked: &[&str]| {
            let tracked: Vec<String> = tracked.iter().map(|g| g.to_string()).collect();
            broadcast_note(&tracked, &trace)
        };
        assert_eq!(
            note(&["stock", "caches"]).as_deref(),
            Some(
                "consumer group caches consumes in broadcast mode: track its members by name \
                 instead (caches%BROADCAST%host-a, caches%BROADCAST%host-b)"
            )
        );
        assert_eq!(note(&["stock", "caches%BROADCAST%host-a"]), None);
        // Another group's name that merely starts the same, or a group the trace lacks.
        assert_eq!(note(&["cache", "billing"]), None);
    }
}
