//! The broker's admin HTTP routes beyond the probes: `/v1/broker`, `/v1/raft`, `/v1/topics`,
//! groups and their lag and offsets, messages and their traces, dead letters.

use std::sync::Arc;

use std::time::Duration;

use axum::{
    extract::{
        rejection::{JsonRejection, QueryRejection},
        Path, Query, State,
    },
    http::StatusCode,
    routing::{get, post},
    Json, Router,
};
use ferromq_protocol::system::{
    dlq_topic, retry_topic, PROPERTY_ORIGIN_QUEUE, PROPERTY_ORIGIN_TOPIC,
};
use ferromq_protocol::MessageId;
use ferromq_raftlog::{
    MemberAddress, MembershipChange, MembershipError, PeerProgress, RaftStatus, Role,
};
use ferromq_service::admin::{bad_request, page_limit, ApiError, Readiness};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::core::BrokerCore;

mod groups;
mod topics;

/// Ready when the store is open, Raft has not failed, a leader is known and this node has
/// applied everything it knows to be committed.
pub struct BrokerReadiness(pub Arc<BrokerCore>);

impl Readiness for BrokerReadiness {
    fn readiness(&self) -> Result<(), String> {
        let status = self.0.raft.status();
        if let Some(failed) = status.failed {
            return Err(format!("raft stopped: {failed}"));
        }
        if let Some(until) = status.repairing_until {
            return Err(format!(
                "repairing: the commit log lost entries up to index {until}; fetching them from the leader"
            ));
        }
        if status.leader_id == 0 {
            return Err("no raft leader known".into());
        }
        if status.applied_index < status.commit_index {
            return Err(format!(
                "catching up: applied {} of {} committed entries",
                status.applied_index, status.commit_index
            ));
        }
        if self.0.shutdown.is_cancelled() {
            return Err("shutting down".into());
        }
        Ok(())
    }
}

#[derive(Serialize)]
struct BrokerView {
    cluster: String,
    group: String,
    node_id: u64,
    version: &'static str,
    client_addr: String,
    role: Role,
    uptime_seconds: u64,
    topics: usize,
    commitlog_bytes: u64,
}

pub fn router(core: Arc<BrokerCore>) -> Router {
    Router::new()
        .route("/v1/broker", get(broker))
        .route("/v1/raft", get(raft))
        .route("/v1/raft:transfer-leader", post(transfer_leader))
        .route("/v1/raft/members", get(members).post(change_members))
        .route("/v1/messages", get(messages))
        .route("/v1/messages/{id}", get(message_by_id))
        .route("/v1/messages/{id}/trace", get(message_trace))
        // `POST /v1/dlq/{group}:resend`: the action is part of the last segment.
        .route("/v1/dlq/{group}", get(dlq_list).post(dlq_resend))
        .merge(topics::routes())
        .merge(groups::routes())
        .with_state(core)
}

async fn broker(State(core): State<Arc<BrokerCore>>) -> Json<BrokerView> {
    Json(BrokerView {
        cluster: core.config.cluster.clone(),
        group: core.config.group.clone(),
        node_id: core.config.node_id,
        version: env!("CARGO_PKG_VERSION"),
        client_addr: core.advertised_addr.clone(),
        role: core.raft.status().role,
        uptime_seconds: core.started.elapsed().as_secs(),
        topics: core.store.topic_count(),
        commitlog_bytes: core.store.log_bytes(),
    })
}

#[derive(Serialize)]
struct PeerView {
    #[serde(flatten)]
    progress: PeerProgress,
    /// Entries the member is behind the leader's log.
    lag: u64,
}

#[derive(Serialize)]
struct RaftView {
    #[serde(flatten)]
    status: RaftStatus,
    /// Replication progress of every member (only on the leader).
    peers: Vec<PeerView>,
}

async fn raft(State(core): State<Arc<BrokerCore>>) -> Json<RaftView> {
    let status = core.raft.status();
    let peers = core
        .raft
        .peer_progress()
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|progress| PeerView {
            lag: status.last_index.saturating_sub(progress.match_index),
            progress,
        })
        .collect();
    Json(RaftView { status, peers })
}

/// A membership change: `{"action":"add","id":4,"raft_addr":"…","client_addr":"…"}` adds a
/// learner (promoted to voter once caught up), `{"action":"remove","id":4}` removes a member.
#[derive(Debug, Deserialize)]
#[serde(tag = "action", rename_all = "lowercase", deny_unknown_fields)]
enum MemberRequest {
    Add {
        id: u64,
        raft_addr: String,
        client_addr: String,
    },
    Remove {
        id: u64,
    },
}

#[derive(Serialize)]
struct MembersView {
    voters: Vec<u64>,
    learners: Vec<u64>,
    addresses: BTreeMap<u64, MemberAddress>,
}

fn members_view(core: &BrokerCore) -> MembersView {
    let status = core.raft.status();
    MembersView {
        voters: status.voters,
        learners: status.learners,
        addresses: core.members.all(),
    }
}

async fn members(State(core): State<Arc<BrokerCore>>) -> Json<MembersView> {
    Json(members_view(&core))
}

async fn change_members(
    State(core): State<Arc<BrokerCore>>,
    request: Result<Json<MemberRequest>, JsonRejection>,
) -> Result<Json<MembersView>, ApiError> {
    let Json(request) = request.map_err(|rejection| bad_request(rejection.body_text()))?;
    let change = match request {
        MemberRequest::Add {
            id,
            raft_addr,
            client_addr,
        } => MembershipChange::AddLearner {
            id,
            address: MemberAddress {
                raft_addr,
                client_addr,
            },
        },
        MemberRequest::Remove { id } => MembershipChange::Remove { id },
    };
    core.raft
        .change_membership(change)
        .await
        .map_err(|err| membership_error(&core, err))?;
    Ok(Json(members_view(&core)))
}

fn membership_error(core: &BrokerCore, err: MembershipError) -> ApiError {
    let (status, code, retriable) = match &err {
        MembershipError::NotLeader { .. } => (StatusCode::CONFLICT, "not_leader", true),
        MembershipError::InProgress => (StatusCode::CONFLICT, "change_in_progress", true),
        MembershipError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid_change", false),
        MembershipError::Dropped | MembershipError::Stopped => {
            (StatusCode::SERVICE_UNAVAILABLE, "outcome_unknown", true)
        }
    };
    let mut message = err.to_string();
    if let MembershipError::NotLeader { leader_id } = err {
        message.push_str(&leader_hint(core, leader_id));
    }
    ApiError {
        status,
        code,
        message,
        retriable,
    }
}

/// Where to send a request this broker refused as not the leader.
fn leader_hint(core: &BrokerCore, leader_id: Option<u64>) -> String {
    leader_id
        .and_then(|id| core.member_addr(id).map(|addr| (id, addr)))
        .map_or_else(String::new, |(id, addr)| {
            format!("; send it to node {id} (client address {addr})")
        })
}

#[derive(Serialize)]
struct Transferred {
    leader_id: u64,
}

#[derive(Deserialize)]
struct TransferTarget {
    /// Member to hand leadership to; by default the most caught-up voter.
    to: Option<u64>,
}

async fn transfer_leader(
    State(core): State<Arc<BrokerCore>>,
    target: Result<Query<TransferTarget>, QueryRejection>,
) -> Result<Json<Transferred>, ApiError> {
    let Query(target) = target.map_err(|rejection| bad_request(rejection.body_text()))?;
    match hand_over_leadership(&core, target.to).await {
        Ok(leader_id) => Ok(Json(Transferred { leader_id })),
        Err(message) => Err(ApiError {
            status: StatusCode::CONFLICT,
            code: "not_transferred",
            message,
            retriable: true,
        }),
    }
}

/// Moves leadership to `to` or, by default, to the most caught-up follower, and waits (up to
/// two election timeouts) until this broker is no longer the leader. Returns the new leader.
pub async fn hand_over_leadership(core: &BrokerCore, to: Option<u64>) -> Result<u64, String> {
    if !core.has_peers() {
        return Err("this broker is alone in its group".into());
    }
    if core.raft.status().role != Role::Leader {
        return Err("this broker is not the leader".into());
    }
    let progress = core
        .raft
        .peer_progress()
        .await
        .map_err(|err| err.to_string())?;
    let voters = core.raft.status().voters;
    let target = match to {
        Some(to) if !voters.contains(&to) || to == core.config.node_id => {
            return Err(format!("node {to} is not another voter of this group"));
        }
        Some(to) => to,
        None => progress
            .iter()
            .filter(|p| p.id != core.config.node_id && voters.contains(&p.id))
            .max_by_key(|p| p.match_index)
            .map(|p| p.id)
            .ok_or("no follower to hand over to")?,
    };
    core.raft
        .transfer_leader(target)
        .await
        .map_err(|err| err.to_string())?;
    let mut status = core.raft.subscribe();
    let patience = Duration::from_millis(
        core.config.raft.tick_ms * core.config.raft.election_ticks as u64 * 2,
    );
    let moved = tokio::time::timeout(
        patience,
        status.wait_for(|s| s.role != Role::Leader && s.leader_id != 0),
    )
    .await;
    match moved {
        Ok(Ok(status)) => Ok(status.leader_id),
        _ => Err(format!(
            "leadership did not move to {target} within {patience:?}"
        )),
    }
}

/// Which messages to show: of `topic`, with `key`, stored between `from` and `to` (ms since
/// the epoch), or the ones from `queue` and `offset`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
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

#[derive(Serialize)]
struct MessageView {
    id: String,
    topic: String,
    queue: u32,
    offset: u64,
    tag: Option<String>,
    keys: Vec<String>,
    properties: std::collections::BTreeMap<String, String>,
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

#[derive(Serialize)]
struct GroupConsumption {
    group: String,
    consumed: bool,
    committed_offset: u64,
}

fn message_view(topic: &str, queue: u32, offset: u64, record: bytes::Bytes) -> Option<MessageView> {
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
async fn messages(
    State(core): State<Arc<BrokerCore>>,
    query: Result<Query<MessageQuery>, QueryRejection>,
) -> Result<Json<Vec<MessageView>>, ApiError> {
    let Query(query) = query.map_err(|rejection| bad_request(rejection.body_text()))?;
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
    for (queue, _, _) in store.queue_offsets(topic).unwrap_or_default() {
        let start = store.search_offset(topic, queue, from)?;
        let read = store.read_queue(topic, queue, start, limit, 16 * 1024 * 1024, &[])?;
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

/// Runs blocking store work off the async threads.
async fn blocking_store<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ferromq_store::StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|err| ApiError::internal(err.to_string()))?
        .map_err(|err| ApiError::internal(err.to_string()))
}

/// `GET /v1/messages/{id}`: every stored copy of the message (the original, retries, its dead
/// letter).
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
async fn message_trace(
    State(core): State<Arc<BrokerCore>>,
    Path(id): Path<String>,
) -> Result<Json<ferromq_protocol::headers::MessageTrace>, ApiError> {
    let id = parse_id(&id)?;
    let store = core.store.clone();
    let trace = blocking_store(move || crate::handlers::retry::trace_of(&store, id)).await?;
    if trace.stored.is_none() && trace.scheduled.is_empty() {
        return Err(ApiError::not_found(format!(
            "message {id} is not stored here"
        )));
    }
    Ok(Json(trace))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PageQuery {
    /// Where to start (the `next_offset` of the previous page); the oldest kept by default.
    offset: Option<u64>,
    /// At most this many (default 32, at most 1000).
    limit: Option<usize>,
}

#[derive(Serialize)]
struct DlqPage {
    group: String,
    topic: String,
    messages: Vec<MessageView>,
    /// Where the next page starts; equal to `end_offset` when this was the last.
    next_offset: u64,
    end_offset: u64,
}

/// `GET /v1/dlq/{group}`: the group's dead letters, oldest first, a page at a time.
async fn dlq_list(
    State(core): State<Arc<BrokerCore>>,
    Path(group): Path<String>,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Json<DlqPage>, ApiError> {
    let Query(query) = query.map_err(|rejection| bad_request(rejection.body_text()))?;
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
    let limit = query.limit.unwrap_or(32).clamp(1, 1000);
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
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResendRequest {
    /// Offsets in the dead-letter topic (as listed by `GET /v1/dlq/{group}`).
    offsets: Vec<u64>,
    /// `"topic"` (default): back to the topic it was first sent to, for every group to see;
    /// `"retry"`: to this group's retry topic, for this group only, with a fresh retry count.
    #[serde(default)]
    to: Option<String>,
}

#[derive(Serialize)]
struct ResendView {
    group: String,
    /// (dead-letter offset, topic it went to, message id)
    resent: Vec<(u64, String, String)>,
}

/// `POST /v1/dlq/{group}:resend`.
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
    let Json(request) = request.map_err(|rejection| bad_request(rejection.body_text()))?;
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
            Ok(other) => return Err(ApiError::internal(format!("unexpected outcome {other:?}"))),
            Err(err) => return Err(propose_error(&core, err)),
        }
    }
    Ok(Json(ResendView { group, resent }))
}

/// The answer for a proposal that did not go through.
fn propose_error(core: &BrokerCore, err: ferromq_raftlog::ProposeError) -> ApiError {
    match err {
        ferromq_raftlog::ProposeError::NotLeader { leader_id } => ApiError {
            status: StatusCode::CONFLICT,
            code: "not_leader",
            message: format!(
                "this broker is not the leader{}",
                leader_hint(core, leader_id)
            ),
            retriable: true,
        },
        err => ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "outcome_unknown",
            message: err.to_string(),
            retriable: true,
        },
    }
}
