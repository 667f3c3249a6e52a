//! CREATE_TOPIC, and the auto-creation the send path uses.

use ferromq_protocol::{
    headers::{perm, CreateTopicRequest, TopicConfig},
    message::validate_topic,
    Status,
};
use ferromq_store::{command::encode_create_topic, default_topic, ApplyOutcome};
use ferromq_transport::{Reply, Request};

use super::propose_failed;
use crate::core::BrokerCore;

pub async fn create(core: &BrokerCore, request: &Request) -> Reply {
    let create: CreateTopicRequest = match request.decode_header() {
        Ok(create) => create,
        Err(err) => return Reply::bad_header(&err),
    };
    if let Err(message) = validate_topic(&create.topic) {
        return Reply::error(Status::ParameterError, message);
    }
    let max = core.config.topics.max_queues;
    if create.queues == 0 || create.queues > max {
        return Reply::error(
            Status::ParameterError,
            format!("queues must be in 1..={max}"),
        );
    }
    if !perm::is_valid(create.perm) {
        return Reply::error(
            Status::ParameterError,
            format!("invalid permission bits {}", create.perm),
        );
    }
    let topic = TopicConfig {
        name: create.topic,
        queues: create.queues,
        perm: create.perm,
    };
    match ensure_topic(core, topic.clone()).await {
        Ok(existing) if existing == topic => Reply::ok(&existing),
        Ok(existing) => Reply::error(
            Status::ParameterError,
            format!(
                "topic {:?} already exists with {} queues and permission {}",
                existing.name, existing.queues, existing.perm
            ),
        ),
        Err(reply) => reply,
    }
}

/// Creates `topic` through Raft unless it exists; returns the topic as stored.
pub async fn ensure_topic(core: &BrokerCore, topic: TopicConfig) -> Result<TopicConfig, Reply> {
    if let Some(existing) = core.store.topic(&topic.name) {
        return Ok(existing);
    }
    let limit = core.config.topics.max_topics as usize;
    if core.store.topic_count() >= limit {
        return Err(Reply::error(
            Status::NoPermission,
            format!(
                "cannot create topic {:?}: this broker's limit of {limit} topics is reached",
                topic.name
            ),
        ));
    }
    let name = topic.name.clone();
    match core.propose(encode_create_topic(&topic)).await {
        Ok(ApplyOutcome::TopicCreated { .. }) => {}
        Ok(other) => {
            return Err(Reply::error(
                Status::SystemError,
                format!("unexpected outcome {other:?}"),
            ))
        }
        Err(err) => return Err(propose_failed(core, err)),
    }
    core.metrics.topics.set(core.store.topic_count() as i64);
    core.store
        .topic(&name)
        .ok_or_else(|| Reply::error(Status::SystemError, "topic vanished after creation"))
}

/// The topic to send to: existing, or auto-created with the default queue count.
pub async fn topic_for_send(core: &BrokerCore, name: &str) -> Result<TopicConfig, Reply> {
    if let Some(topic) = core.store.topic(name) {
        return Ok(topic);
    }
    if !core.config.topics.auto_create {
        return Err(Reply::error(
            Status::TopicNotExist,
            format!("topic {name:?} does not exist and auto-creation is off"),
        ));
    }
    ensure_topic(core, default_topic(name, core.config.topics.default_queues)).await
}
