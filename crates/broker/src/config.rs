//! Broker configuration (`broker.toml`, `FERROMQ_*`, flags); every key is documented in
//! docs/configuration.md. The defaults run a single broker on a laptop.

use std::path::PathBuf;
use std::time::Duration;

use ferromq_raftlog::{FlushPolicy, RaftConfig};
use ferromq_service::limits::LimitsConfig;
use ferromq_store::StoreConfig;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    /// Cluster name reported to nameservers.
    pub cluster: String,
    /// Broker group (one Raft group); its members share the name.
    pub group: String,
    /// This member's id within the group (Raft node id), > 0.
    pub node_id: u64,
    /// Client wire address to listen on.
    pub listen: String,
    /// Address clients are told to connect to; empty means the bound listen address (with
    /// 127.0.0.1 for an unspecified host). Use a stable DNS name in Kubernetes.
    pub advertised_addr: String,
    /// Admin HTTP address (`/livez`, `/readyz`, `/metrics`, `/v1/...`).
    pub admin_listen: String,
    /// Bearer token for admin requests that change something; empty: those are accepted
    /// only from loopback addresses. Never printed.
    #[serde(serialize_with = "ferromq_service::config::redact")]
    pub admin_token: String,
    /// Guard reads under `/v1/` (message bodies, dead letters, traces) like changes: the
    /// token, or loopback without one. Probes, metrics and the OpenAPI document stay open.
    pub admin_protect_reads: bool,
    /// HTTPS on the admin port (`cert_file`, `key_file`; `client_ca_file` requires client
    /// certificates); empty: plain HTTP.
    pub admin_tls: ferromq_service::tls::TlsConfig,
    /// Where the commit log, consume queues and state live.
    pub data_dir: PathBuf,
    /// Nameservers to register with; empty runs without registration.
    pub nameservers: Vec<String>,
    /// How often the broker re-registers with every nameserver.
    pub heartbeat_interval_ms: u64,
    /// A consumer that sends no heartbeat for this long leaves its group (consumers beat every
    /// 2 s by default); the rest of the group rebalances at once.
    pub consumer_expiry_ms: u64,
    pub storage: StorageSection,
    pub topics: TopicsSection,
    pub pull: PullSection,
    pub raft: RaftSection,
    pub schedule: ScheduleSection,
    pub transactions: TransactionsSection,
    pub limits: LimitsConfig,
    /// Client authentication and permissions on the client port (off by default).
    pub auth: ferromq_service::auth::AuthConfig,
    /// Credentials to register with nameservers that require authentication (an `admin` key
    /// of their `[auth]`); empty: none.
    pub nameserver_credentials: NameserverCredentials,
    /// TLS on the client and peer ports and to nameservers (off by default).
    pub tls: TlsSection,
}

/// `[tls]`: PEM files. With `cert_file` and `key_file` the client port speaks TLS only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSection {
    /// This broker's certificate chain; empty: no TLS.
    pub cert_file: String,
    pub key_file: String,
    /// Require client certificates on the client port, signed by this CA.
    pub client_ca_file: String,
    /// Mutual TLS on the peer port: members present `cert_file` and accept only certificates
    /// (for their `raft_addr` host) signed by this CA.
    pub peer_ca_file: String,
    /// Connect to nameservers over TLS, trusting this CA.
    pub nameserver_ca_file: String,
}

use ferromq_service::tls::path;

impl TlsSection {
    /// The client port's TLS, if configured.
    pub fn client_port(&self) -> Result<Option<std::sync::Arc<rustls::ServerConfig>>, String> {
        ferromq_service::tls::server(&self.cert_file, &self.key_file, &self.client_ca_file)
    }

    /// The peer port's server and client sides, if mutual TLS is configured.
    pub fn peer_port(
        &self,
    ) -> Result<
        Option<(
            std::sync::Arc<rustls::ServerConfig>,
            ferromq_transport::TlsClient,
        )>,
        String,
    > {
        let Some(ca) = path(&self.peer_ca_file) else {
            return Ok(None);
        };
        let (Some(cert), Some(key)) = (path(&self.cert_file), path(&self.key_file)) else {
            return Err("tls.peer_ca_file needs tls.cert_file and tls.key_file".into());
        };
        let server = ferromq_transport::tls::server_from_pem(cert, key, Some(ca))?;
        let client = ferromq_transport::tls::client_from_pem(ca, Some((cert, key)))?;
        Ok(Some((server, client)))
    }

    /// TLS to nameservers, if configured.
    pub fn nameservers(&self) -> Result<Option<ferromq_transport::TlsClient>, String> {
        path(&self.nameserver_ca_file)
            .map(|ca| ferromq_transport::tls::client_from_pem(ca, None))
            .transpose()
    }
}

/// `[nameserver_credentials]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct NameserverCredentials {
    pub access_key: String,
    #[serde(serialize_with = "ferromq_service::config::redact")]
    pub secret_key: String,
}

impl NameserverCredentials {
    pub fn get(&self) -> Option<ferromq_protocol::auth::Credentials> {
        (!self.access_key.is_empty()).then(|| ferromq_protocol::auth::Credentials {
            access_key: self.access_key.clone(),
            secret_key: self.secret_key.clone(),
        })
    }
}

/// Check-backs of transactions left undecided.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransactionsSection {
    /// A half message is first asked about this long after it was stored.
    pub check_after_ms: u64,
    /// Then again at this interval.
    pub check_interval_ms: u64,
    /// After this many check-backs it is parked in `%TXN_PARKED%`.
    pub max_checks: u32,
    /// A producer whose heartbeats stop is not asked after this long.
    pub producer_expiry_ms: u64,
}

impl Default for TransactionsSection {
    fn default() -> Self {
        TransactionsSection {
            check_after_ms: 6_000,
            check_interval_ms: 30_000,
            max_checks: 15,
            producer_expiry_ms: 30_000,
        }
    }
}

/// Delayed and scheduled messages, and the back-off of consumer retries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScheduleSection {
    /// Delay of each level in milliseconds, level 1 first (RocketMQ's 18 by default:
    /// `1s 5s 10s 30s 1m 2m 3m 4m 5m 6m 7m 8m 9m 10m 20m 30m 1h 2h`). A consumer's n-th retry
    /// waits for level n + 2 (10 s, 30 s, 1 min … 2 h).
    pub delay_levels_ms: Vec<u64>,
    /// Longest a message may be delayed (7 days).
    pub max_delay_ms: u64,
    /// How often the leader's timer looks for due messages.
    pub timer_interval_ms: u64,
    /// Most messages one delivery entry carries.
    pub deliver_batch: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageSection {
    /// Commit-log segment size in bytes.
    pub segment_bytes: u64,
    /// `sync`: fsync before acknowledging (default). `async`: fsync every `flush_interval_ms`.
    pub flush: FlushPolicy,
    pub flush_interval_ms: u64,
    /// Segments older than this are deleted (fractions allowed: `0.5` is 30 minutes).
    pub retention_hours: f64,
    /// How often derived state is made durable (bounds replay after a crash).
    pub checkpoint_interval_ms: u64,
    /// How often retention looks for expired segments.
    pub retention_check_interval_ms: u64,
    /// Units per consume-queue file.
    pub cq_units_per_file: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopicsSection {
    /// Create an unknown topic on its first send.
    pub auto_create: bool,
    /// Queue count of auto-created topics.
    pub default_queues: u32,
    /// Largest queue count a topic may have.
    pub max_queues: u32,
    /// Most topics this broker holds; creating more (explicitly or by a send) is refused.
    pub max_topics: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PullSection {
    /// Longest a pull waits for new messages (long polling).
    pub max_wait_ms: u64,
    /// Most messages one pull returns.
    pub max_messages: u32,
    /// About how many bytes one pull returns (at least one message).
    pub max_bytes: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftSection {
    pub tick_ms: u64,
    /// Election timeout in ticks.
    pub election_ticks: usize,
    /// Leader heartbeat interval in ticks.
    pub heartbeat_ticks: usize,
    /// Peer address for Raft messages from the other members (only bound when there are any).
    pub listen: String,
    /// Every member of the group, this broker included. Empty: a group of one that never
    /// grows (no peer port).
    pub peers: Vec<PeerConfig>,
    /// Start as a new member of a running group instead of founding one: `peers` lists the
    /// current members and this broker, and the leader adds it with
    /// `POST /v1/raft/members`; it then receives the log (or a snapshot).
    pub join: bool,
    /// Snapshot bases larger than this are fetched by the receiving member in chunks over the
    /// peer port instead of travelling inside one Raft message.
    pub snapshot_inline_max_bytes: u64,
}

/// One member of a broker group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    pub id: u64,
    /// Where the member listens for Raft messages.
    pub raft_addr: String,
    /// Where clients reach the member (told to clients in `NOT_LEADER` answers).
    pub client_addr: String,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            cluster: "DefaultCluster".into(),
            group: "broker-a".into(),
            node_id: 1,
            listen: "0.0.0.0:10911".into(),
            advertised_addr: String::new(),
            admin_listen: "127.0.0.1:10913".into(),
            admin_token: String::new(),
            admin_protect_reads: false,
            admin_tls: ferromq_service::tls::TlsConfig::default(),
            data_dir: PathBuf::from("data/broker"),
            nameservers: vec!["127.0.0.1:9876".into()],
            heartbeat_interval_ms: 30_000,
            consumer_expiry_ms: 5_000,
            storage: StorageSection::default(),
            topics: TopicsSection::default(),
            pull: PullSection::default(),
            raft: RaftSection::default(),
            schedule: ScheduleSection::default(),
            transactions: TransactionsSection::default(),
            limits: LimitsConfig::default(),
            auth: ferromq_service::auth::AuthConfig::default(),
            nameserver_credentials: NameserverCredentials::default(),
            tls: TlsSection::default(),
        }
    }
}

impl Default for StorageSection {
    fn default() -> Self {
        StorageSection {
            segment_bytes: 1 << 30,
            flush: FlushPolicy::Sync,
            flush_interval_ms: 200,
            retention_hours: 72.0,
            checkpoint_interval_ms: 10_000,
            retention_check_interval_ms: 300_000,
            cq_units_per_file: 300_000,
        }
    }
}

impl Default for TopicsSection {
    fn default() -> Self {
        TopicsSection {
            auto_create: true,
            default_queues: 4,
            max_queues: 1024,
            max_topics: 10_000,
        }
    }
}

impl Default for PullSection {
    fn default() -> Self {
        PullSection {
            max_wait_ms: 15_000,
            max_messages: 256,
            max_bytes: 4 * 1024 * 1024,
        }
    }
}

impl Default for ScheduleSection {
    fn default() -> Self {
        ScheduleSection {
            delay_levels_ms: ferromq_protocol::system::DEFAULT_DELAY_LEVELS_MS.to_vec(),
            max_delay_ms: 7 * 24 * 3600 * 1000,
            timer_interval_ms: 10,
            deliver_batch: 256,
        }
    }
}

impl Default for RaftSection {
    fn default() -> Self {
        RaftSection {
            tick_ms: 100,
            election_ticks: 10,
            heartbeat_ticks: 2,
            listen: "0.0.0.0:10912".into(),
            peers: Vec::new(),
            join: false,
            snapshot_inline_max_bytes: 16 << 20,
        }
    }
}

impl BrokerConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.node_id == 0 {
            return Err("node_id must be positive".into());
        }
        self.auth.validate()?;
        self.tls.client_port()?;
        self.tls.peer_port()?;
        self.tls.nameservers()?;
        self.admin_tls.server()?;
        ferromq_protocol::message::validate_group(&self.group)
            .map_err(|e| format!("group: {e}"))?;
        if self.heartbeat_interval_ms == 0 {
            return Err("heartbeat_interval_ms must be positive".into());
        }
        if self.consumer_expiry_ms == 0 {
            return Err("consumer_expiry_ms must be positive".into());
        }
        let storage = &self.storage;
        if storage.segment_bytes < 64 * 1024 {
            return Err("storage.segment_bytes must be at least 65536".into());
        }
        // At most 100 years: beyond that the duration overflows and the limit means nothing.
        if !(storage.retention_hours > 0.0 && storage.retention_hours <= 876_000.0) {
            return Err("storage.retention_hours must be positive (and at most 876000)".into());
        }
        if storage.cq_units_per_file == 0
            || storage.checkpoint_interval_ms == 0
            || storage.flush_interval_ms == 0
        {
            return Err("storage intervals and cq_units_per_file must be positive".into());
        }
        if self.topics.default_queues == 0 || self.topics.default_queues > self.topics.max_queues {
            return Err("topics.default_queues must be in 1..=topics.max_queues".into());
        }
        if self.pull.max_messages == 0 || self.pull.max_bytes == 0 {
            return Err("pull.max_messages and pull.max_bytes must be positive".into());
        }
        let schedule = &self.schedule;
        if schedule.delay_levels_ms.is_empty()
            || schedule.delay_levels_ms.len() > 255
            || schedule.delay_levels_ms.contains(&0)
        {
            return Err("schedule.delay_levels_ms needs 1..=255 positive delays".into());
        }
        if schedule.timer_interval_ms == 0 || schedule.deliver_batch == 0 {
            return Err("schedule.timer_interval_ms and deliver_batch must be positive".into());
        }
        let transactions = &self.transactions;
        if transactions.check_interval_ms == 0 || transactions.producer_expiry_ms == 0 {
            return Err(
                "transactions.check_interval_ms and producer_expiry_ms must be positive".into(),
            );
        }
        self.validate_peers()?;
        if self.raft.tick_ms == 0
            || self.raft.heartbeat_ticks == 0
            || self.raft.election_ticks <= self.raft.heartbeat_ticks
        {
            return Err("raft: tick_ms > 0 and election_ticks > heartbeat_ticks > 0".into());
        }
        self.limits.validate()
    }

    fn validate_peers(&self) -> Result<(), String> {
        let peers = &self.raft.peers;
        if peers.is_empty() {
            return Ok(());
        }
        let mut ids: Vec<u64> = peers.iter().map(|p| p.id).collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.len() != peers.len() || ids.contains(&0) {
            return Err("raft.peers: ids must be unique and positive".into());
        }
        if !ids.contains(&self.node_id) {
            return Err(format!(
                "raft.peers must include this broker (node_id {})",
                self.node_id
            ));
        }
        if self.raft.join {
            return if peers.len() > 1 {
                Ok(())
            } else {
                Err("raft.join needs raft.peers listing the group's current members".into())
            };
        }
        if peers.len() % 2 == 0 {
            return Err(format!(
                "raft.peers lists {} members; use an odd number (1, 3, 5): an even one tolerates no more failures",
                peers.len()
            ));
        }
        Ok(())
    }

    /// Ids of the group's voters.
    pub fn voters(&self) -> Vec<u64> {
        if self.raft.peers.is_empty() {
            vec![self.node_id]
        } else {
            self.raft.peers.iter().map(|p| p.id).collect()
        }
    }

    pub fn store_config(&self) -> StoreConfig {
        StoreConfig {
            segment_bytes: self.storage.segment_bytes,
            cq_units_per_file: self.storage.cq_units_per_file,
            retention: Duration::from_secs_f64(self.storage.retention_hours * 3600.0),
            // A member of a group fetches what a cut loses from its peers; a broker alone has
            // no one to fetch from and refuses to start on a corrupt log instead.
            cut_corruption: self.raft.peers.len() > 1 || self.raft.join,
        }
    }

    pub fn raft_config(&self) -> RaftConfig {
        RaftConfig {
            node_id: self.node_id,
            voters: self.voters(),
            join: self.raft.join,
            tick: Duration::from_millis(self.raft.tick_ms),
            election_ticks: self.raft.election_ticks,
            heartbeat_ticks: self.raft.heartbeat_ticks,
            flush: self.storage.flush,
            flush_interval: Duration::from_millis(self.storage.flush_interval_ms),
            snapshot_inline_max_bytes: self.raft.snapshot_inline_max_bytes,
            ..RaftConfig::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_round_trip_through_toml() {
        let config = BrokerConfig::default();
        config.validate().unwrap();
        let text = ferromq_service::config::to_toml(&config);
        let parsed: BrokerConfig = toml_round_trip(&text);
        assert_eq!(parsed, config);
    }

    fn toml_round_trip(text: &str) -> BrokerConfig {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broker.toml");
        std::fs::write(&path, text).unwrap();
        ferromq_service::config::load(Some(&path), Vec::new()).unwrap()
    }

    #[test]
    fn peers_must_be_an_odd_set_that_includes_this_broker() {
        let peer = |id: u64| PeerConfig {
            id,
            raft_addr: format!("b{id}:10912"),
            client_addr: format!("b{id}:10911"),
        };
        let mut config = BrokerConfig::default();
        config.raft.peers = vec![peer(1), peer(2), peer(3)];
        config.validate().unwrap();
        assert_eq!(config.voters(), vec![1, 2, 3]);
        config.raft.peers = vec![peer(1), peer(2)];
        assert!(config.validate().unwrap_err().contains("odd"));
        config.raft.peers = vec![peer(2), peer(3), peer(4)];
        assert!(config
            .validate()
            .unwrap_err()
            .contains("include this broker"));
        config.raft.peers = vec![peer(1), peer(1), peer(3)];
        assert!(config.validate().is_err());
    }

    #[test]
    fn peers_can_come_from_the_environment() {
        let config: BrokerConfig = ferromq_service::config::load(
            None,
            vec![(
                "FERROMQ_RAFT__PEERS".to_string(),
                r#"[{id = 1, raft_addr = "a:1", client_addr = "a:2"}]"#.to_string(),
            )],
        )
        .unwrap();
        assert_eq!(config.raft.peers[0].raft_addr, "a:1");
    }

    #[test]
    fn flush_policy_is_set_by_name() {
        let config: BrokerConfig = ferromq_service::config::load(
            None,
            vec![("FERROMQ_STORAGE__FLUSH".to_string(), "async".to_string())],
        )
        .unwrap();
        assert_eq!(config.storage.flush, FlushPolicy::Async);
    }
}
