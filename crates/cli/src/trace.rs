//! `ferromq trace <id>`: where a message is stored and what each consumer group did with it.

use std::time::{Duration, UNIX_EPOCH};

use clap::Args;
use ferromq_client::{Client, DeliveryState, MessageId, MessageTrace};
use serde_json::json;

#[derive(Debug, Args)]
pub struct TraceArgs {
    /// The message id (32 hex digits), as `send` printed it.
    id: MessageId,
    /// One JSON object instead of text.
    #[arg(long)]
    json: bool,
}

fn time(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

fn state_name(state: DeliveryState) -> &'static str {
    match state {
        DeliveryState::Pending => "pending",
        DeliveryState::Retrying => "retrying",
        DeliveryState::Consumed => "consumed",
        DeliveryState::DeadLettered => "dead-lettered",
    }
}

pub async fn run(client: &Client, args: TraceArgs) -> anyhow::Result<()> {
    let trace = client.trace(args.id).await?;
    if args.json {
        println!("{}", to_json(&trace));
    } else {
        print_text(&trace);
    }
    if trace.stored.is_none() && trace.scheduled.is_empty() {
        anyhow::bail!(
            "message {} is not stored (never sent, or deleted by retention)",
            args.id
        );
    }
    Ok(())
}

fn to_json(trace: &MessageTrace) -> serde_json::Value {
    json!({
        "id": trace.id.to_string(),
        "stored": trace.stored.as_ref().map(|s| json!({
            "topic": s.topic,
            "queue": s.queue_id,
            "offset": s.queue_offset,
            "store_time_ms": s.store_ts_ms,
        })),
        "scheduled": trace.scheduled.iter().map(|(topic, due)| json!({
            "topic": topic,
            "due_ms": due,
        })).collect::<Vec<_>>(),
        "groups": trace.groups.iter().map(|g| json!({
            "group": g.group,
            "state": state_name(g.state),
            "deliveries": g.deliveries,
            "retry_due_ms": g.retry_due_ms,
            "dead_lettered_ms": g.dead_lettered_ms,
            "attempts": g.attempts.iter().map(|a| json!({
                "topic": a.topic,
                "queue": a.queue_id,
                "offset": a.queue_offset,
                "visible_ms": a.visible_ms,
                "acknowledged": a.acknowledged,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

fn print_text(trace: &MessageTrace) {
    println!("message {}", trace.id);
    match &trace.stored {
        Some(stored) => println!(
            "  stored   {} topic={} queue={} offset={}",
            time(stored.store_ts_ms),
            stored.topic,
            stored.queue_id,
            stored.queue_offset
        ),
        None => println!("  stored   -"),
    }
    for (topic, due) in &trace.scheduled {
        println!("  scheduled for {} topic={topic}", time(*due));
    }
    if trace.groups.is_empty() {
        println!("  no consumer group has it yet");
    }
    for group in &trace.groups {
        println!(
            "  group {}: {} after {} deliveries",
            group.group,
            state_name(group.state),
            group.deliveries
        );
        for (i, attempt) in group.attempts.iter().enumerate() {
            println!(
                "    #{} visible {} {}:{}@{} {}",
                i + 1,
                time(attempt.visible_ms),
                attempt.topic,
                attempt.queue_id,
                attempt.queue_offset,
                if attempt.acknowledged {
                    "acknowledged"
                } else {
                    "not acknowledged"
                }
            );
        }
        if let Some(due) = group.retry_due_ms {
            println!("    next retry due {}", time(due));
        }
        if let Some(at) = group.dead_lettered_ms {
            println!("    dead-lettered {}", time(at));
        }
    }
}
