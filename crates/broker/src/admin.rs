//! The broker's admin HTTP routes beyond the probes: `/v1/broker`, `/v1/raft`, `/v1/topics`.

use std::sync::Arc;

use axum::{extract::State, routing::get, Json, Router};
use ferromq_protocol::headers::TopicConfig;
use ferromq_raftlog::{RaftStatus, Role};
use ferromq_service::admin::Readiness;
use serde::Serialize;

use crate::core::BrokerCore;

/// Ready when the store is open, Raft has not failed, a leader is known and this node has
/// applied everything it knows to be committed.
pub struct BrokerReadiness(pub Arc<BrokerCore>);

impl Readiness for BrokerReadiness {
    fn readiness(&self) -> Result<(), String> {
        let status = self.0.raft.status();
        if let Some(failed) = status.failed {
            return Err(format!("raft stopped: {failed}"));
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
        .route("/v1/topics", get(topics))
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

async fn raft(State(core): State<Arc<BrokerCore>>) -> Json<RaftStatus> {
    Json(core.raft.status())
}

async fn topics(State(core): State<Arc<BrokerCore>>) -> Json<Vec<TopicConfig>> {
    Json(core.store.topics())
}
