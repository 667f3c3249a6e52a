//! `kill -9` of the broker during synchronous sends, then a restart: every acknowledged message
//! is consumed, and none is corrupted.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferromq_client::{Message, MessageId};
use ferromq_integration_tests::{client, start_nameserver, wait_for_route, within, Broker};

/// A body whose content can be checked: producer, sequence, and a pattern derived from both.
fn body(producer: u64, seq: u64) -> String {
    let pattern: String = (0..64)
        .map(|i| char::from(b'a' + ((producer * 31 + seq * 7 + i) % 26) as u8))
        .collect();
    format!("{producer}:{seq}:{pattern}")
}

fn check_body(text: &str) -> bool {
    let mut parts = text.splitn(3, ':');
    let (Some(p), Some(s)) = (parts.next(), parts.next()) else {
        return false;
    };
    match (p.parse(), s.parse()) {
        (Ok(producer), Ok(seq)) => body(producer, seq) == text,
        _ => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_kill_9_during_sync_sends() {
    let dir = tempfile::tempdir().unwrap();
    let nameserver = start_nameserver(dir.path(), &[]);
    let mut broker = Broker::start(
        &dir.path().join("data"),
        &nameserver.addr,
        dir.path(),
        // Small segments so the crash can land on a segment roll too.
        &[
            ("FERROMQ_STORAGE__SEGMENT_BYTES", "262144"),
            ("FERROMQ_STORAGE__CHECKPOINT_INTERVAL_MS", "300"),
        ],
    );
    let client = client(&nameserver.addr).await;
    client.create_topic("durable", 4).await.unwrap();
    wait_for_route(&client, "durable", Duration::from_secs(10)).await;

    let acknowledged: Arc<Mutex<BTreeMap<MessageId, String>>> = Arc::default();
    let attempts = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut producers = Vec::new();
    for p in 0..4u64 {
        let (producer, acknowledged, attempts, stop) = (
            client.producer(),
            acknowledged.clone(),
            attempts.clone(),
            stop.clone(),
        );
        producers.push(tokio::spawn(async move {
            let mut seq = 0;
            while !stop.load(Ordering::Relaxed) {
                let text = body(p, seq);
                seq += 1;
                attempts.fetch_add(1, Ordering::Relaxed);
                match producer.send(Message::new("durable", text.clone())).await {
                    Ok(receipt) => {
                        acknowledged
                            .lock()
                            .unwrap()
                            .insert(receipt.message_id, text);
                    }
                    // The broker is down: outcome unknown or refused; try the next message.
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        }));
    }

    for round in 0..3 {
        let before = acknowledged.lock().unwrap().len();
        let deadline = Instant::now() + Duration::from_secs(20);
        while acknowledged.lock().unwrap().len() < before + 300 {
            assert!(
                Instant::now() < deadline,
                "round {round}: producers made no progress"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        broker.process.kill9();
        tokio::time::sleep(Duration::from_millis(300)).await;
        broker.restart();
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let settled = acknowledged.lock().unwrap().len();
    while acknowledged.lock().unwrap().len() < settled + 100 {
        assert!(
            Instant::now() < deadline,
            "no progress after the last restart"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for producer in producers {
        producer.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();

    let mut consumer = client
        .consumer("auditor")
        .subscribe("durable", "*")
        .build()
        .await
        .unwrap();
    let mut seen: BTreeSet<MessageId> = BTreeSet::new();
    let mut missing: BTreeSet<MessageId> = acknowledged.keys().copied().collect();
    while !missing.is_empty() {
        let message = within(Duration::from_secs(30), consumer.recv())
            .await
            .expect("consumer open");
        let text = String::from_utf8(message.body.to_vec()).expect("utf-8 body");
        assert!(check_body(&text), "corrupted body {text:?}");
        if let Some(expected) = acknowledged.get(&message.id) {
            assert_eq!(&text, expected, "body of {} changed", message.id);
        }
        seen.insert(message.id);
        missing.remove(&message.id);
    }
    consumer.shutdown().await.unwrap();
    assert!(
        acknowledged.len() >= 1000,
        "only {} acknowledged",
        acknowledged.len()
    );
    assert!(
        seen.len() as u64 <= attempts.load(Ordering::Relaxed),
        "more messages read than were ever sent"
    );
}
