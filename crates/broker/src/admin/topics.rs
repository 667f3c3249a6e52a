//! `/v1/topics`: list, create, show, update (permissions, more queues) and delete topics.
//! Changes go through Raft, so they need the group's leader; every member answers reads.

use std::sync::Arc;

use axum::routing::get;
use axum::Router;
use axum::{
    extract::{
        rejection::{JsonRejection, QueryRejection},
        Path, Query, State,
    },
    http::StatusCode,
    Json,
};
use ferromq_protocol::headers::{perm, TopicConfig};
use ferromq_protocol::message::validate_topic;
use ferromq_service::admin::ApiError;
use ferromq_store::command::{
    encode_create_topic, encode_delete_topic, encode_update_topic, DeleteTopic,
};
use ferromq_store::ApplyOutcome;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use ferromq_service::admin::{bad_request, page_limit, ErrorBody, Page};

use super::propose_error;
use crate::core::BrokerCore;

#[derive(utoipa::OpenApi)]
#[openapi(
    paths(list, create, show, update, delete),
    components(schemas(
        TopicView,
        TopicDetail,
        QueueView,
        CreateRequest,
        UpdateRequest,
        Deleted,
        Page<TopicView>
    ))
)]
pub(super) struct TopicsApi;

pub(super) fn routes() -> Router<Arc<BrokerCore>> {
    Router::new()
        .route("/v1/topics", get(list).post(create))
        .route("/v1/topics/{topic}", get(show).patch(update).delete(delete))
}

#[derive(Serialize, ToSchema)]
struct TopicView {
    name: String,
    queues: u32,
    /// RocketMQ's permission bits: 4 read, 2 write.
    perm: u8,
    readable: bool,
    writable: bool,
}

impl From<TopicConfig> for TopicView {
    fn from(topic: TopicConfig) -> TopicView {
        TopicView {
            readable: topic.perm & perm::READ != 0,
            writable: topic.perm & perm::WRITE != 0,
            name: topic.name,
            queues: topic.queues,
            perm: topic.perm,
        }
    }
}

#[derive(Serialize, ToSchema)]
struct QueueView {
    queue: u32,
    /// Oldest offset still stored.
    min_offset: u64,
    /// Offset the next message gets.
    max_offset: u64,
}

#[derive(Serialize, ToSchema)]
struct TopicDetail {
    #[serde(flatten)]
    topic: TopicView,
    /// Messages stored in all queues.
    messages: u64,
    queue_offsets: Vec<QueueView>,
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct TopicPageQuery {
    /// Topics after this name (the `next` of the previous page).
    after: Option<String>,
    /// At most this many (default 100, at most 1000).
    limit: Option<usize>,
}

/// `GET /v1/topics`: topics in name order, a page at a time.
#[utoipa::path(
    get,
    path = "/v1/topics",
    params(TopicPageQuery),
    responses(
        (status = 200, description = "A page of topics", body = Page<TopicView>),
        (status = 400, description = "Bad parameters", body = ErrorBody),
    ),
    tag = "topics"
)]
async fn list(
    State(core): State<Arc<BrokerCore>>,
    query: Result<Query<TopicPageQuery>, QueryRejection>,
) -> Result<Json<Page<TopicView>>, ApiError> {
    let Query(query) = query?;
    let limit = page_limit(query.limit, 100)?;
    let topics = core
        .store
        .topics()
        .into_iter()
        .filter(|t| query.after.as_ref().is_none_or(|after| t.name > *after));
    Ok(Json(Page::of(topics.map(TopicView::from), limit, |t| {
        t.name.clone()
    })))
}

/// Permissions in a request: `"rw"`, `"r"`, `"w"` or `"-"` (neither).
fn parse_perm(text: &str) -> Result<u8, ApiError> {
    match text {
        "rw" => Ok(perm::READ_WRITE),
        "r" => Ok(perm::READ),
        "w" => Ok(perm::WRITE),
        "-" => Ok(0),
        other => Err(bad_request(format!(
            "perm must be \"rw\", \"r\", \"w\" or \"-\", not {other:?}"
        ))),
    }
}

fn check_queues(core: &BrokerCore, queues: u32) -> Result<(), ApiError> {
    let max = core.config.topics.max_queues;
    if queues == 0 || queues > max {
        return Err(bad_request(format!("queues must be in 1..={max}")));
    }
    Ok(())
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateRequest {
    #[schema(pattern = "^[%|a-zA-Z0-9_-]{1,127}$")]
    name: String,
    /// Default: the broker's `topics.default_queues`.
    queues: Option<u32>,
    /// `"rw"` (default), `"r"`, `"w"` or `"-"`.
    #[schema(pattern = "^(rw|r|w|-)$")]
    perm: Option<String>,
}

fn conflict(code: &'static str, message: String) -> ApiError {
    ApiError {
        status: StatusCode::CONFLICT,
        code,
        message,
        retriable: false,
    }
}

/// `POST /v1/topics`: creates a topic; 201 when created, 200 when it already exists exactly
/// so, 409 when it exists differently.
#[utoipa::path(
    post,
    path = "/v1/topics",
    request_body = CreateRequest,
    responses(
        (status = 201, description = "Created", body = TopicView),
        (status = 200, description = "Already exists exactly so", body = TopicView),
        (status = 400, description = "Bad name, queue count or perm", body = ErrorBody),
        (status = 409, description = "Exists differently, limit reached, or not the leader", body = ErrorBody),
        (status = 503, description = "Outcome unknown (leadership changed meanwhile)", body = ErrorBody),
    ),
    tag = "topics"
)]
async fn create(
    State(core): State<Arc<BrokerCore>>,
    request: Result<Json<CreateRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<TopicView>), ApiError> {
    let Json(request) = request?;
    validate_topic(&request.name).map_err(bad_request)?;
    let queues = request.queues.unwrap_or(core.config.topics.default_queues);
    check_queues(&core, queues)?;
    let topic = TopicConfig {
        name: request.name,
        queues,
        perm: parse_perm(request.perm.as_deref().unwrap_or("rw"))?,
    };
    if let Some(existing) = core.store.topic(&topic.name) {
        return same_or_conflict(existing, topic);
    }
    let limit = core.config.topics.max_topics as usize;
    if core.store.topic_count() >= limit {
        return Err(conflict(
            "limit_reached",
            format!("this broker's limit of {limit} topics is reached"),
        ));
    }
    match core.propose(encode_create_topic(&topic)).await {
        Ok(ApplyOutcome::TopicCreated { created: true }) => {
            core.metrics.topics.set(core.store.topic_count() as i64);
            Ok((StatusCode::CREATED, Json(topic.into())))
        }
        // Created meanwhile by someone else (a producer's auto-creation, another request).
        Ok(ApplyOutcome::TopicCreated { created: false }) => match core.store.topic(&topic.name) {
            Some(existing) => same_or_conflict(existing, topic),
            None => Err(ApiError::internal("topic vanished after creation".into())),
        },
        Ok(other) => Err(ApiError::internal(format!("unexpected outcome {other:?}"))),
        Err(err) => Err(propose_error(&core, err)),
    }
}

fn same_or_conflict(
    existing: TopicConfig,
    wanted: TopicConfig,
) -> Result<(StatusCode, Json<TopicView>), ApiError> {
    if existing == wanted {
        return Ok((StatusCode::OK, Json(existing.into())));
    }
    Err(conflict(
        "topic_exists",
        format!(
            "topic {:?} already exists with {} queues and perm {}; update it instead",
            existing.name, existing.queues, existing.perm
        ),
    ))
}

fn existing(core: &BrokerCore, name: &str) -> Result<TopicConfig, ApiError> {
    validate_topic(name).map_err(bad_request)?;
    core.store
        .topic(name)
        .ok_or_else(|| ApiError::not_found(format!("topic {name:?} does not exist")))
}

/// `GET /v1/topics/{topic}`: the topic with its queues' offsets.
#[utoipa::path(
    get,
    path = "/v1/topics/{topic}",
    params(("topic" = String, Path, description = "Topic name", pattern = "^[%|a-zA-Z0-9_-]{1,127}$")),
    responses(
        (status = 200, body = TopicDetail),
        (status = 400, description = "Bad topic name", body = ErrorBody),
        (status = 404, description = "No such topic", body = ErrorBody),
    ),
    tag = "topics"
)]
async fn show(
    State(core): State<Arc<BrokerCore>>,
    Path(name): Path<String>,
) -> Result<Json<TopicDetail>, ApiError> {
    let topic = existing(&core, &name)?;
    let queue_offsets: Vec<QueueView> = core
        .store
        .queue_offsets(&name)
        .unwrap_or_default()
        .into_iter()
        .map(|(queue, min_offset, max_offset)| QueueView {
            queue,
            min_offset,
            max_offset,
        })
        .collect();
    Ok(Json(TopicDetail {
        messages: queue_offsets
            .iter()
            .map(|q| q.max_offset - q.min_offset)
            .sum(),
        queue_offsets,
        topic: topic.into(),
    }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct UpdateRequest {
    /// More queues (never fewer: messages in removed queues would become unreachable).
    queues: Option<u32>,
    /// `"rw"`, `"r"`, `"w"` or `"-"`.
    #[schema(pattern = "^(rw|r|w|-)$")]
    perm: Option<String>,
}

/// `PATCH /v1/topics/{topic}`: new permissions or more queues.
#[utoipa::path(
    patch,
    path = "/v1/topics/{topic}",
    params(("topic" = String, Path, description = "Topic name", pattern = "^[%|a-zA-Z0-9_-]{1,127}$")),
    request_body = UpdateRequest,
    responses(
        (status = 200, body = TopicView),
        (status = 400, description = "Bad request, or fewer queues", body = ErrorBody),
        (status = 404, description = "No such topic", body = ErrorBody),
        (status = 409, description = "Not the leader, or refused", body = ErrorBody),
        (status = 503, description = "Outcome unknown", body = ErrorBody),
    ),
    tag = "topics"
)]
async fn update(
    State(core): State<Arc<BrokerCore>>,
    Path(name): Path<String>,
    request: Result<Json<UpdateRequest>, JsonRejection>,
) -> Result<Json<TopicView>, ApiError> {
    let Json(request) = request?;
    let current = existing(&core, &name)?;
    let mut updated = current.clone();
    if let Some(queues) = request.queues {
        check_queues(&core, queues)?;
        if queues < current.queues {
            return Err(bad_request(format!(
                "topic {name:?} has {} queues; queues cannot be removed (messages in them would \
                 become unreachable)",
                current.queues
            )));
        }
        updated.queues = queues;
    }
    if let Some(perm) = &request.perm {
        updated.perm = parse_perm(perm)?;
    }
    if updated == current {
        return Ok(Json(current.into()));
    }
    match core.propose(encode_update_topic(&updated)).await {
        Ok(ApplyOutcome::TopicUpdated) => Ok(Json(updated.into())),
        Ok(ApplyOutcome::Rejected(reason)) => Err(conflict("not_updated", reason)),
        Ok(other) => Err(ApiError::internal(format!("unexpected outcome {other:?}"))),
        Err(err) => Err(propose_error(&core, err)),
    }
}

#[derive(Serialize, ToSchema)]
struct Deleted {
    deleted: String,
}

/// `DELETE /v1/topics/{topic}`: removes the topic, its queues and the offsets committed on
/// it. Its messages stay in the commit log until retention removes them. With topic
/// auto-creation on, a producer that keeps sending creates it again.
#[utoipa::path(
    delete,
    path = "/v1/topics/{topic}",
    params(("topic" = String, Path, description = "Topic name", pattern = "^[%|a-zA-Z0-9_-]{1,127}$")),
    responses(
        (status = 200, body = Deleted),
        (status = 400, description = "Bad topic name", body = ErrorBody),
        (status = 404, description = "No such topic", body = ErrorBody),
        (status = 409, description = "Not the leader", body = ErrorBody),
        (status = 503, description = "Outcome unknown", body = ErrorBody),
    ),
    tag = "topics"
)]
async fn delete(
    State(core): State<Arc<BrokerCore>>,
    Path(name): Path<String>,
) -> Result<Json<Deleted>, ApiError> {
    existing(&core, &name)?;
    let delete = DeleteTopic { name: name.clone() };
    match core.propose(encode_delete_topic(&delete)).await {
        Ok(ApplyOutcome::TopicDeleted) => {
            core.metrics.topics.set(core.store.topic_count() as i64);
            Ok(Json(Deleted { deleted: name }))
        }
        Ok(ApplyOutcome::Rejected(reason)) => Err(ApiError::not_found(reason)),
        Ok(other) => Err(ApiError::internal(format!("unexpected outcome {other:?}"))),
        Err(err) => Err(propose_error(&core, err)),
    }
}
