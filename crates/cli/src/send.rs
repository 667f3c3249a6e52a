//! `ferromq send`: send one message (or `--count` copies) and print each receipt.

use std::io::Read;

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Args;
use ferromq_client::{Client, Message};

#[derive(Debug, Args)]
pub struct SendArgs {
    #[arg(long)]
    topic: String,
    #[arg(long)]
    tag: Option<String>,
    /// A message key (repeatable), indexed by the broker.
    #[arg(long = "key")]
    keys: Vec<String>,
    /// A user property `name=value` (repeatable).
    #[arg(long = "property", value_parser = parse_property)]
    properties: Vec<(String, String)>,
    /// How many copies to send.
    #[arg(long, default_value_t = 1)]
    count: u64,
    /// The message body; read from stdin when absent.
    #[arg(long)]
    body: Option<String>,
}

fn parse_property(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_string(), value.to_string())),
        _ => Err(format!("property {text:?} is not name=value")),
    }
}

/// The body: `--body`, or everything on stdin.
pub fn body(args: &SendArgs) -> anyhow::Result<Bytes> {
    match &args.body {
        Some(body) => Ok(Bytes::from(body.clone())),
        None => {
            let mut buffer = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buffer)
                .context("reading the body from stdin")?;
            Ok(Bytes::from(buffer))
        }
    }
}

pub async fn run(client: &Client, args: SendArgs, body: Bytes) -> anyhow::Result<()> {
    let mut message = Message::new(args.topic, body);
    message.tag = args.tag;
    message.keys = args.keys;
    message.properties = args.properties.into_iter().collect();
    let producer = client.producer();
    let mut failures = 0;
    for _ in 0..args.count {
        match producer.send(message.clone()).await {
            Ok(receipt) => println!(
                "sent {} topic={} group={} queue={} offset={}",
                receipt.message_id,
                receipt.topic,
                receipt.broker_group,
                receipt.queue_id,
                receipt.queue_offset
            ),
            Err(err) => {
                failures += 1;
                eprintln!("error: {}", err.error);
            }
        }
    }
    if failures > 0 {
        bail!("{failures} of {} sends failed", args.count);
    }
    Ok(())
}
