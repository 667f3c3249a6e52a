//! `ferromq`: run a standalone node, send and consume messages, and benchmark.

mod admin;
mod bench;
mod bench_outbox;
mod consume;
mod duration;
mod lag;
mod send;
mod standalone;
mod trace;

use clap::{Parser, Subcommand};
use ferromq_client::Client;

/// FerroMQ command-line tool.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Nameserver addresses, comma-separated [default: 127.0.0.1:9876]. `standalone` runs its
    /// own nameserver and ignores this.
    #[arg(long, global = true, value_delimiter = ',', env = "FERROMQ_NAMESERVER")]
    nameserver: Option<Vec<String>>,
    /// Worker threads of this process's async runtime (default: one per core). `1` runs
    /// everything on one thread, which suits a single sequential producer.
    #[arg(long, global = true)]
    threads: Option<usize>,
    /// Log lines as text or one JSON object per line [default: text, or FERROMQ_LOG_FORMAT].
    #[arg(long, global = true, value_enum)]
    log_format: Option<ferromq_service::logging::LogFormat>,
    /// Access key for brokers that require authentication (with --secret-key).
    #[arg(
        long,
        global = true,
        env = "FERROMQ_ACCESS_KEY",
        requires = "secret_key"
    )]
    access_key: Option<String>,
    /// Secret key of --access-key (never sent: handshakes carry an HMAC proof).
    #[arg(
        long,
        global = true,
        env = "FERROMQ_SECRET_KEY",
        hide_env_values = true
    )]
    secret_key: Option<String>,
    /// Connect over TLS, trusting this CA (PEM file).
    #[arg(long, global = true)]
    tls_ca: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a nameserver and a one-voter broker in this process (development, quick start).
    Standalone(standalone::StandaloneArgs),
    /// Send a message (or --count copies) and print the receipts.
    Send(send::SendArgs),
    /// Consume messages as a member of a consumer group and print them.
    Consume(consume::ConsumeArgs),
    /// How far a consumer group is behind on each queue of a topic.
    Lag(lag::LagArgs),
    /// Where a message is stored and what each consumer group did with it (delivered,
    /// acknowledged, retried, dead-lettered).
    Trace(trace::TraceArgs),
    /// The brokers' admin API: cluster, topics, groups, messages, dead letters, Raft.
    Admin(admin::AdminArgs),
    /// Load generators for produce and consume throughput and latency.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    ferromq_service::logging::init(cli.log_format);
    let runtime = match cli.threads {
        Some(1) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        Some(threads) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .enable_all()
            .build()?,
        None => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?,
    };
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::Standalone(args) = cli.command {
        if cli.nameserver.is_some() {
            tracing::warn!("standalone runs its own nameserver; --nameserver is ignored (see --nameserver-listen)");
        }
        return standalone::run(args).await;
    }
    // Read a body from stdin before any connection exists: blocking reads must not starve it.
    let body = match &cli.command {
        Command::Send(args) => Some(send::body(args)?),
        _ => None,
    };
    let nameservers = cli
        .nameserver
        .unwrap_or_else(|| vec!["127.0.0.1:9876".to_string()]);
    if let Command::Admin(args) = cli.command {
        // Talks HTTP to a broker; the nameserver only when no --admin address is given.
        return admin::run(nameservers, args).await;
    }
    let mut builder = Client::builder().name_servers(nameservers);
    if let (Some(access_key), Some(secret_key)) = (cli.access_key, cli.secret_key) {
        builder = builder.credentials(access_key, secret_key);
    }
    if let Some(ca_file) = cli.tls_ca {
        builder = builder.tls_ca_file(ca_file);
    }
    let client = builder.connect().await?;
    let result = match cli.command {
        Command::Standalone(_) => unreachable!("handled above"),
        Command::Send(args) => send::run(&client, args, body.unwrap_or_default()).await,
        Command::Consume(args) => consume::run(&client, args).await,
        Command::Lag(args) => lag::run(&client, args).await,
        Command::Trace(args) => trace::run(&client, args).await,
        Command::Admin(_) => unreachable!("handled above"),
        Command::Bench(command) => bench::run(&client, command).await,
    };
    client.shutdown().await;
    result
}
