//! Idempotent consumption: duplicates of a business key reach the handler once, also across a
//! consumer crash (redelivery from the last committed offset) with the SQLite store.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferromq_client::idempotent::SqliteKeyStore;
use ferromq_client::{Client, ConsumeStatus, ConsumerConfig, Idempotent, MemoryKeyStore, Message};
use ferromq_integration_tests::{start_nameserver, wait_for_route, Broker};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(30);

async fn client(nameserver: &str) -> Client {
    Client::builder()
        .name_servers([nameserver])
        .request_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap()
}

/// Runs a consumer of `group` through `Idempotent` until `deliveries` messages reached the
/// wrapper (duplicates included); returns the keys the handler processed. With `crash`, it
/// stops without committing (a killed process).
async fn consume<S: ferromq_client::KeyStore>(
    client: &Client,
    group: &str,
    store: S,
    deliveries: usize,
    crash: bool,
) -> Vec<String> {
    let processed: Arc<Mutex<Vec<String>>> = Arc::default();
    let record = processed.clone();
    let idempotent = Idempotent::new(
        store,
        move |message: ferromq_client::ReceivedMessage| {
            let record = record.clone();
            async move {
                record.lock().unwrap().push(message.keys[0].clone());
                ConsumeStatus::Success
            }
        },
        Duration::from_secs(30),
    );
    let consumer = client
        .consumer(group)
        .subscribe("payments", "*")
        .config(ConsumerConfig {
            commit_interval_ms: 3_600_000,
            ..ConsumerConfig::default()
        })
        .build()
        .await
        .unwrap();
    let delivered = Arc::new(Mutex::new(0usize));
    let stop = CancellationToken::new();
    let (count, stopper) = (delivered.clone(), stop.clone());
    let run = tokio::spawn(consumer.run(
        move |message| {
            *count.lock().unwrap() += 1;
            idempotent.handle(message)
        },
        stop.clone(),
    ));
    let deadline = Instant::now() + WAIT;
    while *delivered.lock().unwrap() < deliveries {
        assert!(
            Instant::now() < deadline,
            "only {} deliveries",
            delivered.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if crash {
        run.abort();
    } else {
        stopper.cancel();
        run.await.unwrap().unwrap();
    }
    let processed = processed.lock().unwrap().clone();
    processed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_business_key_is_processed_once() {
    let dir = tempfile::tempdir().unwrap();
    let nameserver = start_nameserver(dir.path(), &[]);
    let _broker = Broker::start(&dir.path().join("b"), &nameserver.addr, dir.path(), &[]);
    let client = client(&nameserver.addr).await;
    client.create_topic("payments", 1).await.unwrap();
    wait_for_route(&client, "payments", WAIT).await;
    let producer = client.producer();
    // Every payment is sent twice (a producer that retried on its own).
    for i in 0..20 {
        for _ in 0..2 {
            producer
                .send(Message::new("payments", format!("pay {i}")).with_key(format!("payment-{i}")))
                .await
                .unwrap();
        }
    }
    let processed = consume(&client, "ledger", MemoryKeyStore::new(1000), 40, false).await;
    let mut unique = processed.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(processed.len(), 20, "{processed:?}");
    assert_eq!(unique.len(), 20);

    // With the SQLite store, what a crashed consumer processed is not processed again when
    // its uncommitted messages come back.
    let file = dir.path().join("processed.sqlite");
    let first = consume(
        &client,
        "bank",
        SqliteKeyStore::open(&file).unwrap(),
        40,
        true,
    )
    .await;
    assert_eq!(first.len(), 20);
    let again = consume(
        &client,
        "bank",
        SqliteKeyStore::open(&file).unwrap(),
        40,
        false,
    )
    .await;
    assert!(
        again.is_empty(),
        "processed again after the crash: {again:?}"
    );
}
