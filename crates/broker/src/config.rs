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
    /// Where the commit log, consume queues and state live.
    pub data_dir: PathBuf,
    /// Nameservers to register with; empty runs without registration.
    pub nameservers: Vec<String>,
    /// How often the broker re-registers with every nameserver.
    pub heartbeat_interval_ms: u64,
    pub storage: StorageSection,
    pub topics: TopicsSection,
    pub pull: PullSection,
    pub raft: RaftSection,
    pub limits: LimitsConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageSection {
    /// Commit-log segment size in bytes.
    pub segment_bytes: u64,
    /// `sync`: fsync before acknowledging (default). `async`: fsync every `flush_interval_ms`.
    pub flush: FlushPolicy,
    pub flush_interval_ms: u64,
    /// Segments older than this are deleted.
    pub retention_hours: u64,
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
            data_dir: PathBuf::from("data/broker"),
            nameservers: vec!["127.0.0.1:9876".into()],
            heartbeat_interval_ms: 30_000,
            storage: StorageSection::default(),
            topics: TopicsSection::default(),
            pull: PullSection::default(),
            raft: RaftSection::default(),
            limits: LimitsConfig::default(),
        }
    }
}

impl Default for StorageSection {
    fn default() -> Self {
        StorageSection {
            segment_bytes: 1 << 30,
            flush: FlushPolicy::Sync,
            flush_interval_ms: 200,
            retention_hours: 72,
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

impl Default for RaftSection {
    fn default() -> Self {
        RaftSection {
            tick_ms: 100,
            election_ticks: 10,
            heartbeat_ticks: 2,
        }
    }
}

impl BrokerConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.node_id == 0 {
            return Err("node_id must be positive".into());
        }
        ferromq_protocol::message::validate_group(&self.group)
            .map_err(|e| format!("group: {e}"))?;
        if self.heartbeat_interval_ms == 0 {
            return Err("heartbeat_interval_ms must be positive".into());
        }
        let storage = &self.storage;
        if storage.segment_bytes < 64 * 1024 {
            return Err("storage.segment_bytes must be at least 65536".into());
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
        if self.raft.tick_ms == 0
            || self.raft.heartbeat_ticks == 0
            || self.raft.election_ticks <= self.raft.heartbeat_ticks
        {
            return Err("raft: tick_ms > 0 and election_ticks > heartbeat_ticks > 0".into());
        }
        self.limits.validate()
    }

    pub fn store_config(&self) -> StoreConfig {
        StoreConfig {
            segment_bytes: self.storage.segment_bytes,
            cq_units_per_file: self.storage.cq_units_per_file,
            retention: Duration::from_secs(self.storage.retention_hours * 3600),
        }
    }

    pub fn raft_config(&self) -> RaftConfig {
        RaftConfig {
            node_id: self.node_id,
            voters: vec![self.node_id],
            tick: Duration::from_millis(self.raft.tick_ms),
            election_ticks: self.raft.election_ticks,
            heartbeat_ticks: self.raft.heartbeat_ticks,
            flush: self.storage.flush,
            flush_interval: Duration::from_millis(self.storage.flush_interval_ms),
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
    fn flush_policy_is_set_by_name() {
        let config: BrokerConfig = ferromq_service::config::load(
            None,
            vec![("FERROMQ_STORAGE__FLUSH".to_string(), "async".to_string())],
        )
        .unwrap();
        assert_eq!(config.storage.flush, FlushPolicy::Async);
    }
}
