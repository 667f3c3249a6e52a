//! Request-reply: one task answers price requests, another asks and waits for the answer.
//!
//! Run against `ferromq standalone`: `cargo run -p ferromq-client --example request_reply`.

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
    client.create_topic("price-requests", 2).await?;

    let consumer = client
        .consumer("pricing")
        .subscribe("price-requests", "*")
        .build()
        .await?;
    let stop = CancellationToken::new();
    let replier = client.clone();
    let server = tokio::spawn(consumer.run(
        move |request| {
            let replier = replier.clone();
            async move {
                let item = String::from_utf8_lossy(&request.body).into_owned();
                if let Err(err) = replier.reply(&request, format!("{item}: 4.20")).await {
                    eprintln!("reply failed: {err}");
                }
                ConsumeStatus::Success
            }
        },
        stop.clone(),
    ));

    let producer = client.producer();
    for item in ["coffee", "tea"] {
        let reply = producer
            .request(
                Message::new("price-requests", item),
                Duration::from_secs(10),
            )
            .await
            .map_err(|err| err.error)?;
        println!("{}", String::from_utf8_lossy(&reply.body));
    }
    stop.cancel();
    server.await??;
    client.shutdown().await;
    Ok(())
}
