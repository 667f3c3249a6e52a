//! `ferromq-outbox-relay`: an application that only runs an outbox relay, for the outbox tests
//! (a relay in a process of its own can crash, or compete with another, as in production).
//!
//! usage: ferromq-outbox-relay NAMESERVER DATABASE_URL [CONFIG_JSON [CLIENT_ID]]
//!
//! Runs until SIGTERM. `FAILPOINTS=outbox::before_record_sends=return` makes it abort between
//! the broker's acknowledgement of its first sends and recording them in the table.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use ferromq_client::outbox::{Outbox, OutboxConfig, OutboxDatabase};
use ferromq_client::Client;
use ferromq_integration_tests::outbox::sqlite_pool;
use sqlx::Pool;

#[tokio::main]
async fn main() {
    let _failpoints = fail::FailScenario::setup();
    tracing_init();
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: ferromq-outbox-relay NAMESERVER DATABASE_URL [CONFIG_JSON [CLIENT_ID]]");
        std::process::exit(2);
    }
    let config: OutboxConfig =
        serde_json::from_str(args.get(3).map_or("{}", String::as_str)).expect("outbox config");
    let client = Client::builder()
        .name_servers([args[1].as_str()])
        .client_id(args.get(4).map_or("outbox-relay", String::as_str))
        .request_timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect("nameserver");
    let url = &args[2];
    if url.starts_with("postgres") {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .connect(url)
            .await
            .expect("PostgreSQL");
        run(pool, &client, config).await;
    } else {
        run(sqlite_pool(url).await, &client, config).await;
    }
    client.shutdown().await;
}

async fn run<DB: OutboxDatabase>(pool: Pool<DB>, client: &Client, config: OutboxConfig) {
    let outbox = Outbox::new(pool, config).expect("outbox");
    outbox.migrate().await.expect("migrate");
    let relay = outbox.start_relay(client);
    println!("relay {} running", relay.owner());
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    terminate.recv().await;
    relay.shutdown().await;
    println!("relay stopped");
}

/// Logs to stderr at the level `FERROMQ_LOG` names (as the servers do), default info.
fn tracing_init() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FERROMQ_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
