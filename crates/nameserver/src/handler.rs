//! Answers the nameserver's request codes: register, unregister, route and cluster queries.

use std::sync::Arc;
use std::time::Instant;

use ferromq_protocol::{
    codec,
    headers::{
        GetClusterResponse, GetRouteRequest, RegisterBrokerRequest, RegisterBrokerResponse,
        TopicConfig, UnregisterBrokerRequest,
    },
    message::{validate_group, validate_topic},
    RequestCode, Status,
};
use ferromq_transport::{Connection, Handler, Reply, Request};
use parking_lot::Mutex;
use tracing::info;

use crate::metrics::NameserverMetrics;
use crate::registry::{RemovalReason, RouteRegistry};

pub struct NameserverHandler {
    pub(crate) registry: Arc<Mutex<RouteRegistry>>,
    pub(crate) metrics: NameserverMetrics,
    pub(crate) access: ferromq_service::auth::Access,
}

impl NameserverHandler {
    fn register(&self, connection: &Connection, request: &Request) -> Reply {
        let registration: RegisterBrokerRequest = match request.decode_header() {
            Ok(registration) => registration,
            Err(err) => return Reply::bad_header(&err),
        };
        if let Err(message) = validate_group(&registration.group) {
            return Reply::error(Status::ParameterError, message);
        }
        let topics: Vec<TopicConfig> = match codec::decode(&request.body) {
            Ok(topics) => topics,
            Err(err) => {
                return Reply::error(
                    Status::ParameterError,
                    format!("malformed topic list: {err}"),
                )
            }
        };
        if let Some(bad) = topics.iter().find(|t| validate_topic(&t.name).is_err()) {
            return Reply::error(
                Status::ParameterError,
                format!("invalid topic name {:?}", bad.name),
            );
        }
        let (group, node_id, role) = (
            registration.group.clone(),
            registration.node_id,
            registration.role,
        );
        let mut registry = self.registry.lock();
        let new = registry.register(registration, topics, connection.id(), Instant::now());
        let expiry_ms = registry.expiry().as_millis() as u64;
        self.metrics.brokers.set(registry.broker_count() as i64);
        drop(registry);
        self.metrics.registrations.inc();
        if new {
            info!(%group, node_id, ?role, peer = %connection.peer_addr(), "broker registered");
        }
        Reply::ok(&RegisterBrokerResponse { expiry_ms })
    }

    fn unregister(&self, request: &Request) -> Reply {
        let unregister: UnregisterBrokerRequest = match request.decode_header() {
            Ok(unregister) => unregister,
            Err(err) => return Reply::bad_header(&err),
        };
        let mut registry = self.registry.lock();
        if registry.unregister(&unregister.group, unregister.node_id) {
            self.metrics.removed(RemovalReason::Unregistered, 1);
            info!(group = %unregister.group, node_id = unregister.node_id, "broker unregistered");
        }
        self.metrics.brokers.set(registry.broker_count() as i64);
        Reply::ok(&())
    }

    fn route(&self, request: &Request) -> Reply {
        let query: GetRouteRequest = match request.decode_header() {
            Ok(query) => query,
            Err(err) => return Reply::bad_header(&err),
        };
        if let Err(message) = validate_topic(&query.topic) {
            return Reply::error(Status::ParameterError, message);
        }
        match self.registry.lock().route(&query.topic) {
            Some(route) => Reply::ok(&route),
            None => Reply::error(
                Status::TopicNotExist,
                format!(
                    "no broker serves topic {:?} or creates topics automatically",
                    query.topic
                ),
            ),
        }
    }
}

impl Handler for NameserverHandler {
    fn authenticate(
        &self,
        handshake: &ferromq_protocol::headers::HandshakeRequest,
    ) -> Result<Option<String>, String> {
        self.access
            .authenticate(handshake, ferromq_protocol::message::now_millis())
    }

    async fn handle(&self, connection: &Connection, request: Request) -> Reply {
        use ferromq_service::auth::Need;
        // Every code a client or broker may send, and what it needs (default deny).
        let need = match RequestCode::from_u16(request.code) {
            Some(RequestCode::RegisterBroker | RequestCode::UnregisterBroker) => Need::Admin,
            Some(RequestCode::GetRoute | RequestCode::GetCluster | RequestCode::Ping) => {
                Need::Connected
            }
            _ => Need::Nobody,
        };
        if let Err(reason) = self.access.authorize(connection.principal(), &[need]) {
            return Reply::error(Status::NoPermission, reason);
        }
        match RequestCode::from_u16(request.code) {
            Some(RequestCode::RegisterBroker) => self.register(connection, &request),
            Some(RequestCode::UnregisterBroker) => self.unregister(&request),
            Some(RequestCode::GetRoute) => self.route(&request),
            Some(RequestCode::GetCluster) => Reply::ok(&GetClusterResponse {
                brokers: self.registry.lock().brokers(Instant::now()),
            }),
            _ => Reply::error(
                Status::RequestCodeNotSupported,
                format!(
                    "request code {} is not served by a nameserver",
                    request.code
                ),
            ),
        }
    }

    fn on_close(&self, connection: &Connection) {
        let mut registry = self.registry.lock();
        let removed = registry.connection_closed(connection.id());
        self.metrics.brokers.set(registry.broker_count() as i64);
        drop(registry);
        if !removed.is_empty() {
            self.metrics
                .removed(RemovalReason::ConnectionClosed, removed.len());
            info!(?removed, "brokers left the routes: connection closed");
        }
    }
}
