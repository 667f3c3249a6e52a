//! `/v1/broker`, `/v1/raft`: this member, its Raft state, membership changes and leadership
//! transfer.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::{
    extract::{
        rejection::{JsonRejection, QueryRejection},
        Query, State,
    },
    http::StatusCode,
    routing::{get, post},
    Json, Router,
};
use ferromq_raftlog::{
    MemberAddress, MembershipChange, MembershipError, PeerProgress, RaftStatus, Role,
};
use ferromq_service::admin::{ApiError, ErrorBody};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::leader_hint;
use crate::core::BrokerCore;

#[derive(utoipa::OpenApi)]
#[openapi(
    paths(broker, raft, members, change_members, transfer_leader),
    components(schemas(
        BrokerView,
        RaftView,
        PeerView,
        MemberRequest,
        MembersView,
        Transferred
    ))
)]
pub(super) struct NodeApi;

pub(super) fn routes() -> Router<Arc<BrokerCore>> {
    Router::new()
        .route("/v1/broker", get(broker))
        .route("/v1/raft", get(raft))
        .route("/v1/raft:transfer-leader", post(transfer_leader))
        .route("/v1/raft/members", get(members).post(change_members))
}

#[derive(Serialize, ToSchema)]
struct BrokerView {
    cluster: String,
    group: String,
    node_id: u64,
    version: &'static str,
    client_addr: String,
    #[schema(value_type = String)]
    role: Role,
    uptime_seconds: u64,
    topics: usize,
    commitlog_bytes: u64,
}
/// This broker: cluster, group, node, role, addresses, uptime, topic count, log size.
#[utoipa::path(get, path = "/v1/broker", responses((status = 200, body = BrokerView)), tag = "raft")]
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
#[derive(Serialize, ToSchema)]
struct PeerView {
    /// Member id, match and next index, state.
    #[serde(flatten)]
    #[schema(value_type = Object)]
    progress: PeerProgress,
    /// Entries the member is behind the leader's log.
    lag: u64,
}

#[derive(Serialize, ToSchema)]
struct RaftView {
    /// Term, role, leader, commit/applied/first/last index, voters, learners.
    #[serde(flatten)]
    #[schema(value_type = Object)]
    status: RaftStatus,
    /// Replication progress of every member (only on the leader).
    peers: Vec<PeerView>,
}

/// Raft state of this member, with every member's replication progress on the leader.
#[utoipa::path(get, path = "/v1/raft", responses((status = 200, body = RaftView)), tag = "raft")]
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
#[derive(Debug, Deserialize, ToSchema)]
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

#[derive(Serialize, ToSchema)]
struct MembersView {
    voters: Vec<u64>,
    learners: Vec<u64>,
    /// Member id → its raft and client addresses.
    #[schema(value_type = Object)]
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

#[utoipa::path(get, path = "/v1/raft/members", responses((status = 200, body = MembersView)), tag = "raft")]
async fn members(State(core): State<Arc<BrokerCore>>) -> Json<MembersView> {
    Json(members_view(&core))
}

/// Adds a learner (promoted to voter once caught up) or removes a member; on the leader.
#[utoipa::path(
    post,
    path = "/v1/raft/members",
    request_body = MemberRequest,
    responses(
        (status = 200, body = MembersView),
        (status = 400, description = "Invalid change", body = ErrorBody),
        (status = 409, description = "Not the leader, a change in progress, or no peer network", body = ErrorBody),
        (status = 503, description = "Outcome unknown", body = ErrorBody),
    ),
    tag = "raft"
)]
async fn change_members(
    State(core): State<Arc<BrokerCore>>,
    request: Result<Json<MemberRequest>, JsonRejection>,
) -> Result<Json<MembersView>, ApiError> {
    let Json(request) = request?;
    if core.peer_client.is_none() {
        return Err(ApiError {
            status: StatusCode::CONFLICT,
            code: "no_peer_network",
            message: "this broker was started without raft.peers: it has no peer port and its \
                      group cannot change; restart it with raft.peers listing itself"
                .into(),
            retriable: false,
        });
    }
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

#[derive(Serialize, ToSchema)]
struct Transferred {
    leader_id: u64,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct TransferTarget {
    /// Member to hand leadership to; by default the most caught-up voter.
    to: Option<u64>,
}

/// Hands leadership to `to`, or to the most caught-up voter.
#[utoipa::path(
    post,
    path = "/v1/raft:transfer-leader",
    params(TransferTarget),
    responses(
        (status = 200, body = Transferred),
        (status = 400, description = "Bad parameters", body = ErrorBody),
        (status = 409, description = "Not transferred (alone, not the leader, no such voter)", body = ErrorBody),
    ),
    tag = "raft"
)]
async fn transfer_leader(
    State(core): State<Arc<BrokerCore>>,
    target: Result<Query<TransferTarget>, QueryRejection>,
) -> Result<Json<Transferred>, ApiError> {
    let Query(target) = target?;
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
