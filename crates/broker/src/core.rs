//! State shared by every part of a running broker.

use std::sync::Arc;
use std::time::Instant;

use ferromq_raftlog::{ProposeError, RaftNode};
use ferromq_store::{ApplyOutcome, Store};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::BrokerConfig;
use crate::metrics::BrokerMetrics;
use crate::notifier::QueueNotifier;

pub struct BrokerCore {
    pub config: BrokerConfig,
    pub store: Arc<Store>,
    pub raft: RaftNode<ApplyOutcome>,
    pub notifier: Arc<QueueNotifier>,
    pub metrics: BrokerMetrics,
    pub topics_changed: watch::Receiver<u64>,
    /// Client address announced to nameservers.
    pub advertised_addr: String,
    pub admin_addr: String,
    pub started: Instant,
    /// Cancelled when the broker shuts down; long polls end early on it.
    pub shutdown: CancellationToken,
}

impl BrokerCore {
    /// Proposes an entry and waits for its apply outcome.
    pub async fn propose(&self, payload: Vec<u8>) -> Result<ApplyOutcome, ProposeError> {
        self.raft.propose(payload).await
    }

    /// Client address of the group member with this Raft id, if known. Only this broker's
    /// own address is known until groups have several members.
    pub fn member_addr(&self, node_id: u64) -> Option<String> {
        (node_id == self.config.node_id).then(|| self.advertised_addr.clone())
    }
}
