//! `ferromq bench outbox`: the outbox end to end. Producers enqueue messages in transactions of
//! a database of their own (SQLite or PostgreSQL) while relays send them; the report is the
//! rate at which rows reach the broker, with each row's latency from its commit to the broker's
//! acknowledgement, and the enqueuing transactions' own rate and latency under `enqueue`. With
//! `--track GROUP`, a consumer of that group runs in the bench and the relays track its
//! consumption: `consumed` reports the rows marked consumed, with each row's latency from its
//! commit to that mark. With `--lag DURATION` the consumer starts only that long after every
//! row was sent, and `lagging` reports how often tracking looked at the waiting rows meanwhile.

use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Args;
use ferromq_client::outbox::{Outbox, OutboxConfig, OutboxDatabase, OutboxMessage};
use ferromq_client::{Client, ConsumeStatus, ConsumerConfig, Message};
use serde::Serialize;
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::Pool;

use crate::bench::{histogram, Report};
use crate::duration;

#[derive(Debug, Args)]
pub struct OutboxArgs {
    /// A database of the bench's own: `sqlite://PATH` (created if missing) or
    /// `postgres://…`. Its outbox table must be empty.
    #[arg(long)]
    database: String,
    #[arg(long, default_value = "outbox-bench")]
    topic: String,
    #[arg(long)]
    messages: u64,
    /// Body size in bytes.
    #[arg(long, default_value_t = 256)]
    size: usize,
    /// Concurrent enqueuers, each committing its own transactions.
    #[arg(long, default_value_t = 4)]
    producers: usize,
    /// Messages per enqueuing transaction.
    #[arg(long, default_value_t = 1)]
    per_transaction: usize,
    /// Relays sending at the same time.
    #[arg(long, default_value_t = 1)]
    relays: usize,
    /// Rows a relay claims at a time.
    #[arg(long, default_value_t = 100)]
    batch: u32,
    /// Spread messages over this many sharding keys (0: unordered messages).
    #[arg(long, default_value_t = 0)]
    keys: u64,
    /// Start the relays only once every message is enqueued: the delivered rate is then how
    /// fast relays drain a backlog (their capacity), not how fast they follow the producers.
    #[arg(long)]
    drain: bool,
    /// Track the consumption of this consumer group (run by the bench): the bench ends when
    /// every row is marked consumed.
    #[arg(long)]
    track: Option<String>,
    /// How often the relays' trackers look at sent rows (`track_interval_ms`).
    #[arg(long, default_value = "500ms", value_parser = duration::parse)]
    track_interval: Duration,
    /// With `--track`: start the group's consumer only this long after every row was sent,
    /// and report the trackers' looks at the rows waiting behind it meanwhile.
    #[arg(long, value_parser = duration::parse, requires = "track")]
    lag: Option<Duration>,
    /// Give up when the rows are not all sent by then.
    #[arg(long, default_value = "10m", value_parser = duration::parse)]
    timeout: Duration,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct OutboxReport {
    /// Rows sent, from the first enqueue (or, with `--drain`, the relays' start) to the last
    /// acknowledgement; latency from each row's commit to its acknowledgement (millisecond
    /// resolution).
    #[serde(flatten)]
    delivered: Report,
    /// The enqueuing transactions (`messages` counts transactions).
    enqueue: Report,
    /// With `--track`: rows marked consumed, from the first enqueue (or the relays' start) to
    /// the last mark; latency from each row's commit to its mark.
    #[serde(skip_serializing_if = "Option::is_none")]
    consumed: Option<Report>,
    /// With `--lag`: the trackers' looks at rows waiting for a consumer.
    #[serde(skip_serializing_if = "Option::is_none")]
    lagging: Option<LagReport>,
}

/// Consumption tracking while every row waits behind a group that has not consumed any.
#[derive(Debug, Serialize)]
struct LagReport {
    seconds: f64,
    rows: u64,
    /// Looks of all relays' trackers at sent rows (each writes its row twice).
    checks: u64,
    checks_per_row_per_minute: f64,
}

pub async fn run(client: &Client, args: OutboxArgs) -> anyhow::Result<()> {
    if args.messages == 0 || args.producers == 0 || args.per_transaction == 0 || args.relays == 0 {
        bail!("--messages, --producers, --per-transaction and --relays must be positive");
    }
    client.create_topic(&args.topic, 8).await?;
    let connections = (args.producers + 2 * args.relays + 2) as u32;
    // Each row's commit-to-acknowledgement and commit-to-consumed times, read back from the
    // table.
    const SENT: &str = "SELECT sent_ms - created_ms FROM ferromq_outbox WHERE sent_ms IS NOT NULL";
    const CONSUMED: &str =
        "SELECT finished_ms - created_ms FROM ferromq_outbox WHERE status = 'consumed'";
    // The bench on `pool`, then the latencies read back: (report, (sent, consumed)).
    macro_rules! bench_then_read_back {
        ($pool:expr) => {{
            let pool = $pool;
            let report = bench(client, pool.clone(), &args).await?;
            let sent: Vec<i64> = sqlx::query_scalar(SENT).fetch_all(&pool).await?;
            let consumed: Vec<i64> = sqlx::query_scalar(CONSUMED).fetch_all(&pool).await?;
            (report, (sent, consumed))
        }};
    }
    let (report, (sent_ms, consumed_ms)) = if args.database.starts_with("postgres") {
        bench_then_read_back!(PgPoolOptions::new()
            .max_connections(connections)
            .connect(&args.database)
            .await
            .with_context(|| format!("connecting to {}", args.database))?)
    } else {
        let options = SqliteConnectOptions::from_str(&args.database)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(30));
        bench_then_read_back!(SqlitePoolOptions::new()
            .max_connections(connections)
            .connect_with(options)
            .await
            .with_context(|| format!("opening {}", args.database))?)
    };
    let with_latencies = |report: &Report, latencies_ms: Vec<i64>| {
        let mut latency = histogram();
        for ms in latencies_ms {
            latency.saturating_record(u64::try_from(ms.max(0)).unwrap_or(0).max(1) * 1000);
        }
        Report::new(
            report.messages,
            report.errors,
            Duration::from_secs_f64(report.seconds),
            args.size,
            &latency,
        )
    };
    let report = OutboxReport {
        delivered: with_latencies(&report.delivered, sent_ms),
        enqueue: report.enqueue,
        consumed: report
            .consumed
            .map(|consumed| with_latencies(&consumed, consumed_ms)),
        lagging: report.lagging,
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        report.enqueue.print(false, "outbox enqueue (transactions)");
        report
            .delivered
            .print(false, "outbox delivered (commit to acknowledgement)");
        if let Some(consumed) = &report.consumed {
            consumed.print(false, "outbox consumed (commit to marked consumed)");
        }
        if let Some(lag) = &report.lagging {
            println!(
                "outbox tracking while no consumer ran: {} rows for {:.1} s, {} checks, {:.2} checks per row per minute",
                lag.rows, lag.seconds, lag.checks, lag.checks_per_row_per_minute
            );
        }
    }
    Ok(())
}

/// Enqueues while the relays send; returns when every row is sent (with `--track`: consumed),
/// or failed.
async fn bench<DB: OutboxDatabase>(
    client: &Client,
    pool: Pool<DB>,
    args: &OutboxArgs,
) -> anyhow::Result<OutboxReport> {
    let outbox = Outbox::new(
        pool.clone(),
        OutboxConfig {
            batch_size: args.batch,
            poll_interval_ms: 10,
            track_groups: args
                .track
                .iter()
                .map(|group| (args.topic.clone(), vec![group.clone()]))
                .collect(),
            track_interval_ms: u64::try_from(args.track_interval.as_millis()).unwrap_or(u64::MAX),
            ..OutboxConfig::default()
        },
    )?;
    outbox.migrate().await?;
    let before = outbox.stats().await?;
    if before != Default::default() {
        bail!("the outbox table of {} is not empty ({before:?}): give the bench a database of its own", args.database);
    }
    // The tracked group's consumer, acknowledging everything from the first message on:
    // from before the first send, or with `--lag` once every row has waited that long.
    let stop_consumer = tokio_util::sync::CancellationToken::new();
    let start_consumer = |group: String| {
        let stop = stop_consumer.clone();
        async move {
            let consumer = client
                .consumer(&group)
                .subscribe(&args.topic, "*")
                .config(ConsumerConfig {
                    commit_interval_ms: 200,
                    ..ConsumerConfig::default()
                })
                .build()
                .await?;
            anyhow::Ok(tokio::spawn(
                consumer.run(|_| async { ConsumeStatus::Success }, stop),
            ))
        }
    };
    let mut consumer = match (&args.track, args.lag) {
        (Some(group), None) => Some(start_consumer(group.clone()).await?),
        _ => None,
    };
    let start_relays = || -> Vec<_> {
        (0..args.relays)
            .map(|_| outbox.start_relay(client))
            .collect()
    };
    let mut relays = if args.drain {
        Vec::new()
    } else {
        start_relays()
    };
    let body = Bytes::from(vec![b'x'; args.size]);
    let started = Instant::now();
    let mut enqueuers = Vec::new();
    for producer in 0..args.producers as u64 {
        let (outbox, pool, body) = (outbox.clone(), pool.clone(), body.clone());
        let (topic, keys, per_transaction) = (args.topic.clone(), args.keys, args.per_transaction);
        let ids: Vec<u64> = (producer..args.messages).step_by(args.producers).collect();
        enqueuers.push(tokio::spawn(async move {
            let mut latency = histogram();
            for chunk in ids.chunks(per_transaction) {
                let began = Instant::now();
                let mut transaction = pool.begin().await?;
                for id in chunk {
                    let mut message = OutboxMessage::new(
                        Message::new(topic.clone(), body.clone()).with_key(format!("bench-{id}")),
                    );
                    if keys > 0 {
                        message = message.sharding_key(format!("key-{}", id % keys));
                    }
                    outbox.enqueue(&mut *transaction, message).await?;
                }
                transaction.commit().await?;
                latency.saturating_record(began.elapsed().as_micros().max(1) as u64);
            }
            anyhow::Ok(latency)
        }));
    }
    let mut enqueue_latency = histogram();
    for enqueuer in enqueuers {
        enqueue_latency.add(enqueuer.await??)?;
    }
    let enqueued_in = started.elapsed();
    let transactions = enqueue_latency.len();
    // Draining: delivery is timed from the relays' start (commit-to-acknowledgement latencies
    // then include the wait for it).
    let started = if args.drain {
        relays = start_relays();
        Instant::now()
    } else {
        started
    };
    let deadline = started + args.timeout;
    let mut delivered = None;
    let mut lagging = None;
    let checks = |relays: &[ferromq_client::outbox::Relay]| -> u64 {
        relays.iter().map(|relay| relay.counters().checks).sum()
    };
    let stats = loop {
        let stats = outbox.stats().await?;
        let acknowledged = stats.sent + stats.consumed + stats.dead_lettered;
        if delivered.is_none() && acknowledged + stats.failed >= args.messages {
            delivered = Some((acknowledged, stats.failed, started.elapsed()));
        }
        if let (Some(group), Some(lag), Some(_), None) =
            (&args.track, args.lag, delivered, &consumer)
        {
            let (before, lag_started) = (checks(&relays), Instant::now());
            tokio::time::sleep(lag).await;
            let seconds = lag_started.elapsed().as_secs_f64();
            let checks = checks(&relays) - before;
            lagging = Some(LagReport {
                seconds,
                rows: stats.sent,
                checks,
                checks_per_row_per_minute: checks as f64 * 60.0
                    / (stats.sent.max(1) as f64 * seconds),
            });
            consumer = Some(start_consumer(group.clone()).await?);
        }
        let finished = stats.consumed + stats.dead_lettered + stats.failed;
        if delivered.is_some() && (args.track.is_none() || finished >= args.messages) {
            break stats;
        }
        if Instant::now() > deadline {
            bail!("rows not all finished within {:?}: {stats:?}", args.timeout);
        }
        // Each look counts the whole table: often enough for the timing, rarely enough not
        // to load the database under test.
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let finished_in = started.elapsed();
    for relay in relays {
        relay.shutdown().await;
    }
    stop_consumer.cancel();
    if let Some(consumer) = consumer {
        consumer.await??;
    }
    let (acknowledged, failed, delivered_in) = delivered.unwrap_or_default();
    // The delivered latencies are read from the table by the caller.
    Ok(OutboxReport {
        delivered: Report::new(acknowledged, failed, delivered_in, args.size, &histogram()),
        enqueue: Report::new(
            transactions,
            0,
            enqueued_in,
            args.size * args.per_transaction,
            &enqueue_latency,
        ),
        consumed: args.track.as_ref().map(|_| {
            Report::new(
                stats.consumed,
                stats.failed + stats.dead_lettered,
                finished_in,
                args.size,
                &histogram(),
            )
        }),
        lagging,
    })
}
