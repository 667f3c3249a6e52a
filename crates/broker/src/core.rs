//! State shared by every part of a running broker.

use std::sync::Arc;
use std::time::Instant;

use ferromq_raftlog::{Members, ProposeError, RaftNode};
use ferromq_store::{ApplyOutcome, Store};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::BrokerConfig;
use crate::consumers::ConsumerRegistry;
use crate::metrics::BrokerMetrics;
use crate::notifier::QueueNotifier;
use crate::producers::ProducerRegistry;
use crate::replies::ReplyRegistry;
use crate::scheduler::Scheduler;

pub struct BrokerCore {
    pub config: BrokerConfig,
    pub store: Arc<Store>,
    pub raft: RaftNode<ApplyOutcome>,
    /// Where the group's members are reached (configured, and learned from the log).
    pub members: Members,
    /// Consumer groups and their live members.
    pub consumers: ConsumerRegistry,
    pub notifier: Arc<QueueNotifier>,
    /// The leader's timer state for scheduled messages (and decisions about half messages).
    pub scheduler: Scheduler,
    /// Live transactional producers, to ask about undecided transactions.
    pub producers: ProducerRegistry,
    /// Requesters waiting for replies, by the connection their requests came over.
    pub replies: ReplyRegistry,
    pub metrics: BrokerMetrics,
    /// Who may connect and do what (`[auth]`).
    pub access: ferromq_service::auth::Access,
    /// How far groups were delivered, for the in-flight gauge.
    pub deliveries: crate::deliveries::Deliveries,
    pub topics_changed: watch::Receiver<u64>,
    /// How this broker connects to its peers' peer ports (none without peers).
    pub peer_client: Option<Arc<ferromq_transport::TransportConfig>>,
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

    /// Proposes an entry only if this node still leads in `term`.
    pub async fn propose_in_term(
        &self,
        payload: Vec<u8>,
        term: u64,
    ) -> Result<ApplyOutcome, ProposeError> {
        self.raft.propose_in_term(payload, term).await
    }

    /// Client address of the group member with this Raft id, if known.
    pub fn member_addr(&self, node_id: u64) -> Option<String> {
        if node_id == self.config.node_id {
            return Some(self.advertised_addr.clone());
        }
        self.members.get(node_id).map(|m| m.client_addr)
    }

    /// True when the group has voters besides this broker.
    pub fn has_peers(&self) -> bool {
        self.raft
            .status()
            .voters
            .iter()
            .any(|id| *id != self.config.node_id)
    }
}
