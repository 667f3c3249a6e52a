//! Ordered messages: every event of an order goes to the queue its order id hashes to, and an
//! orderly consumer handles each queue's events one at a time, in order.
//!
//! Run against `ferromq standalone`: `cargo run -p ferromq-client --example ordered`.

use std::time::Duration;

use ferromq_client::{Client, ConsumeStatus, Message};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let nameserver =
        std::env::var("FERROMQ_NAMESERVER").unwrap_or_else(|_| "127.0.0.1:9876".into());
    let client = Client::builder()
        .name_servers([nameserver])
        .connect()
        .await?;
    client.create_topic("order-events", 4).await?;
    let producer = client.producer();
    for order in ["A-1", "B-2", "C-3"] {
        for step in ["created", "paid", "shipped"] {
            let receipt = producer
                .send_ordered(
                    Message::new("order-events", format!("{order} {step}")),
                    order,
                )
                .await?;
            println!("sent {order} {step} to queue {}", receipt.queue_id);
        }
    }

    let consumer = client
        .consumer("order-projection")
        .subscribe("order-events", "*")
        .orderly()
        .build()
        .await?;
    let stop = CancellationToken::new();
    let stopper = stop.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(3)).await;
        stopper.cancel();
    });
    consumer
        .run(
            |message| async move {
                println!(
                    "queue {} offset {}: {}",
                    message.queue_id,
                    message.queue_offset,
                    String::from_utf8_lossy(&message.body)
                );
                ConsumeStatus::Success
            },
            stop,
        )
        .await?;
    client.shutdown().await;
    Ok(())
}
