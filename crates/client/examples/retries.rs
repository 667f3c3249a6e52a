//! Retries and dead letters: a handler that fails a message makes the broker deliver it again
//! after a back-off; after `max_reconsume_times` retries it lands in `%DLQ%<group>`, and
//! `Client::trace` tells its story.
//!
//! Run against `ferromq standalone`: `cargo run -p ferromq-client --example retries`. With the
//! default back-off (10 s, 30 s, …) two retries take about 40 s.

use std::time::Duration;

use ferromq_client::{Client, ConsumeStatus, ConsumerConfig, Message};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let nameserver =
        std::env::var("FERROMQ_NAMESERVER").unwrap_or_else(|_| "127.0.0.1:9876".into());
    let client = Client::builder()
        .name_servers([nameserver])
        .connect()
        .await?;
    client.create_topic("payments", 2).await?;
    let receipt = client
        .producer()
        .send(Message::new("payments", "charge card 4242").with_key("payment-7"))
        .await?;

    let consumer = client
        .consumer("charger")
        .subscribe("payments", "*")
        .config(ConsumerConfig {
            // Dead-letter after two retries instead of sixteen.
            max_reconsume_times: 2,
            ..ConsumerConfig::default()
        })
        .build()
        .await?;
    let stop = CancellationToken::new();
    let stopper = stop.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(45)).await;
        stopper.cancel();
    });
    consumer
        .run(
            |message| async move {
                println!(
                    "delivery {} of {}: failing it",
                    message.reconsume_times + 1,
                    message.id
                );
                ConsumeStatus::RetryLater(None)
            },
            stop,
        )
        .await?;

    let trace = client.trace(receipt.message_id).await?;
    for group in &trace.groups {
        println!(
            "group {}: {:?} after {} deliveries",
            group.group, group.state, group.deliveries
        );
    }
    client.shutdown().await;
    Ok(())
}
