//! One connection: a reader task that routes frames (responses to waiting callers, requests to
//! the handler) and an [`Outbox`] for writing. Either side may send requests.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use ferromq_protocol::{
    codec,
    frame::MIN_PROTOCOL_VERSION,
    headers::{HandshakeRequest, HandshakeResponse},
    Frame, FrameCodec, FrameKind, RequestCode, Status, PROTOCOL_VERSION,
};
use parking_lot::Mutex;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, Semaphore};
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::outbox::Outbox;
use crate::socket::{self, ReadSocket, WriteSocket};
use crate::{Handler, Reply, Request, Response, TransportConfig, TransportError};

static NEXT_CONNECTION_ID: AtomicU64 = AtomicU64::new(1);

/// How long a refused handshake waits before its answer, to slow down credential guessing.
const AUTH_FAILURE_DELAY: std::time::Duration = std::time::Duration::from_secs(1);

/// Largest first frame (the handshake) a server accepts from a peer it does not know yet.
const HANDSHAKE_MAX_FRAME_BYTES: usize = 64 * 1024;

/// A handle to a live connection; cheap to clone. Dropping handles does not close it: call
/// [`Connection::close`], or let the peer or a timeout close it.
#[derive(Clone)]
pub struct Connection {
    inner: Arc<Inner>,
}

struct Inner {
    id: u64,
    peer_addr: SocketAddr,
    peer_id: String,
    /// Who the peer authenticated as (servers that check credentials), `None` if anonymous.
    principal: Option<String>,
    version: u8,
    next_request_id: AtomicU64,
    pending: Mutex<HashMap<u64, oneshot::Sender<Frame>>>,
    pending_slots: Semaphore,
    outbox: Arc<Outbox>,
    closed: CancellationToken,
    config: Arc<TransportConfig>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.inner.id)
            .field("peer_addr", &self.inner.peer_addr)
            .field("peer_id", &self.inner.peer_id)
            .finish()
    }
}

/// Connects to `addr`, from `local_ip` if given (trying each address `addr` resolves to).
async fn connect_stream(
    addr: &str,
    local_ip: Option<std::net::IpAddr>,
) -> std::io::Result<TcpStream> {
    let Some(local_ip) = local_ip else {
        return TcpStream::connect(addr).await;
    };
    let mut last_error = None;
    for target in tokio::net::lookup_host(addr).await? {
        if target.is_ipv4() != local_ip.is_ipv4() {
            continue;
        }
        let socket = if target.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.bind(std::net::SocketAddr::new(local_ip, 0))?;
        match socket.connect(target).await {
            Ok(stream) => return Ok(stream),
            Err(err) => last_error = Some(err),
        }
    }
    Err(last_error.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::AddrNotAvailable,
            format!("{addr} has no address of the family of {local_ip}"),
        )
    }))
}

impl Connection {
    /// Connects to `addr`, performs the handshake, and serves the peer's requests with
    /// `handler`.
    pub async fn connect<H: Handler>(
        addr: &str,
        client_id: &str,
        config: Arc<TransportConfig>,
        handler: Arc<H>,
    ) -> Result<Connection, TransportError> {
        let connect = connect_stream(addr, config.local_ip);
        let stream = tokio::time::timeout(config.handshake_timeout, connect)
            .await
            .map_err(|_| TransportError::Connect {
                addr: addr.to_string(),
                source: std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"),
            })?
            .map_err(|source| TransportError::Connect {
                addr: addr.to_string(),
                source,
            })?;
        stream.set_nodelay(true)?;
        let peer_addr = stream.peer_addr()?;
        let (mut reader, mut writer) = match &config.tls_client {
            None => socket::plain(stream),
            Some(tls) => tokio::time::timeout(
                config.handshake_timeout,
                socket::tls_client(stream, addr, tls),
            )
            .await
            .map_err(|_| TransportError::Handshake("TLS handshake timed out".into()))?
            .map_err(|err| TransportError::Handshake(format!("TLS: {err}")))?,
        };
        let mut codec = FrameCodec::new(config.max_frame_bytes, config.max_header_bytes);
        let mut buffer = BytesMut::with_capacity(8 * 1024);

        let max_version = config
            .max_version
            .clamp(MIN_PROTOCOL_VERSION, PROTOCOL_VERSION);
        let request = HandshakeRequest {
            min_version: MIN_PROTOCOL_VERSION,
            max_version,
            client_id: client_id.to_string(),
            auth: config
                .credentials
                .as_ref()
                .map(|c| c.prove(client_id, ferromq_protocol::message::now_millis())),
        };
        let frame = Frame {
            version: max_version,
            kind: FrameKind::Request,
            code: RequestCode::Handshake as u16,
            flags: 0,
            request_id: 0,
            header: Bytes::from(codec::encode(&request)),
            body: Bytes::new(),
        };
        let handshake = async {
            let mut out = BytesMut::new();
            frame.encode_prefix(&mut out);
            writer.write_all(&out).await?;
            let reply = read_frame(&mut reader, &mut codec, &mut buffer)
                .await?
                .ok_or(TransportError::Closed)?;
            let status =
                Status::from_u16(reply.code).ok_or(TransportError::UnknownStatus(reply.code))?;
            let response = Response {
                version: reply.version,
                status,
                header: reply.header,
                body: reply.body,
            };
            let accepted: HandshakeResponse = response
                .decode()
                .map_err(|err| TransportError::Handshake(err.to_string()))?;
            Ok::<_, TransportError>(accepted)
        };
        let accepted = tokio::time::timeout(config.handshake_timeout, handshake)
            .await
            .map_err(|_| TransportError::Handshake("timed out".into()))??;
        if !(MIN_PROTOCOL_VERSION..=max_version).contains(&accepted.version) {
            return Err(TransportError::Handshake(format!(
                "server chose unsupported version {}",
                accepted.version
            )));
        }
        let connection = Connection::start(
            reader,
            writer,
            codec,
            buffer,
            peer_addr,
            (accepted.server_id, None),
            accepted.version,
            config.clone(),
            handler,
            CancellationToken::new(),
        );
        if let Some(interval) = config.keepalive_interval {
            tokio::spawn(keepalive(connection.clone(), interval));
        }
        Ok(connection)
    }

    /// Runs the server side of the handshake on an accepted socket, then serves it. Returns when
    /// the connection is closed.
    pub(crate) async fn accept<H: Handler>(
        stream: TcpStream,
        server_id: &str,
        config: Arc<TransportConfig>,
        handler: Arc<H>,
        shutdown: CancellationToken,
    ) -> Result<(), TransportError> {
        stream.set_nodelay(true)?;
        let peer_addr = stream.peer_addr()?;
        let (mut reader, mut writer) = match &config.tls_server {
            None => socket::plain(stream),
            Some(tls) => {
                tokio::time::timeout(config.handshake_timeout, socket::tls_server(stream, tls))
                    .await
                    .map_err(|_| TransportError::Handshake("TLS handshake timed out".into()))?
                    .map_err(|err| TransportError::Handshake(format!("TLS: {err}")))?
            }
        };
        // Before the handshake a peer is unknown: its first frame gets a small limit.
        let mut handshake_codec =
            FrameCodec::new(HANDSHAKE_MAX_FRAME_BYTES, HANDSHAKE_MAX_FRAME_BYTES);
        let mut buffer = BytesMut::with_capacity(8 * 1024);

        let first = tokio::time::timeout(
            config.handshake_timeout,
            read_frame(&mut reader, &mut handshake_codec, &mut buffer),
        )
        .await
        .map_err(|_| TransportError::Handshake("timed out".into()))??
        .ok_or(TransportError::Closed)?;

        let refuse = |status: Status, message: String| Frame {
            version: PROTOCOL_VERSION,
            kind: FrameKind::Response,
            code: status as u16,
            flags: 0,
            request_id: first.request_id,
            header: Reply::error(status, message.clone()).header,
            body: Bytes::new(),
        };
        if first.kind != FrameKind::Request || first.code != RequestCode::Handshake as u16 {
            let frame = refuse(
                Status::HandshakeRequired,
                "the first frame must be a handshake".into(),
            );
            write_frame_now(&mut writer, &frame).await;
            return Err(TransportError::Handshake(
                "first frame was not a handshake".into(),
            ));
        }
        let request: HandshakeRequest = match codec::decode(&first.header) {
            Ok(request) => request,
            Err(err) => {
                write_frame_now(
                    &mut writer,
                    &refuse(Status::ParameterError, err.to_string()),
                )
                .await;
                return Err(TransportError::Handshake(err.to_string()));
            }
        };
        let version = request.max_version.min(PROTOCOL_VERSION);
        if version < request.min_version.max(MIN_PROTOCOL_VERSION) {
            let message = format!(
                "no common protocol version: peer speaks {}..={}, server {}..={}",
                request.min_version, request.max_version, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION
            );
            write_frame_now(
                &mut writer,
                &refuse(Status::UnsupportedVersion, message.clone()),
            )
            .await;
            return Err(TransportError::Handshake(message));
        }
        let principal = match handler.authenticate(&request) {
            Ok(principal) => principal,
            Err(reason) => {
                warn!(peer = %peer_addr, client = %request.client_id, %reason, "authentication failed");
                // Slows down guessing; the peer learns nothing about why.
                tokio::time::sleep(AUTH_FAILURE_DELAY).await;
                write_frame_now(
                    &mut writer,
                    &refuse(
                        Status::AuthenticationFailed,
                        "authentication failed: check the access key and secret key".into(),
                    ),
                )
                .await;
                return Err(TransportError::Handshake(format!(
                    "authentication failed: {reason}"
                )));
            }
        };
        let accepted = Frame {
            version,
            kind: FrameKind::Response,
            code: Status::Ok as u16,
            flags: 0,
            request_id: first.request_id,
            header: Bytes::from(codec::encode(&HandshakeResponse {
                version,
                server_id: server_id.to_string(),
            })),
            body: Bytes::new(),
        };
        write_frame_now(&mut writer, &accepted).await;

        let codec = FrameCodec::new(config.max_frame_bytes, config.max_header_bytes);
        let connection = Connection::start(
            reader,
            writer,
            codec,
            buffer,
            peer_addr,
            (request.client_id, principal),
            version,
            config,
            handler,
            shutdown,
        );
        connection.closed().await;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn start<H: Handler>(
        reader: ReadSocket,
        writer: WriteSocket,
        codec: FrameCodec,
        buffer: BytesMut,
        peer_addr: SocketAddr,
        (peer_id, principal): (String, Option<String>),
        version: u8,
        config: Arc<TransportConfig>,
        handler: Arc<H>,
        shutdown: CancellationToken,
    ) -> Connection {
        let closed = CancellationToken::new();
        let outbox = Outbox::new(
            writer,
            config.write_queue_frames,
            closed.clone(),
            config.write_timeout,
        );
        tokio::spawn(outbox.clone().run());
        let connection = Connection {
            inner: Arc::new(Inner {
                id: NEXT_CONNECTION_ID.fetch_add(1, Ordering::Relaxed),
                peer_addr,
                peer_id,
                principal,
                version,
                next_request_id: AtomicU64::new(1),
                pending: Mutex::new(HashMap::new()),
                pending_slots: Semaphore::new(config.max_pending_requests),
                outbox,
                closed,
                config,
            }),
        };
        tokio::spawn(read_loop(
            connection.clone(),
            reader,
            codec,
            buffer,
            handler,
            shutdown,
        ));
        connection
    }

    pub fn id(&self) -> u64 {
        self.inner.id
    }

    pub fn peer_addr(&self) -> SocketAddr {
        self.inner.peer_addr
    }

    /// The identity the peer gave in the handshake.
    pub fn peer_id(&self) -> &str {
        &self.inner.peer_id
    }

    /// The access key the peer proved in its handshake, if the server checked credentials.
    pub fn principal(&self) -> Option<&str> {
        self.inner.principal.as_deref()
    }

    pub fn is_closed(&self) -> bool {
        self.inner.closed.is_cancelled()
    }

    /// Closes the connection; waiting callers get [`TransportError::Closed`].
    pub fn close(&self) {
        self.inner.closed.cancel();
    }

    /// Completes when the connection has closed.
    pub async fn closed(&self) {
        self.inner.closed.cancelled().await
    }

    /// Sends a request and waits for its response, up to the configured request timeout.
    pub async fn request<T: Serialize>(
        &self,
        code: RequestCode,
        header: &T,
        body: Bytes,
    ) -> Result<Response, TransportError> {
        self.request_with_timeout(code, header, body, self.inner.config.request_timeout)
            .await
    }

    pub async fn request_with_timeout<T: Serialize>(
        &self,
        code: RequestCode,
        header: &T,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Response, TransportError> {
        self.request_raw(
            code as u16,
            Bytes::from(codec::encode(header)),
            body,
            timeout,
        )
        .await
    }

    /// Sends a request with an already encoded header.
    pub async fn request_raw(
        &self,
        code: u16,
        header: Bytes,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Response, TransportError> {
        let inner = &self.inner;
        let work = async {
            let _slot = inner
                .pending_slots
                .acquire()
                .await
                .map_err(|_| TransportError::Closed)?;
            let request_id = inner.next_request_id.fetch_add(1, Ordering::Relaxed);
            let (tx, rx) = oneshot::channel();
            inner.pending.lock().insert(request_id, tx);
            let _forget = RemovePending { inner, request_id };
            self.send_frame(Frame {
                version: inner.version,
                kind: FrameKind::Request,
                code,
                flags: 0,
                request_id,
                header,
                body,
            })
            .await?;
            let frame = rx.await.map_err(|_| TransportError::Closed)?;
            let status =
                Status::from_u16(frame.code).ok_or(TransportError::UnknownStatus(frame.code))?;
            Ok(Response {
                version: frame.version,
                status,
                header: frame.header,
                body: frame.body,
            })
        };
        tokio::select! {
            result = tokio::time::timeout(timeout, work) => {
                result.map_err(|_| TransportError::Timeout(timeout))?
            }
            _ = inner.closed.cancelled() => Err(TransportError::Closed),
        }
    }

    /// Sends a one-way frame; no answer comes back.
    pub async fn one_way<T: Serialize>(
        &self,
        code: RequestCode,
        header: &T,
        body: Bytes,
    ) -> Result<(), TransportError> {
        self.send_frame(Frame {
            version: self.inner.version,
            kind: FrameKind::OneWay,
            code: code as u16,
            flags: 0,
            request_id: 0,
            header: Bytes::from(codec::encode(header)),
            body,
        })
        .await
    }

    async fn send_frame(&self, frame: Frame) -> Result<(), TransportError> {
        if frame.wire_len() - 4 > self.inner.config.max_frame_bytes {
            return Err(TransportError::Frame(
                ferromq_protocol::FrameError::TooLarge {
                    len: frame.wire_len() - 4,
                    max: self.inner.config.max_frame_bytes,
                },
            ));
        }
        self.inner.outbox.send(frame).await
    }
}

/// Removes a pending entry when its request completes, times out or is cancelled.
struct RemovePending<'a> {
    inner: &'a Inner,
    request_id: u64,
}

impl Drop for RemovePending<'_> {
    fn drop(&mut self) {
        self.inner.pending.lock().remove(&self.request_id);
    }
}

async fn keepalive(connection: Connection, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = connection.closed() => return,
        }
        if let Err(err) = connection
            .request(RequestCode::Ping, &(), Bytes::new())
            .await
        {
            debug!(peer = %connection.peer_addr(), %err, "keepalive ping failed");
        }
    }
}

/// Reads one frame, for the handshake. `Ok(None)` means the peer closed cleanly.
async fn read_frame(
    reader: &mut ReadSocket,
    codec: &mut FrameCodec,
    buffer: &mut BytesMut,
) -> Result<Option<Frame>, TransportError> {
    loop {
        if let Some(frame) = codec.decode(buffer)? {
            return Ok(Some(frame));
        }
        if reader.read_buf(buffer).await? == 0 {
            return Ok(None);
        }
    }
}

async fn write_frame_now(writer: &mut WriteSocket, frame: &Frame) {
    let mut out = BytesMut::new();
    frame.encode_prefix(&mut out);
    out.put_slice(&frame.body);
    if let Err(err) = writer.write_all(&out).await {
        debug!(%err, "handshake reply not delivered");
    }
}

async fn read_loop<H: Handler>(
    connection: Connection,
    mut reader: ReadSocket,
    mut codec: FrameCodec,
    mut buffer: BytesMut,
    handler: Arc<H>,
    shutdown: CancellationToken,
) {
    handler.on_open(&connection);
    let inner = &connection.inner;
    let in_flight = Arc::new(Semaphore::new(inner.config.max_in_flight));
    let handlers = TaskTracker::new();
    let mut draining = false;
    // When the first byte of the frame now arriving came in: the whole frame must follow
    // within the frame timeout, however slowly it trickles (slowloris).
    let mut frame_started: Option<tokio::time::Instant> = None;
    let outcome = loop {
        // Route every complete frame in the buffer before reading more.
        if buffer.is_empty() {
            frame_started = None;
        }
        match codec.decode(&mut buffer) {
            Ok(Some(frame)) => {
                frame_started = None;
                if let Err(reason) =
                    route_frame(&connection, frame, &handler, &in_flight, &handlers).await
                {
                    break reason;
                }
                continue;
            }
            Ok(None) => {}
            Err(err) => break format!("bad frame: {err}"),
        }
        let deadline = match frame_started {
            _ if buffer.is_empty() => tokio::time::Instant::now() + inner.config.idle_timeout,
            Some(started) => started + inner.config.frame_read_timeout,
            None => {
                let now = tokio::time::Instant::now();
                frame_started = Some(now);
                now + inner.config.frame_read_timeout
            }
        };
        tokio::select! {
            read = tokio::time::timeout_at(deadline, reader.read_buf(&mut buffer)) => match read {
                Ok(Ok(0)) => break "closed by peer".to_string(),
                Ok(Ok(_)) => {}
                Ok(Err(err)) => break format!("read error: {err}"),
                Err(_) if buffer.is_empty() => break format!("idle for {:?}", inner.config.idle_timeout),
                Err(_) => break format!("frame incomplete after {:?}", inner.config.frame_read_timeout),
            },
            _ = inner.closed.cancelled() => break "closed locally".to_string(),
            _ = shutdown.cancelled() => {
                draining = true;
                break "server shutting down".to_string();
            }
        }
    };
    debug!(peer = %inner.peer_addr, connection = inner.id, reason = %outcome, "connection closing");
    handlers.close();
    if draining {
        // Graceful shutdown: requests already being handled finish and their replies go out.
        tokio::select! {
            _ = handlers.wait() => {}
            _ = inner.closed.cancelled() => {}
        }
    }
    inner.closed.cancel();
    inner.pending.lock().clear();
    inner.pending_slots.close();
    handler.on_close(&connection);
}

/// Delivers one frame. An error string means the connection must close.
async fn route_frame<H: Handler>(
    connection: &Connection,
    frame: Frame,
    handler: &Arc<H>,
    in_flight: &Arc<Semaphore>,
    handlers: &TaskTracker,
) -> Result<(), String> {
    let inner = &connection.inner;
    if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&frame.version) {
        return Err(format!("frame with unsupported version {}", frame.version));
    }
    let one_way = match frame.kind {
        FrameKind::Response => {
            let waiter = inner.pending.lock().remove(&frame.request_id);
            match waiter {
                Some(waiter) => {
                    let _ = waiter.send(frame);
                }
                None => debug!(
                    request_id = frame.request_id,
                    "late or unknown response dropped"
                ),
            }
            return Ok(());
        }
        FrameKind::Request => false,
        FrameKind::OneWay => true,
    };
    if frame.code == RequestCode::Handshake as u16 {
        reply_now(
            connection,
            &frame,
            Reply::error(Status::HandshakeRequired, "handshake already done"),
        )
        .await;
        return Ok(());
    }
    if frame.code == RequestCode::Ping as u16 {
        if !one_way {
            reply_now(connection, &frame, Reply::ok(&())).await;
        }
        return Ok(());
    }
    let Ok(permit) = in_flight.clone().try_acquire_owned() else {
        if !one_way {
            let busy = Reply::error(
                Status::SystemBusy,
                "too many requests in flight on this connection",
            );
            reply_now(connection, &frame, busy).await;
        } else {
            warn!(peer = %inner.peer_addr, "one-way frame dropped: too many requests in flight");
        }
        return Ok(());
    };
    let request = Request {
        version: frame.version,
        code: frame.code,
        request_id: frame.request_id,
        one_way,
        header: frame.header,
        body: frame.body,
    };
    let connection = connection.clone();
    let handler = handler.clone();
    handlers.spawn(async move {
        let request_id = request.request_id;
        // A closed connection cancels its requests: nobody is left to read the answers, and
        // a client that reconnects must not keep work running on its old connection.
        let reply = tokio::select! {
            reply = handler.handle(&connection, request) => reply,
            _ = connection.closed() => return,
        };
        if !one_way {
            let _ = connection
                .send_frame(response_frame(connection.inner.version, request_id, reply))
                .await;
        }
        drop(permit);
    });
    Ok(())
}

fn response_frame(version: u8, request_id: u64, reply: Reply) -> Frame {
    Frame {
        version,
        kind: FrameKind::Response,
        code: reply.status as u16,
        flags: 0,
        request_id,
        header: reply.header,
        body: reply.body,
    }
}

async fn reply_now(connection: &Connection, request: &Frame, reply: Reply) {
    let frame = response_frame(connection.inner.version, request.request_id, reply);
    let _ = connection.send_frame(frame).await;
}
