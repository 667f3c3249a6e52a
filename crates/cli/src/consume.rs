//! `ferromq consume`: print messages of a topic as a consumer group receives them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use ferromq_client::{
    Client, ConsumeMode, ConsumeStatus, Consumer, ConsumerConfig, MessageId, ReceivedMessage,
    StartFrom,
};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::duration;

#[derive(Debug, Args)]
pub struct ConsumeArgs {
    #[arg(long)]
    topic: String,
    #[arg(long)]
    group: String,
    /// Tag expression: "*", "TagA" or "TagA || TagB".
    #[arg(long, visible_alias = "filter", default_value = "*")]
    tags: String,
    /// SQL92 selector over message properties, e.g. "region = 'eu' AND amount > 100" (the tag
    /// is the property TAGS); replaces --tags.
    #[arg(long, conflicts_with = "tags")]
    sql: Option<String>,
    /// Stop after this many messages.
    #[arg(long)]
    count: Option<u64>,
    /// Stop when no message arrived for this long (e.g. 500ms, 10s, 2m).
    #[arg(long, default_value = "10s", value_parser = duration::parse)]
    timeout: Duration,
    /// Where a group without committed offsets starts: first, last, or a time (RFC 3339, such
    /// as 2026-11-25T10:00:00Z, or milliseconds since the epoch).
    #[arg(long, default_value = "first", value_parser = parse_start)]
    from: StartFrom,
    /// Read every message as a broadcast member instead of sharing the queues with the group's
    /// other members.
    #[arg(long)]
    broadcast: bool,
    /// With --broadcast: the name this member's offsets are kept under, so the next run
    /// resumes (default: the host name).
    #[arg(long)]
    broadcast_id: Option<String>,
    /// One JSON object per line instead of text.
    #[arg(long)]
    json: bool,
    /// Fail each message this many times before accepting it, to watch retries: the broker
    /// delivers it again after its back-off (10 s, 30 s, 1 min …) and dead-letters it after 16
    /// retries.
    #[arg(long, default_value_t = 0)]
    fail_first: u32,
    /// Consume orderly: hold each queue's lock at the broker and take its messages strictly in
    /// order (a failed one is retried in place).
    #[arg(long, conflicts_with = "broadcast")]
    orderly: bool,
}

fn parse_start(text: &str) -> Result<StartFrom, String> {
    match text {
        "first" => return Ok(StartFrom::First),
        "last" => return Ok(StartFrom::Last),
        _ => {}
    }
    if let Ok(millis) = text.parse::<u64>() {
        return Ok(StartFrom::Timestamp(millis));
    }
    let time = humantime::parse_rfc3339_weak(text).map_err(|err| {
        format!("--from must be first, last, an RFC 3339 time or epoch milliseconds: {err}")
    })?;
    let millis = time
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| "--from is before 1970".to_string())?
        .as_millis();
    Ok(StartFrom::Timestamp(millis as u64))
}

fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "ferromq-cli".to_string())
}

fn print(message: &ReceivedMessage, as_json: bool) {
    let text = std::str::from_utf8(&message.body).ok();
    if as_json {
        let mut line = json!({
            "id": message.id.to_string(),
            "topic": message.topic,
            "broker_group": message.broker_group,
            "queue": message.queue_id,
            "offset": message.queue_offset,
            "tag": message.tag,
            "keys": message.keys,
            "properties": message.properties,
            "store_time_ms": message.store_ts_ms,
            "born_time_ms": message.born_ts_ms,
            "reconsume_times": message.reconsume_times,
        });
        // `body` is always present: the text, or hex digits when the body is not UTF-8.
        match text {
            Some(text) => {
                line["body"] = json!(text);
                line["body_encoding"] = json!("utf8");
            }
            None => {
                line["body"] = json!(hex::encode(&message.body));
                line["body_encoding"] = json!("hex");
            }
        }
        println!("{line}");
    } else {
        let body = text.map_or_else(|| format!("<{} bytes>", message.body.len()), str::to_string);
        println!(
            "{} queue={} offset={} tag={} keys={:?} {}",
            message.id,
            message.queue_id,
            message.queue_offset,
            message.tag.as_deref().unwrap_or("-"),
            message.keys,
            body
        );
    }
}

pub async fn run(client: &Client, args: ConsumeArgs) -> anyhow::Result<()> {
    let mode = if args.broadcast {
        ConsumeMode::Broadcast
    } else {
        ConsumeMode::Clustering
    };
    let builder = client.consumer(&args.group);
    let builder = match &args.sql {
        Some(sql) => builder.subscribe_sql(&args.topic, sql),
        None => builder.subscribe(&args.topic, &args.tags),
    };
    let mut consumer = builder
        .config(ConsumerConfig {
            start_from: args.from,
            mode,
            broadcast_id: Some(args.broadcast_id.clone().unwrap_or_else(host_name)),
            orderly: args.orderly,
            ..ConsumerConfig::default()
        })
        .build()
        .await?;
    if args.fail_first > 0 {
        return run_failing(consumer, &args).await;
    }
    let mut received = 0u64;
    while args.count.is_none_or(|count| received < count) {
        match tokio::time::timeout(args.timeout, consumer.recv()).await {
            Ok(Some(message)) => {
                print(&message, args.json);
                received += 1;
            }
            Ok(None) => break,
            Err(_) => {
                eprintln!("no message for {:?}; stopping", args.timeout);
                break;
            }
        }
    }
    // Everything received was printed (or counted): commit all of it, the last one included.
    consumer.commit().await?;
    consumer.shutdown().await?;
    if args.count.is_some_and(|count| received < count) {
        anyhow::bail!(
            "received {received} of {} messages",
            args.count.unwrap_or(0)
        );
    }
    Ok(())
}

/// `--fail-first N`: consumes through a handler that fails each message N times first.
async fn run_failing(consumer: Consumer, args: &ConsumeArgs) -> anyhow::Result<()> {
    let attempts: Arc<Mutex<HashMap<MessageId, u32>>> = Arc::default();
    let accepted = Arc::new(AtomicU64::new(0));
    let last_activity = Arc::new(Mutex::new(Instant::now()));
    let stop = CancellationToken::new();
    let (fail_first, as_json) = (args.fail_first, args.json);
    let handler = {
        let (accepted, last_activity) = (accepted.clone(), last_activity.clone());
        move |message: ReceivedMessage| {
            *lock(&last_activity) = Instant::now();
            let attempt = {
                let mut attempts = lock(&attempts);
                let count = attempts.entry(message.id).or_insert(0);
                *count += 1;
                *count
            };
            let status = if attempt <= fail_first {
                eprintln!(
                    "failing {} (attempt {attempt} of {}, reconsume_times={})",
                    message.id,
                    fail_first + 1,
                    message.reconsume_times
                );
                ConsumeStatus::RetryLater(None)
            } else {
                print(&message, as_json);
                accepted.fetch_add(1, Ordering::Relaxed);
                ConsumeStatus::Success
            };
            async move { status }
        }
    };
    let watchdog = {
        let (stop, accepted) = (stop.clone(), accepted.clone());
        let (count, timeout) = (args.count, args.timeout);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let done = count.is_some_and(|c| accepted.load(Ordering::Relaxed) >= c);
                if done || lock(&last_activity).elapsed() >= timeout {
                    if !done {
                        eprintln!("no message for {timeout:?}; stopping");
                    }
                    stop.cancel();
                    return;
                }
            }
        })
    };
    consumer.run(handler, stop).await?;
    watchdog.abort();
    let received = accepted.load(Ordering::Relaxed);
    if args.count.is_some_and(|count| received < count) {
        anyhow::bail!(
            "accepted {received} of {} messages",
            args.count.unwrap_or(0)
        );
    }
    Ok(())
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_points_parse() {
        assert_eq!(parse_start("first"), Ok(StartFrom::First));
        assert_eq!(
            parse_start("1700000000000"),
            Ok(StartFrom::Timestamp(1_700_000_000_000))
        );
        assert_eq!(
            parse_start("2023-11-14T22:13:20Z"),
            Ok(StartFrom::Timestamp(1_700_000_000_000))
        );
        assert!(parse_start("yesterday").is_err());
    }
}
