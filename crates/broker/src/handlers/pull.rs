//! PULL: read a queue from an offset; with nothing new, hold the request (long polling) until a
//! message arrives, the wait ends, or the broker shuts down.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use ferromq_protocol::{
    headers::{perm, PullRequest, PullResponse, PullStatus},
    message::{decode_record, encode_pulled, validate_group, validate_topic},
    selector::Selector,
    Status,
};
use ferromq_store::{QueueRead, ReadStatus};
use ferromq_transport::{Reply, Request};
use tokio::time::Instant;

use super::blocking;
use crate::core::BrokerCore;

pub async fn handle(core: &BrokerCore, request: &Request) -> Reply {
    let pull: PullRequest = match request.decode_header() {
        Ok(pull) => pull,
        Err(err) => return Reply::bad_header(&err),
    };
    if let Err(message) = validate_topic(&pull.topic).and_then(|()| validate_group(&pull.group)) {
        return Reply::error(Status::ParameterError, message);
    }
    // A member that knows no leader may be cut off and behind, and one repairing its log lacks
    // entries: send the reader elsewhere.
    let status = core.raft.status();
    if status.leader_id == 0 {
        return Reply::error(
            Status::ServiceNotAvailable,
            "no leader known; this replica may be stale",
        );
    }
    if status.repairing_until.is_some() {
        return Reply::error(
            Status::ServiceNotAvailable,
            "this replica is repairing its log",
        );
    }
    let Some(topic) = core.store.topic(&pull.topic) else {
        return Reply::error(
            Status::TopicNotExist,
            format!("topic {:?} does not exist", pull.topic),
        );
    };
    if topic.perm & perm::READ == 0 {
        return Reply::error(
            Status::NoPermission,
            format!("topic {:?} is not readable", topic.name),
        );
    }
    if pull.queue_id >= topic.queues {
        return Reply::error(
            Status::QueueNotExist,
            format!(
                "queue {} out of range: topic {:?} has {} queues",
                pull.queue_id, topic.name, topic.queues
            ),
        );
    }
    let selector = match pull.sql.as_deref().map(Selector::parse).transpose() {
        Ok(selector) => selector.map(Arc::new),
        Err(err) => return Reply::error(Status::ParameterError, err.to_string()),
    };
    let limits = &core.config.pull;
    let max_messages = pull.max_messages.clamp(1, limits.max_messages) as usize;
    let max_bytes = pull.max_bytes.clamp(1, limits.max_bytes) as usize;
    let wait = Duration::from_millis(u64::from(pull.max_wait_ms).min(limits.max_wait_ms));
    let deadline = Instant::now() + wait;
    let pull = Arc::new(pull);
    loop {
        let read = {
            let store = core.store.clone();
            let pull = pull.clone();
            let selector = selector.clone();
            blocking(move || {
                let keep = selector.map(|selector| {
                    move |record: &bytes::Bytes| {
                        decode_record(record.clone())
                            .is_ok_and(|r| selector.matches(&r.properties, r.tag.as_deref()))
                    }
                });
                store.read_queue_filtered(
                    &pull.topic,
                    pull.queue_id,
                    pull.offset,
                    max_messages,
                    max_bytes,
                    &pull.tag_hashes,
                    keep.as_ref()
                        .map(|k| k as &(dyn Fn(&bytes::Bytes) -> bool + Send + Sync)),
                )
            })
            .await
        };
        let read = match read {
            Ok(read) => read,
            Err(reply) => return reply,
        };
        // Answer at once when there is something to say: messages, a moved offset, or a run of
        // filtered-out messages to skip (so the consumer advances instead of the broker
        // re-reading them).
        if read.status == ReadStatus::OffsetMoved && pull.offset > read.max_offset {
            // Past this replica's end: a follower (or a new leader still applying) that is
            // behind, not a consumer ahead of the queue. Moving the reader back would deliver
            // messages again; send it to a member that has caught up instead.
            let status = core.raft.status();
            let behind = status.role != ferromq_raftlog::Role::Leader
                || status.applied_index < status.commit_index;
            if behind {
                return Reply::error(
                    Status::ServiceNotAvailable,
                    format!(
                        "offset {} is past this replica's end {}; it is behind",
                        pull.offset, read.max_offset
                    ),
                );
            }
        }
        let skipped = read.next_offset > pull.offset;
        if read.status != ReadStatus::Empty
            || skipped
            || Instant::now() >= deadline
            || core.shutdown.is_cancelled()
        {
            return reply(core, &pull, read);
        }
        // Subscribe first, then look again, so an arrival in between is not missed.
        let mut arrivals = core.notifier.subscribe(&pull.topic, pull.queue_id);
        let current = core
            .store
            .queue_offsets(&pull.topic)
            .and_then(|queues| queues.get(pull.queue_id as usize).map(|q| q.2))
            .unwrap_or(0);
        if current > pull.offset {
            continue;
        }
        tokio::select! {
            _ = arrivals.wait_for(|max| *max > pull.offset) => {}
            _ = tokio::time::sleep_until(deadline) => {}
            _ = core.shutdown.cancelled() => {}
        }
    }
}

fn reply(core: &BrokerCore, pull: &PullRequest, read: QueueRead) -> Reply {
    let status = match read.status {
        ReadStatus::Found => PullStatus::Found,
        ReadStatus::Empty => PullStatus::NoNewMessages,
        ReadStatus::OffsetMoved => PullStatus::OffsetMoved,
    };
    let mut body = BytesMut::with_capacity(read.messages.iter().map(|(_, r)| r.len() + 12).sum());
    for (offset, record) in &read.messages {
        encode_pulled(&mut body, *offset, record);
    }
    if !read.messages.is_empty() {
        core.deliveries
            .record(&pull.group, &pull.topic, pull.queue_id, read.next_offset);
        let labels = [pull.topic.as_str(), pull.group.as_str()];
        core.metrics
            .messages_out
            .with_label_values(&labels)
            .inc_by(read.messages.len() as u64);
        core.metrics
            .bytes_out
            .with_label_values(&labels)
            .inc_by(read.messages.iter().map(|(_, r)| r.len() as u64).sum());
    }
    Reply::ok_with_body(
        &PullResponse {
            status,
            next_offset: read.next_offset,
            min_offset: read.min_offset,
            max_offset: read.max_offset,
        },
        body.freeze(),
    )
}
