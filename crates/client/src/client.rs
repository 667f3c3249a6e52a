//! The `Client`: one per process, cheap to clone. It holds the connections (one per server
//! address, shared by every producer and consumer) and the route cache.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferromq_protocol::headers::{
    GetConsumerLagRequest, GetConsumerLagResponse, GetTraceRequest, GroupChangedNotice,
    MessageTrace, QueueLagInfo,
};
use ferromq_protocol::{
    headers::{CreateTopicRequest, GetClusterResponse, GetRouteRequest, TopicRoute},
    message::{validate_topic, MessageIdGenerator},
    MessageId, RequestCode, Status,
};
use ferromq_transport::{Connection, Handler, Reply, Request, TransportConfig, TransportError};
use parking_lot::{Mutex, RwLock};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

use crate::config::{ClientConfig, ConsumerConfig, ProducerConfig};
use crate::consumer::{ConsumerBuilder, GroupSignal};
use crate::error::ClientError;
use crate::producer::Producer;
use crate::request::ReplyWaiters;
use crate::transaction::TransactionCheckers;

/// How far a consumer group is behind on one queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueLag {
    pub broker_group: String,
    pub queue: QueueLagInfo,
}

/// Builds a [`Client`].
#[derive(Debug, Clone, Default)]
pub struct ClientBuilder {
    config: ClientConfig,
}

impl ClientBuilder {
    pub fn name_servers<I, S>(mut self, addresses: I) -> ClientBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.config.name_servers = addresses.into_iter().map(Into::into).collect();
        self
    }

    pub fn client_id(mut self, client_id: impl Into<String>) -> ClientBuilder {
        self.config.client_id = client_id.into();
        self
    }

    pub fn request_timeout(mut self, timeout: Duration) -> ClientBuilder {
        self.config.request_timeout_ms = timeout.as_millis() as u64;
        self
    }

    pub fn route_refresh_interval(mut self, interval: Duration) -> ClientBuilder {
        self.config.route_refresh_interval_ms = interval.as_millis() as u64;
        self
    }

    /// Authenticate to brokers with this access key and secret key (the secret never leaves
    /// the process: handshakes carry an HMAC proof).
    pub fn credentials(
        mut self,
        access_key: impl Into<String>,
        secret_key: impl Into<String>,
    ) -> ClientBuilder {
        self.config.credentials = Some(crate::config::Credentials {
            access_key: access_key.into(),
            secret_key: secret_key.into(),
        });
        self
    }

    /// Connect over TLS, trusting the CA in `ca_file` (PEM).
    pub fn tls_ca_file(mut self, ca_file: impl Into<String>) -> ClientBuilder {
        let tls = self.config.tls.get_or_insert_with(Default::default);
        tls.ca_file = ca_file.into();
        self
    }

    pub fn config(mut self, config: ClientConfig) -> ClientBuilder {
        self.config = config;
        self
    }

    /// Validates the configuration and checks that a nameserver answers.
    pub async fn connect(self) -> Result<Client, ClientError> {
        Client::connect(self.config).await
    }
}

#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) config: ClientConfig,
    transport: Arc<TransportConfig>,
    /// One slot per address; the async lock makes concurrent callers share one connect.
    connections: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<Connection>>>>>,
    routes: RwLock<HashMap<String, CachedRoute>>,
    next_nameserver: AtomicUsize,
    pub(crate) ids: MessageIdGenerator,
    pub(crate) shutdown: CancellationToken,
    tasks: TaskTracker,
    /// Consumers waiting for brokers' group change notices, by group.
    group_listeners: Arc<GroupListeners>,
    /// Transactional producers' listeners, for brokers' check-backs.
    pub(crate) transaction_checkers: Arc<TransactionCheckers>,
    /// This client's name as a requester, and its requests waiting for replies.
    pub(crate) reply_id: String,
    pub(crate) reply_waiters: Arc<ReplyWaiters>,
}

/// Consumers of this client that want to hear when their group changes.
#[derive(Default)]
pub(crate) struct GroupListeners {
    by_group: Mutex<HashMap<String, Vec<Arc<GroupSignal>>>>,
}

/// What brokers may ask of a client: group change notices and transaction check-backs;
/// everything else is refused.
struct ClientHandler {
    listeners: Arc<GroupListeners>,
    checkers: Arc<TransactionCheckers>,
    replies: Arc<ReplyWaiters>,
}

impl Handler for ClientHandler {
    async fn handle(&self, _connection: &Connection, request: Request) -> Reply {
        if request.code == RequestCode::CheckTransaction as u16 {
            return self.checkers.answer(request).await;
        }
        if request.code == RequestCode::ReplyDelivery as u16 {
            return self.replies.deliver(request);
        }
        if request.code != RequestCode::GroupChanged as u16 {
            return Reply::error(
                Status::RequestCodeNotSupported,
                format!("request code {} is not served by a client", request.code),
            );
        }
        let notice: GroupChangedNotice = match request.decode_header() {
            Ok(notice) => notice,
            Err(err) => return Reply::bad_header(&err),
        };
        if let Some(listeners) = self.listeners.by_group.lock().get(&notice.group) {
            for listener in listeners {
                listener.changed(notice.reset_topic.as_deref());
            }
        }
        Reply::ok(&())
    }
}

#[derive(Clone)]
struct CachedRoute {
    route: Arc<TopicRoute>,
    fetched: Instant,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("name_servers", &self.inner.config.name_servers)
            .finish_non_exhaustive()
    }
}

/// The transport's TLS from the client's settings.
fn tls_client(config: &ClientConfig) -> Result<Option<ferromq_transport::TlsClient>, String> {
    let Some(tls) = &config.tls else {
        return Ok(None);
    };
    let identity = match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => Some((std::path::Path::new(cert), std::path::Path::new(key))),
        (None, None) => None,
        _ => return Err("tls: cert_file and key_file go together".into()),
    };
    ferromq_transport::tls::client_from_pem(std::path::Path::new(&tls.ca_file), identity).map(Some)
}

impl Client {
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    pub async fn connect(config: ClientConfig) -> Result<Client, ClientError> {
        config.validate().map_err(ClientError::Config)?;
        let transport = Arc::new(TransportConfig {
            request_timeout: config.request_timeout(),
            max_frame_bytes: config.max_frame_bytes,
            handshake_timeout: config.request_timeout(),
            credentials: config.credentials.clone(),
            tls_client: tls_client(&config).map_err(ClientError::Config)?,
            ..TransportConfig::default()
        });
        // Unique per client: replies to its requests find their way back by this name.
        let reply_id = format!(
            "{}-{}",
            config.client_id,
            MessageIdGenerator::default().next_id()
        );
        let client = Client {
            inner: Arc::new(Inner {
                config,
                transport,
                connections: Mutex::new(HashMap::new()),
                routes: RwLock::new(HashMap::new()),
                next_nameserver: AtomicUsize::new(0),
                ids: MessageIdGenerator::default(),
                shutdown: CancellationToken::new(),
                tasks: TaskTracker::new(),
                group_listeners: Arc::default(),
                transaction_checkers: Arc::default(),
                reply_id,
                reply_waiters: Arc::default(),
            }),
        };
        client.cluster().await?;
        // The refresher holds only a weak reference: dropping the last `Client` ends it.
        let refresher = Arc::downgrade(&client.inner);
        let shutdown = client.inner.shutdown.clone();
        let interval = Duration::from_millis(client.inner.config.route_refresh_interval_ms);
        client
            .inner
            .tasks
            .spawn(refresh_routes_loop(refresher, shutdown, interval));
        Ok(client)
    }

    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// A producer with default settings.
    pub fn producer(&self) -> Producer {
        Producer::new(self.clone(), ProducerConfig::default())
    }

    pub fn producer_with(&self, config: ProducerConfig) -> Producer {
        Producer::new(self.clone(), config)
    }

    /// Starts building a consumer in `group`.
    pub fn consumer(&self, group: impl Into<String>) -> ConsumerBuilder {
        ConsumerBuilder::new(self.clone(), group.into(), ConsumerConfig::default())
    }

    /// The shared connection to `addr`, connecting if there is none or it closed.
    pub async fn connection(&self, addr: &str) -> Result<Connection, ClientError> {
        if self.inner.shutdown.is_cancelled() {
            return Err(ClientError::Shutdown);
        }
        let slot = self
            .inner
            .connections
            .lock()
            .entry(addr.to_string())
            .or_default()
            .clone();
        let mut slot = slot.lock().await;
        if let Some(connection) = slot.as_ref().filter(|c| !c.is_closed()) {
            return Ok(connection.clone());
        }
        let handler = ClientHandler {
            listeners: self.inner.group_listeners.clone(),
            checkers: self.inner.transaction_checkers.clone(),
            replies: self.inner.reply_waiters.clone(),
        };
        let connection = Connection::connect(
            addr,
            &self.inner.config.client_id,
            self.inner.transport.clone(),
            Arc::new(handler),
        )
        .await?;
        *slot = Some(connection.clone());
        Ok(connection)
    }

    /// Wakes `listener` whenever a broker says `group` changed.
    pub(crate) fn listen_to_group(&self, group: &str, listener: Arc<GroupSignal>) {
        self.inner
            .group_listeners
            .by_group
            .lock()
            .entry(group.to_string())
            .or_default()
            .push(listener);
    }

    pub(crate) fn stop_listening_to_group(&self, group: &str, listener: &Arc<GroupSignal>) {
        let mut by_group = self.inner.group_listeners.by_group.lock();
        if let Some(listeners) = by_group.get_mut(group) {
            listeners.retain(|l| !Arc::ptr_eq(l, listener));
            if listeners.is_empty() {
                by_group.remove(group);
            }
        }
    }

    /// Sends a request to a nameserver, trying each in turn until one answers.
    async fn ask_nameservers<T: Serialize>(
        &self,
        code: RequestCode,
        header: &T,
    ) -> Result<ferromq_transport::Response, ClientError> {
        let servers = &self.inner.config.name_servers;
        let start = self.inner.next_nameserver.fetch_add(1, Ordering::Relaxed);
        let mut failures = Vec::new();
        for i in 0..servers.len() {
            let addr = &servers[(start + i) % servers.len()];
            let attempt = async {
                let connection = self.connection(addr).await?;
                Ok::<_, ClientError>(connection.request(code, header, Bytes::new()).await?)
            };
            match attempt.await {
                Ok(response) => return Ok(response),
                Err(err) => failures.push(format!("{addr}: {err}")),
            }
        }
        Err(ClientError::NoNameserver(failures.join("; ")))
    }

    /// Every broker the nameservers know.
    pub async fn cluster(&self) -> Result<GetClusterResponse, ClientError> {
        Ok(self
            .ask_nameservers(RequestCode::GetCluster, &())
            .await?
            .decode()?)
    }

    /// The route of `topic`, from the cache if it is fresh.
    pub async fn route(&self, topic: &str) -> Result<Arc<TopicRoute>, ClientError> {
        let max_age = Duration::from_millis(self.inner.config.route_refresh_interval_ms);
        if let Some(cached) = self.inner.routes.read().get(topic) {
            if cached.fetched.elapsed() < max_age {
                return Ok(cached.route.clone());
            }
        }
        self.fetch_route(topic).await
    }

    /// Fetches the route of `topic` from a nameserver, bypassing the cache.
    pub async fn fetch_route(&self, topic: &str) -> Result<Arc<TopicRoute>, ClientError> {
        validate_topic(topic).map_err(ClientError::InvalidMessage)?;
        let response = self
            .ask_nameservers(
                RequestCode::GetRoute,
                &GetRouteRequest {
                    topic: topic.to_string(),
                },
            )
            .await?;
        let route = match response.decode::<TopicRoute>() {
            Ok(route) => Arc::new(route),
            Err(TransportError::Remote {
                status: Status::TopicNotExist,
                ..
            }) => {
                self.inner.routes.write().remove(topic);
                return Err(ClientError::NoRoute(topic.to_string()));
            }
            Err(err) => return Err(err.into()),
        };
        self.inner.routes.write().insert(
            topic.to_string(),
            CachedRoute {
                route: route.clone(),
                fetched: Instant::now(),
            },
        );
        Ok(route)
    }

    /// Forgets the cached route of `topic`, so the next use fetches it again.
    pub fn invalidate_route(&self, topic: &str) {
        self.inner.routes.write().remove(topic);
    }

    /// Creates `topic` with `queues` queues on every broker group that leads (an existing
    /// topic with the same settings is fine).
    pub async fn create_topic(&self, topic: &str, queues: u32) -> Result<(), ClientError> {
        validate_topic(topic).map_err(ClientError::InvalidMessage)?;
        // A broker that just started may not have registered yet: wait a request timeout.
        let deadline = Instant::now() + self.inner.config.request_timeout();
        let leaders: Vec<String> = loop {
            let cluster = self.cluster().await?;
            let leaders: Vec<String> = cluster
                .brokers
                .iter()
                .filter(|b| b.role == ferromq_protocol::headers::BrokerRole::Leader)
                .map(|b| b.client_addr.clone())
                .collect();
            if !leaders.is_empty() {
                break leaders;
            }
            if Instant::now() >= deadline {
                return Err(ClientError::NoRoute(topic.to_string()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let request = CreateTopicRequest {
            topic: topic.to_string(),
            queues,
            perm: ferromq_protocol::headers::perm::READ_WRITE,
        };
        for leader in &leaders {
            let connection = self.connection(leader).await?;
            connection
                .request(RequestCode::CreateTopic, &request, Bytes::new())
                .await?
                .into_result()?;
        }
        // Brokers tell the nameservers at once; wait until the route shows the topic, so a
        // send right after this call uses the new queues.
        let deadline = Instant::now() + self.inner.config.request_timeout();
        loop {
            match self.fetch_route(topic).await {
                Ok(route) if route.exists && route.groups.len() >= leaders.len() => return Ok(()),
                Ok(_) | Err(ClientError::NoRoute(_)) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Ok(_) => return Err(ClientError::NoRoute(topic.to_string())),
                Err(err) => return Err(err),
            }
        }
    }

    /// How far `group` is behind on every queue of `topic`, asked of each broker group's
    /// leader.
    pub async fn lag(&self, group: &str, topic: &str) -> Result<Vec<QueueLag>, ClientError> {
        validate_topic(topic).map_err(ClientError::InvalidMessage)?;
        ferromq_protocol::message::validate_group(group).map_err(ClientError::InvalidMessage)?;
        let route = self.fetch_route(topic).await?;
        let request = GetConsumerLagRequest {
            group: group.to_string(),
            topic: topic.to_string(),
        };
        let mut lags = Vec::new();
        for broker_group in &route.groups {
            let Some(leader) = &broker_group.leader else {
                return Err(ClientError::NoRoute(topic.to_string()));
            };
            let connection = self.connection(leader).await?;
            let answer: GetConsumerLagResponse = connection
                .request(RequestCode::GetConsumerLag, &request, Bytes::new())
                .await?
                .decode()?;
            lags.extend(answer.queues.into_iter().map(|queue| QueueLag {
                broker_group: broker_group.group.clone(),
                queue,
            }));
        }
        Ok(lags)
    }

    /// Sends a request to the leader of `broker_group` (found through `topic`'s route), once
    /// more at the leader it names if it answers `NOT_LEADER`.
    pub(crate) async fn request_group_leader<H: Serialize>(
        &self,
        topic: &str,
        broker_group: &str,
        code: RequestCode,
        header: &H,
    ) -> Result<ferromq_transport::Response, ClientError> {
        self.request_group_leader_with_body(topic, broker_group, code, header, Bytes::new())
            .await
    }

    /// [`Client::request_group_leader`] with a request body.
    pub(crate) async fn request_group_leader_with_body<H: Serialize>(
        &self,
        topic: &str,
        broker_group: &str,
        code: RequestCode,
        header: &H,
        body: Bytes,
    ) -> Result<ferromq_transport::Response, ClientError> {
        let route = self.route(topic).await?;
        let Some(leader) = route
            .groups
            .iter()
            .find(|g| g.group == broker_group)
            .and_then(|g| g.leader.clone())
        else {
            // Cached during an election, say: look again next time.
            self.invalidate_route(topic);
            return Err(ClientError::NoRoute(topic.to_string()));
        };
        let answer = match self.connection(&leader).await {
            Ok(connection) => connection
                .request(code, header, body.clone())
                .await
                .and_then(|response| response.into_result()),
            Err(err) => {
                // The leader went away: the next call looks the route up again.
                self.invalidate_route(topic);
                return Err(err);
            }
        };
        match answer {
            Ok(response) => Ok(response),
            Err(TransportError::Remote {
                status: Status::NotLeader,
                leader: Some(leader),
                ..
            }) => {
                self.invalidate_route(topic);
                let connection = self.connection(&leader).await?;
                Ok(connection
                    .request(code, header, body.clone())
                    .await?
                    .into_result()?)
            }
            Err(err) => {
                if err.is_retriable() {
                    self.invalidate_route(topic);
                }
                Err(err.into())
            }
        }
    }

    /// What happened to a message: where it is stored and, for each consumer group, whether it
    /// was delivered, acknowledged, retried or dead-lettered. Asks every broker group's leader
    /// and returns the trace of the one that stored it (`stored: None` if none did).
    pub async fn trace(&self, id: MessageId) -> Result<MessageTrace, ClientError> {
        let cluster = self.cluster().await?;
        let request = GetTraceRequest { id };
        let mut found = MessageTrace {
            id,
            stored: None,
            scheduled: Vec::new(),
            transaction: None,
            groups: Vec::new(),
        };
        for broker in cluster
            .brokers
            .iter()
            .filter(|b| b.role == ferromq_protocol::headers::BrokerRole::Leader)
        {
            let connection = self.connection(&broker.client_addr).await?;
            let trace = decode_trace(
                connection
                    .request(RequestCode::GetTrace, &request, Bytes::new())
                    .await?,
            )?;
            if trace.found() {
                found.stored = found.stored.or(trace.stored);
                found.transaction = found.transaction.or(trace.transaction);
                found.scheduled.extend(trace.scheduled);
                found.groups.extend(trace.groups);
            }
        }
        Ok(found)
    }

    /// [`Client::trace`] asked only of the leader of `broker_group` (found through `topic`'s
    /// cached route): one request instead of one to the nameserver and one per broker group,
    /// for a caller that knows where the message went (a send's receipt says). `stored: None`
    /// is then that leader's word that its group does not store the message.
    #[cfg(feature = "outbox")]
    pub(crate) async fn trace_in_group(
        &self,
        topic: &str,
        broker_group: &str,
        id: MessageId,
    ) -> Result<MessageTrace, ClientError> {
        let request = GetTraceRequest { id };
        decode_trace(
            self.request_group_leader(topic, broker_group, RequestCode::GetTrace, &request)
                .await?,
        )
    }

    /// Closes every connection and stops background work.
    pub async fn shutdown(&self) {
        self.inner.shutdown.cancel();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
        let slots: Vec<_> = self
            .inner
            .connections
            .lock()
            .drain()
            .map(|(_, slot)| slot)
            .collect();
        for slot in slots {
            if let Some(connection) = slot.lock().await.take() {
                connection.close();
            }
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Last handle gone without `shutdown()`: stop background work and close connections.
        self.shutdown.cancel();
        for slot in self.connections.get_mut().values() {
            if let Ok(slot) = slot.try_lock() {
                if let Some(connection) = slot.as_ref() {
                    connection.close();
                }
            }
        }
    }
}

async fn refresh_routes_loop(
    inner: std::sync::Weak<Inner>,
    shutdown: CancellationToken,
    interval: Duration,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.cancelled() => return,
        }
        let Some(inner) = inner.upgrade() else { return };
        let client = Client { inner };
        let topics: Vec<String> = client.inner.routes.read().keys().cloned().collect();
        for topic in topics {
            if let Err(err) = client.fetch_route(&topic).await {
                debug!(%topic, %err, "route refresh failed");
            }
        }
    }
}

/// A trace as the connection's protocol version encodes it (version 3: without `transaction`).
fn decode_trace(response: ferromq_transport::Response) -> Result<MessageTrace, ClientError> {
    if response.version < ferromq_protocol::headers::TRACE_TRANSACTION_VERSION {
        let trace: ferromq_protocol::headers::MessageTraceV3 = response.decode()?;
        return Ok(trace.into());
    }
    Ok(response.decode()?)
}
