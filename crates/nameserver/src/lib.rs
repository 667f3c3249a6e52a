//! The FerroMQ nameserver: a stateless route registry. Brokers register with every nameserver
//! and heartbeat; clients ask it where a topic lives. Nameservers never talk to each other.

pub mod config;
mod handler;
mod metrics;
pub mod registry;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::{
    extract::{Path, State},
    routing::get,
    Json, Router,
};
use ferromq_protocol::headers::{BrokerInfo, TopicRoute};
use ferromq_service::admin::{self, ApiError, Readiness};
use ferromq_service::connections::ConnectionTable;
use ferromq_service::metrics::{new_registry, Instrumented};
use parking_lot::Mutex;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

pub use config::NameserverConfig;
use handler::NameserverHandler;
use metrics::NameserverMetrics;
use registry::{RemovalReason, RouteRegistry};

#[derive(Debug, thiserror::Error)]
pub enum NameserverError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
}

/// A running nameserver. Dropping it does not stop it; call [`Nameserver::shutdown`].
pub struct Nameserver {
    addr: SocketAddr,
    admin_addr: SocketAddr,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

async fn bind(addr: &str) -> Result<TcpListener, NameserverError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| NameserverError::Bind {
            addr: addr.to_string(),
            source,
        })
}

impl Nameserver {
    /// Binds both listeners and starts serving.
    pub async fn start(config: NameserverConfig) -> Result<Nameserver, NameserverError> {
        config.validate().map_err(NameserverError::Config)?;
        let listener = bind(&config.listen).await?;
        let admin_listener = bind(&config.admin_listen).await?;
        let addr = listener
            .local_addr()
            .map_err(|source| NameserverError::Bind {
                addr: config.listen.clone(),
                source,
            })?;
        let admin_addr = admin_listener
            .local_addr()
            .map_err(|source| NameserverError::Bind {
                addr: config.admin_listen.clone(),
                source,
            })?;

        let prometheus = new_registry("nameserver");
        let metrics = NameserverMetrics::new(&prometheus);
        let registry = Arc::new(Mutex::new(RouteRegistry::new(Duration::from_millis(
            config.broker_expiry_ms,
        ))));
        let connections = Arc::new(ConnectionTable::new(&prometheus));
        let handler = Arc::new(Instrumented::new(
            NameserverHandler {
                registry: registry.clone(),
                metrics: metrics.clone(),
                access: ferromq_service::auth::Access::new(&config.auth),
            },
            &prometheus,
            connections.clone(),
        ));
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        tasks.spawn(ferromq_transport::serve(
            listener,
            format!("nameserver@{addr}"),
            Arc::new(ferromq_transport::TransportConfig {
                tls_server: config.tls.server().map_err(NameserverError::Config)?,
                ..config.limits.server_transport()
            }),
            handler,
            shutdown.clone(),
        ));
        tasks.spawn(expire_loop(
            registry.clone(),
            metrics,
            Duration::from_millis(config.scan_interval_ms),
            shutdown.clone(),
        ));
        let router = admin::probes_router(Arc::new(AlwaysReady), prometheus)
            .merge(api_router(registry))
            .merge(admin::connections_router(connections))
            .merge(admin::openapi_router(openapi()));
        let access = admin::AdminAccess::new(&config.admin_token, false);
        info!("{}", access.describe());
        let admin_tls = config.admin_tls.server().map_err(NameserverError::Config)?;
        tasks.spawn(admin::serve_http(
            admin_listener,
            router,
            (access, admin_tls),
            shutdown.clone(),
        ));
        tasks.close();
        info!(%addr, %admin_addr, "nameserver started");
        Ok(Nameserver {
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

    /// Stops accepting, lets open requests finish, and returns when everything has stopped.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.tasks.wait().await;
        info!("nameserver stopped");
    }
}

struct AlwaysReady;

impl Readiness for AlwaysReady {
    fn readiness(&self) -> Result<(), String> {
        Ok(())
    }
}

async fn expire_loop(
    registry: Arc<Mutex<RouteRegistry>>,
    metrics: NameserverMetrics,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let mut registry = registry.lock();
        let expired = registry.expire(Instant::now());
        metrics.brokers.set(registry.broker_count() as i64);
        drop(registry);
        if !expired.is_empty() {
            metrics.removed(RemovalReason::Expired, expired.len());
            info!(?expired, "brokers left the routes: no heartbeat");
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
struct ClusterView {
    /// Every registered broker: group, node, role, term, addresses, topics, last heartbeat.
    #[schema(value_type = Vec<Object>)]
    brokers: Vec<BrokerInfo>,
}

/// The nameserver's admin API, for its OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(cluster, route), components(schemas(ClusterView)))]
struct NameserverApi;

/// The nameserver admin API's OpenAPI document (checked in as docs/openapi/nameserver.json).
pub fn openapi() -> utoipa::openapi::OpenApi {
    use utoipa::OpenApi;
    admin::openapi_document(NameserverApi::openapi(), "FerroMQ nameserver admin API")
}

fn api_router(registry: Arc<Mutex<RouteRegistry>>) -> Router {
    Router::new()
        .route("/v1/cluster", get(cluster))
        .route("/v1/routes/{topic}", get(route))
        .with_state(registry)
}

/// Every broker the nameserver knows.
#[utoipa::path(get, path = "/v1/cluster", responses((status = 200, body = ClusterView)), tag = "nameserver")]
async fn cluster(State(registry): State<Arc<Mutex<RouteRegistry>>>) -> Json<ClusterView> {
    Json(ClusterView {
        brokers: registry.lock().brokers(Instant::now()),
    })
}

/// The route of a topic: which broker groups serve it, their leaders and queue counts.
#[utoipa::path(
    get,
    path = "/v1/routes/{topic}",
    params(("topic" = String, Path, description = "Topic name")),
    responses(
        (status = 200, description = "The route", body = Object),
        (status = 404, description = "No broker serves the topic", body = admin::ErrorBody),
    ),
    tag = "nameserver"
)]
async fn route(
    State(registry): State<Arc<Mutex<RouteRegistry>>>,
    Path(topic): Path<String>,
) -> Result<Json<TopicRoute>, ApiError> {
    registry
        .lock()
        .route(&topic)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no route for topic {topic:?}")))
}
