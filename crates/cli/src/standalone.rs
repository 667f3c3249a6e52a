//! `ferromq standalone`: a nameserver and a one-voter broker in one process, for development
//! and the quick start.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use ferromq_broker::{Broker, BrokerConfig};
use ferromq_nameserver::{Nameserver, NameserverConfig};
use ferromq_raftlog::FlushPolicy;

#[derive(Debug, Args)]
pub struct StandaloneArgs {
    /// Where the broker keeps its data.
    #[arg(long, default_value = "data")]
    data_dir: PathBuf,
    /// Nameserver wire address.
    #[arg(long, default_value = "0.0.0.0:9876")]
    nameserver_listen: String,
    /// Nameserver admin HTTP address.
    #[arg(long, default_value = "127.0.0.1:9877")]
    nameserver_admin_listen: String,
    /// Broker client address.
    #[arg(long, default_value = "0.0.0.0:10911")]
    broker_listen: String,
    /// Broker admin HTTP address.
    #[arg(long, default_value = "127.0.0.1:10913")]
    broker_admin_listen: String,
    /// `sync` (fsync before acknowledging) or `async` (fsync every 200 ms; faster, can lose
    /// acknowledged messages in a power failure).
    #[arg(long, default_value = "sync", value_parser = parse_flush)]
    flush: FlushPolicy,
    /// Once serving, write the bound addresses here as JSON (`nameserver`, `nameserver_admin`,
    /// `broker`, `broker_admin`).
    #[arg(long)]
    addr_file: Option<PathBuf>,
}

fn parse_flush(text: &str) -> Result<FlushPolicy, String> {
    match text {
        "sync" => Ok(FlushPolicy::Sync),
        "async" => Ok(FlushPolicy::Async),
        other => Err(format!("flush must be sync or async, not {other:?}")),
    }
}

pub async fn run(args: StandaloneArgs) -> anyhow::Result<()> {
    ferromq_service::raise_open_files_limit();
    let nameserver = Nameserver::start(NameserverConfig {
        listen: args.nameserver_listen,
        admin_listen: args.nameserver_admin_listen,
        ..NameserverConfig::default()
    })
    .await
    .context("starting the nameserver")?;
    let nameserver_addr = format!("127.0.0.1:{}", nameserver.addr().port());
    let mut broker_config = BrokerConfig {
        listen: args.broker_listen,
        admin_listen: args.broker_admin_listen,
        data_dir: args.data_dir.join("broker"),
        nameservers: vec![nameserver_addr.clone()],
        ..BrokerConfig::default()
    };
    broker_config.storage.flush = args.flush;
    let broker = match Broker::start(broker_config).await {
        Ok(broker) => broker,
        Err(err) => {
            nameserver.shutdown().await;
            return Err(err).context("starting the broker");
        }
    };
    if let Some(path) = &args.addr_file {
        let addresses = serde_json::json!({
            "nameserver": nameserver_addr,
            "nameserver_admin": nameserver.admin_addr().to_string(),
            "broker": broker.advertised_addr(),
            "broker_admin": broker.admin_addr().to_string(),
        });
        ferromq_service::write_addr_file(path, &addresses).context("writing --addr-file")?;
    }
    eprintln!(
        "FerroMQ standalone is running: nameserver {nameserver_addr} (admin http://{}), broker {} (admin http://{}), data in {}.\n\
         Try: ferromq send --topic hello --body 'hi' && ferromq consume --topic hello --group demo --count 1\n\
         Stop with Ctrl-C.",
        nameserver.admin_addr(),
        broker.advertised_addr(),
        broker.admin_addr(),
        args.data_dir.display(),
    );
    ferromq_service::shutdown_signal().await;
    eprintln!("shutting down");
    broker.shutdown().await;
    nameserver.shutdown().await;
    Ok(())
}
