//! `ferromq trace <id>`: where a message is stored and what each consumer group did with it.

use std::time::{Duration, UNIX_EPOCH};

use clap::Args;
use ferromq_client::{Client, DeliveryState, MessageId, MessageTrace};

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
        DeliveryState::DeadLettered => "dead_lettered",
    }
}

pub async fn run(client: &Client, args: TraceArgs) -> anyhow::Result<()> {
    let trace = client.trace(args.id).await?;
    if args.json {
        println!("{}", serde_json::to_string(&trace)?);
    } else {
        print_text(&trace);
    }
    if !trace.found() {
        anyhow::bail!(
            "message {} is not stored (never sent, or deleted by retention)",
            args.id
        );
    }
    Ok(())
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
    if let Some(open) = &trace.transaction {
        println!(
            "  transaction open since {} topic={} producer_group={} check-backs={}",
            time(open.stored_ms),
            open.topic,
            open.producer_group,
            open.checks
        );
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
