//! Delayed and scheduled messages: a delay, a delay level, an exact time, and a recall.
//!
//! Run against `ferromq standalone`: `cargo run -p ferromq-client --example delayed`
//! (`FERROMQ_NAMESERVER` overrides the nameserver address).

use std::time::{Duration, Instant, SystemTime};

use ferromq_client::{Client, Message};
use futures::StreamExt;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let nameserver =
        std::env::var("FERROMQ_NAMESERVER").unwrap_or_else(|_| "127.0.0.1:9876".into());
    let client = Client::builder()
        .name_servers([nameserver])
        .connect()
        .await?;
    client.create_topic("reminders", 4).await?;
    let producer = client.producer();

    let started = Instant::now();
    producer
        .send_delayed(
            Message::new("reminders", "after 2 s"),
            Duration::from_secs(2),
        )
        .await?;
    // Level 1 is 1 s with the default levels (1s 5s 10s 30s 1m … 2h).
    producer
        .send_with_delay_level(Message::new("reminders", "level 1"), 1)
        .await?;
    producer
        .send_at(
            Message::new("reminders", "at now + 3 s"),
            SystemTime::now() + Duration::from_secs(3),
        )
        .await?;
    let recalled = producer
        .send_delayed(
            Message::new("reminders", "never seen"),
            Duration::from_secs(2),
        )
        .await?;
    producer.cancel_scheduled(&recalled).await?;

    let mut consumer = client
        .consumer("reminder-printer")
        .subscribe("reminders", "*")
        .build()
        .await?;
    for _ in 0..3 {
        let Some(message) = consumer.next().await else {
            break;
        };
        println!(
            "{:>5} ms  {}",
            started.elapsed().as_millis(),
            String::from_utf8_lossy(&message.body)
        );
    }
    consumer.shutdown().await?;
    client.shutdown().await;
    Ok(())
}
