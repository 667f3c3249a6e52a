//! Consumer offsets (committed through Raft, so a new leader has them) and queue ranges.

use ferromq_protocol::{
    headers::{
        CommitOffsetsRequest, GetConsumerLagRequest, GetConsumerLagResponse,
        GetQueueOffsetsRequest, GetQueueOffsetsResponse, QueryOffsetRequest, QueryOffsetResponse,
        QueueLagInfo, QueueOffsets,
    },
    message::{validate_group, validate_topic},
    Status,
};
use ferromq_store::{
    command::{encode_commit_offsets, CommitOffsets},
    ApplyOutcome,
};
use ferromq_transport::{Reply, Request};

use super::{blocking, propose_failed};
use crate::core::BrokerCore;

/// Most offsets one commit may carry.
const MAX_OFFSETS_PER_COMMIT: usize = 4096;

pub async fn commit(core: &BrokerCore, request: &Request) -> Reply {
    let commit: CommitOffsetsRequest = match request.decode_header() {
        Ok(commit) => commit,
        Err(err) => return Reply::bad_header(&err),
    };
    if let Err(message) = validate_group(&commit.group) {
        return Reply::error(Status::ParameterError, message);
    }
    if commit.offsets.len() > MAX_OFFSETS_PER_COMMIT {
        return Reply::error(
            Status::ParameterError,
            format!("at most {MAX_OFFSETS_PER_COMMIT} offsets per commit"),
        );
    }
    for offset in &commit.offsets {
        if let Err(message) = validate_topic(&offset.topic) {
            return Reply::error(Status::ParameterError, message);
        }
        match core.store.topic(&offset.topic) {
            Some(topic) if offset.queue_id < topic.queues => {}
            Some(topic) => {
                return Reply::error(
                    Status::QueueNotExist,
                    format!(
                        "queue {} out of range: topic {:?} has {} queues",
                        offset.queue_id, topic.name, topic.queues
                    ),
                )
            }
            None => {
                return Reply::error(
                    Status::TopicNotExist,
                    format!("topic {:?} does not exist", offset.topic),
                )
            }
        }
    }
    if commit.offsets.is_empty() {
        return Reply::ok(&());
    }
    let command = CommitOffsets {
        group: commit.group,
        offsets: commit
            .offsets
            .into_iter()
            .map(|o| (o.topic, o.queue_id, o.offset))
            .collect(),
    };
    match core.propose(encode_commit_offsets(&command)).await {
        Ok(ApplyOutcome::OffsetsCommitted) => Reply::ok(&()),
        Ok(ApplyOutcome::Rejected(reason)) => Reply::error(Status::ParameterError, reason),
        Ok(other) => Reply::error(
            Status::SystemError,
            format!("unexpected apply outcome {other:?}"),
        ),
        Err(err) => propose_failed(core, err),
    }
}

pub async fn query(core: &BrokerCore, request: &Request) -> Reply {
    let query: QueryOffsetRequest = match request.decode_header() {
        Ok(query) => query,
        Err(err) => return Reply::bad_header(&err),
    };
    if let Err(message) = validate_group(&query.group).and_then(|()| validate_topic(&query.topic)) {
        return Reply::error(Status::ParameterError, message);
    }
    let store = core.store.clone();
    match blocking(move || store.consumer_offset(&query.group, &query.topic, query.queue_id)).await
    {
        Ok(offset) => Reply::ok(&QueryOffsetResponse { offset }),
        Err(reply) => reply,
    }
}

pub async fn lag(core: &BrokerCore, request: &Request) -> Reply {
    let query: GetConsumerLagRequest = match request.decode_header() {
        Ok(query) => query,
        Err(err) => return Reply::bad_header(&err),
    };
    if let Err(message) = validate_group(&query.group).and_then(|()| validate_topic(&query.topic)) {
        return Reply::error(Status::ParameterError, message);
    }
    let store = core.store.clone();
    let topic = query.topic.clone();
    match blocking(move || store.group_lag(&query.group, &query.topic)).await {
        Ok(Some(queues)) => Reply::ok(&GetConsumerLagResponse {
            queues: queues
                .into_iter()
                .map(|q| QueueLagInfo {
                    queue_id: q.queue_id,
                    committed: q.committed,
                    min_offset: q.min_offset,
                    max_offset: q.max_offset,
                    lag: q.lag,
                    oldest_unconsumed_ms: q.oldest_unconsumed_ms,
                })
                .collect(),
        }),
        Ok(None) => Reply::error(
            Status::TopicNotExist,
            format!("topic {topic:?} does not exist"),
        ),
        Err(reply) => reply,
    }
}

pub async fn queue_offsets(core: &BrokerCore, request: &Request) -> Reply {
    let query: GetQueueOffsetsRequest = match request.decode_header() {
        Ok(query) => query,
        Err(err) => return Reply::bad_header(&err),
    };
    match core.store.queue_offsets(&query.topic) {
        Some(queues) => Reply::ok(&GetQueueOffsetsResponse {
            queues: queues
                .into_iter()
                .map(|(queue_id, min_offset, max_offset)| QueueOffsets {
                    queue_id,
                    min_offset,
                    max_offset,
                })
                .collect(),
        }),
        None => Reply::error(
            Status::TopicNotExist,
            format!("topic {:?} does not exist", query.topic),
        ),
    }
}
