//! LOCK_QUEUES and UNLOCK_QUEUES: orderly consumers hold a queue's lock while they consume it,
//! so a queue moving between members is never consumed by two at once. Changes are logged, so a
//! new leader knows every lock (see `ferromq_store::locks`).

use ferromq_protocol::{
    headers::{QueueLocksRequest, QueueLocksResponse},
    message::{now_millis, validate_group, validate_topic},
    Status,
};
use ferromq_store::{command::encode_queue_locks, locks::QueueLockChange, ApplyOutcome};
use ferromq_transport::{Reply, Request};

use super::propose_failed;
use crate::core::BrokerCore;

const MIN_LEASE_MS: u64 = 1_000;
const MAX_LEASE_MS: u64 = 600_000;
/// Most queues one request may name.
const MAX_QUEUES: usize = 1024;

pub async fn lock(core: &BrokerCore, request: &Request) -> Reply {
    change(core, request, false).await
}

pub async fn unlock(core: &BrokerCore, request: &Request) -> Reply {
    change(core, request, true).await
}

async fn change(core: &BrokerCore, request: &Request, unlock: bool) -> Reply {
    let ask: QueueLocksRequest = match request.decode_header() {
        Ok(ask) => ask,
        Err(err) => return Reply::bad_header(&err),
    };
    if let Err(message) = validate_group(&ask.group).and_then(|()| validate_topic(&ask.topic)) {
        return Reply::error(Status::ParameterError, message);
    }
    if ask.member_id.is_empty() || ask.member_id.len() > 255 {
        return Reply::error(Status::ParameterError, "member id must be 1..=255 bytes");
    }
    if ask.queue_ids.is_empty() || ask.queue_ids.len() > MAX_QUEUES {
        return Reply::error(
            Status::ParameterError,
            format!("name 1..={MAX_QUEUES} queues"),
        );
    }
    let Some(topic) = core.store.topic(&ask.topic) else {
        return Reply::error(
            Status::TopicNotExist,
            format!("topic {:?} does not exist", ask.topic),
        );
    };
    if let Some(queue) = ask.queue_ids.iter().find(|q| **q >= topic.queues) {
        return Reply::error(
            Status::QueueNotExist,
            format!(
                "queue {queue} out of range: topic {:?} has {} queues",
                topic.name, topic.queues
            ),
        );
    }
    let lease_ms = ask.lease_ms.clamp(MIN_LEASE_MS, MAX_LEASE_MS);
    let change = QueueLockChange {
        group: ask.group,
        topic: ask.topic,
        member: ask.member_id,
        queue_ids: ask.queue_ids,
        now_ms: now_millis(),
        lease_ms,
        unlock,
    };
    match core.propose(encode_queue_locks(&change)).await {
        Ok(ApplyOutcome::Locked { queue_ids }) => Reply::ok(&QueueLocksResponse {
            locked: queue_ids,
            lease_ms,
        }),
        Ok(other) => Reply::error(
            Status::SystemError,
            format!("unexpected apply outcome {other:?}"),
        ),
        Err(err) => propose_failed(core, err),
    }
}
