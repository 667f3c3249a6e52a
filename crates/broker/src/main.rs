//! `ferromq-broker`: loads configuration, runs one broker until SIGINT/SIGTERM.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use ferromq_broker::{Broker, BrokerConfig};

/// FerroMQ broker: one member of a broker group (a Raft group whose log is the commit log).
///
/// Configuration is layered: defaults, then the TOML file (--config or FERROMQ_CONFIG), then
/// FERROMQ_* environment variables (FERROMQ_NODE_ID=2, FERROMQ_STORAGE__FLUSH=async, ...),
/// then these flags. `--print-config` shows the result; docs/configuration.md lists every key.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// TOML configuration file.
    #[arg(long, env = "FERROMQ_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory (commit log, consume queues, state) [default: data/broker].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Client wire address [default: 0.0.0.0:10911].
    #[arg(long)]
    listen: Option<String>,
    /// Address announced to clients [default: the listen address].
    #[arg(long)]
    advertised_addr: Option<String>,
    /// Admin HTTP address [default: 127.0.0.1:10913].
    #[arg(long)]
    admin_listen: Option<String>,
    /// Nameserver addresses, comma-separated [default: 127.0.0.1:9876].
    #[arg(long, value_delimiter = ',')]
    nameserver: Option<Vec<String>>,
    /// Broker group name [default: broker-a].
    #[arg(long)]
    group: Option<String>,
    /// Node id within the group [default: 1].
    #[arg(long, conflicts_with = "node_id_from_pod_name")]
    node_id: Option<u64>,
    /// Take the node id from a StatefulSet pod name: `broker-a-0` is node 1, `broker-a-2`
    /// node 3 (Kubernetes: `--node-id-from-pod-name $(POD_NAME)`).
    #[arg(long)]
    node_id_from_pod_name: Option<String>,
    /// Once serving, write the bound addresses here as JSON (`{"addr", "admin_addr",
    /// "advertised_addr"}`).
    #[arg(long)]
    addr_file: Option<PathBuf>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,
    /// Log lines as text or one JSON object per line [default: text, or FERROMQ_LOG_FORMAT].
    #[arg(long, value_enum)]
    log_format: Option<ferromq_service::logging::LogFormat>,
}

/// `<statefulset>-<ordinal>` → ordinal + 1 (Raft ids start at 1).
fn node_id_of_pod(pod_name: &str) -> anyhow::Result<u64> {
    pod_name
        .rsplit_once('-')
        .and_then(|(_, ordinal)| ordinal.parse::<u64>().ok())
        .map(|ordinal| ordinal + 1)
        .with_context(|| {
            format!("pod name {pod_name:?} does not end in -<ordinal> (a StatefulSet pod's does)")
        })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ferromq_service::logging::init(args.log_format);
    let mut config: BrokerConfig =
        ferromq_service::config::load(args.config.as_deref(), std::env::vars())?;
    if let Some(data_dir) = args.data_dir {
        config.data_dir = data_dir;
    }
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(advertised) = args.advertised_addr {
        config.advertised_addr = advertised;
    }
    if let Some(admin_listen) = args.admin_listen {
        config.admin_listen = admin_listen;
    }
    if let Some(nameservers) = args.nameserver {
        config.nameservers = nameservers;
    }
    if let Some(group) = args.group {
        config.group = group;
    }
    if let Some(node_id) = args.node_id {
        config.node_id = node_id;
    }
    if let Some(pod_name) = &args.node_id_from_pod_name {
        config.node_id = node_id_of_pod(pod_name)?;
    }
    if args.print_config {
        print!("{}", ferromq_service::config::to_toml(&config));
        return Ok(());
    }
    ferromq_service::raise_open_files_limit();
    let broker = Broker::start(config).await.context("starting broker")?;
    if let Some(path) = &args.addr_file {
        let addresses = serde_json::json!({
            "addr": broker.addr().to_string(),
            "admin_addr": broker.admin_addr().to_string(),
            "advertised_addr": broker.advertised_addr(),
        });
        ferromq_service::write_addr_file(path, &addresses).context("writing --addr-file")?;
    }
    ferromq_service::shutdown_signal().await;
    broker.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    #[test]
    fn node_ids_come_from_statefulset_ordinals() {
        assert_eq!(super::node_id_of_pod("broker-a-0").unwrap(), 1);
        assert_eq!(super::node_id_of_pod("broker-b-12").unwrap(), 13);
        assert!(super::node_id_of_pod("broker").is_err());
        assert!(super::node_id_of_pod("broker-a-x").is_err());
    }
}
