//! Transactional messages through real brokers: commit, rollback, check-backs answered by
//! another producer of the group, parking after the last check-back, and leader failover.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferromq_client::{
    Client, ConsumeStatus, Message, ReceivedMessage, SendReceipt, TransactionListener,
    TransactionState,
};
use ferromq_integration_tests::{
    client, find_leader, http_get, start_group, start_nameserver, wait_for_route, within, Broker,
};
use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(30);
/// Check-backs after 500 ms, every 500 ms, three at most.
const FAST_CHECKS: [(&str, &str); 3] = [
    ("FERROMQ_TRANSACTIONS__CHECK_AFTER_MS", "500"),
    ("FERROMQ_TRANSACTIONS__CHECK_INTERVAL_MS", "500"),
    ("FERROMQ_TRANSACTIONS__MAX_CHECKS", "3"),
];

fn body(message: &ReceivedMessage) -> String {
    String::from_utf8_lossy(&message.body).into_owned()
}

/// The local transaction's outcome is the message body's first word; a check-back answers
/// `check_answer` and counts the questions per body.
struct BodyDecides {
    check_answer: TransactionState,
    checks: Arc<Mutex<BTreeMap<String, u32>>>,
}

impl TransactionListener for BodyDecides {
    fn execute_local<'a>(
        &'a self,
        message: &'a Message,
        _receipt: &'a SendReceipt,
    ) -> BoxFuture<'a, TransactionState> {
        let text = String::from_utf8_lossy(&message.body).into_owned();
        Box::pin(async move {
            match text.split_whitespace().next() {
                Some("commit") => TransactionState::Commit,
                Some("rollback") => TransactionState::Rollback,
                _ => TransactionState::Unknown,
            }
        })
    }

    fn check_local<'a>(&'a self, message: &'a ReceivedMessage) -> BoxFuture<'a, TransactionState> {
        let text = body(message);
        *self.checks.lock().unwrap().entry(text.clone()).or_default() += 1;
        // A transaction its producer ends itself is never decided by a check-back.
        let answer = if text.starts_with("explicit") {
            TransactionState::Unknown
        } else {
            self.check_answer
        };
        Box::pin(async move { answer })
    }
}

type Seen = Arc<Mutex<Vec<String>>>;

fn consume(
    client: &Client,
    group: &str,
    topic: &str,
) -> (Seen, CancellationToken, tokio::task::JoinHandle<()>) {
    let seen: Seen = Arc::default();
    let stop = CancellationToken::new();
    let builder = client.consumer(group).subscribe(topic, "*");
    let (record, stopper) = (seen.clone(), stop.clone());
    let task = tokio::spawn(async move {
        let consumer = builder.build().await.unwrap();
        consumer
            .run(
                move |message| {
                    record.lock().unwrap().push(body(&message));
                    async { ConsumeStatus::Success }
                },
                stopper,
            )
            .await
            .unwrap();
    });
    (seen, stop, task)
}

async fn wait_until(what: &str, done: impl FnMut() -> bool) {
    ferromq_integration_tests::wait_until(what, WAIT, done).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_rollback_and_check_backs_decide_what_consumers_see() {
    let dir = tempfile::tempdir().unwrap();
    let nameserver = start_nameserver(dir.path(), &[]);
    let broker = Broker::start(
        &dir.path().join("b"),
        &nameserver.addr,
        dir.path(),
        &FAST_CHECKS,
    );
    let first = client(&nameserver.addr).await;
    first.create_topic("payments", 2).await.unwrap();
    wait_for_route(&first, "payments", WAIT).await;
    let checks = Arc::new(Mutex::new(BTreeMap::new()));
    let producer = first
        .transaction_producer(
            "payment-service",
            BodyDecides {
                check_answer: TransactionState::Commit,
                checks: checks.clone(),
            },
        )
        .await
        .unwrap();
    let (seen, stop, task) = consume(&first, "ledger", "payments");

    for text in ["commit now", "rollback now", "unknown then commit"] {
        let (_, state) = producer
            .send_in_transaction(Message::new("payments", text))
            .await
            .unwrap();
        assert_eq!(
            format!("{state:?}").to_lowercase(),
            text.split_whitespace().next().unwrap()
        );
    }
    // The explicit handle; a half message stays invisible until its commit.
    let open = producer
        .begin(Message::new("payments", "handle commit"))
        .await
        .unwrap();
    producer
        .begin(Message::new("payments", "handle rollback"))
        .await
        .unwrap()
        .rollback()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!seen.lock().unwrap().contains(&"handle commit".to_string()));
    open.commit().await.unwrap();

    wait_until("the committed and checked-back messages", || {
        let seen = seen.lock().unwrap();
        ["commit now", "unknown then commit", "handle commit"]
            .iter()
            .all(|b| seen.contains(&b.to_string()))
    })
    .await;
    assert_eq!(checks.lock().unwrap().get("unknown then commit"), Some(&1));
    // A second end of a finished transaction is refused.
    let closed = producer
        .begin(Message::new("payments", "twice"))
        .await
        .unwrap();
    let receipt = closed.receipt().clone();
    closed.commit().await.unwrap();
    let again = ferromq_integration_tests::raw_connection(&broker.spec.addr, "again")
        .await
        .unwrap()
        .request(
            ferromq_client::RequestCode::EndTransaction,
            &ferromq_protocol::headers::EndTransactionRequest {
                topic: "payments".into(),
                id: receipt.message_id,
                commit: true,
            },
            bytes::Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(again.status, ferromq_protocol::Status::ParameterError);

    // The producer dies after its half message; another producer of the group answers.
    let orphan_client = client(&nameserver.addr).await;
    let orphan_checks = Arc::new(Mutex::new(BTreeMap::new()));
    let dying = orphan_client
        .transaction_producer(
            "payment-service",
            BodyDecides {
                check_answer: TransactionState::Rollback,
                checks: orphan_checks.clone(),
            },
        )
        .await
        .unwrap();
    let half = dying
        .begin(Message::new("payments", "orphan"))
        .await
        .unwrap();
    drop(half);
    dying.shutdown();
    orphan_client.shutdown().await;
    wait_until("the orphan committed by the surviving producer", || {
        seen.lock().unwrap().contains(&"orphan".to_string())
    })
    .await;
    assert!(orphan_checks.lock().unwrap().is_empty());

    tokio::time::sleep(Duration::from_millis(500)).await;
    let bodies = seen.lock().unwrap().clone();
    for never in ["rollback now", "handle rollback"] {
        assert!(!bodies.contains(&never.to_string()), "{bodies:?}");
    }
    for once in [
        "commit now",
        "unknown then commit",
        "handle commit",
        "twice",
        "orphan",
    ] {
        assert_eq!(
            bodies.iter().filter(|b| *b == once).count(),
            1,
            "{bodies:?}"
        );
    }
    stop.cancel();
    within(WAIT, task).await.unwrap();

    // A transaction nobody can decide is parked after the last check-back.
    let undecided = first
        .transaction_producer(
            "undecided-service",
            BodyDecides {
                check_answer: TransactionState::Unknown,
                checks: Arc::default(),
            },
        )
        .await
        .unwrap();
    undecided
        .send_in_transaction(Message::new("payments", "limbo"))
        .await
        .unwrap();
    let (parked, stop, task) = consume(&first, "parking-watch", "%TXN_PARKED%");
    wait_until("the parked half message", || {
        parked.lock().unwrap().contains(&"limbo".to_string())
    })
    .await;
    stop.cancel();
    within(WAIT, task).await.unwrap();
    let (_, metrics) = http_get(&broker.spec.admin, "/metrics").unwrap();
    assert!(
        metrics.contains("mq_transactions_parked_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("mq_transaction_checks_total{result=\"unknown\"} 3"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_transaction_survives_a_leader_kill() {
    let dir = tempfile::tempdir().unwrap();
    let nameserver = start_nameserver(dir.path(), &[]);
    let checks = [
        ("FERROMQ_TRANSACTIONS__CHECK_AFTER_MS", "500"),
        ("FERROMQ_TRANSACTIONS__CHECK_INTERVAL_MS", "500"),
    ];
    let mut group = start_group("tx-group", 3, dir.path(), &nameserver.addr, &checks);
    let client = client(&nameserver.addr).await;
    client.create_topic("orders", 2).await.unwrap();
    wait_for_route(&client, "orders", WAIT).await;
    let producer = client
        .transaction_producer(
            "order-service",
            BodyDecides {
                check_answer: TransactionState::Commit,
                checks: Arc::default(),
            },
        )
        .await
        .unwrap();
    // One transaction the producer ends itself after the failover, one a check-back from the
    // new leader must end.
    let explicit = producer
        .begin(Message::new("orders", "explicit"))
        .await
        .unwrap();
    producer
        .send_in_transaction(Message::new("orders", "unknown until checked"))
        .await
        .unwrap();
    let leader = find_leader(&group).expect("a leader");
    group[leader].process.kill9();
    // The producer ends its own transaction through the new leader (retrying meanwhile).
    let deadline = Instant::now() + WAIT;
    while let Err(err) = explicit.commit().await {
        assert!(
            Instant::now() < deadline,
            "commit never went through: {err}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let resumed = producer.resume(explicit.receipt().clone());
    assert!(resumed.commit().await.is_err(), "a second end is refused");
    let (seen, stop, task) = consume(&client, "fulfilment", "orders");
    wait_until("both transactions committed", || {
        let seen = seen.lock().unwrap();
        seen.contains(&"explicit".to_string())
            && seen.contains(&"unknown until checked".to_string())
    })
    .await;
    group[leader].restart();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let bodies = seen.lock().unwrap().clone();
    assert_eq!(
        bodies.iter().filter(|b| *b == "explicit").count(),
        1,
        "{bodies:?}"
    );
    stop.cancel();
    within(WAIT, task).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_sends_transactions_and_answers_check_backs() {
    let dir = tempfile::tempdir().unwrap();
    let nameserver = start_nameserver(dir.path(), &[]);
    let _broker = Broker::start(
        &dir.path().join("b"),
        &nameserver.addr,
        dir.path(),
        &FAST_CHECKS,
    );
    let client = client(&nameserver.addr).await;
    client.create_topic("cli-tx", 1).await.unwrap();
    wait_for_route(&client, "cli-tx", WAIT).await;
    let addr = nameserver.addr.clone();
    let outputs = tokio::task::spawn_blocking(move || {
        let send = |body: &str, local: &str, answer: &str| {
            ferromq_integration_tests::ferromq(&[
                "--nameserver",
                &addr,
                "send",
                "--topic",
                "cli-tx",
                "--body",
                body,
                "--transaction",
                local,
                "--check-answer",
                answer,
            ])
        };
        vec![
            send("committed", "commit", "rollback"),
            send("rolled back", "rollback", "commit"),
            send("checked", "unknown", "commit"),
        ]
    })
    .await
    .unwrap();
    for output in &outputs {
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let checked = String::from_utf8_lossy(&outputs[2].stdout);
    assert!(checked.contains("check-back for"), "{checked}");
    let (seen, stop, task) = consume(&client, "cli-tx-readers", "cli-tx");
    wait_until("both committed messages", || {
        seen.lock().unwrap().len() >= 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut bodies = seen.lock().unwrap().clone();
    bodies.sort();
    assert_eq!(bodies, vec!["checked".to_string(), "committed".to_string()]);
    stop.cancel();
    within(WAIT, task).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_half_message_survives_a_broker_kill() {
    let dir = tempfile::tempdir().unwrap();
    let nameserver = start_nameserver(dir.path(), &[]);
    let checks = [
        ("FERROMQ_TRANSACTIONS__CHECK_AFTER_MS", "1500"),
        ("FERROMQ_TRANSACTIONS__CHECK_INTERVAL_MS", "500"),
    ];
    let mut broker = Broker::start(&dir.path().join("b"), &nameserver.addr, dir.path(), &checks);
    let client = client(&nameserver.addr).await;
    client.create_topic("refunds", 1).await.unwrap();
    wait_for_route(&client, "refunds", WAIT).await;
    let producer = client
        .transaction_producer(
            "refund-service",
            BodyDecides {
                check_answer: TransactionState::Commit,
                checks: Arc::default(),
            },
        )
        .await
        .unwrap();
    producer
        .send_in_transaction(Message::new("refunds", "pending across a crash"))
        .await
        .unwrap();
    let before_crash = Instant::now();
    broker.restart();
    // The restarted broker still holds the half message and asks the producer (which
    // heartbeats again within 5 s) about it.
    let (seen, stop, task) = consume(&client, "refund-readers", "refunds");
    wait_until("the half message committed after the restart", || {
        seen.lock()
            .unwrap()
            .contains(&"pending across a crash".to_string())
    })
    .await;
    assert!(before_crash.elapsed() < WAIT);
    stop.cancel();
    within(WAIT, task).await.unwrap();
}
