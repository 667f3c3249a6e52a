//! `ferromq-nameserver`: loads configuration, runs the nameserver until SIGINT/SIGTERM.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use ferromq_nameserver::{Nameserver, NameserverConfig};

/// FerroMQ nameserver: the route registry brokers register with and clients query.
///
/// Configuration is layered: defaults, then the TOML file (--config or FERROMQ_CONFIG), then
/// FERROMQ_* environment variables (e.g. FERROMQ_BROKER_EXPIRY_MS=60000), then these flags.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// TOML configuration file.
    #[arg(long, env = "FERROMQ_CONFIG")]
    config: Option<PathBuf>,
    /// Wire address to listen on [default: 0.0.0.0:9876].
    #[arg(long)]
    listen: Option<String>,
    /// Admin HTTP address [default: 127.0.0.1:9877].
    #[arg(long)]
    admin_listen: Option<String>,
    /// Drop a broker from routes after this many milliseconds without a heartbeat [default: 120000].
    #[arg(long)]
    broker_expiry_ms: Option<u64>,
    /// Once serving, write the bound addresses here as JSON (`{"addr", "admin_addr"}`).
    #[arg(long)]
    addr_file: Option<PathBuf>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,
    /// Log lines as text or one JSON object per line [default: text, or FERROMQ_LOG_FORMAT].
    #[arg(long, value_enum)]
    log_format: Option<ferromq_service::logging::LogFormat>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ferromq_service::logging::init(args.log_format);
    let mut config: NameserverConfig =
        ferromq_service::config::load(args.config.as_deref(), std::env::vars())?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(admin_listen) = args.admin_listen {
        config.admin_listen = admin_listen;
    }
    if let Some(expiry) = args.broker_expiry_ms {
        config.broker_expiry_ms = expiry;
    }
    if args.print_config {
        print!("{}", ferromq_service::config::to_toml(&config));
        return Ok(());
    }
    let nameserver = Nameserver::start(config)
        .await
        .context("starting nameserver")?;
    if let Some(path) = &args.addr_file {
        let addresses = serde_json::json!({
            "addr": nameserver.addr().to_string(),
            "admin_addr": nameserver.admin_addr().to_string(),
        });
        ferromq_service::write_addr_file(path, &addresses).context("writing --addr-file")?;
    }
    ferromq_service::shutdown_signal().await;
    nameserver.shutdown().await;
    Ok(())
}
