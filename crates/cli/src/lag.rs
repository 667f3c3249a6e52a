//! `ferromq lag`: how far a consumer group is behind, per queue and in total.

use std::time::{SystemTime, UNIX_EPOCH};

use clap::Args;
use ferromq_client::Client;
use serde_json::json;

#[derive(Debug, Args)]
pub struct LagArgs {
    #[arg(long)]
    group: String,
    #[arg(long)]
    topic: String,
    /// One JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

pub async fn run(client: &Client, args: LagArgs) -> anyhow::Result<()> {
    let lags = client.lag(&args.group, &args.topic).await?;
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let age = |oldest: Option<u64>| oldest.map(|t| now_ms.saturating_sub(t) as f64 / 1000.0);
    let total: u64 = lags.iter().map(|l| l.queue.lag).sum();
    let oldest = age(lags
        .iter()
        .filter_map(|l| l.queue.oldest_unconsumed_ms)
        .min());
    if args.json {
        let queues: Vec<_> = lags
            .iter()
            .map(|l| {
                json!({
                    "broker_group": l.broker_group,
                    "queue": l.queue.queue_id,
                    "committed": l.queue.committed,
                    "max_offset": l.queue.max_offset,
                    "lag": l.queue.lag,
                    "oldest_unconsumed_seconds": age(l.queue.oldest_unconsumed_ms),
                })
            })
            .collect();
        let report = json!({
            "group": args.group,
            "topic": args.topic,
            "total_lag": total,
            "oldest_unconsumed_seconds": oldest,
            "queues": queues,
        });
        println!("{report}");
        return Ok(());
    }
    println!(
        "{:<20} {:>6} {:>12} {:>12} {:>10} {:>12}",
        "BROKER GROUP", "QUEUE", "COMMITTED", "MAX OFFSET", "LAG", "OLDEST (s)"
    );
    for l in &lags {
        println!(
            "{:<20} {:>6} {:>12} {:>12} {:>10} {:>12}",
            l.broker_group,
            l.queue.queue_id,
            l.queue
                .committed
                .map_or_else(|| "-".to_string(), |c| c.to_string()),
            l.queue.max_offset,
            l.queue.lag,
            age(l.queue.oldest_unconsumed_ms)
                .map_or_else(|| "-".to_string(), |a| format!("{a:.1}")),
        );
    }
    println!(
        "total lag {total}, oldest unconsumed {}",
        oldest.map_or_else(|| "-".to_string(), |a| format!("{a:.1} s"))
    );
    Ok(())
}
