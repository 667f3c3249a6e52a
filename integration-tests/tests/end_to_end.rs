//! Messages flow from producers through a real nameserver and a real broker to consumers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use ferromq_client::{Client, ClientError, ConsumeStatus, Message};
use ferromq_integration_tests::{
    client, start_nameserver, stored_messages, wait_for_route, within, Broker, Nameserver,
};

const WAIT: Duration = Duration::from_secs(30);

/// A nameserver, one broker and a client of them (the directory holds their data and logs).
async fn one_broker() -> (tempfile::TempDir, Nameserver, Broker, Client) {
    let dir = tempfile::tempdir().unwrap();
    let nameserver = start_nameserver(dir.path(), &[]);
    let broker = Broker::start(&dir.path().join("data"), &nameserver.addr, dir.path(), &[]);
    let client = client(&nameserver.addr).await;
    (dir, nameserver, broker, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_async_and_batch_sends_reach_a_consumer_group_intact() {
    let (_dir, _nameserver, _broker, client) = one_broker().await;
    wait_for_route(&client, "orders", Duration::from_secs(10)).await;

    let producer = client.producer();
    let mut sent = BTreeMap::new();
    for i in 0..200 {
        let message = Message::new("orders", format!("sync-{i}"))
            .with_tag(if i % 2 == 0 { "even" } else { "odd" })
            .with_key(format!("order-{i}"))
            .with_property("index", i.to_string());
        let receipt = producer.send(message).await.unwrap();
        sent.insert(receipt.message_id, format!("sync-{i}"));
    }
    let batch: Vec<Message> = (0..100)
        .map(|i| Message::new("orders", format!("batch-{i}")))
        .collect();
    let receipts = producer.send_batch(batch).await.unwrap();
    assert!(receipts
        .windows(2)
        .all(|w| w[1].queue_offset == w[0].queue_offset + 1 && w[0].queue_id == w[1].queue_id));
    for (i, receipt) in receipts.iter().enumerate() {
        sent.insert(receipt.message_id, format!("batch-{i}"));
    }
    let mut handles = Vec::new();
    for i in 0..50 {
        handles.push(
            producer
                .send_async(Message::new("orders", format!("async-{i}")))
                .await,
        );
    }
    for (i, handle) in handles.into_iter().enumerate() {
        sent.insert(handle.await.unwrap().message_id, format!("async-{i}"));
    }
    assert_eq!(sent.len(), 350);

    let mut consumer = client
        .consumer("billing")
        .subscribe("orders", "*")
        .build()
        .await
        .unwrap();
    let mut received = BTreeMap::new();
    let mut last = None;
    while received.len() < sent.len() {
        let message = within(WAIT, consumer.recv()).await.unwrap();
        last = Some(message.id);
        if let Some(index) = message.properties.get("index") {
            assert_eq!(message.keys, vec![format!("order-{index}")]);
        }
        let previous = received.insert(
            message.id,
            String::from_utf8(message.body.to_vec()).unwrap(),
        );
        assert!(previous.is_none(), "message {} delivered twice", message.id);
    }
    assert_eq!(received, sent);
    // Shut down without saying the last message was processed: it is delivered again, and
    // nothing else from before.
    consumer.shutdown().await.unwrap();
    let marker = producer
        .send(Message::new("orders", "after-restart"))
        .await
        .unwrap();
    let mut consumer = client
        .consumer("billing")
        .subscribe("orders", "*")
        .build()
        .await
        .unwrap();
    let mut redelivered = Vec::new();
    for _ in 0..2 {
        redelivered.push(within(WAIT, consumer.recv()).await.unwrap().id);
    }
    redelivered.sort();
    let mut expected = vec![last.unwrap(), marker.message_id];
    expected.sort();
    assert_eq!(redelivered, expected);
    consumer.commit().await.unwrap();
    consumer.shutdown().await.unwrap();

    // Everything is committed now: a new member continues with the next message.
    let marker = producer
        .send(Message::new("orders", "after-commit"))
        .await
        .unwrap();
    let mut consumer = client
        .consumer("billing")
        .subscribe("orders", "*")
        .build()
        .await
        .unwrap();
    let next = within(WAIT, consumer.recv()).await.unwrap();
    assert_eq!(next.id, marker.message_id);
    consumer.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_filters_deliver_only_matching_messages_and_handlers_run_in_order() {
    let (_dir, _nameserver, _broker, client) = one_broker().await;
    client.create_topic("events", 1).await.unwrap();
    wait_for_route(&client, "events", Duration::from_secs(10)).await;
    let producer = client.producer();
    for i in 0..60 {
        let tag = ["a", "b", "c"][i % 3];
        producer
            .send(Message::new("events", format!("{tag}{i}")).with_tag(tag))
            .await
            .unwrap();
    }

    // Local retries: a failed message holds its queue until it succeeds.
    let consumer = client
        .consumer("only-ab")
        .subscribe("events", "a || b")
        .config(ferromq_client::ConsumerConfig {
            broker_retries: false,
            ..Default::default()
        })
        .build()
        .await
        .unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let stop = tokio_util::sync::CancellationToken::new();
    let (seen_in_handler, stop_in_handler) = (seen.clone(), stop.clone());
    let mut failed_once = false;
    let run = consumer.run(
        move |message| {
            let seen = seen_in_handler.clone();
            let stop = stop_in_handler.clone();
            // The first message fails once: it must come back before anything after it.
            let retry = !failed_once;
            failed_once = true;
            async move {
                if retry {
                    return ConsumeStatus::RetryLater(Some(Duration::from_millis(50)));
                }
                let mut seen = seen.lock().unwrap();
                seen.push((message.queue_offset, message.tag.clone().unwrap()));
                if seen.len() == 40 {
                    stop.cancel();
                }
                ConsumeStatus::Success
            }
        },
        stop,
    );
    within(WAIT, run).await.unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 40);
    assert!(seen.iter().all(|(_, tag)| tag == "a" || tag == "b"));
    assert!(
        seen.windows(2).all(|w| w[0].0 < w[1].0),
        "queue order kept: {seen:?}"
    );
    assert_eq!(seen[0].0, 0, "the retried message came first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rare_tag_is_found_behind_long_runs_of_filtered_messages_without_waiting() {
    let (_dir, _nameserver, _broker, client) = one_broker().await;
    client.create_topic("mixed", 1).await.unwrap();
    let producer = client.producer();
    for chunk in 0..20 {
        let batch: Vec<Message> = (0..100)
            .map(|i| Message::new("mixed", format!("noise-{chunk}-{i}")).with_tag("noise"))
            .collect();
        producer.send_batch(batch).await.unwrap();
    }
    producer
        .send(Message::new("mixed", "needle").with_tag("rare"))
        .await
        .unwrap();
    let mut consumer = client
        .consumer("seekers")
        .subscribe("mixed", "rare")
        .build()
        .await
        .unwrap();
    // 2000 filtered messages come first; the broker must skip them, not hold a 15 s long poll
    // for each scan window (that would take longer than WAIT).
    let found = within(WAIT, consumer.recv()).await.unwrap();
    assert_eq!(found.body, "needle");
    assert_eq!(found.queue_offset, 2000);
    consumer.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_move_to_another_broker_group_when_one_fails() {
    let dir = tempfile::tempdir().unwrap();
    let nameserver = start_nameserver(dir.path(), &[]);
    let _a = Broker::start(&dir.path().join("a"), &nameserver.addr, dir.path(), &[]);
    let mut b = Broker::start(
        &dir.path().join("b"),
        &nameserver.addr,
        dir.path(),
        &[("FERROMQ_GROUP", "broker-b")],
    );
    let client = client(&nameserver.addr).await;
    client.create_topic("spread", 2).await.unwrap();
    let producer = client.producer();
    let mut groups = std::collections::BTreeSet::new();
    for i in 0..20 {
        let receipt = producer
            .send(Message::new("spread", format!("m{i}")))
            .await
            .unwrap();
        groups.insert(receipt.broker_group);
    }
    assert_eq!(groups.len(), 2, "round-robin over both groups: {groups:?}");

    b.process.kill9();
    for i in 0..40 {
        let receipt = producer
            .send(Message::new("spread", format!("after-{i}")))
            .await
            .expect("a retriable failure is retried on the other group");
        assert_eq!(receipt.broker_group, "broker-a");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_way_and_callback_sends_arrive() {
    let (_dir, _nameserver, _broker, client) = one_broker().await;
    client.create_topic("fire", 2).await.unwrap();
    let producer = client.producer();
    for i in 0..10 {
        producer
            .send_oneway(Message::new("fire", format!("oneway-{i}")))
            .await
            .unwrap();
    }
    let (done, mut receipts) = tokio::sync::mpsc::unbounded_channel();
    for i in 0..10 {
        let done = done.clone();
        producer
            .send_with_callback(
                Message::new("fire", format!("callback-{i}")),
                move |result| {
                    let _ = done.send(result.map(|r| r.message_id));
                },
            )
            .await;
    }
    for _ in 0..10 {
        within(WAIT, receipts.recv())
            .await
            .unwrap()
            .expect("callback reports success");
    }
    let mut consumer = client
        .consumer("fire-readers")
        .subscribe("fire", "*")
        .build()
        .await
        .unwrap();
    let mut bodies = std::collections::BTreeSet::new();
    while bodies.len() < 20 {
        let message = within(WAIT, consumer.recv()).await.unwrap();
        bodies.insert(String::from_utf8(message.body.to_vec()).unwrap());
    }
    assert!(bodies.contains("oneway-9") && bodies.contains("callback-9"));
    consumer.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_retried_after_an_unknown_outcome_is_stored_once() {
    use bytes::{Bytes, BytesMut};
    use ferromq_protocol::headers::{SendRequest, SendResponse};
    use ferromq_protocol::message::{encode_record, put_length_prefixed, MessageIdGenerator};
    use ferromq_protocol::RequestCode;

    let (_dir, _nameserver, mut broker, client) = one_broker().await;
    client.create_topic("once", 2).await.unwrap();

    // What a producer sends, and sends again when the first answer was lost.
    let ids = MessageIdGenerator::default();
    let mut body = BytesMut::new();
    for i in 0..3 {
        let mut record = BytesMut::new();
        encode_record(
            ids.next_id(),
            1,
            &Message::new("once", format!("m{i}")),
            &mut record,
        );
        put_length_prefixed(&mut body, &record);
    }
    let body = body.freeze();
    let send = |queue_id: u32, body: Bytes, addr: String| async move {
        let connection = ferromq_integration_tests::raw_connection(&addr, "retrying-producer")
            .await
            .unwrap();
        let header = SendRequest {
            topic: "once".into(),
            queue_id,
            count: 3,
            schedule: None,
            transaction_group: None,
            reply_to: None,
        };
        let response: SendResponse = connection
            .request(RequestCode::Send, &header, body)
            .await
            .unwrap()
            .decode()
            .unwrap();
        connection.close();
        response
    };
    let first = send(1, body.clone(), broker.spec.addr.clone()).await;
    let retry = send(1, body.clone(), broker.spec.addr.clone()).await;
    assert_eq!(
        retry, first,
        "the retry is answered with the original offsets"
    );
    // The window survives a restart of the broker.
    broker.restart();
    let after_restart = send(1, body, broker.spec.addr.clone()).await;
    assert_eq!(after_restart, first);

    let mut consumer = client
        .consumer("counting")
        .subscribe("once", "*")
        .build()
        .await
        .unwrap();
    let mut bodies = Vec::new();
    for _ in 0..3 {
        bodies.push(within(WAIT, consumer.recv()).await.unwrap().body);
    }
    assert_eq!(bodies, ["m0", "m1", "m2"]);
    let (_, metrics) = ferromq_integration_tests::http_get(&broker.spec.admin, "/metrics").unwrap();
    assert!(
        metrics.contains(r#"mq_messages_deduplicated_total{topic="once"} 3"#),
        "the restarted broker counted the retry it recognised"
    );
    consumer.shutdown().await.unwrap();
}

/// A batch whose messages do not fit one frame (small bodies, large properties) is refused
/// before anything is sent, with an error that says to split it, and its messages come back;
/// split, it goes out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_too_large_for_one_send_is_refused_before_sending() {
    let (_dir, _nameserver, _broker, client) = one_broker().await;
    wait_for_route(&client, "orders", Duration::from_secs(10)).await;
    let producer = client.producer();

    let header = "x".repeat(15_000);
    let batch: Vec<Message> = (0..)
        .map(|i| Message::new("orders", format!("event-{i}")).with_property("trace", &header))
        .scan(0, |bytes, message| {
            // Enough messages to pass the limit by one.
            let fits = *bytes <= producer.max_batch_bytes();
            *bytes += ferromq_protocol::message::send_body_len(&message);
            fits.then_some(message)
        })
        .collect();
    let refused = producer.send_batch(batch.clone()).await.unwrap_err();
    match &refused.error {
        ClientError::InvalidMessage(reason) => {
            assert!(reason.contains("smaller batches"), "{reason}")
        }
        other => panic!("expected a refusal of the batch, got {other:?}"),
    }
    assert_eq!(refused.messages, batch);

    let (first, second) = batch.split_at(batch.len() / 2);
    let mut sent = producer.send_batch(first.to_vec()).await.unwrap();
    sent.extend(producer.send_batch(second.to_vec()).await.unwrap());
    assert_eq!(sent.len(), batch.len());
    assert_eq!(
        stored_messages(&client, "nobody", "orders").await,
        batch.len() as u64,
        "only the split batches are stored"
    );
}
