//! Limits and timeouts of a connection, with the defaults every service starts from.

use std::net::IpAddr;
use std::time::Duration;

use ferromq_protocol::frame::{DEFAULT_MAX_FRAME_BYTES, DEFAULT_MAX_HEADER_BYTES};

#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// Largest frame accepted or sent; a longer length prefix closes the connection.
    pub max_frame_bytes: usize,
    /// Largest encoded header inside a frame.
    pub max_header_bytes: usize,
    /// Incoming requests handled at once per connection; more are answered `SYSTEM_BUSY`.
    pub max_in_flight: usize,
    /// Outgoing requests awaiting a response per connection; more wait for a slot.
    pub max_pending_requests: usize,
    /// A connection that receives nothing for this long is closed.
    pub idle_timeout: Duration,
    /// Once a frame has started, the rest of it must arrive within this time.
    pub frame_read_timeout: Duration,
    /// The handshake must complete within this time.
    pub handshake_timeout: Duration,
    /// A write that cannot complete within this time (a peer that stopped reading) closes the
    /// connection.
    pub write_timeout: Duration,
    /// Default wait for a response to an outgoing request.
    pub request_timeout: Duration,
    /// Frames queued for writing per connection.
    pub write_queue_frames: usize,
    /// Connections a server accepts at once.
    pub max_connections: usize,
    /// A connecting side sends a ping this often, so the peer's idle timeout never fires on a
    /// healthy connection. `None` disables pings.
    pub keepalive_interval: Option<Duration>,
    /// Source address of outgoing connections; `None` lets the kernel choose. Members of a
    /// broker group connect from their own peer address, so their peers' source checks (and
    /// firewalls) see who they are.
    pub local_ip: Option<IpAddr>,
    /// Credentials a connecting side proves in its handshake (servers that require them
    /// refuse connections without).
    pub credentials: Option<ferromq_protocol::auth::Credentials>,
    /// The newest protocol version connections this side opens offer (default: the newest this
    /// build speaks); lower, it speaks as an older peer would.
    pub max_version: u8,
    /// TLS for connections this side opens; `None`: plain TCP.
    pub tls_client: Option<crate::TlsClient>,
    /// TLS for connections a server accepts (with client certificates required when its
    /// config says so); `None`: plain TCP.
    pub tls_server: Option<std::sync::Arc<rustls::ServerConfig>>,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            credentials: None,
            max_version: ferromq_protocol::PROTOCOL_VERSION,
            tls_client: None,
            tls_server: None,
            max_in_flight: 1024,
            max_pending_requests: 1024,
            idle_timeout: Duration::from_secs(120),
            frame_read_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(3),
            write_queue_frames: 1024,
            max_connections: 10_000,
            keepalive_interval: Some(Duration::from_secs(30)),
            local_ip: None,
        }
    }
}
