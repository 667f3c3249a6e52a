//! What happens to a message after it is stored: consumers' send-backs (retry later through the
//! group's retry topic, or move to its dead-letter topic), recalls of scheduled messages, and
//! the trace that answers "was it consumed, by whom?".

use std::collections::BTreeMap;

use bytes::BytesMut;
use ferromq_protocol::{
    headers::{
        perm, CancelScheduledRequest, DeliveryAttempt, DeliveryState, GetTraceRequest, GroupTrace,
        MessageTrace, MessageTraceV3, OpenTransaction, SendBackRequest, SendBackResponse,
        StoredCopy, TopicConfig, TRACE_TRANSACTION_VERSION,
    },
    message::{decode_record, now_millis, put_length_prefixed, validate_group, validate_topic},
    system::{
        dlq_group, dlq_topic, is_reserved_topic, retry_delay_ms, retry_group, retry_topic,
        PROPERTY_ORIGIN_OFFSET, PROPERTY_ORIGIN_QUEUE, PROPERTY_ORIGIN_TOPIC,
    },
    MessageId, MessageRecord, Status,
};
use ferromq_raftlog::Role;
use ferromq_store::{
    command::{encode_messages_of, MessagesKind},
    ApplyOutcome, ReadStatus, Store, StoreError,
};
use ferromq_transport::{Reply, Request};
use tracing::debug;

use super::{blocking, propose_failed, store_failed, topics::ensure_topic};
use crate::core::BrokerCore;

/// Creates a group's retry or dead-letter topic (one queue) if this broker leads and it is
/// missing. Failures are only logged: the caller's request does not depend on it.
pub async fn ensure_system_topic(core: &BrokerCore, name: &str) {
    if core.store.topic(name).is_some() || core.raft.status().role != Role::Leader {
        return;
    }
    let topic = TopicConfig {
        name: name.to_string(),
        queues: 1,
        perm: perm::READ_WRITE,
    };
    if let Err(reply) = ensure_topic(core, topic).await {
        debug!(topic = name, status = ?reply.status, "system topic not created");
    }
}

/// CONSUMER_SEND_BACK: the group failed the message at (topic, queue, offset).
pub async fn send_back(core: &BrokerCore, request: &Request) -> Reply {
    let back: SendBackRequest = match request.decode_header() {
        Ok(back) => back,
        Err(err) => return Reply::bad_header(&err),
    };
    if let Err(message) = validate_group(&back.group).and_then(|()| validate_topic(&back.topic)) {
        return Reply::error(Status::ParameterError, message);
    }
    if retry_group(&back.group).is_some() || dlq_group(&back.group).is_some() {
        return Reply::error(Status::ParameterError, "not a consumer group name");
    }
    let store = core.store.clone();
    let (topic, queue_id, offset) = (back.topic.clone(), back.queue_id, back.offset);
    let read = blocking(move || store.read_queue(&topic, queue_id, offset, 1, 1, &[])).await;
    let record = match read {
        Ok(read) if read.status == ReadStatus::Found && read.messages[0].0 == back.offset => {
            read.messages[0].1.clone()
        }
        Ok(_) => {
            return Reply::error(
                Status::OffsetOutOfRange,
                format!(
                    "no message at {}:{} offset {}",
                    back.topic, back.queue_id, back.offset
                ),
            )
        }
        Err(reply) => return reply,
    };
    let mut record = match decode_record(record) {
        Ok(record) => record,
        Err(err) => return store_failed(StoreError::Inconsistent(format!("stored record: {err}"))),
    };
    // The first failure names the original; later copies already carry it.
    if !record.properties.contains_key(PROPERTY_ORIGIN_TOPIC) {
        for (name, value) in [
            (PROPERTY_ORIGIN_TOPIC, back.topic.clone()),
            (PROPERTY_ORIGIN_QUEUE, back.queue_id.to_string()),
            (PROPERTY_ORIGIN_OFFSET, back.offset.to_string()),
        ] {
            record.properties.insert(name.to_string(), value);
        }
    }
    let now = now_millis();
    if record.reconsume_times >= back.max_reconsume {
        let topic = dlq_topic(&back.group);
        ensure_system_topic(core, &topic).await;
        let payload = copy_payload(&MessagesKind::Internal, (&topic, 0), &record, now);
        return match core.propose(payload).await {
            Ok(ApplyOutcome::Appended { .. }) => {
                core.metrics
                    .dlq_messages
                    .with_label_values(&[&back.group])
                    .inc();
                Reply::ok(&SendBackResponse::DeadLettered { topic })
            }
            Ok(other) => unexpected(other),
            Err(err) => propose_failed(core, err),
        };
    }
    record.reconsume_times += 1;
    let schedule = &core.config.schedule;
    let delay = back
        .delay_ms
        .unwrap_or_else(|| retry_delay_ms(&schedule.delay_levels_ms, record.reconsume_times))
        .min(schedule.max_delay_ms);
    let due_ms = now.saturating_add(delay);
    let topic = retry_topic(&back.group);
    ensure_system_topic(core, &topic).await;
    // Not deduplicated: the copy keeps the original's id, which a recent send may still hold.
    let kind = MessagesKind::Schedule {
        due_ms,
        dedup: false,
    };
    match core
        .propose(copy_payload(&kind, (&topic, 0), &record, now))
        .await
    {
        Ok(ApplyOutcome::Scheduled { .. }) => {
            core.metrics
                .consumer_retries
                .with_label_values(&[&back.group])
                .inc();
            Reply::ok(&SendBackResponse::Retrying {
                due_ms,
                reconsume_times: record.reconsume_times,
            })
        }
        Ok(other) => unexpected(other),
        Err(err) => propose_failed(core, err),
    }
}

/// An entry holding one copy of `record` for (topic, queue).
pub fn copy_payload(
    kind: &MessagesKind,
    (topic, queue_id): (&str, u32),
    record: &MessageRecord,
    now: u64,
) -> Vec<u8> {
    let mut encoded = BytesMut::new();
    record.encode(&mut encoded);
    let mut body = BytesMut::with_capacity(encoded.len() + 4);
    put_length_prefixed(&mut body, &encoded);
    encode_messages_of(kind, topic, queue_id, 1, &body, now)
}

fn unexpected(outcome: ApplyOutcome) -> Reply {
    let reason = match outcome {
        ApplyOutcome::Rejected(reason) => reason,
        other => format!("unexpected apply outcome {other:?}"),
    };
    Reply::error(Status::SystemError, reason)
}

/// CANCEL_SCHEDULED.
pub async fn cancel(core: &BrokerCore, request: &Request) -> Reply {
    let cancel: CancelScheduledRequest = match request.decode_header() {
        Ok(cancel) => cancel,
        Err(err) => return Reply::bad_header(&err),
    };
    if let Err(message) = validate_topic(&cancel.topic) {
        return Reply::error(Status::ParameterError, message);
    }
    match core.scheduler.cancel(core, &cancel.topic, cancel.id).await {
        Ok(()) => Reply::ok(&()),
        Err(err) => super::transactions::decision_failed(
            core,
            err,
            &format!("scheduled message {} for {:?}", cancel.id, cancel.topic),
        ),
    }
}

/// GET_TRACE.
pub async fn trace(core: &BrokerCore, request: &Request) -> Reply {
    let query: GetTraceRequest = match request.decode_header() {
        Ok(query) => query,
        Err(err) => return Reply::bad_header(&err),
    };
    let store = core.store.clone();
    match blocking(move || trace_of(&store, query.id)).await {
        Ok(trace) if request.version < TRACE_TRANSACTION_VERSION => {
            Reply::ok(&MessageTraceV3::from(trace))
        }
        Ok(trace) => Reply::ok(&trace),
        Err(reply) => reply,
    }
}

/// One copy of a message as the trace sees it.
struct Copy {
    topic: String,
    queue_id: u32,
    queue_offset: u64,
    store_ts_ms: u64,
}

/// Everything this broker group's applied state says about message `id`: the original, the
/// copies made for retries and dead letters, and the groups' committed offsets.
pub fn trace_of(store: &Store, id: MessageId) -> Result<MessageTrace, StoreError> {
    let copies: Vec<Copy> = store
        .find_by_id(&id.0)?
        .into_iter()
        .map(|(hit, record)| Copy {
            store_ts_ms: ferromq_protocol::message::peek_record(&record)
                .map_or(0, |peek| peek.store_ts_ms),
            topic: hit.topic,
            queue_id: hit.queue_id,
            queue_offset: hit.queue_offset,
        })
        .collect();
    // (topic, due time) of each copy still waiting.
    let scheduled: Vec<(String, u64)> = store
        .scheduled_with_id(&id.0)?
        .into_iter()
        .map(|(due, topic)| (topic, due))
        .collect();
    let transaction = store
        .halves_with_id(&id.0)?
        .into_iter()
        .next()
        .map(|half| OpenTransaction {
            topic: half.topic,
            producer_group: half.producer_group,
            stored_ms: half.stored_ms,
            checks: half.checks,
        });
    let original = copies.iter().find(|c| !is_reserved_topic(&c.topic));
    let committed = |group: &str, copy: &Copy| -> Result<bool, StoreError> {
        Ok(store
            .consumer_offset(group, &copy.topic, copy.queue_id)?
            .is_some_and(|offset| offset > copy.queue_offset))
    };

    // Every group with something to say: offsets on the original's topic, or copies.
    let mut names: BTreeMap<String, ()> = BTreeMap::new();
    if let Some(original) = original {
        for (group, topic) in store.consumer_groups()? {
            if topic == original.topic {
                names.insert(group, ());
            }
        }
    }
    for topic in copies
        .iter()
        .map(|c| c.topic.as_str())
        .chain(scheduled.iter().map(|(topic, _)| topic.as_str()))
    {
        if let Some(group) = retry_group(topic).or_else(|| dlq_group(topic)) {
            names.insert(group.to_string(), ());
        }
    }

    let mut groups = Vec::new();
    for group in names.into_keys() {
        let retry = retry_topic(&group);
        let dlq = dlq_topic(&group);
        let deliveries: Vec<&Copy> = original
            .into_iter()
            .chain(copies.iter().filter(|c| c.topic == retry))
            .collect();
        let dead_letter = copies.iter().find(|c| c.topic == dlq);
        let retry_due_ms = scheduled
            .iter()
            .find(|(topic, _)| *topic == retry)
            .map(|(_, due)| *due);
        let mut attempts = Vec::with_capacity(deliveries.len());
        for (i, copy) in deliveries.iter().enumerate() {
            // A delivery followed by another copy was failed, whatever the offset says.
            let failed =
                i + 1 < deliveries.len() || retry_due_ms.is_some() || dead_letter.is_some();
            attempts.push(DeliveryAttempt {
                topic: copy.topic.clone(),
                queue_id: copy.queue_id,
                queue_offset: copy.queue_offset,
                visible_ms: copy.store_ts_ms,
                acknowledged: !failed && committed(&group, copy)?,
            });
        }
        let state = if dead_letter.is_some() {
            DeliveryState::DeadLettered
        } else if retry_due_ms.is_some() {
            DeliveryState::Retrying
        } else if attempts.last().is_some_and(|a| a.acknowledged) {
            DeliveryState::Consumed
        } else {
            DeliveryState::Pending
        };
        groups.push(GroupTrace {
            group,
            state,
            deliveries: attempts.len() as u32,
            attempts,
            retry_due_ms,
            dead_lettered_ms: dead_letter.map(|c| c.store_ts_ms),
        });
    }
    Ok(MessageTrace {
        id,
        stored: original.map(|c| StoredCopy {
            topic: c.topic.clone(),
            queue_id: c.queue_id,
            queue_offset: c.queue_offset,
            store_ts_ms: c.store_ts_ms,
        }),
        scheduled: scheduled
            .into_iter()
            .filter(|(topic, _)| retry_group(topic).is_none())
            .collect(),
        transaction,
        groups,
    })
}
