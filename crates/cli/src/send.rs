//! `ferromq send`: send one message (or `--count` copies), now or scheduled, and print each
//! receipt.

use std::io::Read;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Args;
use std::sync::Arc;

use ferromq_client::{
    Client, Message, ReceivedMessage, SendReceipt, TransactionListener, TransactionState,
};
use futures::future::BoxFuture;

use crate::duration;

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
    /// Deliver after this delay (e.g. 500ms, 10s, 2m, 1h); at most the broker's limit (7 days
    /// by default).
    #[arg(long, value_parser = duration::parse, conflicts_with_all = ["deliver_at", "delay_level"])]
    delay: Option<Duration>,
    /// Deliver at this time: RFC 3339 (2026-11-25T10:00:00Z) or milliseconds since the epoch.
    #[arg(long, value_parser = parse_time, conflicts_with = "delay_level")]
    deliver_at: Option<SystemTime>,
    /// Deliver after one of the broker's delay levels (1 = 1s, 2 = 5s, 3 = 10s … 18 = 2h).
    #[arg(long)]
    delay_level: Option<u8>,
    /// Send to the queue this key hashes to, so messages with the same key keep their order.
    #[arg(long, conflicts_with_all = ["delay", "deliver_at", "delay_level"])]
    sharding_key: Option<String>,
    /// Send as a transactional message whose local transaction ends this way; with `unknown`,
    /// wait for the broker's check-back (6 s by default) and answer it with --check-answer.
    #[arg(long, value_enum, conflicts_with_all = ["delay", "deliver_at", "delay_level", "sharding_key"])]
    transaction: Option<TxState>,
    /// How check-backs are answered.
    #[arg(long, value_enum, default_value = "commit", requires = "transaction")]
    check_answer: TxState,
    /// The transactional producer group.
    #[arg(long, default_value = "ferromq-cli", requires = "transaction")]
    producer_group: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TxState {
    Commit,
    Rollback,
    Unknown,
}

impl From<TxState> for TransactionState {
    fn from(state: TxState) -> TransactionState {
        match state {
            TxState::Commit => TransactionState::Commit,
            TxState::Rollback => TransactionState::Rollback,
            TxState::Unknown => TransactionState::Unknown,
        }
    }
}

/// The CLI's local transaction: ends as told; check-backs are answered as told and announced.
struct CliTransaction {
    local: TransactionState,
    answer: TransactionState,
    checked: Arc<tokio::sync::Notify>,
}

impl TransactionListener for CliTransaction {
    fn execute_local<'a>(
        &'a self,
        _message: &'a Message,
        _receipt: &'a SendReceipt,
    ) -> BoxFuture<'a, TransactionState> {
        Box::pin(async move { self.local })
    }

    fn check_local<'a>(&'a self, message: &'a ReceivedMessage) -> BoxFuture<'a, TransactionState> {
        println!("check-back for {}: answering {:?}", message.id, self.answer);
        self.checked.notify_one();
        Box::pin(async move { self.answer })
    }
}

/// Sends `count` transactional messages; waits for a check-back of each left `unknown`.
async fn run_transactions(
    client: &Client,
    args: &SendArgs,
    message: &Message,
    local: TxState,
) -> anyhow::Result<()> {
    let checked = Arc::new(tokio::sync::Notify::new());
    let listener = CliTransaction {
        local: local.into(),
        answer: args.check_answer.into(),
        checked: checked.clone(),
    };
    let producer = client
        .transaction_producer(args.producer_group.clone(), listener)
        .await?;
    for _ in 0..args.count {
        let (receipt, state) = producer
            .send_in_transaction(message.clone())
            .await
            .map_err(|err| err.error)?;
        println!(
            "half {} topic={} group={} queue={} local={state:?}",
            receipt.message_id, receipt.topic, receipt.broker_group, receipt.queue_id
        );
        if local == TxState::Unknown {
            tokio::time::timeout(CHECK_BACK_PATIENCE, checked.notified())
                .await
                .map_err(|_| anyhow::anyhow!("no check-back within {CHECK_BACK_PATIENCE:?}"))?;
            // Give the broker a moment to log the answer before this producer goes away.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    producer.shutdown();
    Ok(())
}

/// How long `--transaction unknown` waits for the broker's check-back.
const CHECK_BACK_PATIENCE: Duration = Duration::from_secs(120);

fn parse_time(text: &str) -> Result<SystemTime, String> {
    if let Ok(millis) = text.parse::<u64>() {
        return Ok(UNIX_EPOCH + Duration::from_millis(millis));
    }
    humantime::parse_rfc3339_weak(text)
        .map_err(|err| format!("expected an RFC 3339 time or epoch milliseconds: {err}"))
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
    let mut message = Message::new(args.topic.clone(), body);
    message.tag = args.tag.clone();
    message.keys = args.keys.clone();
    message.properties = args.properties.clone().into_iter().collect();
    if let Some(local) = args.transaction {
        return run_transactions(client, &args, &message, local).await;
    }
    let producer = client.producer();
    let mut failures = 0;
    for _ in 0..args.count {
        let sent = match (
            args.delay,
            args.deliver_at,
            args.delay_level,
            &args.sharding_key,
        ) {
            (Some(delay), ..) => producer.send_delayed(message.clone(), delay).await,
            (_, Some(at), ..) => producer.send_at(message.clone(), at).await,
            (_, _, Some(level), _) => producer.send_with_delay_level(message.clone(), level).await,
            (_, _, _, Some(key)) => producer.send_ordered(message.clone(), key).await,
            _ => producer.send(message.clone()).await,
        };
        match sent {
            Ok(receipt) => match receipt.due_ms {
                Some(due_ms) => println!(
                    "scheduled {} topic={} group={} queue={} due={}",
                    receipt.message_id,
                    receipt.topic,
                    receipt.broker_group,
                    receipt.queue_id,
                    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(due_ms))
                ),
                None => println!(
                    "sent {} topic={} group={} queue={} offset={}",
                    receipt.message_id,
                    receipt.topic,
                    receipt.broker_group,
                    receipt.queue_id,
                    receipt.queue_offset
                ),
            },
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
