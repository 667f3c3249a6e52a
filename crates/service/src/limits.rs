//! The `[limits]` config section shared by every server: what a connection may cost.

use std::time::Duration;

use ferromq_transport::TransportConfig;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest frame accepted; a longer length prefix closes the connection.
    pub max_frame_bytes: usize,
    /// Largest message body accepted (brokers).
    pub max_message_bytes: usize,
    /// Requests handled at once per connection; more are answered `SYSTEM_BUSY`.
    pub max_in_flight: usize,
    /// Connections served at once.
    pub max_connections: usize,
    /// A connection silent this long is closed (clients ping every 30 s).
    pub idle_timeout_ms: u64,
    /// A started frame must complete within this time.
    pub frame_read_timeout_ms: u64,
    /// The handshake must complete within this time.
    pub handshake_timeout_ms: u64,
    /// A peer that does not read its responses for this long is disconnected.
    pub write_timeout_ms: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let transport = TransportConfig::default();
        LimitsConfig {
            max_frame_bytes: transport.max_frame_bytes,
            max_message_bytes: ferromq_protocol::message::DEFAULT_MAX_MESSAGE_BYTES,
            max_in_flight: transport.max_in_flight,
            max_connections: transport.max_connections,
            idle_timeout_ms: transport.idle_timeout.as_millis() as u64,
            frame_read_timeout_ms: transport.frame_read_timeout.as_millis() as u64,
            handshake_timeout_ms: transport.handshake_timeout.as_millis() as u64,
            write_timeout_ms: transport.write_timeout.as_millis() as u64,
        }
    }
}

impl LimitsConfig {
    /// The transport settings for the server side of connections.
    pub fn server_transport(&self) -> TransportConfig {
        TransportConfig {
            max_frame_bytes: self.max_frame_bytes,
            max_in_flight: self.max_in_flight,
            max_connections: self.max_connections,
            idle_timeout: Duration::from_millis(self.idle_timeout_ms),
            frame_read_timeout: Duration::from_millis(self.frame_read_timeout_ms),
            handshake_timeout: Duration::from_millis(self.handshake_timeout_ms),
            write_timeout: Duration::from_millis(self.write_timeout_ms),
            keepalive_interval: None,
            ..TransportConfig::default()
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.max_frame_bytes < 1024 {
            return Err("limits.max_frame_bytes must be at least 1024".into());
        }
        // A full-size message plus its record fields and header must fit in one frame.
        if self.max_message_bytes + 64 * 1024 > self.max_frame_bytes {
            return Err(format!(
                "limits.max_message_bytes ({}) plus 64 KiB of headers must fit in limits.max_frame_bytes ({})",
                self.max_message_bytes, self.max_frame_bytes
            ));
        }
        if self.max_in_flight == 0 || self.max_connections == 0 {
            return Err("limits.max_in_flight and limits.max_connections must be positive".into());
        }
        Ok(())
    }
}
