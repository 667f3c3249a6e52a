//! A broker group of three voters: one leader, two followers; killing the leader under load
//! loses no acknowledged message, producers continue on the new leader, consumers keep their
//! offsets, and the replicas agree.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferromq_client::{Message, MessageId};
use ferromq_integration_tests::{
    client, find_leader, raft_status, start_group, start_nameserver, within, Broker,
};
use ferromq_protocol::RequestCode;

const WAIT: Duration = Duration::from_secs(30);

fn wait_for_leader(group: &[Broker], timeout: Duration) -> usize {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(leader) = find_leader(group) {
            return leader;
        }
        assert!(Instant::now() < deadline, "no leader elected");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_under_load_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let nameserver = start_nameserver(dir.path(), &[]);
    let mut group = start_group("replicated", 3, dir.path(), &nameserver.addr, &[]);
    let first_leader = wait_for_leader(&group, WAIT);
    let status = raft_status(&group[first_leader]);
    assert_eq!(status["voters"].as_array().unwrap().len(), 3);
    assert_eq!(
        status["peers"].as_array().unwrap().len(),
        3,
        "the leader reports every member"
    );

    let client = client(&nameserver.addr).await;
    client.create_topic("orders", 4).await.unwrap();
    let route = client.fetch_route("orders").await.unwrap();
    assert_eq!(
        route.groups[0].followers.len(),
        2,
        "routes list the followers: {route:?}"
    );

    // A group consumes and commits the first messages before the failover.
    let producer = client.producer();
    let mut early = BTreeSet::new();
    for i in 0..40 {
        early.insert(
            producer
                .send(Message::new("orders", format!("early-{i}")))
                .await
                .unwrap()
                .message_id,
        );
    }
    let mut consumer = client
        .consumer("billing")
        .subscribe("orders", "*")
        .build()
        .await
        .unwrap();
    for _ in 0..40 {
        assert!(early.contains(&within(WAIT, consumer.recv()).await.unwrap().id));
    }
    consumer.commit().await.unwrap();
    consumer.shutdown().await.unwrap();

    let acknowledged: Arc<Mutex<BTreeMap<MessageId, String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut producers = Vec::new();
    for p in 0..4 {
        let (producer, acknowledged, stop) =
            (client.producer(), acknowledged.clone(), stop.clone());
        producers.push(tokio::spawn(async move {
            let mut seq = 0;
            while !stop.load(Ordering::Relaxed) {
                let body = format!("p{p}-{seq}");
                seq += 1;
                match producer.send(Message::new("orders", body.clone())).await {
                    Ok(receipt) => {
                        acknowledged
                            .lock()
                            .unwrap()
                            .insert(receipt.message_id, body);
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        }));
    }
    let wait_for_acks = |count: usize| {
        let acknowledged = acknowledged.clone();
        async move {
            while acknowledged.lock().unwrap().len() < count {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    within(WAIT, wait_for_acks(300)).await;

    let killed = first_leader;
    group[killed].process.kill9();
    let killed_at = Instant::now();
    let acked_at_kill = acknowledged.lock().unwrap().len();
    within(WAIT, wait_for_acks(acked_at_kill + 1)).await;
    let failover = killed_at.elapsed();
    within(WAIT, wait_for_acks(acked_at_kill + 300)).await;
    let new_leader = wait_for_leader(&group, WAIT);
    assert_ne!(new_leader, killed);
    eprintln!("failover: first acknowledged send {failover:?} after the leader was killed");

    // The old leader comes back as a follower and catches up.
    group[killed].restart();
    within(WAIT, wait_for_acks(acked_at_kill + 500)).await;
    stop.store(true, Ordering::Relaxed);
    for producer in producers {
        producer.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();

    // Consumers keep their offsets across the failover: nothing committed comes back.
    let mut consumer = client
        .consumer("billing")
        .subscribe("orders", "*")
        .build()
        .await
        .unwrap();
    let mut missing: BTreeSet<MessageId> = acknowledged.keys().copied().collect();
    while !missing.is_empty() {
        let message = within(WAIT, consumer.recv()).await.unwrap();
        assert!(
            !early.contains(&message.id),
            "a committed message was delivered again"
        );
        if let Some(body) = acknowledged.get(&message.id) {
            assert_eq!(body.as_bytes(), &message.body[..]);
        }
        missing.remove(&message.id);
    }
    consumer.shutdown().await.unwrap();

    // Every replica holds the same messages at the same offsets.
    let members: Vec<String> = group.iter().map(|b| b.spec.addr.clone()).collect();
    let deadline = Instant::now() + WAIT;
    loop {
        let replicas = ferromq_integration_tests::chaos::read_replicas(&members, "orders", 4).await;
        let complete = replicas.iter().all(Option::is_some);
        if complete && replicas.windows(2).all(|w| w[0] == w[1]) {
            let total: usize = replicas[0].as_ref().unwrap().values().map(Vec::len).sum();
            assert!(total >= acknowledged.len());
            break;
        }
        assert!(Instant::now() < deadline, "replicas diverge");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_points_writers_to_the_leader() {
    let dir = tempfile::tempdir().unwrap();
    let nameserver = start_nameserver(dir.path(), &[]);
    let group = start_group("pointing", 3, dir.path(), &nameserver.addr, &[]);
    let leader = wait_for_leader(&group, WAIT);
    let follower = (leader + 1) % 3;
    let connection =
        ferromq_integration_tests::raw_connection(&group[follower].spec.addr, "writer")
            .await
            .unwrap();
    let request = ferromq_protocol::headers::CreateTopicRequest {
        topic: "t".into(),
        queues: 1,
        perm: ferromq_protocol::headers::perm::READ_WRITE,
    };
    let err = connection
        .request(RequestCode::CreateTopic, &request, Bytes::new())
        .await
        .unwrap()
        .into_result()
        .unwrap_err();
    match err {
        ferromq_transport::TransportError::Remote {
            status,
            leader: hint,
            ..
        } => {
            assert_eq!(status, ferromq_protocol::Status::NotLeader);
            assert_eq!(hint.as_deref(), Some(group[leader].spec.addr.as_str()));
        }
        other => panic!("expected NOT_LEADER, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_hands_leadership_over() {
    let dir = tempfile::tempdir().unwrap();
    let nameserver = start_nameserver(dir.path(), &[]);
    let mut group = start_group("handover", 3, dir.path(), &nameserver.addr, &[]);
    let leader = wait_for_leader(&group, WAIT);
    let term_before = raft_status(&group[leader])["term"].as_u64().unwrap();
    let status = group[leader].process.terminate();
    assert!(status.success());
    let new_leader = wait_for_leader(&group, Duration::from_secs(2));
    assert_ne!(new_leader, leader);
    let term_after = raft_status(&group[new_leader])["term"].as_u64().unwrap();
    assert_eq!(
        term_after,
        term_before + 1,
        "a transfer takes one term, no election rounds"
    );
    assert!(group[leader]
        .process
        .log()
        .contains("transferring leadership"));
}

fn messages_out(broker: &Broker) -> u64 {
    let (_, metrics) = ferromq_integration_tests::http_get(&broker.spec.admin, "/metrics").unwrap();
    metrics
        .lines()
        .filter(|l| l.starts_with("mq_messages_out_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_can_read_from_followers_and_commit_to_the_leader() {
    let dir = tempfile::tempdir().unwrap();
    let nameserver = start_nameserver(dir.path(), &[]);
    let group = start_group("readers", 3, dir.path(), &nameserver.addr, &[]);
    let leader = wait_for_leader(&group, WAIT);
    let client = client(&nameserver.addr).await;
    client.create_topic("spread-reads", 2).await.unwrap();
    let producer = client.producer();
    for i in 0..50 {
        producer
            .send(Message::new("spread-reads", format!("m{i}")))
            .await
            .unwrap();
    }
    let mut consumer = client
        .consumer("slave-readers")
        .subscribe("spread-reads", "*")
        .read_from_followers(true)
        .build()
        .await
        .unwrap();
    let mut seen = BTreeSet::new();
    while seen.len() < 50 {
        seen.insert(within(WAIT, consumer.recv()).await.unwrap().id);
    }
    consumer.commit().await.unwrap();
    consumer.shutdown().await.unwrap();
    assert_eq!(
        messages_out(&group[leader]),
        0,
        "the leader served no reads"
    );
    let follower_reads: u64 = group.iter().map(messages_out).sum();
    assert_eq!(follower_reads, 50);

    // The offsets went to the leader (through Raft): a leader-reading member continues after them.
    producer
        .send(Message::new("spread-reads", "next"))
        .await
        .unwrap();
    let mut consumer = client
        .consumer("slave-readers")
        .subscribe("spread-reads", "*")
        .build()
        .await
        .unwrap();
    assert_eq!(within(WAIT, consumer.recv()).await.unwrap().body, "next");
    consumer.shutdown().await.unwrap();
}
