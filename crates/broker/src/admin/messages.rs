//! `/v1/messages`: messages by key, store time or position, by id (every stored copy), and
//! their traces.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::{
    extract::{rejection::QueryRejection, Path, Query, State},
    routing::get,
    Json, Router,
};
use ferromq_protocol::MessageId;
use ferromq_service::admin::{bad_request, page_limit, ApiError, ErrorBody};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::blocking_store;
use crate::core::BrokerCore;

#[derive(utoipa::OpenApi)]
#[openapi(
    paths(messages, message_by_id, message_trace),
    components(schemas(MessageView, GroupConsumption))
)]
pub(super) struct MessagesApi;

pub(super) fn routes() -> Router<Arc<BrokerCore>> {
    Router::new()
        .route("/v1/messages", get(messages))
        .route("/v1/messages/{id}", get(message_by_id))
        .route("/v1/messages/{id}/trace", get(message_trace))
}

/// Which messages to show: of `topic`, with `key`, stored between `from` and `to` (ms since
/// the epoch), or the ones from `queue` and `offset`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct MessageQuery {
    topic: String,
    key: Option<String>,
    from: Option<u64>,
    to: Option<u64>,
    queue: Option<u32>,
    offset: Option<u64>,
    /// At most this many (default 32, at most 1000).
    limit: Option<usize>,
}

#[derive(Serialize, ToSchema)]
pub(super) struct MessageView {
    id: String,
    topic: String,
    queue: u32,
    offset: u64,
    tag: Option<String>,
    keys: Vec<String>,
    properties: BTreeMap<String, String>,
    born_time_ms: u64,
    store_time_ms: u64,
    reconsume_times: u32,
    /// The body as text, or as hex digits when it is not UTF-8 (see `body_encoding`).
    body: String,
    body_encoding: &'static str,
    /// Every consumer group that committed offsets on this queue, and whether its committed
    /// offset is past this message (it consumed and acknowledged it).
    consumed_by: Vec<GroupConsumption>,
}

#[derive(Serialize, ToSchema)]
struct GroupConsumption {
    group: String,
    consumed: bool,
    committed_offset: u64,
}

pub(super) fn message_view(
    topic: &str,
    queue: u32,
    offset: u64,
    record: bytes::Bytes,
) -> Option<MessageView> {
    let record = ferromq_protocol::message::decode_record(record).ok()?;
    let (body, body_encoding) = match std::str::from_utf8(&record.body) {
        Ok(text) => (text.to_string(), "utf8"),
        Err(_) => (hex::encode(&record.body), "hex"),
    };
    Some(MessageView {
        id: record.id.to_string(),
        topic: topic.to_string(),
        queue,
        offset,
        tag: record.tag,
        keys: record.keys,
        properties: record.properties,
        born_time_ms: record.born_ts_ms,
        store_time_ms: record.store_ts_ms,
        reconsume_times: record.reconsume_times,
        body,
        body_encoding,
        consumed_by: Vec::new(),
    })
}

/// Fills in which groups consumed each message (from their committed offsets).
fn add_consumption(
    store: &ferromq_store::Store,
    views: &mut [MessageView],
) -> Result<(), ferromq_store::StoreError> {
    let Some(topic) = views.first().map(|v| v.topic.clone()) else {
        return Ok(());
    };
    let groups: Vec<String> = store
        .consumer_groups()?
        .into_iter()
        .filter(|(_, t)| *t == topic)
        .map(|(group, _)| group)
        .collect();
    for view in views.iter_mut() {
        for group in &groups {
            if let Some(committed) = store.consumer_offset(group, &topic, view.queue)? {
                view.consumed_by.push(GroupConsumption {
                    group: group.clone(),
                    consumed: committed > view.offset,
                    committed_offset: committed,
                });
            }
        }
    }
    Ok(())
}

/// `GET /v1/messages?topic=T&key=K` (messages stored with a key, oldest first) or
/// `?topic=T&queue=Q&offset=O` (one message, or up to `limit` from there).
#[utoipa::path(
    get,
    path = "/v1/messages",
    params(MessageQuery),
    responses(
        (status = 200, body = Vec<MessageView>),
        (status = 400, description = "Bad parameters", body = ErrorBody),
        (status = 404, description = "No such topic", body = ErrorBody),
    ),
    tag = "messages"
)]
async fn messages(
    State(core): State<Arc<BrokerCore>>,
    query: Result<Query<MessageQuery>, QueryRejection>,
) -> Result<Json<Vec<MessageView>>, ApiError> {
    let Query(query) = query?;
    ferromq_protocol::message::validate_topic(&query.topic).map_err(bad_request)?;
    if core.store.topic(&query.topic).is_none() {
        return Err(ApiError::not_found(format!(
            "topic {:?} does not exist",
            query.topic
        )));
    }
    let limit = page_limit(query.limit, 32)?;
    enum Lookup {
        Key(String),
        At(u32, u64),
        Stored(u64, u64),
    }
    let lookup = match (query.key, query.from, query.queue, query.offset) {
        (Some(key), None, None, None) if query.to.is_none() => Lookup::Key(key),
        (None, Some(from), None, None) => {
            let to = query
                .to
                .unwrap_or_else(ferromq_protocol::message::now_millis);
            if to < from {
                return Err(bad_request(format!("to ({to}) is before from ({from})")));
            }
            Lookup::Stored(from, to)
        }
        (None, None, Some(queue), Some(offset)) if query.to.is_none() => Lookup::At(queue, offset),
        _ => {
            return Err(bad_request(
                "give key, or from (and to), or queue and offset".into(),
            ))
        }
    };
    let store = core.store.clone();
    let topic = query.topic;
    let found = tokio::task::spawn_blocking(move || {
        let mut views: Vec<MessageView> = match lookup {
            Lookup::Key(key) => store
                .find_by_key(&topic, &key, limit)?
                .into_iter()
                .filter_map(|m| message_view(&topic, m.queue_id, m.queue_offset, m.record))
                .collect(),
            Lookup::At(queue, offset) => store
                .read_queue(&topic, queue, offset, limit, 16 * 1024 * 1024, &[])?
                .messages
                .into_iter()
                .filter_map(|(at, record)| message_view(&topic, queue, at, record))
                .collect(),
            Lookup::Stored(from, to) => stored_between(&store, &topic, (from, to), limit)?,
        };
        add_consumption(&store, &mut views)?;
        Ok::<_, ferromq_store::StoreError>(views)
    })
    .await
    .map_err(|err| ApiError::internal(err.to_string()))?
    .map_err(|err| ApiError::internal(err.to_string()))?;
    Ok(Json(found))
}

/// The first `limit` messages of `topic` stored in `from..=to`, oldest first.
fn stored_between(
    store: &ferromq_store::Store,
    topic: &str,
    (from, to): (u64, u64),
    limit: usize,
) -> Result<Vec<MessageView>, ferromq_store::StoreError> {
    let mut found = Vec::new();
    let queues = store.queue_offsets(topic).unwrap_or_default();
    // About 16 MiB read in all, however many queues the topic has.
    let per_queue_bytes = (16 * 1024 * 1024 / queues.len().max(1)).max(64 * 1024);
    for (queue, _, _) in queues {
        let start = store.search_offset(topic, queue, from)?;
        let read = store.read_queue(topic, queue, start, limit, per_queue_bytes, &[])?;
        found.extend(
            read.messages
                .into_iter()
                .filter_map(|(at, record)| message_view(topic, queue, at, record))
                .take_while(|view| view.store_time_ms <= to),
        );
    }
    found.sort_by_key(|view| (view.store_time_ms, view.queue, view.offset));
    found.truncate(limit);
    Ok(found)
}

fn parse_id(id: &str) -> Result<MessageId, ApiError> {
    id.parse::<MessageId>().map_err(bad_request)
}

/// `GET /v1/messages/{id}`: every stored copy of the message (the original, retries, its dead
/// letter).
#[utoipa::path(
    get,
    path = "/v1/messages/{id}",
    params(("id" = String, Path, description = "Message id (32 hex digits)", pattern = "^[0-9a-fA-F]{32}$")),
    responses(
        (status = 200, body = Vec<MessageView>),
        (status = 400, description = "Bad id", body = ErrorBody),
        (status = 404, description = "Not stored here", body = ErrorBody),
    ),
    tag = "messages"
)]
async fn message_by_id(
    State(core): State<Arc<BrokerCore>>,
    Path(id): Path<String>,
) -> Result<Json<Vec<MessageView>>, ApiError> {
    let id = parse_id(&id)?;
    let store = core.store.clone();
    let views = blocking_store(move || {
        Ok(store
            .find_by_id(&id.0)?
            .into_iter()
            .filter_map(|(hit, record)| {
                message_view(&hit.topic, hit.queue_id, hit.queue_offset, record)
            })
            .collect::<Vec<_>>())
    })
    .await?;
    if views.is_empty() {
        return Err(ApiError::not_found(format!(
            "message {id} is not stored here (never sent to this broker group, or deleted by retention)"
        )));
    }
    Ok(Json(views))
}

/// `GET /v1/messages/{id}/trace`: what each consumer group did with the message.
#[utoipa::path(
    get,
    path = "/v1/messages/{id}/trace",
    params(("id" = String, Path, description = "Message id (32 hex digits)", pattern = "^[0-9a-fA-F]{32}$")),
    responses(
        (status = 200, description = "Per group: deliveries, pending retry, dead letter", body = Object),
        (status = 400, description = "Bad id", body = ErrorBody),
        (status = 404, description = "Not stored here", body = ErrorBody),
    ),
    tag = "messages"
)]
async fn message_trace(
    State(core): State<Arc<BrokerCore>>,
    Path(id): Path<String>,
) -> Result<Json<ferromq_protocol::headers::MessageTrace>, ApiError> {
    let id = parse_id(&id)?;
    let store = core.store.clone();
    let trace = blocking_store(move || crate::handlers::retry::trace_of(&store, id)).await?;
    if !trace.found() {
        return Err(ApiError::not_found(format!(
            "message {id} is not stored here"
        )));
    }
    Ok(Json(trace))
}
