//! SEND: validate a batch of records for one queue, log it through Raft as one entry, and
//! answer with the queue offsets it got once it is committed and applied. A scheduled send is
//! logged the same way and held back until its due time (see `scheduler`).

use ferromq_protocol::{
    headers::{perm, Schedule, SendRequest, SendResponse},
    message::{decode_record, now_millis, split_length_prefixed, validate_group, validate_topic},
    system::is_reserved_topic,
    Status,
};
use ferromq_store::{
    command::{encode_messages_of, MessagesKind},
    ApplyOutcome,
};
use ferromq_transport::{Connection, Reply, Request};

use super::{propose_failed, topics::topic_for_send};
use crate::core::BrokerCore;

pub async fn handle(core: &BrokerCore, connection: &Connection, request: &Request) -> Reply {
    let started = std::time::Instant::now();
    let reply = store(core, connection, request).await;
    if reply.status == Status::Ok {
        core.metrics
            .produce_duration
            .observe(started.elapsed().as_secs_f64());
    }
    reply
}

async fn store(core: &BrokerCore, connection: &Connection, request: &Request) -> Reply {
    let send: SendRequest = match request.decode_header() {
        Ok(send) => send,
        Err(err) => return Reply::bad_header(&err),
    };
    if let Some(requester) = &send.reply_to {
        if requester.is_empty() || requester.len() > 255 {
            return Reply::error(Status::ParameterError, "reply_to must be 1..=255 bytes");
        }
        // Replies to this request come back over this connection.
        if let Err(message) = core.replies.register(requester, connection) {
            return Reply::error(Status::NoPermission, message);
        }
    }
    if let Err(message) = validate_topic(&send.topic) {
        return Reply::error(Status::ParameterError, message);
    }
    if is_reserved_topic(&send.topic) {
        return Reply::error(
            Status::NoPermission,
            format!("topic {:?} is reserved for the broker", send.topic),
        );
    }
    let now = now_millis();
    let due_ms = match send.schedule.map(|s| due_time(core, s, now)).transpose() {
        Ok(due) => due.filter(|due| *due > now),
        Err(message) => return Reply::error(Status::ParameterError, message),
    };
    if let Err(reply) = validate_records(core, &send, request) {
        return reply;
    }
    let topic = match topic_for_send(core, &send.topic).await {
        Ok(topic) => topic,
        Err(reply) => return reply,
    };
    if topic.perm & perm::WRITE == 0 {
        return Reply::error(
            Status::NoPermission,
            format!("topic {:?} is not writable", topic.name),
        );
    }
    if send.queue_id >= topic.queues {
        return Reply::error(
            Status::QueueNotExist,
            format!(
                "queue {} out of range: topic {:?} has {} queues",
                send.queue_id, topic.name, topic.queues
            ),
        );
    }
    if let Some(group) = &send.transaction_group {
        if let Err(message) = validate_group(group) {
            return Reply::error(Status::ParameterError, message);
        }
        if due_ms.is_some() {
            return Reply::error(
                Status::ParameterError,
                "a transactional message cannot be scheduled too",
            );
        }
    }
    let kind = match (due_ms, &send.transaction_group) {
        (Some(due_ms), _) => MessagesKind::Schedule {
            due_ms,
            dedup: true,
        },
        (None, Some(group)) => MessagesKind::Half {
            producer_group: group.clone(),
        },
        (None, None) => MessagesKind::Send,
    };
    let payload = encode_messages_of(
        &kind,
        &topic.name,
        send.queue_id,
        send.count,
        &request.body,
        now,
    );
    match core.propose(payload).await {
        Ok(ApplyOutcome::Appended {
            queue_id,
            first_offset,
            count,
            store_ts_ms,
            bytes,
            ..
        }) => {
            core.metrics.topic_seen(&topic.name);
            core.metrics
                .messages_in
                .with_label_values(&[&topic.name])
                .inc_by(u64::from(count));
            core.metrics
                .bytes_in
                .with_label_values(&[&topic.name])
                .inc_by(bytes);
            Reply::ok(&SendResponse {
                queue_id,
                first_offset,
                store_ts_ms,
                due_ms: None,
            })
        }
        Ok(ApplyOutcome::Scheduled {
            queue_id,
            due_ms,
            count,
            ..
        }) => {
            core.metrics
                .messages_in
                .with_label_values(&[&topic.name])
                .inc_by(u64::from(count));
            Reply::ok(&SendResponse {
                queue_id,
                first_offset: 0,
                store_ts_ms: now,
                due_ms: Some(due_ms),
            })
        }
        Ok(ApplyOutcome::HalfStored {
            queue_id,
            store_ts_ms,
            ..
        }) => Reply::ok(&SendResponse {
            queue_id,
            first_offset: 0,
            store_ts_ms,
            due_ms: None,
        }),
        Ok(ApplyOutcome::Duplicate {
            queue_id,
            first_offset,
            count,
            store_ts_ms,
            ..
        }) => {
            // A retry of a send that was stored: answer as the original was answered.
            core.metrics
                .messages_deduplicated
                .with_label_values(&[&topic.name])
                .inc_by(u64::from(count));
            Reply::ok(&SendResponse {
                queue_id,
                first_offset,
                store_ts_ms,
                due_ms,
            })
        }
        Ok(ApplyOutcome::Rejected(reason)) => Reply::error(Status::ParameterError, reason),
        Ok(other) => Reply::error(
            Status::SystemError,
            format!("unexpected apply outcome {other:?}"),
        ),
        Err(err) => propose_failed(core, err),
    }
}

/// When a scheduled send falls due, checked against the configured levels and maximum delay.
fn due_time(core: &BrokerCore, schedule: Schedule, now: u64) -> Result<u64, String> {
    let config = &core.config.schedule;
    let due = match schedule {
        Schedule::DelayMs(delay) => now.saturating_add(delay),
        Schedule::DeliverAtMs(at) => at,
        Schedule::Level(level) => {
            let levels = &config.delay_levels_ms;
            let delay = usize::from(level)
                .checked_sub(1)
                .and_then(|i| levels.get(i))
                .ok_or_else(|| {
                    format!(
                        "delay level {level} does not exist (levels are 1..={})",
                        levels.len()
                    )
                })?;
            now.saturating_add(*delay)
        }
    };
    if due.saturating_sub(now) > config.max_delay_ms {
        return Err(format!(
            "delivery time is {} ms away; the limit is {} ms",
            due - now,
            config.max_delay_ms
        ));
    }
    Ok(due)
}

/// Every record must decode and respect the limits; the batch's bodies together may not exceed
/// the message size limit (as RocketMQ).
fn validate_records(core: &BrokerCore, send: &SendRequest, request: &Request) -> Result<(), Reply> {
    if send.count == 0 {
        return Err(Reply::error(
            Status::ParameterError,
            "a send carries at least one message",
        ));
    }
    let records = split_length_prefixed(request.body.clone()).map_err(|err| {
        Reply::error(
            Status::ParameterError,
            format!("malformed send body: {err}"),
        )
    })?;
    if records.len() != send.count as usize {
        return Err(Reply::error(
            Status::ParameterError,
            format!(
                "header announces {} messages, body holds {}",
                send.count,
                records.len()
            ),
        ));
    }
    let max = core.config.limits.max_message_bytes;
    let mut total = 0usize;
    for record in records {
        let size = record.len();
        let decoded = decode_record(record).map_err(|err| {
            Reply::error(Status::ParameterError, format!("malformed message: {err}"))
        })?;
        total += decoded.body.len();
        core.metrics.message_size.observe(size as f64);
    }
    if total > max {
        return Err(Reply::error(
            Status::MessageTooLarge,
            format!("message bodies of {total} bytes exceed the limit of {max} bytes"),
        ));
    }
    Ok(())
}
