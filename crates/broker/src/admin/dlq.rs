//! `/v1/dlq/{group}`: a consumer group's dead letters, and re-sending them.

use std::sync::Arc;

use axum::{
    extract::{
        rejection::{JsonRejection, QueryRejection},
        Path, Query, State,
    },
    routing::get,
    Json, Router,
};
use ferromq_protocol::system::{
    dlq_topic, retry_topic, PROPERTY_ORIGIN_QUEUE, PROPERTY_ORIGIN_TOPIC,
};
use ferromq_service::admin::{bad_request, page_limit, ApiError, ErrorBody};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::messages::{message_view, MessageView};
use super::{blocking_store, propose_error};
use crate::core::BrokerCore;

#[derive(utoipa::OpenApi)]
#[openapi(
    paths(dlq_list, dlq_resend),
    components(schemas(DlqPage, ResendRequest, ResendView, MessageView))
)]
pub(super) struct DlqApi;

pub(super) fn routes() -> Router<Arc<BrokerCore>> {
    // `POST /v1/dlq/{group}:resend`: the action is part of the last segment.
    Router::new().route("/v1/dlq/{group}", get(dlq_list).post(dlq_resend))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct PageQuery {
    /// Where to start (the `next_offset` of the previous page); the oldest kept by default.
    offset: Option<u64>,
    /// At most this many (default 32, at most 1000).
    limit: Option<usize>,
}

#[derive(Serialize, ToSchema)]
struct DlqPage {
    group: String,
    topic: String,
    messages: Vec<MessageView>,
    /// Where the next page starts; equal to `end_offset` when this was the last.
    next_offset: u64,
    end_offset: u64,
}

/// `GET /v1/dlq/{group}`: the group's dead letters, oldest first, a page at a time.
#[utoipa::path(
    get,
    path = "/v1/dlq/{group}",
    params(("group" = String, Path, description = "Consumer group", pattern = "^[%|a-zA-Z0-9_-]{1,120}$"), PageQuery),
    responses(
        (status = 200, body = DlqPage),
        (status = 400, description = "Bad parameters", body = ErrorBody),
    ),
    tag = "dlq"
)]
async fn dlq_list(
    State(core): State<Arc<BrokerCore>>,
    Path(group): Path<String>,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Json<DlqPage>, ApiError> {
    let Query(query) = query?;
    ferromq_protocol::message::validate_group(&group).map_err(bad_request)?;
    let topic = dlq_topic(&group);
    let Some(queues) = core.store.queue_offsets(&topic) else {
        return Ok(Json(DlqPage {
            group,
            topic,
            messages: Vec::new(),
            next_offset: 0,
            end_offset: 0,
        }));
    };
    let (_, min, max) = queues.first().copied().unwrap_or((0, 0, 0));
    let from = query.offset.unwrap_or(min).max(min);
    let limit = page_limit(query.limit, 32)?;
    let store = core.store.clone();
    let read_topic = topic.clone();
    let read = blocking_store(move || {
        store.read_queue(&read_topic, 0, from, limit, 16 * 1024 * 1024, &[])
    })
    .await?;
    let messages = read
        .messages
        .into_iter()
        .filter_map(|(at, record)| message_view(&topic, 0, at, record))
        .collect();
    Ok(Json(DlqPage {
        group,
        topic,
        messages,
        next_offset: read.next_offset.max(from),
        end_offset: max,
    }))
}

/// Which dead letters to re-send, and where.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ResendRequest {
    /// Offsets in the dead-letter topic (as listed by `GET /v1/dlq/{group}`).
    offsets: Vec<u64>,
    /// `"topic"` (default): back to the topic it was first sent to, for every group to see;
    /// `"retry"`: to this group's retry topic, for this group only, with a fresh retry count.
    #[serde(default)]
    to: Option<String>,
}

#[derive(Serialize, ToSchema)]
struct ResendView {
    group: String,
    /// (dead-letter offset, topic it went to, message id)
    #[schema(value_type = Vec<Vec<Object>>)]
    resent: Vec<(u64, String, String)>,
}

/// `POST /v1/dlq/{group}:resend`.
#[utoipa::path(
    post,
    path = "/v1/dlq/{group}:resend",
    params(("group" = String, Path, description = "Consumer group", pattern = "^[%|a-zA-Z0-9_-]{1,120}$")),
    request_body = ResendRequest,
    responses(
        (status = 200, body = ResendView),
        (status = 400, description = "Bad request", body = ErrorBody),
        (status = 404, description = "No such dead letter, or its topic is gone", body = ErrorBody),
        (status = 409, description = "Not the leader, or refused (the message says which were re-sent)", body = ErrorBody),
        (status = 503, description = "Outcome unknown", body = ErrorBody),
    ),
    tag = "dlq"
)]
async fn dlq_resend(
    State(core): State<Arc<BrokerCore>>,
    Path(group_action): Path<String>,
    request: Result<Json<ResendRequest>, JsonRejection>,
) -> Result<Json<ResendView>, ApiError> {
    let Some(group) = group_action.strip_suffix(":resend") else {
        return Err(ApiError::not_found(format!(
            "no action in {group_action:?}; POST /v1/dlq/{{group}}:resend"
        )));
    };
    let group = group.to_string();
    ferromq_protocol::message::validate_group(&group).map_err(bad_request)?;
    let Json(request) = request?;
    let to_retry = match request.to.as_deref() {
        None | Some("topic") => false,
        Some("retry") => true,
        Some(other) => {
            return Err(bad_request(format!(
                "\"to\" must be \"topic\" or \"retry\", not {other:?}"
            )))
        }
    };
    if request.offsets.is_empty() || request.offsets.len() > 1000 {
        return Err(bad_request("give 1..=1000 offsets".into()));
    }
    let dlq = dlq_topic(&group);
    let mut resent = Vec::new();
    for offset in request.offsets {
        let store = core.store.clone();
        let read_topic = dlq.clone();
        let read =
            blocking_store(move || store.read_queue(&read_topic, 0, offset, 1, 1, &[])).await?;
        let record = match read.messages.first() {
            Some((at, record)) if *at == offset => record.clone(),
            _ => {
                return Err(ApiError::not_found(format!(
                    "no dead letter of {group:?} at offset {offset}"
                )))
            }
        };
        let mut record = ferromq_protocol::message::decode_record(record)
            .map_err(|err| ApiError::internal(format!("stored record: {err}")))?;
        record.reconsume_times = 0;
        let origin = record.properties.get(PROPERTY_ORIGIN_TOPIC).cloned();
        let (topic, queue_id) = if to_retry {
            let topic = retry_topic(&group);
            crate::handlers::retry::ensure_system_topic(&core, &topic).await;
            (topic, 0)
        } else {
            let Some(topic) = origin else {
                return Err(bad_request(format!(
                    "the dead letter at offset {offset} does not name its original topic"
                )));
            };
            let queues = core.store.topic(&topic).map_or(0, |t| t.queues);
            if queues == 0 {
                return Err(ApiError::not_found(format!(
                    "its original topic {topic:?} no longer exists"
                )));
            }
            let queue = record
                .properties
                .get(PROPERTY_ORIGIN_QUEUE)
                .and_then(|q| q.parse::<u32>().ok())
                .filter(|q| *q < queues)
                .unwrap_or(0);
            (topic, queue)
        };
        let payload = crate::handlers::retry::copy_payload(
            &ferromq_store::command::MessagesKind::Internal,
            (&topic, queue_id),
            &record,
            ferromq_protocol::message::now_millis(),
        );
        match core.propose(payload).await {
            Ok(ferromq_store::ApplyOutcome::Appended { .. }) => {
                resent.push((offset, topic, record.id.to_string()));
            }
            Ok(ferromq_store::ApplyOutcome::Rejected(reason)) => {
                return Err(ApiError {
                    status: axum::http::StatusCode::CONFLICT,
                    code: "not_resent",
                    message: format!(
                        "the dead letter at offset {offset} was not re-sent ({reason}); \
                         re-sent before it: {:?}",
                        resent.iter().map(|(at, _, _)| *at).collect::<Vec<u64>>()
                    ),
                    retriable: false,
                })
            }
            Ok(other) => return Err(ApiError::internal(format!("unexpected outcome {other:?}"))),
            Err(err) => return Err(propose_error(&core, err)),
        }
    }
    Ok(Json(ResendView { group, resent }))
}
