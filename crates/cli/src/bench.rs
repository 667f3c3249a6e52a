//! `ferromq bench produce|consume|ping|scheduled|outbox`: load generators that report throughput and latency
//! (HDR histogram). With `--json` they print one object:
//! `{"messages","errors","seconds","msgs_per_sec","mib_per_sec","latency_us":{"p50","p99","p999","max"}}`
//! where `messages` counts acknowledged sends (or consumed messages) only.

use std::future::Future;
use std::io::IsTerminal;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Args, Subcommand, ValueEnum};
use ferromq_client::{Client, ConsumerConfig, Message, ProducerConfig, StartFrom};
use futures::stream::{FuturesUnordered, StreamExt};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::duration;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Send N messages as fast as the chosen mode allows.
    Produce(ProduceArgs),
    /// Consume N messages with a consumer group.
    Consume(ConsumeArgs),
    /// Round trips of an empty request to a broker: the transport's latency floor, without
    /// storage or Raft.
    Ping(PingArgs),
    /// Schedule N messages due at one instant (or spread over `--spread`) and measure how late
    /// consumers see them.
    Scheduled(ScheduledArgs),
    /// Enqueue N messages into an outbox table (SQLite or PostgreSQL) while relays send them:
    /// how fast rows reach the broker, and each row's latency from commit to acknowledgement.
    Outbox(crate::bench_outbox::OutboxArgs),
}

#[derive(Debug, Args)]
pub struct ScheduledArgs {
    #[arg(long)]
    topic: String,
    #[arg(long)]
    messages: u64,
    /// Body size in bytes.
    #[arg(long, default_value_t = 256)]
    size: usize,
    /// The first message is due this long after the run starts (time to send them all).
    #[arg(long, default_value = "20s", value_parser = duration::parse)]
    lead: Duration,
    /// Due times spread evenly over this long after the first (0: all due at once, a burst).
    #[arg(long, default_value = "0s", value_parser = duration::parse)]
    spread: Duration,
    /// Scheduled sends outstanding at once.
    #[arg(long, default_value_t = 256)]
    in_flight: usize,
    #[arg(long)]
    json: bool,
}

/// How late scheduled messages became visible to a consumer.
#[derive(Debug, Serialize)]
struct ScheduledReport {
    messages: u64,
    errors: u64,
    /// Seconds from the first due time until the last message arrived.
    last_arrival_after_first_due_s: f64,
    /// Arrival time minus due time, in milliseconds.
    lateness_ms: Latency,
    /// How long scheduling them took (they must all be scheduled before they fall due).
    send_seconds: f64,
}

#[derive(Debug, Args)]
pub struct PingArgs {
    /// Broker address; by default the first broker the nameserver knows.
    #[arg(long)]
    broker: Option<String>,
    #[arg(long, default_value_t = 10_000)]
    count: u64,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Each producer waits for every receipt before the next send.
    Sync,
    /// Each producer keeps `--in-flight` sends outstanding.
    Async,
    /// Fire and forget: nothing is acknowledged, so `messages` counts sends written to the
    /// broker's connection.
    Oneway,
}

#[derive(Debug, Args)]
pub struct ProduceArgs {
    #[arg(long)]
    topic: String,
    #[arg(long)]
    messages: u64,
    /// Body size in bytes.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Concurrent producers (tasks sharing one client).
    #[arg(long, default_value_t = 1)]
    producers: usize,
    /// Messages per send request.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    #[arg(long, value_enum, default_value_t = Mode::Sync)]
    mode: Mode,
    /// Outstanding sends per producer in async and oneway modes.
    #[arg(long, default_value_t = 32)]
    in_flight: usize,
    /// Stop early once this many messages failed.
    #[arg(long, default_value_t = 1000)]
    max_errors: u64,
    /// Pace the run at about this many messages per second in total (default: as fast as
    /// possible), e.g. to measure latency at a fraction of peak load.
    #[arg(long)]
    rate: Option<f64>,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct ConsumeArgs {
    #[arg(long)]
    topic: String,
    #[arg(long)]
    group: String,
    #[arg(long)]
    messages: u64,
    /// Stop when no message arrived for this long.
    #[arg(long, default_value = "10s", value_parser = duration::parse)]
    idle_timeout: Duration,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
pub(crate) struct Latency {
    p50: u64,
    p99: u64,
    p999: u64,
    max: u64,
}

#[derive(Debug, Serialize)]
pub(crate) struct Report {
    pub(crate) messages: u64,
    pub(crate) errors: u64,
    pub(crate) seconds: f64,
    msgs_per_sec: f64,
    mib_per_sec: f64,
    latency_us: Latency,
}

impl Report {
    pub(crate) fn new(
        messages: u64,
        errors: u64,
        elapsed: Duration,
        bytes_per_message: usize,
        latency: &Histogram<u64>,
    ) -> Report {
        let seconds = elapsed.as_secs_f64().max(1e-9);
        Report {
            messages,
            errors,
            seconds,
            msgs_per_sec: messages as f64 / seconds,
            mib_per_sec: (messages as f64 * bytes_per_message as f64) / seconds / (1024.0 * 1024.0),
            latency_us: Latency {
                p50: latency.value_at_quantile(0.50),
                p99: latency.value_at_quantile(0.99),
                p999: latency.value_at_quantile(0.999),
                max: latency.max(),
            },
        }
    }

    pub(crate) fn print(&self, json: bool, what: &str) {
        if json {
            println!("{}", serde_json::to_string(self).unwrap_or_default());
        } else {
            println!(
                "{what}: {} messages ({} errors) in {:.2} s: {:.0} msg/s, {:.2} MiB/s; latency µs p50 {} p99 {} p99.9 {} max {}",
                self.messages,
                self.errors,
                self.seconds,
                self.msgs_per_sec,
                self.mib_per_sec,
                self.latency_us.p50,
                self.latency_us.p99,
                self.latency_us.p999,
                self.latency_us.max
            );
        }
    }
}

pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

fn progress(total: u64, json: bool) -> ProgressBar {
    if json || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    if let Ok(style) = ProgressStyle::with_template("{bar:40} {pos}/{len} {per_sec} eta {eta}") {
        bar.set_style(style);
    }
    bar
}

pub async fn run(client: &Client, command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Produce(args) => produce(client, args).await,
        BenchCommand::Consume(args) => consume(client, args).await,
        BenchCommand::Ping(args) => ping(client, args).await,
        BenchCommand::Scheduled(args) => scheduled(client, args).await,
        BenchCommand::Outbox(args) => crate::bench_outbox::run(client, args).await,
    }
}

async fn ping(client: &Client, args: PingArgs) -> anyhow::Result<()> {
    let broker = match args.broker {
        Some(broker) => broker,
        None => client
            .cluster()
            .await?
            .brokers
            .first()
            .map(|b| b.client_addr.clone())
            .ok_or_else(|| anyhow::anyhow!("the nameserver knows no broker"))?,
    };
    let connection = client.connection(&broker).await?;
    let mut latency = histogram();
    let started = Instant::now();
    for _ in 0..args.count {
        let sent_at = Instant::now();
        connection
            .request(ferromq_client::RequestCode::Ping, &(), Bytes::new())
            .await?;
        let _ = latency.record(sent_at.elapsed().as_micros().max(1) as u64);
    }
    Report::new(args.count, 0, started.elapsed(), 0, &latency).print(args.json, "ping");
    Ok(())
}

type Pending = Pin<Box<dyn Future<Output = (Instant, u64, u64)> + Send>>;

struct Shared {
    claimed: AtomicU64,
    acknowledged: AtomicU64,
    errors: AtomicU64,
    abort: AtomicBool,
}

async fn produce(client: &Client, args: ProduceArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.producers > 0 && args.batch > 0 && args.in_flight > 0,
        "counts must be positive"
    );
    let shared = Arc::new(Shared {
        claimed: AtomicU64::new(0),
        acknowledged: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        abort: AtomicBool::new(false),
    });
    let body = Bytes::from(vec![b'x'; args.size]);
    let bar = progress(args.messages, args.json);
    let window = if args.mode == Mode::Sync {
        1
    } else {
        args.in_flight
    };
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.producers {
        let producer = client.producer_with(ProducerConfig {
            max_in_flight: window,
            ..ProducerConfig::default()
        });
        let (shared, body, bar, topic) = (
            shared.clone(),
            body.clone(),
            bar.clone(),
            args.topic.clone(),
        );
        let (total, batch, mode, max_errors, rate) = (
            args.messages,
            args.batch as u64,
            args.mode,
            args.max_errors,
            args.rate.filter(|r| *r > 0.0),
        );
        tasks.push(tokio::spawn(async move {
            let mut latency = histogram();
            let mut in_flight: FuturesUnordered<Pending> = FuturesUnordered::new();
            loop {
                while in_flight.len() < window && !shared.abort.load(Ordering::Relaxed) {
                    let first = shared.claimed.fetch_add(batch, Ordering::Relaxed);
                    if first >= total {
                        break;
                    }
                    let count = batch.min(total - first);
                    if let Some(rate) = rate {
                        // Message `first` is due `first / rate` seconds into the run.
                        let due = started + Duration::from_secs_f64(first as f64 / rate);
                        tokio::time::sleep_until(due.into()).await;
                    }
                    let messages: Vec<Message> = (0..count)
                        .map(|_| Message::new(topic.clone(), body.clone()))
                        .collect();
                    let producer = producer.clone();
                    in_flight.push(Box::pin(async move {
                        let sent_at = Instant::now();
                        // (messages that went through, messages that failed)
                        let (done, failed) = match mode {
                            Mode::Oneway => {
                                let mut done = 0;
                                for message in messages {
                                    done += u64::from(producer.send_oneway(message).await.is_ok());
                                }
                                (done, count - done)
                            }
                            _ if messages.len() == 1 => {
                                let message = messages.into_iter().next().expect("one message");
                                match producer.send(message).await {
                                    Ok(_) => (count, 0),
                                    Err(_) => (0, count),
                                }
                            }
                            _ => match producer.send_batch(messages).await {
                                Ok(_) => (count, 0),
                                Err(_) => (0, count),
                            },
                        };
                        (sent_at, done, failed)
                    }));
                }
                let Some((sent_at, done, failed)) = in_flight.next().await else {
                    break;
                };
                if done > 0 {
                    shared.acknowledged.fetch_add(done, Ordering::Relaxed);
                    let _ = latency.record(sent_at.elapsed().as_micros().max(1) as u64);
                    bar.inc(done);
                }
                if failed > 0
                    && shared.errors.fetch_add(failed, Ordering::Relaxed) + failed >= max_errors
                {
                    shared.abort.store(true, Ordering::Relaxed);
                }
            }
            latency
        }));
    }
    let mut latency = histogram();
    let mut failure = None;
    for task in tasks {
        match task.await {
            Ok(task_latency) => {
                if let Err(err) = latency.add(task_latency) {
                    failure.get_or_insert_with(|| anyhow::anyhow!("latency histogram: {err}"));
                }
            }
            Err(err) => {
                failure.get_or_insert_with(|| anyhow::anyhow!("producer task failed: {err}"));
            }
        }
    }
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    let report = Report::new(
        shared.acknowledged.load(Ordering::Relaxed),
        shared.errors.load(Ordering::Relaxed),
        elapsed,
        args.size,
        &latency,
    );
    report.print(args.json, "produce");
    if let Some(failure) = failure {
        return Err(failure);
    }
    if shared.abort.load(Ordering::Relaxed) {
        anyhow::bail!("stopped early after {} errors", args.max_errors);
    }
    Ok(())
}

async fn consume(client: &Client, args: ConsumeArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut consumer = client
        .consumer(&args.group)
        .subscribe(&args.topic, "*")
        .config(ConsumerConfig {
            start_from: StartFrom::First,
            pull_batch: 256,
            pull_max_bytes: 4 * 1024 * 1024,
            max_buffered: 16_384,
            ..ConsumerConfig::default()
        })
        .build()
        .await?;
    let bar = progress(args.messages, args.json);
    let mut latency = histogram();
    let mut received = 0u64;
    let mut bytes = 0u64;
    while received < args.messages {
        match tokio::time::timeout(args.idle_timeout, consumer.recv()).await {
            Ok(Some(message)) => {
                received += 1;
                bytes += message.body.len() as u64;
                let now_ms = now_ms();
                let _ = latency.record(now_ms.saturating_sub(message.store_ts_ms).max(1) * 1000);
                if received.is_multiple_of(1024) {
                    bar.set_position(received);
                }
            }
            Ok(None) => break,
            Err(_) => break,
        }
    }
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    let size = bytes.checked_div(received).unwrap_or(0) as usize;
    Report::new(received, 0, elapsed, size, &latency).print(args.json, "consume");
    // Everything received was printed (or counted): commit all of it, the last one included.
    consumer.commit().await?;
    consumer.shutdown().await?;
    if received < args.messages {
        anyhow::bail!(
            "received {received} of {} messages before going idle for {:?}",
            args.messages,
            args.idle_timeout
        );
    }
    Ok(())
}

/// The property carrying each message's due time, for the consumer side of the benchmark.
const BENCH_DUE_PROPERTY: &str = "bench_due_ms";

async fn scheduled(client: &Client, args: ScheduledArgs) -> anyhow::Result<()> {
    let producer = client.producer_with(ProducerConfig {
        max_in_flight: args.in_flight.max(1),
        ..ProducerConfig::default()
    });
    let body = Bytes::from(vec![b'd'; args.size]);
    let first_due_ms = now_ms() + args.lead.as_millis() as u64;
    let spread_ms = args.spread.as_millis() as u64;
    let due_of = |i: u64| first_due_ms + spread_ms * i / args.messages.max(1);
    // The consumer is in place before anything is due.
    let group = format!("bench-scheduled-{first_due_ms}");
    let mut consumer = client
        .consumer(&group)
        .subscribe(&args.topic, "*")
        .config(ConsumerConfig {
            start_from: StartFrom::Last,
            pull_batch: 256,
            max_buffered: 16_384,
            ..ConsumerConfig::default()
        })
        .build()
        .await?;
    let started = Instant::now();
    let mut sends = FuturesUnordered::new();
    let mut errors = 0u64;
    for i in 0..args.messages {
        if sends.len() >= args.in_flight.max(1) {
            if let Some(Err(_)) = sends.next().await {
                errors += 1;
            }
        }
        let due_ms = due_of(i);
        let message = Message::new(args.topic.clone(), body.clone())
            .with_property(BENCH_DUE_PROPERTY, due_ms.to_string());
        let at = std::time::UNIX_EPOCH + Duration::from_millis(due_ms);
        let producer = producer.clone();
        sends.push(async move { producer.send_at(message, at).await });
    }
    while let Some(result) = sends.next().await {
        if result.is_err() {
            errors += 1;
        }
    }
    let send_seconds = started.elapsed().as_secs_f64();
    if now_ms() > first_due_ms {
        anyhow::bail!("scheduling took {send_seconds:.1} s, past the first due time: raise --lead");
    }
    let expected = args.messages - errors;
    let mut lateness = histogram();
    let mut received = 0u64;
    let mut last_arrival_ms = 0;
    let idle = args.lead + args.spread + Duration::from_secs(30);
    while received < expected {
        match tokio::time::timeout(idle, consumer.recv()).await {
            Ok(Some(message)) => {
                let arrived = now_ms();
                let due = message
                    .properties
                    .get(BENCH_DUE_PROPERTY)
                    .and_then(|d| d.parse::<u64>().ok());
                let Some(due) = due else { continue };
                received += 1;
                last_arrival_ms = arrived;
                let _ = lateness.record(arrived.saturating_sub(due).max(1));
            }
            Ok(None) | Err(_) => break,
        }
    }
    consumer.commit().await?;
    consumer.shutdown().await?;
    let report = ScheduledReport {
        messages: received,
        errors,
        last_arrival_after_first_due_s: last_arrival_ms.saturating_sub(first_due_ms) as f64
            / 1000.0,
        lateness_ms: Latency {
            p50: lateness.value_at_quantile(0.50),
            p99: lateness.value_at_quantile(0.99),
            p999: lateness.value_at_quantile(0.999),
            max: lateness.max(),
        },
        send_seconds,
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "scheduled: {} messages ({} errors) scheduled in {:.1} s; last arrived {:.2} s after the first due time; lateness ms p50 {} p99 {} p99.9 {} max {}",
            report.messages,
            report.errors,
            report.send_seconds,
            report.last_arrival_after_first_due_s,
            report.lateness_ms.p50,
            report.lateness_ms.p99,
            report.lateness_ms.p999,
            report.lateness_ms.max
        );
    }
    if received < expected {
        anyhow::bail!("received {received} of {expected} scheduled messages");
    }
    Ok(())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
