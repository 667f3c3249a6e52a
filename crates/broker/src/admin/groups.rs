//! `/v1/groups`: consumer groups (live members and committed offsets), their lag, and
//! offset resets.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;
use axum::{
    extract::{
        rejection::{JsonRejection, QueryRejection},
        Path, Query, State,
    },
    Json,
};
use ferromq_protocol::headers::ConsumeMode;
use ferromq_protocol::message::validate_group;
use ferromq_service::admin::ApiError;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use ferromq_service::admin::{bad_request, page_limit, ErrorBody, Page};

use super::{blocking_store, propose_error};
use crate::consumers::MemberView;
use crate::core::BrokerCore;

#[derive(utoipa::OpenApi)]
#[openapi(
    paths(list, show, lag, reset_offsets),
    components(schemas(
        GroupSummary,
        GroupDetail,
        Subscription,
        TopicLagSummary,
        MemberView,
        TopicLag,
        ResetRequest,
        ResetView,
        Page<GroupSummary>
    ))
)]
pub(super) struct GroupsApi;

pub(super) fn routes() -> Router<Arc<BrokerCore>> {
    Router::new()
        .route("/v1/groups", get(list))
        .route("/v1/groups/{group}", get(show))
        .route("/v1/groups/{group}/lag", get(lag))
        .route("/v1/groups/{group}/offsets:reset", post(reset_offsets))
}

/// Where to move a group's offsets of one topic: exactly one of `to` (`"first"` or
/// `"last"`), `timestamp_ms` (the first message stored at or after it) or `offset`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ResetRequest {
    topic: String,
    to: Option<String>,
    timestamp_ms: Option<u64>,
    offset: Option<u64>,
}

#[derive(Serialize, ToSchema)]
struct ResetView {
    group: String,
    topic: String,
    /// (queue id, new offset)
    #[schema(value_type = Vec<Vec<u64>>)]
    offsets: Vec<(u32, u64)>,
}

/// Moves a group's committed offsets (through Raft) and tells its running members, which drop
/// their positions and continue from the new offsets.
#[utoipa::path(
    post,
    path = "/v1/groups/{group}/offsets:reset",
    params(("group" = String, Path, description = "Consumer group", pattern = "^[%|a-zA-Z0-9_-]{1,120}$")),
    request_body = ResetRequest,
    responses(
        (status = 200, body = ResetView),
        (status = 400, description = "Bad request", body = ErrorBody),
        (status = 404, description = "No such topic", body = ErrorBody),
        (status = 409, description = "Not the leader", body = ErrorBody),
        (status = 503, description = "Outcome unknown", body = ErrorBody),
    ),
    tag = "groups"
)]
async fn reset_offsets(
    State(core): State<Arc<BrokerCore>>,
    Path(group): Path<String>,
    request: Result<Json<ResetRequest>, JsonRejection>,
) -> Result<Json<ResetView>, ApiError> {
    let Json(request) = request?;
    ferromq_protocol::message::validate_group(&group)
        .and_then(|()| ferromq_protocol::message::validate_topic(&request.topic))
        .map_err(bad_request)?;
    enum Target {
        First,
        Last,
        Time(u64),
        Offset(u64),
    }
    let target =
        match (&request.to, request.timestamp_ms, request.offset) {
            (Some(to), None, None) if to == "first" => Target::First,
            (Some(to), None, None) if to == "last" => Target::Last,
            (None, Some(time), None) => Target::Time(time),
            (None, None, Some(offset)) => Target::Offset(offset),
            _ => return Err(bad_request(
                "give exactly one of \"to\": \"first\"|\"last\", \"timestamp_ms\" or \"offset\""
                    .into(),
            )),
        };
    let topic = request.topic;
    let Some(queues) = core.store.queue_offsets(&topic) else {
        return Err(ApiError::not_found(format!(
            "topic {topic:?} does not exist"
        )));
    };
    let store = core.store.clone();
    let search_topic = topic.clone();
    let offsets = tokio::task::spawn_blocking(move || {
        queues
            .into_iter()
            .map(|(queue_id, min, max)| {
                let offset = match target {
                    Target::First => min,
                    Target::Last => max,
                    Target::Offset(offset) => offset.clamp(min, max),
                    Target::Time(time) => store.search_offset(&search_topic, queue_id, time)?,
                };
                Ok((queue_id, offset))
            })
            .collect::<Result<Vec<(u32, u64)>, ferromq_store::StoreError>>()
    })
    .await
    .map_err(|err| ApiError::internal(err.to_string()))?
    .map_err(|err| ApiError::internal(err.to_string()))?;
    let command = ferromq_store::command::CommitOffsets {
        group: group.clone(),
        offsets: offsets
            .iter()
            .map(|(queue_id, offset)| (topic.clone(), *queue_id, *offset))
            .collect(),
    };
    let outcome = core
        .propose(ferromq_store::command::encode_commit_offsets(&command))
        .await;
    match outcome {
        Ok(ferromq_store::ApplyOutcome::OffsetsCommitted) => {}
        Ok(other) => return Err(ApiError::internal(format!("unexpected outcome {other:?}"))),
        Err(err) => return Err(propose_error(&core, err)),
    }
    core.consumers.notify_with(&group, Some(&topic));
    Ok(Json(ResetView {
        group,
        topic,
        offsets,
    }))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct LagQuery {
    topic: Option<String>,
}

#[derive(Serialize, ToSchema)]
struct TopicLag {
    topic: String,
    /// Messages not consumed yet, over all queues of this broker group.
    total_lag: u64,
    /// Age of the oldest unconsumed message, in seconds.
    oldest_unconsumed_seconds: Option<f64>,
    /// Per queue: committed, min and max offset, lag, oldest unconsumed store time.
    #[schema(value_type = Vec<Object>)]
    queues: Vec<ferromq_store::QueueLag>,
}

/// How far a group is behind on this broker group's queues: of one topic, or of every topic
/// the group has committed offsets for.
#[utoipa::path(
    get,
    path = "/v1/groups/{group}/lag",
    params(("group" = String, Path, description = "Consumer group", pattern = "^[%|a-zA-Z0-9_-]{1,120}$"), LagQuery),
    responses(
        (status = 200, body = Vec<TopicLag>),
        (status = 400, description = "Bad group name", body = ErrorBody),
    ),
    tag = "groups"
)]
async fn lag(
    State(core): State<Arc<BrokerCore>>,
    Path(group): Path<String>,
    query: Result<Query<LagQuery>, QueryRejection>,
) -> Result<Json<Vec<TopicLag>>, ApiError> {
    let Query(query) = query?;
    ferromq_protocol::message::validate_group(&group).map_err(bad_request)?;
    let store = core.store.clone();
    let lags = tokio::task::spawn_blocking(move || {
        let topics: Vec<String> = match query.topic {
            Some(topic) => vec![topic],
            None => store
                .consumer_groups()?
                .into_iter()
                .filter(|(g, _)| *g == group)
                .map(|(_, topic)| topic)
                .collect(),
        };
        let mut lags = Vec::new();
        for topic in topics {
            if let Some(queues) = store.group_lag(&group, &topic)? {
                lags.push((topic, queues));
            }
        }
        Ok::<_, ferromq_store::StoreError>(lags)
    })
    .await
    .map_err(|err| ApiError::internal(err.to_string()))?
    .map_err(|err| ApiError::internal(err.to_string()))?;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    Ok(Json(
        lags.into_iter()
            .map(|(topic, queues)| TopicLag {
                topic,
                total_lag: queues.iter().map(|q| q.lag).sum(),
                oldest_unconsumed_seconds: queues
                    .iter()
                    .filter_map(|q| q.oldest_unconsumed_ms)
                    .min()
                    .map(|t| now_ms.saturating_sub(t) as f64 / 1000.0),
                queues,
            })
            .collect(),
    ))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct GroupPageQuery {
    /// Groups after this name (the `next` of the previous page).
    after: Option<String>,
    /// At most this many (default 100, at most 1000).
    limit: Option<usize>,
}

#[derive(Serialize, ToSchema)]
struct GroupSummary {
    group: String,
    /// Clustering or broadcast, from its live members; absent when none is connected.
    #[schema(value_type = Option<String>)]
    mode: Option<ConsumeMode>,
    /// Live members connected to this broker.
    members: usize,
    /// Topics the group subscribes to or committed offsets on.
    topics: Vec<String>,
}

/// Every group this broker knows: with live members, or with committed offsets (a group
/// whose members are all gone still has a backlog worth seeing).
fn known_groups(core: &BrokerCore) -> Result<BTreeMap<String, GroupSummary>, ApiError> {
    let mut groups: BTreeMap<String, GroupSummary> = BTreeMap::new();
    let stored = core
        .store
        .consumer_groups()
        .map_err(|err| ApiError::internal(err.to_string()))?;
    for (group, topic) in stored {
        groups
            .entry(group.clone())
            .or_insert_with(|| GroupSummary {
                group,
                mode: None,
                members: 0,
                topics: Vec::new(),
            })
            .topics
            .push(topic);
    }
    for view in core.consumers.views() {
        let summary = groups
            .entry(view.group.clone())
            .or_insert_with(|| GroupSummary {
                group: view.group.clone(),
                mode: None,
                members: 0,
                topics: Vec::new(),
            });
        summary.members = view.members.len();
        for member in &view.members {
            summary.mode = Some(member.mode);
            if !summary.topics.contains(&member.topic) {
                summary.topics.push(member.topic.clone());
            }
        }
    }
    for summary in groups.values_mut() {
        summary.topics.sort();
        summary.topics.dedup();
    }
    Ok(groups)
}

/// `GET /v1/groups`: groups in name order, a page at a time.
#[utoipa::path(
    get,
    path = "/v1/groups",
    params(GroupPageQuery),
    responses(
        (status = 200, body = Page<GroupSummary>),
        (status = 400, description = "Bad parameters", body = ErrorBody),
    ),
    tag = "groups"
)]
async fn list(
    State(core): State<Arc<BrokerCore>>,
    query: Result<Query<GroupPageQuery>, QueryRejection>,
) -> Result<Json<Page<GroupSummary>>, ApiError> {
    let Query(query) = query?;
    let limit = page_limit(query.limit, 100)?;
    let groups = known_groups(&core)?;
    let items = groups
        .into_values()
        .filter(|g| query.after.as_ref().is_none_or(|after| g.group > *after));
    Ok(Json(Page::of(items, limit, |g| g.group.clone())))
}

#[derive(Serialize, ToSchema)]
struct Subscription {
    topic: String,
    /// The tag expression, as members sent it.
    expression: String,
}

#[derive(Serialize, ToSchema)]
struct GroupDetail {
    group: String,
    #[schema(value_type = Option<String>)]
    mode: Option<ConsumeMode>,
    members: Vec<MemberView>,
    subscriptions: Vec<Subscription>,
    /// Backlog per topic the group committed offsets on (see `/lag` for each queue).
    lag: Vec<TopicLagSummary>,
}

#[derive(Serialize, ToSchema)]
struct TopicLagSummary {
    topic: String,
    total_lag: u64,
}

/// `GET /v1/groups/{group}`: members, subscriptions, mode and backlog.
#[utoipa::path(
    get,
    path = "/v1/groups/{group}",
    params(("group" = String, Path, description = "Consumer group", pattern = "^[%|a-zA-Z0-9_-]{1,120}$")),
    responses(
        (status = 200, body = GroupDetail),
        (status = 400, description = "Bad group name", body = ErrorBody),
        (status = 404, description = "Unknown group", body = ErrorBody),
    ),
    tag = "groups"
)]
async fn show(
    State(core): State<Arc<BrokerCore>>,
    Path(group): Path<String>,
) -> Result<Json<GroupDetail>, ApiError> {
    validate_group(&group).map_err(bad_request)?;
    let Some(summary) = known_groups(&core)?.remove(&group) else {
        return Err(ApiError::not_found(format!(
            "no consumer group {group:?}: no live member and no committed offset here"
        )));
    };
    let members = core
        .consumers
        .views()
        .into_iter()
        .find(|v| v.group == group)
        .map(|v| v.members)
        .unwrap_or_default();
    let mut subscriptions: Vec<Subscription> = Vec::new();
    for member in &members {
        let known = subscriptions
            .iter()
            .any(|s| s.topic == member.topic && s.expression == member.expression);
        if !known {
            subscriptions.push(Subscription {
                topic: member.topic.clone(),
                expression: member.expression.clone(),
            });
        }
    }
    let store = core.store.clone();
    let lag_group = group.clone();
    let lag = blocking_store(move || {
        let mut lag = Vec::new();
        for topic in summary.topics {
            if let Some(queues) = store.group_lag(&lag_group, &topic)? {
                lag.push(TopicLagSummary {
                    total_lag: queues.iter().map(|q| q.lag).sum(),
                    topic,
                });
            }
        }
        Ok(lag)
    })
    .await?;
    Ok(Json(GroupDetail {
        group,
        mode: summary.mode,
        members,
        subscriptions,
        lag,
    }))
}
