//! Consumer group membership (heartbeat, members, unregister) and the search of a queue offset
//! by time (where a group that starts "from a timestamp" begins).

use ferromq_protocol::system::retry_group;
use ferromq_protocol::{
    headers::{
        ConsumerHeartbeatRequest, GetGroupMembersRequest, GetGroupMembersResponse,
        SearchOffsetRequest, SearchOffsetResponse, UnregisterConsumerRequest,
    },
    message::{validate_group, validate_topic},
    Status,
};
use ferromq_transport::{Connection, Reply, Request};

use super::blocking;
use crate::core::BrokerCore;

/// Most subscriptions one heartbeat may carry.
const MAX_SUBSCRIPTIONS: usize = 64;

pub async fn heartbeat(core: &BrokerCore, connection: &Connection, request: &Request) -> Reply {
    let heartbeat: ConsumerHeartbeatRequest = match request.decode_header() {
        Ok(heartbeat) => heartbeat,
        Err(err) => return Reply::bad_header(&err),
    };
    if heartbeat.member_id.is_empty() || heartbeat.member_id.len() > 255 {
        return Reply::error(Status::ParameterError, "member id must be 1..=255 bytes");
    }
    if heartbeat.subscriptions.len() > MAX_SUBSCRIPTIONS {
        return Reply::error(
            Status::ParameterError,
            format!("at most {MAX_SUBSCRIPTIONS} subscriptions per heartbeat"),
        );
    }
    for subscription in &heartbeat.subscriptions {
        if let Err(message) =
            validate_group(&subscription.group).and_then(|()| validate_topic(&subscription.topic))
        {
            return Reply::error(Status::ParameterError, message);
        }
        if subscription.expression.len() > 4096 {
            return Reply::error(Status::ParameterError, "subscription expression too long");
        }
    }
    for subscription in &heartbeat.subscriptions {
        if retry_group(&subscription.topic) == Some(subscription.group.as_str()) {
            // A clustering group's retry topic exists before its first retry, so members
            // find its route from the start.
            super::retry::ensure_system_topic(core, &subscription.topic).await;
        }
    }
    match core
        .consumers
        .heartbeat(connection, &heartbeat.member_id, heartbeat.subscriptions)
    {
        Ok(joined) => {
            for group in joined {
                core.metrics.group_seen(&group);
                core.consumers.notify(&group);
            }
            Reply::ok(&())
        }
        Err(message) => Reply::error(Status::SystemBusy, message),
    }
}

pub async fn members(core: &BrokerCore, request: &Request) -> Reply {
    let query: GetGroupMembersRequest = match request.decode_header() {
        Ok(query) => query,
        Err(err) => return Reply::bad_header(&err),
    };
    if let Err(message) = validate_group(&query.group).and_then(|()| validate_topic(&query.topic)) {
        return Reply::error(Status::ParameterError, message);
    }
    Reply::ok(&GetGroupMembersResponse {
        members: core.consumers.members(&query.group, &query.topic),
    })
}

pub async fn unregister(core: &BrokerCore, request: &Request) -> Reply {
    let goodbye: UnregisterConsumerRequest = match request.decode_header() {
        Ok(goodbye) => goodbye,
        Err(err) => return Reply::bad_header(&err),
    };
    if core
        .consumers
        .unregister(&goodbye.group, &goodbye.member_id)
    {
        core.consumers.notify(&goodbye.group);
    }
    Reply::ok(&())
}

pub async fn search_offset(core: &BrokerCore, request: &Request) -> Reply {
    let search: SearchOffsetRequest = match request.decode_header() {
        Ok(search) => search,
        Err(err) => return Reply::bad_header(&err),
    };
    if let Err(message) = validate_topic(&search.topic) {
        return Reply::error(Status::ParameterError, message);
    }
    let Some(topic) = core.store.topic(&search.topic) else {
        return Reply::error(
            Status::TopicNotExist,
            format!("topic {:?} does not exist", search.topic),
        );
    };
    if search.queue_id >= topic.queues {
        return Reply::error(
            Status::QueueNotExist,
            format!(
                "queue {} out of range: topic {:?} has {} queues",
                search.queue_id, topic.name, topic.queues
            ),
        );
    }
    let store = core.store.clone();
    let found =
        blocking(move || store.search_offset(&search.topic, search.queue_id, search.timestamp_ms))
            .await;
    match found {
        Ok(offset) => Reply::ok(&SearchOffsetResponse { offset }),
        Err(reply) => reply,
    }
}
