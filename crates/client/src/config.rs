//! Client configuration: a plain serde struct, so applications can embed it in their own
//! config files, with defaults that reach a local `ferromq standalone`.

use std::time::Duration;

pub use ferromq_protocol::auth::Credentials;
pub use ferromq_protocol::headers::ConsumeMode;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientConfig {
    /// Nameserver addresses (`host:port`).
    pub name_servers: Vec<String>,
    /// Identity shown in broker logs; defaults to `ferromq-client-<pid>`.
    pub client_id: String,
    /// Default wait for a broker's answer.
    pub request_timeout_ms: u64,
    /// How often cached routes are refreshed (they are also refreshed at once on errors).
    pub route_refresh_interval_ms: u64,
    /// Largest frame accepted from a server (protects the client from a corrupt length).
    pub max_frame_bytes: usize,
    /// Access key and secret key, for brokers that require authentication (`[auth]`).
    pub credentials: Option<Credentials>,
    /// TLS to nameservers and brokers whose ports require it (`[tls]`).
    pub tls: Option<ClientTls>,
}

/// TLS settings of a client (PEM files).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ClientTls {
    /// The CA servers' certificates must chain to.
    pub ca_file: String,
    /// This client's certificate chain and key, for servers that require client certificates.
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            name_servers: vec!["127.0.0.1:9876".into()],
            client_id: format!("ferromq-client-{}", std::process::id()),
            request_timeout_ms: 3_000,
            route_refresh_interval_ms: 30_000,
            max_frame_bytes: ferromq_protocol::frame::DEFAULT_MAX_FRAME_BYTES,
            credentials: None,
            tls: None,
        }
    }
}

impl ClientConfig {
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.name_servers.is_empty() {
            return Err("at least one nameserver address is needed".into());
        }
        if self.request_timeout_ms == 0 || self.route_refresh_interval_ms == 0 {
            return Err("timeouts and intervals must be positive".into());
        }
        Ok(())
    }
}

/// Producer settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProducerConfig {
    /// Extra attempts after a retriable failure, on another broker group when there is one.
    pub retries: u32,
    /// Budget for one send, retries included.
    pub send_timeout_ms: u64,
    /// Asynchronous sends in flight at once; more wait for a slot.
    pub max_in_flight: usize,
    /// Largest message body sent (the broker enforces its own limit too).
    pub max_message_bytes: usize,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            retries: 2,
            send_timeout_ms: 3_000,
            max_in_flight: 1024,
            max_message_bytes: ferromq_protocol::message::DEFAULT_MAX_MESSAGE_BYTES,
        }
    }
}

/// Where a group with no committed offset starts reading a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartFrom {
    /// The oldest message still stored.
    First,
    /// Only messages sent from now on.
    Last,
    /// The first message stored at or after this time (milliseconds since the epoch).
    Timestamp(u64),
}

/// How the members of a clustering group divide the queues among themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Allocation {
    /// Contiguous, even shares of the sorted queue list (RocketMQ's default).
    #[default]
    Average,
    /// Each queue to the member with the highest hash of (member, queue): when a member joins
    /// or leaves, only its own share of queues moves.
    ConsistentHash,
}

/// Consumer settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsumerConfig {
    pub start_from: StartFrom,
    /// Messages per pull.
    pub pull_batch: u32,
    /// Bytes per pull (about; at least one message).
    pub pull_max_bytes: u32,
    /// How long a pull may wait at the broker for new messages.
    pub long_poll_ms: u64,
    /// Messages fetched but not yet handed to the application, per consumer; pulling pauses
    /// beyond this.
    pub max_buffered: usize,
    /// Per queue: messages fetched but not consumed yet, and their body bytes; the queue is
    /// not pulled further beyond either.
    pub max_buffered_per_queue: usize,
    pub max_buffered_bytes_per_queue: usize,
    /// A [`crate::Consumer::run`] handler that takes longer than this counts as failed (the
    /// message is handed to it again).
    pub consume_timeout_ms: u64,
    /// How often consumed offsets are committed to the broker.
    pub commit_interval_ms: u64,
    /// Pull from a follower of each broker group instead of the leader (slave read): spreads
    /// read load. Consumers also fall back to a follower for a while when the leader cannot be
    /// reached. Offsets are always committed to the leader.
    pub read_from_followers: bool,
    /// `clustering` (each queue read by one member of the group) or `broadcast` (every member
    /// reads everything, with offsets of its own).
    pub mode: ConsumeMode,
    /// How a clustering group divides its queues.
    pub allocation: Allocation,
    /// How often the consumer tells brokers it is alive; brokers drop it after
    /// `consumer_expiry_ms` (5 s by default) without one.
    pub heartbeat_interval_ms: u64,
    /// Rebalance at least this often, even without a change notice from a broker.
    pub rebalance_interval_ms: u64,
    /// Broadcast mode: the stable name under which this member's offsets are kept, so a
    /// restarted member continues where it left off. Default: the host name (else the client
    /// id); set it when one host runs several broadcast members of a group.
    pub broadcast_id: Option<String>,
    /// Clustering mode: a message a [`crate::Consumer::run`] handler fails is handed back to
    /// the broker, which delivers it again after a back-off (10 s, 30 s, 1 min … 2 h) through the
    /// group's retry topic, and moves it to the group's dead-letter topic (`%DLQ%<group>`) after
    /// `max_reconsume_times` retries. Off (or in broadcast mode, or when the broker cannot be
    /// reached), the consumer retries locally and the queue waits.
    pub broker_retries: bool,
    /// Retries before a message is dead-lettered (16, as RocketMQ).
    pub max_reconsume_times: u32,
    /// Orderly consumption: each queue is consumed only while this member holds its lock at
    /// the broker, its messages reach the handler one at a time in offset order, and a failed
    /// message is retried (after its `RetryLater` delay, 1 s by default) before anything after
    /// it; no broker retries.
    pub orderly: bool,
    /// Orderly: how long a queue lock lasts unless renewed (renewed three times per lease); a
    /// member that dies holds its queues this long.
    pub queue_lock_lease_ms: u64,
    /// Orderly: after `max_reconsume_times` failed retries, move the message to the group's
    /// dead-letter topic and go on (otherwise it is retried until it succeeds).
    pub orderly_dead_letter: bool,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            start_from: StartFrom::First,
            pull_batch: 64,
            pull_max_bytes: 1024 * 1024,
            long_poll_ms: 15_000,
            max_buffered: 1000,
            max_buffered_per_queue: 1000,
            max_buffered_bytes_per_queue: 100 * 1024 * 1024,
            consume_timeout_ms: 15 * 60 * 1000,
            broker_retries: true,
            max_reconsume_times: 16,
            orderly: false,
            queue_lock_lease_ms: 60_000,
            orderly_dead_letter: false,
            commit_interval_ms: 5_000,
            read_from_followers: false,
            mode: ConsumeMode::Clustering,
            allocation: Allocation::Average,
            heartbeat_interval_ms: 2_000,
            rebalance_interval_ms: 20_000,
            broadcast_id: None,
        }
    }
}
