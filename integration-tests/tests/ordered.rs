//! Ordered messages: a sharding key keeps its messages in one queue, and orderly consumers hand
//! each queue's messages to the handler one at a time in order, also while members join, leave
//! and crash (queue locks at the broker keep two members off one queue).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferromq_client::{
    Client, ConsumeStatus, ConsumerConfig, Message, MessageQueue, ReceivedMessage,
};
use ferromq_integration_tests::{client, start_nameserver, wait_for_route, within, Broker};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(60);
const KEYS: usize = 12;
const PER_KEY: usize = 60;

/// One handled message: who, which queue, key and sequence number, and when.
#[derive(Debug, Clone)]
struct Handled {
    member: &'static str,
    queue_id: u32,
    key: String,
    seq: usize,
    started: Instant,
    ended: Instant,
}

type Log = Arc<Mutex<Vec<Handled>>>;

fn start_member(
    client: &Client,
    member: &'static str,
    log: &Log,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let stop = CancellationToken::new();
    let builder = client
        .consumer("fifo-readers")
        .subscribe("fifo", "*")
        .orderly()
        .config(ConsumerConfig {
            orderly: true,
            queue_lock_lease_ms: 3_000,
            heartbeat_interval_ms: 300,
            commit_interval_ms: 200,
            ..ConsumerConfig::default()
        });
    let (log, stopper) = (log.clone(), stop.clone());
    let task = tokio::spawn(async move {
        let consumer = builder.build().await.unwrap();
        consumer
            .run(
                move |message: ReceivedMessage| {
                    let log = log.clone();
                    async move {
                        let started = Instant::now();
                        let body = String::from_utf8(message.body.to_vec()).unwrap();
                        let (key, seq) = body.split_once(':').unwrap();
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        log.lock().unwrap().push(Handled {
                            member,
                            queue_id: message.queue_id,
                            key: key.to_string(),
                            seq: seq.parse().unwrap(),
                            started,
                            ended: Instant::now(),
                        });
                        ConsumeStatus::Success
                    }
                },
                stopper,
            )
            .await
            .unwrap();
    });
    (stop, task)
}

async fn wait_for(log: &Log, handled: usize) {
    let deadline = Instant::now() + WAIT;
    while log.lock().unwrap().len() < handled {
        assert!(
            Instant::now() < deadline,
            "only {} handled",
            log.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until `total` distinct messages were handled.
async fn wait_for_distinct(log: &Log, total: usize) {
    let deadline = Instant::now() + WAIT;
    while distinct(log) < total {
        assert!(
            Instant::now() < deadline,
            "only {} of {total} handled",
            distinct(log)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn distinct(log: &Log) -> usize {
    let log = log.lock().unwrap();
    let mut seen: Vec<(String, usize)> = log.iter().map(|h| (h.key.clone(), h.seq)).collect();
    seen.sort();
    seen.dedup();
    seen.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_key_is_consumed_in_order_while_members_join_leave_and_crash() {
    let dir = tempfile::tempdir().unwrap();
    let nameserver = start_nameserver(dir.path(), &[]);
    let _broker = Broker::start(&dir.path().join("b"), &nameserver.addr, dir.path(), &[]);
    let client = client(&nameserver.addr).await;
    client.create_topic("fifo", 4).await.unwrap();
    wait_for_route(&client, "fifo", WAIT).await;
    let producer = client.producer();

    // Same key, same queue (checked by `send_keys`); a selector closure picks queues too.
    send_keys(&producer).await;
    let last = |queues: &[MessageQueue], _: &Message| queues.len() - 1;
    let receipt = producer
        .send_with_selector(Message::new("fifo", "selector:0"), &last)
        .await
        .unwrap();
    assert_eq!(receipt.queue_id, 3);

    let log: Log = Arc::default();
    let total = KEYS * PER_KEY + 1;
    let (stop_a, a) = start_member(&client, "a", &log);
    wait_for(&log, 100).await;
    let (stop_b, b) = start_member(&client, "b", &log);
    let (_stop_c, c) = start_member(&client, "c", &log);
    wait_for(&log, 300).await;
    // A leaves cleanly: it finishes its message, commits and unlocks.
    stop_a.cancel();
    within(WAIT, a).await.unwrap();
    wait_for(&log, 450).await;
    // C crashes: its locks hold until their lease ends.
    c.abort();
    wait_for_distinct(&log, total).await;
    stop_b.cancel();
    within(WAIT, b).await.unwrap();

    let log = log.lock().unwrap().clone();
    assert_in_order(&log);
    let mut ordered: Vec<&Handled> = log.iter().collect();
    ordered.sort_by_key(|h| h.started);
    // Per queue: never two members at once.
    let mut by_queue: BTreeMap<u32, Vec<&Handled>> = BTreeMap::new();
    for handled in &ordered {
        by_queue.entry(handled.queue_id).or_default().push(handled);
    }
    for (queue, handled) in by_queue {
        for pair in handled.windows(2) {
            if pair[0].member != pair[1].member {
                assert!(
                    pair[1].started >= pair[0].ended,
                    "queue {queue}: {} started before {} finished",
                    pair[1].member,
                    pair[0].member
                );
            }
        }
    }
    let members: std::collections::BTreeSet<&str> = log.iter().map(|h| h.member).collect();
    assert_eq!(members.len(), 3, "every member handled some: {members:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_sends_by_sharding_key_and_consumes_orderly() {
    let dir = tempfile::tempdir().unwrap();
    let nameserver = start_nameserver(dir.path(), &[]);
    let _broker = Broker::start(&dir.path().join("b"), &nameserver.addr, dir.path(), &[]);
    let client = client(&nameserver.addr).await;
    client.create_topic("cli-fifo", 4).await.unwrap();
    wait_for_route(&client, "cli-fifo", WAIT).await;
    let addr = nameserver.addr.clone();
    let output = tokio::task::spawn_blocking(move || {
        let sent = ferromq_integration_tests::ferromq(&[
            "--nameserver",
            &addr,
            "send",
            "--topic",
            "cli-fifo",
            "--body",
            "step",
            "--sharding-key",
            "order-9",
            "--count",
            "5",
        ]);
        let consumed = ferromq_integration_tests::ferromq(&[
            "--nameserver",
            &addr,
            "consume",
            "--topic",
            "cli-fifo",
            "--group",
            "cli-orderly",
            "--orderly",
            "--count",
            "5",
            "--json",
            "--timeout",
            "20s",
        ]);
        (sent, consumed)
    })
    .await
    .unwrap();
    let (sent, consumed) = output;
    assert!(
        sent.status.success(),
        "{}",
        String::from_utf8_lossy(&sent.stderr)
    );
    let queues: std::collections::BTreeSet<&str> = std::str::from_utf8(&sent.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            line.split_whitespace()
                .find(|w| w.starts_with("queue="))
                .unwrap()
        })
        .collect();
    assert_eq!(queues.len(), 1, "one key, one queue: {queues:?}");
    assert!(
        consumed.status.success(),
        "{}",
        String::from_utf8_lossy(&consumed.stderr)
    );
    let offsets: Vec<u64> = std::str::from_utf8(&consumed.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            serde_json::from_str::<serde_json::Value>(line).unwrap()["offset"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(offsets, vec![0, 1, 2, 3, 4]);
}

/// Sends `PER_KEY` messages `key:seq` for each of `KEYS` keys, interleaved, to topic `fifo` by
/// sharding key; every key must stay in one queue.
async fn send_keys(producer: &ferromq_client::Producer) {
    let mut queue_of_key = BTreeMap::new();
    for seq in 0..PER_KEY {
        for key in 0..KEYS {
            let key = format!("order-{key}");
            let receipt = producer
                .send_ordered(Message::new("fifo", format!("{key}:{seq}")), &key)
                .await
                .unwrap();
            let queue = *queue_of_key.entry(key.clone()).or_insert(receipt.queue_id);
            assert_eq!(queue, receipt.queue_id, "{key} moved queue");
        }
    }
}

/// Per key: the handled sequence numbers run up by one, or start again from an earlier one (a
/// whole-prefix redelivery from the last commit); never a gap, never out of order.
fn assert_in_order(log: &[Handled]) {
    let mut by_key: BTreeMap<String, Vec<&Handled>> = BTreeMap::new();
    let mut ordered: Vec<&Handled> = log.iter().collect();
    ordered.sort_by_key(|h| h.started);
    for handled in &ordered {
        by_key.entry(handled.key.clone()).or_default().push(handled);
    }
    for (key, handled) in &by_key {
        if key == "selector" {
            continue;
        }
        let seqs: Vec<usize> = handled.iter().map(|h| h.seq).collect();
        assert_eq!(seqs[0], 0, "{key}: {seqs:?}");
        for pair in seqs.windows(2) {
            assert!(
                pair[1] == pair[0] + 1 || pair[1] <= pair[0],
                "{key} out of order: {seqs:?}"
            );
        }
        assert_eq!(seqs.iter().max(), Some(&(PER_KEY - 1)), "{key}: {seqs:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orderly_consumption_continues_in_order_across_a_broker_kill() {
    let dir = tempfile::tempdir().unwrap();
    let nameserver = start_nameserver(dir.path(), &[]);
    let mut broker = Broker::start(&dir.path().join("b"), &nameserver.addr, dir.path(), &[]);
    let client = client(&nameserver.addr).await;
    client.create_topic("fifo", 4).await.unwrap();
    wait_for_route(&client, "fifo", WAIT).await;
    send_keys(&client.producer()).await;
    let log: Log = Arc::default();
    let (stop, member) = start_member(&client, "a", &log);
    wait_for(&log, 150).await;
    // The broker dies with the member's locks held and offsets partly committed; it comes
    // back with the same locks (they are in its log and checkpoints).
    broker.restart();
    let total = KEYS * PER_KEY;
    wait_for_distinct(&log, total).await;
    stop.cancel();
    within(WAIT, member).await.unwrap();
    assert_in_order(&log.lock().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orderly_consumption_keeps_order_across_a_leader_kill_in_a_group() {
    let dir = tempfile::tempdir().unwrap();
    let nameserver = start_nameserver(dir.path(), &[]);
    let mut group =
        ferromq_integration_tests::start_group("fifo-group", 3, dir.path(), &nameserver.addr, &[]);
    let client = client(&nameserver.addr).await;
    client.create_topic("fifo", 4).await.unwrap();
    wait_for_route(&client, "fifo", WAIT).await;
    send_keys(&client.producer()).await;
    let log: Log = Arc::default();
    let (stop_a, a) = start_member(&client, "a", &log);
    let (stop_b, b) = start_member(&client, "b", &log);
    wait_for(&log, 150).await;
    // The new leader knows the members' queue locks: they were logged.
    let leader = ferromq_integration_tests::find_leader(&group).expect("a leader");
    group[leader].process.kill9();
    let total = KEYS * PER_KEY;
    wait_for_distinct(&log, total).await;
    stop_a.cancel();
    stop_b.cancel();
    within(WAIT, a).await.unwrap();
    within(WAIT, b).await.unwrap();
    let log = log.lock().unwrap().clone();
    assert_in_order(&log);
    group[leader].restart();
}
