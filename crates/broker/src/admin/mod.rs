//! The broker's admin HTTP routes beyond the probes: `/v1/broker`, `/v1/raft`, `/v1/topics`,
//! groups and their lag and offsets, messages and their traces, dead letters.

use std::sync::Arc;

use axum::{http::StatusCode, Router};
use ferromq_service::admin::{ApiError, Readiness};
use utoipa::OpenApi;

use crate::core::BrokerCore;

mod dlq;
mod groups;
mod messages;
mod node;
mod topics;

pub use node::hand_over_leadership;

/// The broker admin API's OpenAPI document (checked in as docs/openapi/broker.json).
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut api = node::NodeApi::openapi();
    api.merge(topics::TopicsApi::openapi());
    api.merge(groups::GroupsApi::openapi());
    api.merge(messages::MessagesApi::openapi());
    api.merge(dlq::DlqApi::openapi());
    ferromq_service::admin::openapi_document(api, "FerroMQ broker admin API")
}

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

pub fn router(core: Arc<BrokerCore>) -> Router {
    Router::new()
        .merge(node::routes())
        .merge(topics::routes())
        .merge(groups::routes())
        .merge(messages::routes())
        .merge(dlq::routes())
        .with_state(core)
}

/// Where to send a request this broker refused as not the leader.
fn leader_hint(core: &BrokerCore, leader_id: Option<u64>) -> String {
    leader_id
        .and_then(|id| core.member_addr(id).map(|addr| (id, addr)))
        .map_or_else(String::new, |(id, addr)| {
            format!("; send it to node {id} (client address {addr})")
        })
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
