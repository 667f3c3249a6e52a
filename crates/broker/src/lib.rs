//! The FerroMQ broker: one member of a broker group (a Raft group whose log is the commit log).
//! It serves sends, pulls with long polling, consumer offsets and topics over the wire
//! protocol, registers with nameservers, and exposes probes and metrics over HTTP.

mod admin;

pub use admin::openapi;
pub mod config;
mod consumers;
mod core;
mod deliveries;
mod handlers;
mod maintenance;
mod metrics;
mod notifier;
mod peers;
mod producers;
mod registration;
mod replies;
mod scheduler;
mod state_machine;
mod transactions;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use ferromq_raftlog::peer::PeerNetwork;

use crate::consumers::ConsumerRegistry;
use ferromq_raftlog::{
    MemberAddress, Members, NoPeers, PeerSender, RaftError, RaftMetrics, RaftNode, RaftStatus,
};
use ferromq_service::admin as http;
use ferromq_service::connections::ConnectionTable;
use ferromq_service::metrics::{new_registry, Instrumented};
use ferromq_store::{Store, StoreError};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info};

pub use config::BrokerConfig;

use crate::core::BrokerCore;
use crate::handlers::BrokerHandler;
use crate::metrics::BrokerMetrics;
use crate::notifier::QueueNotifier;
use crate::state_machine::BrokerStateMachine;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot open the store: {0}")]
    Store(#[from] StoreError),
    #[error("cannot start raft: {0}")]
    Raft(#[from] RaftError),
    #[error("startup task failed: {0}")]
    Startup(String),
}

/// A running broker. Call [`Broker::shutdown`] to stop it gracefully.
pub struct Broker {
    core: Arc<BrokerCore>,
    addr: SocketAddr,
    admin_addr: SocketAddr,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

async fn bind(addr: &str) -> Result<(TcpListener, SocketAddr), BrokerError> {
    let failed = |source| BrokerError::Bind {
        addr: addr.to_string(),
        source,
    };
    let listener = TcpListener::bind(addr).await.map_err(failed)?;
    let local = listener.local_addr().map_err(failed)?;
    Ok((listener, local))
}

/// The address clients should use: the configured one, or the bound one with a loopback host
/// in place of an unspecified one.
fn advertised(config: &BrokerConfig, bound: SocketAddr) -> String {
    if !config.advertised_addr.is_empty() {
        return config.advertised_addr.clone();
    }
    if let Some(me) = config.raft.peers.iter().find(|p| p.id == config.node_id) {
        return me.client_addr.clone();
    }
    if bound.ip().is_unspecified() {
        return format!("127.0.0.1:{}", bound.port());
    }
    bound.to_string()
}

impl Broker {
    /// Opens the store (recovering after a crash), starts Raft, binds the listeners and
    /// registers with the nameservers.
    pub async fn start(config: BrokerConfig) -> Result<Broker, BrokerError> {
        config.validate().map_err(BrokerError::Config)?;
        let (listener, addr) = bind(&config.listen).await?;
        let (admin_listener, admin_addr) = bind(&config.admin_listen).await?;

        let store_config = config.store_config();
        let data_dir = config.data_dir.clone();
        let store = tokio::task::spawn_blocking(move || Store::open(&data_dir, store_config))
            .await
            .map_err(|err| BrokerError::Startup(err.to_string()))??;
        let store = Arc::new(store);

        let registry = new_registry("broker");
        let metrics = BrokerMetrics::new(&registry);
        metrics
            .info
            .with_label_values(&[&config.cluster, &config.group, &config.node_id.to_string()])
            .set(1);
        let notifier = Arc::new(QueueNotifier::default());
        let (topics_changed_tx, topics_changed) = watch::channel(0u64);
        let state_machine = BrokerStateMachine {
            store: store.clone(),
            notifier: notifier.clone(),
            topics_changed: topics_changed_tx,
        };
        let shutdown = CancellationToken::new();
        // Raft appends can carry a full-size send plus protocol overhead: the peer port allows
        // larger frames than the client port (its senders are verified members).
        let peer_tls = config.tls.peer_port().map_err(BrokerError::Config)?;
        let peer_transport = Arc::new(ferromq_transport::TransportConfig {
            max_frame_bytes: config.limits.max_frame_bytes * 4,
            tls_server: peer_tls.as_ref().map(|(server, _)| server.clone()),
            tls_client: peer_tls.map(|(_, client)| client),
            ..config.limits.server_transport()
        });
        let configured = config.raft.peers.iter().map(|p| {
            let address = MemberAddress {
                raft_addr: p.raft_addr.clone(),
                client_addr: p.client_addr.clone(),
            };
            (p.id, address)
        });
        let members = Members::load(store.state(), configured)?;
        // A group configured with peers (even a group of one, which may grow) listens on the
        // peer port; a standalone broker without a peer list does not.
        let mut peer_client = None;
        let (peer_listener, peer_sender): (Option<TcpListener>, Box<dyn PeerSender>) =
            if !config.raft.peers.is_empty() {
                let (listener, _) = bind(&config.raft.listen).await?;
                // Connect from our own peer address when it is a specific one.
                let local_ip = config
                    .raft
                    .listen
                    .parse::<SocketAddr>()
                    .ok()
                    .map(|a| a.ip())
                    .filter(|ip| !ip.is_unspecified());
                let client_side = Arc::new(ferromq_transport::TransportConfig {
                    keepalive_interval: Some(std::time::Duration::from_secs(30)),
                    local_ip,
                    ..(*peer_transport).clone()
                });
                peer_client = Some(client_side.clone());
                let network = PeerNetwork::start(
                    &config.group,
                    config.node_id,
                    members.clone(),
                    client_side,
                    shutdown.clone(),
                );
                (Some(listener), Box::new(network))
            } else {
                (None, Box::new(NoPeers))
            };
        let raft_config = config.raft_config();
        let raft_metrics = RaftMetrics::new(&registry);
        let raft_store = store.clone();
        let raft_members = members.clone();
        let raft = tokio::task::spawn_blocking(move || {
            RaftNode::start(
                raft_store,
                raft_config,
                state_machine,
                peer_sender,
                raft_metrics,
                raft_members,
            )
        })
        .await
        .map_err(|err| BrokerError::Startup(err.to_string()))??;

        let consumers =
            ConsumerRegistry::new(std::time::Duration::from_millis(config.consumer_expiry_ms));
        let producers = producers::ProducerRegistry::new(std::time::Duration::from_millis(
            config.transactions.producer_expiry_ms,
        ));
        let access = ferromq_service::auth::Access::new(&config.auth);
        let core = Arc::new(BrokerCore {
            advertised_addr: advertised(&config, addr),
            admin_addr: admin_addr.to_string(),
            config,
            store,
            raft,
            members,
            consumers,
            notifier,
            scheduler: scheduler::Scheduler::default(),
            producers,
            replies: replies::ReplyRegistry::default(),
            peer_client,
            metrics,
            access,
            deliveries: deliveries::Deliveries::default(),
            topics_changed,
            started: Instant::now(),
            shutdown: shutdown.clone(),
        });
        core.metrics.topics.set(core.store.topic_count() as i64);
        core.metrics
            .commitlog_bytes
            .set(core.store.log_bytes() as i64);
        if let Ok((free, total)) = core.store.disk_space() {
            core.metrics.disk_free_bytes.set(free as i64);
            core.metrics.disk_total_bytes.set(total as i64);
        }

        let tasks = TaskTracker::new();
        let connections = Arc::new(ConnectionTable::new(&registry));
        let handler = Arc::new(Instrumented::new(
            BrokerHandler { core: core.clone() },
            &registry,
            connections.clone(),
        ));
        let client_port = ferromq_transport::TransportConfig {
            tls_server: core.config.tls.client_port().map_err(BrokerError::Config)?,
            ..core.config.limits.server_transport()
        };
        tasks.spawn(ferromq_transport::serve(
            listener,
            format!("broker:{}:{}", core.config.group, core.config.node_id),
            Arc::new(client_port),
            handler,
            shutdown.clone(),
        ));
        let router = http::probes_router(Arc::new(admin::BrokerReadiness(core.clone())), registry)
            .merge(admin::router(core.clone()))
            .merge(http::connections_router(connections))
            .merge(http::openapi_router(admin::openapi()));
        let access =
            http::AdminAccess::new(&core.config.admin_token, core.config.admin_protect_reads);
        info!("{}", access.describe());
        let admin_tls = core
            .config
            .admin_tls
            .server()
            .map_err(BrokerError::Config)?;
        tasks.spawn(http::serve_http(
            admin_listener,
            router,
            (access, admin_tls),
            shutdown.clone(),
        ));
        for nameserver in core.config.nameservers.clone() {
            tasks.spawn(registration::run(
                core.clone(),
                nameserver,
                shutdown.clone(),
            ));
        }
        if let Some(listener) = peer_listener {
            tasks.spawn(ferromq_transport::serve(
                listener,
                format!("raft:{}:{}", core.config.group, core.config.node_id),
                peer_transport,
                Arc::new(peers::PeerHandler::new(core.clone())),
                shutdown.clone(),
            ));
        }
        tasks.spawn(maintenance::checkpoint_loop(core.clone(), shutdown.clone()));
        tasks.spawn(scheduler::timer_loop(core.clone(), shutdown.clone()));
        tasks.spawn(transactions::check_loop(core.clone(), shutdown.clone()));
        tasks.spawn(maintenance::retention_loop(core.clone(), shutdown.clone()));
        tasks.spawn(maintenance::consumer_lag_loop(
            core.clone(),
            shutdown.clone(),
        ));
        tasks.spawn(maintenance::consumer_expiry_loop(
            core.clone(),
            shutdown.clone(),
        ));
        tasks.close();
        info!(
            %addr,
            %admin_addr,
            advertised = %core.advertised_addr,
            group = %core.config.group,
            node_id = core.config.node_id,
            flush = ?core.config.storage.flush,
            "broker started"
        );
        Ok(Broker {
            core,
            addr,
            admin_addr,
            shutdown,
            tasks,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The address clients are given for this broker.
    pub fn advertised_addr(&self) -> &str {
        &self.core.advertised_addr
    }

    pub fn raft_status(&self) -> RaftStatus {
        self.core.raft.status()
    }

    /// Hands Raft leadership to the most caught-up follower (if it leads a group of several),
    /// unregisters from nameservers, stops accepting, lets requests in flight finish, stops
    /// Raft and writes a final checkpoint so the next start replays nothing.
    pub async fn shutdown(self) {
        // Hand leadership over first, so the group does not wait out an election timeout.
        if let Err(reason) = admin::hand_over_leadership(&self.core, None).await {
            tracing::debug!(%reason, "no leadership hand-over");
        }
        self.shutdown.cancel();
        self.tasks.wait().await;
        let core = self.core;
        let result = tokio::task::spawn_blocking(move || {
            core.raft.shutdown();
            core.store.checkpoint()
        })
        .await;
        match result {
            Ok(Ok(index)) => info!(checkpoint = index, "broker stopped"),
            Ok(Err(err)) => error!(%err, "final checkpoint failed"),
            Err(err) => error!(%err, "shutdown task failed"),
        }
    }
}
