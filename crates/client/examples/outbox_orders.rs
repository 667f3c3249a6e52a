//! The outbox: an order service writes each order and its "order created" event in one
//! transaction of its own database; a relay sends the events; a stock service reserves stock
//! for each order exactly once, by recording the events it handled in the same transaction of
//! its database as the reservation. Every fifth order is declined (its transaction rolls back),
//! so neither the order nor its event exists. The outbox tracks consumption by the stock
//! service, so the run ends when every event is `consumed`.
//!
//! Run against `ferromq standalone`:
//! `cargo run -p ferromq-client --features outbox-sqlite --example outbox_orders`
//! (`FERROMQ_NAMESERVER` overrides 127.0.0.1:9876; `ORDERS` the number of orders, 20; the two
//! SQLite databases go to a fresh folder under the system's temporary directory).

use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ferromq_client::outbox::{Outbox, OutboxConfig, OutboxMessage, OUTBOX_KEY_PROPERTY};
use ferromq_client::{Client, ConsumeStatus, ConsumerConfig, Message, ReceivedMessage};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::SqlitePool;
use tokio_util::sync::CancellationToken;

const TOPIC: &str = "order-events";
const STOCK_SERVICE: &str = "stock-service";
const ITEMS: [&str; 3] = ["book", "lamp", "chair"];

async fn database(path: &Path, schema: &'static str) -> anyhow::Result<SqlitePool> {
    let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(10));
    let pool = SqlitePoolOptions::new().connect_with(options).await?;
    sqlx::raw_sql(schema).execute(&pool).await?;
    Ok(pool)
}

/// Places `count` orders; returns how many were accepted (and so have an event).
async fn place_orders(
    orders: &SqlitePool,
    outbox: &Outbox<sqlx::Sqlite>,
    count: i64,
) -> anyhow::Result<i64> {
    let mut accepted = 0;
    for id in 1..=count {
        let item = ITEMS[id as usize % ITEMS.len()];
        let customer = format!("customer-{}", id % 4);
        let mut transaction = orders.begin().await?;
        sqlx::query("INSERT INTO orders (id, customer, item, quantity) VALUES ($1, $2, $3, 1)")
            .bind(id)
            .bind(&customer)
            .bind(item)
            .execute(&mut *transaction)
            .await?;
        let event = Message::new(TOPIC, format!(r#"{{"order":{id},"item":"{item}"}}"#))
            .with_tag("created")
            .with_key(format!("order-{id}"));
        // A customer's events keep their order.
        outbox
            .enqueue(
                &mut *transaction,
                OutboxMessage::new(event).sharding_key(customer),
            )
            .await?;
        if id % 5 == 0 {
            transaction.rollback().await?; // payment declined: no order, no event
        } else {
            transaction.commit().await?;
            accepted += 1;
        }
    }
    Ok(accepted)
}

/// Reserves stock for one "order created" event, once: the event's dedup key (its first key)
/// is recorded in the same transaction as the reservation, so a duplicate changes nothing.
async fn reserve_stock(stock: &SqlitePool, message: &ReceivedMessage) -> anyhow::Result<bool> {
    let event: serde_json::Value = serde_json::from_slice(&message.body)?;
    let item = event["item"].as_str().context("event without an item")?;
    let dedup_key = message
        .properties
        .get(OUTBOX_KEY_PROPERTY)
        .context("not an outbox event")?;
    let mut transaction = stock.begin().await?;
    let first_time =
        sqlx::query("INSERT INTO handled_events (dedup_key) VALUES ($1) ON CONFLICT DO NOTHING")
            .bind(dedup_key)
            .execute(&mut *transaction)
            .await?
            .rows_affected()
            == 1;
    if first_time {
        sqlx::query("UPDATE stock SET reserved = reserved + 1 WHERE item = $1")
            .bind(item)
            .execute(&mut *transaction)
            .await?;
    }
    transaction.commit().await?;
    Ok(first_time)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let nameserver =
        std::env::var("FERROMQ_NAMESERVER").unwrap_or_else(|_| "127.0.0.1:9876".into());
    let count: i64 = std::env::var("ORDERS").map_or(Ok(20), |n| n.parse())?;
    let folder = std::env::temp_dir().join(format!("ferromq-outbox-orders-{}", std::process::id()));
    std::fs::create_dir_all(&folder)?;

    let client = Client::builder()
        .name_servers([nameserver])
        .connect()
        .await?;
    client.create_topic(TOPIC, 4).await?;

    // The order service: its database holds the orders and the outbox.
    let orders = database(
        &folder.join("orders.sqlite"),
        "CREATE TABLE IF NOT EXISTS orders (
             id INTEGER PRIMARY KEY, customer TEXT NOT NULL, item TEXT NOT NULL,
             quantity INTEGER NOT NULL)",
    )
    .await?;
    let outbox = Outbox::new(
        orders.clone(),
        OutboxConfig {
            track_groups: [(TOPIC.to_string(), vec![STOCK_SERVICE.to_string()])].into(),
            track_interval_ms: 500,
            ..OutboxConfig::default()
        },
    )?;
    outbox.migrate().await?;
    let relay = outbox.start_relay(&client);

    // The stock service: its own database, its own consumer group.
    let stock = database(
        &folder.join("stock.sqlite"),
        "CREATE TABLE IF NOT EXISTS stock (item TEXT PRIMARY KEY, reserved INTEGER NOT NULL);
         CREATE TABLE IF NOT EXISTS handled_events (dedup_key TEXT PRIMARY KEY);
         INSERT OR IGNORE INTO stock VALUES ('book', 0), ('lamp', 0), ('chair', 0);",
    )
    .await?;
    let consumer = client
        .consumer(STOCK_SERVICE)
        .subscribe(TOPIC, "created")
        .config(ConsumerConfig {
            commit_interval_ms: 200,
            ..ConsumerConfig::default()
        })
        .build()
        .await?;
    let stop = CancellationToken::new();
    let handler_stock = stock.clone();
    let stock_service = tokio::spawn(consumer.run(
        move |message| {
            let stock = handler_stock.clone();
            async move {
                let order = message.keys.last().cloned().unwrap_or_default();
                match reserve_stock(&stock, &message).await {
                    Ok(true) => println!("stock reserved for {order}"),
                    Ok(false) => println!("duplicate of {order} dropped"),
                    Err(err) => {
                        // A database error: the broker hands the event back after a back-off.
                        eprintln!("reservation for {order} failed, retried later: {err:#}");
                        return ConsumeStatus::RetryLater(None);
                    }
                }
                ConsumeStatus::Success
            }
        },
        stop.clone(),
    ));

    let accepted = place_orders(&orders, &outbox, count).await?;
    println!("{count} orders placed, {accepted} accepted");

    let deadline = Instant::now() + Duration::from_secs(60);
    let stats = loop {
        let stats = outbox.stats().await?;
        if stats.consumed == accepted as u64 {
            break stats;
        }
        if Instant::now() > deadline {
            bail!("events not all consumed within 60 s: {stats:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let reserved: i64 = sqlx::query_scalar("SELECT SUM(reserved) FROM stock")
        .fetch_one(&stock)
        .await?;
    let saved: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM orders")
        .fetch_one(&orders)
        .await?;
    println!(
        "orders saved: {saved}; events consumed: {}; stock reserved: {reserved}; relay: {:?}",
        stats.consumed,
        relay.counters()
    );

    stop.cancel();
    stock_service.await??;
    relay.shutdown().await;
    client.shutdown().await;
    std::fs::remove_dir_all(&folder)?;
    if saved != accepted || reserved != accepted {
        bail!("expected {accepted} orders and reservations");
    }
    println!("every accepted order reserved stock exactly once");
    Ok(())
}
