//! Registration with nameservers: one task per nameserver keeps a connection, registers at
//! once, re-registers every heartbeat interval and immediately when topics or the Raft role
//! change, and unregisters on shutdown. A lost connection is re-established with back-off.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ferromq_protocol::headers::{BrokerRole, RegisterBrokerRequest, UnregisterBrokerRequest};
use ferromq_protocol::{codec, RequestCode};
use ferromq_raftlog::RaftStatus;
use ferromq_raftlog::Role;
use ferromq_transport::{Connection, RejectAll, TransportConfig, TransportError};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::core::BrokerCore;

/// The registration for `status`, and its body (the topics).
pub fn registration(core: &BrokerCore, status: &RaftStatus) -> (RegisterBrokerRequest, Bytes) {
    let request = RegisterBrokerRequest {
        cluster: core.config.cluster.clone(),
        group: core.config.group.clone(),
        node_id: core.config.node_id,
        client_addr: core.advertised_addr.clone(),
        admin_addr: core.admin_addr.clone(),
        role: if status.role == Role::Leader {
            BrokerRole::Leader
        } else {
            BrokerRole::Follower
        },
        term: status.term,
        auto_create_topics: core.config.topics.auto_create,
        default_queues: core.config.topics.default_queues,
    };
    (request, Bytes::from(codec::encode(&core.store.topics())))
}

async fn register(
    core: &BrokerCore,
    connection: &Connection,
    status: &RaftStatus,
) -> Result<(), TransportError> {
    let (request, topics) = registration(core, status);
    connection
        .request(RequestCode::RegisterBroker, &request, topics)
        .await?
        .into_result()
        .map(|_| ())
}

pub async fn run(core: Arc<BrokerCore>, nameserver: String, shutdown: CancellationToken) {
    let transport = Arc::new(TransportConfig {
        credentials: core.config.nameserver_credentials.get(),
        // Checked by config validation at start.
        tls_client: core.config.tls.nameservers().ok().flatten(),
        ..TransportConfig::default()
    });
    let client_id = format!("broker:{}:{}", core.config.group, core.config.node_id);
    let mut topics_changed = core.topics_changed.clone();
    let mut raft_status = core.raft.subscribe();
    let mut backoff = Duration::from_millis(200);
    let mut reported_failure = false;
    loop {
        let connect = Connection::connect(
            &nameserver,
            &client_id,
            transport.clone(),
            Arc::new(RejectAll),
        );
        let connection = tokio::select! {
            connection = connect => connection,
            _ = shutdown.cancelled() => return,
        };
        let connection = match connection {
            Ok(connection) => connection,
            Err(err) => {
                if !reported_failure {
                    warn!(%nameserver, %err, "cannot reach nameserver; retrying");
                    reported_failure = true;
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.cancelled() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        backoff = Duration::from_millis(200);
        reported_failure = false;
        info!(%nameserver, "registering with nameserver");
        loop {
            // Register what this snapshot says, and wait for a change relative to it, so a
            // change during the request is not missed.
            let status = raft_status.borrow_and_update().clone();
            let observed = observe(&status, core.config.node_id);
            // Learners (still catching up), removed members and repairing ones serve no clients.
            let result = if observed.2 {
                register(&core, &connection, &status).await
            } else {
                unregister(&core, &connection).await
            };
            if let Err(err) = result {
                warn!(%nameserver, %err, "registration failed");
                if connection.is_closed() {
                    break;
                }
            } else {
                debug!(%nameserver, voter = observed.2, "registration sent");
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(core.config.heartbeat_interval_ms)) => {}
                _ = topics_changed.changed() => {}
                _ = role_changed(&mut raft_status, observed, core.config.node_id) => {}
                _ = connection.closed() => break,
                _ = shutdown.cancelled() => {
                    if let Err(err) = unregister(&core, &connection).await {
                        warn!(%nameserver, %err, "unregister failed");
                    }
                    connection.close();
                    return;
                }
            }
        }
        warn!(%nameserver, "connection to nameserver lost; reconnecting");
    }
}

async fn unregister(core: &BrokerCore, connection: &Connection) -> Result<(), TransportError> {
    let unregister = UnregisterBrokerRequest {
        group: core.config.group.clone(),
        node_id: core.config.node_id,
    };
    connection
        .request(RequestCode::UnregisterBroker, &unregister, Bytes::new())
        .await?
        .into_result()
        .map(|_| ())
}

/// What registration depends on: role, term, and whether this broker serves clients (a voter
/// whose log is whole).
fn observe(status: &RaftStatus, node_id: u64) -> (Role, u64, bool) {
    let serving = status.voters.contains(&node_id) && status.repairing_until.is_none();
    (status.role, status.term, serving)
}

/// Completes when what registration depends on differs from `observed`.
async fn role_changed(
    status: &mut tokio::sync::watch::Receiver<ferromq_raftlog::RaftStatus>,
    observed: (Role, u64, bool),
    node_id: u64,
) {
    let changed = status
        .wait_for(|s| observe(s, node_id) != observed)
        .await
        .is_ok();
    if !changed {
        // The Raft node is gone; nothing will change any more.
        std::future::pending::<()>().await;
    }
}
