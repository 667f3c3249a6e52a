//! Delayed and scheduled messages, consumer retries with back-off, dead letters and message
//! traces, through real broker processes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use ferromq_client::{
    Client, ConsumeStatus, ConsumerConfig, DeliveryState, Message, ReceivedMessage,
};
use ferromq_integration_tests::{
    client, http_get, http_post, start_nameserver, stored_messages, wait_for_route, within, Broker,
};
use ferromq_protocol::system::dlq_topic;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(30);

/// Messages a handler saw, with when it saw them.
type Seen = Arc<Mutex<Vec<(Instant, ReceivedMessage)>>>;

/// Runs a consumer of `group` on `topic` whose handler records each message and answers with
/// `decide`.
fn run_consumer(
    client: &Client,
    group: &str,
    topic: &str,
    decide: impl Fn(&ReceivedMessage) -> ConsumeStatus + Send + Sync + 'static,
) -> (Seen, CancellationToken, tokio::task::JoinHandle<()>) {
    let seen: Seen = Arc::default();
    let stop = CancellationToken::new();
    let builder = client
        .consumer(group)
        .subscribe(topic, "*")
        .config(ConsumerConfig {
            commit_interval_ms: 100,
            ..ConsumerConfig::default()
        });
    let (record, stopper) = (seen.clone(), stop.clone());
    let decide = Arc::new(decide);
    let task = tokio::spawn(async move {
        let consumer = builder.build().await.unwrap();
        consumer
            .run(
                move |message| {
                    let decision = decide(&message);
                    record.lock().unwrap().push((Instant::now(), message));
                    async move { decision }
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

fn body(message: &ReceivedMessage) -> String {
    String::from_utf8_lossy(&message.body).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_messages_appear_on_time_can_be_cancelled_and_survive_a_broker_kill() {
    let dir = tempfile::tempdir().unwrap();
    let nameserver = start_nameserver(dir.path(), &[]);
    let mut broker = Broker::start(&dir.path().join("b"), &nameserver.addr, dir.path(), &[]);
    let client = client(&nameserver.addr).await;
    client.create_topic("reminders", 2).await.unwrap();
    wait_for_route(&client, "reminders", WAIT).await;
    let producer = client.producer();
    let (seen, stop, task) = run_consumer(&client, "reminder-service", "reminders", |_| {
        ConsumeStatus::Success
    });

    let sent_at = Instant::now();
    let delayed = producer
        .send_delayed(
            Message::new("reminders", "in 1.5 s"),
            Duration::from_millis(1500),
        )
        .await
        .unwrap();
    assert!(delayed.due_ms.is_some());
    producer
        .send_at(
            Message::new("reminders", "at +2 s"),
            SystemTime::now() + Duration::from_secs(2),
        )
        .await
        .unwrap();
    producer
        .send_with_delay_level(Message::new("reminders", "level 1"), 1)
        .await
        .unwrap();
    let recalled = producer
        .send_delayed(
            Message::new("reminders", "recalled"),
            Duration::from_secs(3),
        )
        .await
        .unwrap();
    producer.cancel_scheduled(&recalled).await.unwrap();
    // Cancelling twice says it is not waiting any more.
    assert!(producer.cancel_scheduled(&recalled).await.is_err());
    // Out of range: more than the 7-day limit, or a level that does not exist.
    assert!(producer
        .send_delayed(
            Message::new("reminders", "x"),
            Duration::from_secs(8 * 86_400)
        )
        .await
        .is_err());
    assert!(producer
        .send_with_delay_level(Message::new("reminders", "x"), 19)
        .await
        .is_err());

    wait_until("three delayed messages", || seen.lock().unwrap().len() >= 3).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let seen_now = seen.lock().unwrap().clone();
    let arrivals: Vec<(String, Duration)> = seen_now
        .iter()
        .map(|(at, message)| (body(message), at.duration_since(sent_at)))
        .collect();
    assert_eq!(arrivals.len(), 3, "{arrivals:?}");
    for (name, expected) in [("level 1", 1000), ("in 1.5 s", 1500), ("at +2 s", 2000)] {
        let (_, after) = arrivals.iter().find(|(b, _)| b == name).unwrap();
        let expected = Duration::from_millis(expected);
        assert!(
            *after >= expected - Duration::from_millis(50)
                && *after < expected + Duration::from_secs(1),
            "{name} arrived after {after:?}"
        );
    }

    // A message due after a kill -9 is delivered once the broker is back.
    producer
        .send_delayed(
            Message::new("reminders", "after the crash"),
            Duration::from_secs(2),
        )
        .await
        .unwrap();
    broker.restart();
    wait_until("the message due after the crash", || {
        seen.lock()
            .unwrap()
            .iter()
            .any(|(_, m)| body(m) == "after the crash")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let bodies: Vec<String> = seen.lock().unwrap().iter().map(|(_, m)| body(m)).collect();
    assert!(!bodies.contains(&"recalled".to_string()), "{bodies:?}");
    assert_eq!(
        bodies.iter().filter(|b| *b == "after the crash").count(),
        1,
        "{bodies:?}"
    );
    stop.cancel();
    within(WAIT, task).await.unwrap();
}

/// Short back-off for the tests: level n waits 40 + 10·n ms (retries use levels 3..=18).
fn short_levels() -> String {
    let levels: Vec<String> = (1..=18).map(|n| (40 + 10 * n).to_string()).collect();
    format!("[{}]", levels.join(", "))
}

/// A broker whose delay levels are [`short_levels`].
fn broker_with_short_levels(dir: &std::path::Path, nameserver: &str) -> Broker {
    let levels = short_levels();
    Broker::start(
        &dir.join("b"),
        nameserver,
        dir,
        &[("FERROMQ_SCHEDULE__DELAY_LEVELS_MS", levels.as_str())],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_always_fails_is_retried_16_times_then_dead_lettered_and_traced() {
    let dir = tempfile::tempdir().unwrap();
    let nameserver = start_nameserver(dir.path(), &[]);
    let broker = broker_with_short_levels(dir.path(), &nameserver.addr);
    let client = client(&nameserver.addr).await;
    client.create_topic("orders", 2).await.unwrap();
    wait_for_route(&client, "orders", WAIT).await;
    let producer = client.producer();
    let poison = producer
        .send(
            Message::new("orders", "poison")
                .with_key("order-13")
                .with_property("region", "eu"),
        )
        .await
        .unwrap();
    let fine = producer
        .send(Message::new("orders", "fine").with_key("order-14"))
        .await
        .unwrap();
    // The good message is acknowledged once; a message that fails once, and asks for its own
    // delay, is then acknowledged on its second delivery.
    let flaky = producer
        .send(Message::new("orders", "flaky"))
        .await
        .unwrap();
    let (seen, stop, task) = run_consumer(&client, "billing", "orders", |message| {
        match (body(message).as_str(), message.reconsume_times) {
            ("poison", _) => ConsumeStatus::RetryLater(None),
            ("flaky", 0) => ConsumeStatus::RetryLater(Some(Duration::from_millis(300))),
            _ => ConsumeStatus::Success,
        }
    });
    wait_until("17 deliveries of the poison message", || {
        seen.lock()
            .unwrap()
            .iter()
            .filter(|(_, m)| body(m) == "poison")
            .count()
            >= 17
    })
    .await;
    // Long enough for an 18th delivery if there were one.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let seen_now = seen.lock().unwrap().clone();
    let poison_deliveries: Vec<&(Instant, ReceivedMessage)> = seen_now
        .iter()
        .filter(|(_, m)| body(m) == "poison")
        .collect();
    assert_eq!(poison_deliveries.len(), 17);
    for (i, (at, message)) in poison_deliveries.iter().enumerate() {
        // Every copy looks like the original to the handler.
        assert_eq!(message.id, poison.message_id);
        assert_eq!(message.topic, "orders");
        assert_eq!(message.keys, vec!["order-13".to_string()]);
        assert_eq!(
            message.properties.get("region").map(String::as_str),
            Some("eu")
        );
        assert_eq!(message.reconsume_times, i as u32);
        if i > 0 {
            // Retry n waits for level n + 2: 40 + 10·(n + 2) ms, growing.
            let gap = at.duration_since(poison_deliveries[i - 1].0);
            let level = Duration::from_millis(40 + 10 * (i as u64 + 2));
            assert!(
                gap >= level - Duration::from_millis(20),
                "retry {i} after {gap:?}"
            );
        }
    }
    let flaky_deliveries: Vec<&(Instant, ReceivedMessage)> = seen_now
        .iter()
        .filter(|(_, m)| body(m) == "flaky")
        .collect();
    assert_eq!(flaky_deliveries.len(), 2);
    let gap = flaky_deliveries[1].0.duration_since(flaky_deliveries[0].0);
    assert!(gap >= Duration::from_millis(280), "{gap:?}");
    assert_eq!(
        seen_now.iter().filter(|(_, m)| body(m) == "fine").count(),
        1
    );
    stop.cancel();
    within(WAIT, task).await.unwrap();

    // The trace tells the story.
    let trace = client.trace(poison.message_id).await.unwrap();
    let stored = trace.stored.as_ref().expect("stored");
    assert_eq!(
        (stored.topic.as_str(), stored.queue_offset),
        ("orders", poison.queue_offset)
    );
    let billing = trace.groups.iter().find(|g| g.group == "billing").unwrap();
    assert_eq!(billing.state, DeliveryState::DeadLettered, "{trace:?}");
    assert_eq!(billing.deliveries, 17);
    assert!(billing.attempts.iter().all(|a| !a.acknowledged));
    assert!(billing.dead_lettered_ms.is_some());
    let trace = client.trace(fine.message_id).await.unwrap();
    let billing = trace.groups.iter().find(|g| g.group == "billing").unwrap();
    assert_eq!(
        (billing.state, billing.deliveries),
        (DeliveryState::Consumed, 1)
    );
    let trace = client.trace(flaky.message_id).await.unwrap();
    let billing = trace.groups.iter().find(|g| g.group == "billing").unwrap();
    assert_eq!(
        (billing.state, billing.deliveries),
        (DeliveryState::Consumed, 2),
        "{trace:?}"
    );
    assert_eq!(
        billing
            .attempts
            .iter()
            .map(|a| a.acknowledged)
            .collect::<Vec<_>>(),
        vec![false, true]
    );

    // The dead letter keeps the original's id, key, properties and reconsume count.
    let dlq = dlq_topic("billing");
    let (dead, stop, task) = run_consumer(&client, "dlq-reader", &dlq, |_| ConsumeStatus::Success);
    wait_until("the dead letter", || !dead.lock().unwrap().is_empty()).await;
    let letter = dead.lock().unwrap()[0].1.clone();
    assert_eq!(letter.id, poison.message_id);
    assert_eq!(letter.keys, vec!["order-13".to_string()]);
    assert_eq!(
        letter.properties.get("region").map(String::as_str),
        Some("eu")
    );
    assert_eq!(letter.reconsume_times, 16);
    assert_eq!(
        letter.properties.get("__ORIGIN_TOPIC").map(String::as_str),
        Some("orders")
    );
    stop.cancel();
    within(WAIT, task).await.unwrap();

    // The admin API lists the dead letters and sends one back to its topic.
    let admin = &broker.spec.admin;
    let (status, body) = http_get(admin, "/v1/dlq/billing").unwrap();
    assert_eq!(status, 200, "{body}");
    let page: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(page["messages"].as_array().unwrap().len(), 1, "{page}");
    assert_eq!(page["messages"][0]["id"], poison.message_id.to_string());
    assert_eq!(page["next_offset"], page["end_offset"]);
    let id = poison.message_id.to_string();
    let (status, body) = http_get(admin, &format!("/v1/messages/{id}/trace")).unwrap();
    assert_eq!(status, 200, "{body}");
    let trace: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(trace["groups"][0]["state"], "dead_lettered", "{trace}");
    let copies = |admin: &str| {
        let (status, body) = http_get(admin, &format!("/v1/messages/{id}")).unwrap();
        assert_eq!(status, 200, "{body}");
        serde_json::from_str::<serde_json::Value>(&body).unwrap()
    };
    // The original, 16 retries and the dead letter.
    assert_eq!(copies(admin).as_array().unwrap().len(), 18);
    let (status, body) = http_post(admin, "/v1/dlq/billing:resend", r#"{"offsets": [0]}"#).unwrap();
    assert_eq!(status, 200, "{body}");
    let after = copies(admin);
    let newest = after.as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (newest["topic"].as_str(), newest["reconsume_times"].as_u64()),
        (Some("orders"), Some(0))
    );
    for bad in [
        r#"{"offsets": [7]}"#,
        r#"{"offsets": []}"#,
        r#"{"offsets": [0], "to": "x"}"#,
    ] {
        let (status, _) = http_post(admin, "/v1/dlq/billing:resend", bad).unwrap();
        assert!(status == 400 || status == 404, "{bad}: {status}");
    }
    let (status, _) = http_get(admin, "/v1/messages/nothex/trace").unwrap();
    assert_eq!(status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_messages_are_delivered_exactly_once_across_a_leader_kill() {
    let dir = tempfile::tempdir().unwrap();
    let nameserver = start_nameserver(dir.path(), &[]);
    let mut group =
        ferromq_integration_tests::start_group("timers", 3, dir.path(), &nameserver.addr, &[]);
    let client = client(&nameserver.addr).await;
    client.create_topic("due", 2).await.unwrap();
    wait_for_route(&client, "due", WAIT).await;
    let producer = client.producer();
    // 300 messages due between 1.5 s and 3 s from now: the leader dies while delivering them.
    let mut sent = std::collections::BTreeSet::new();
    for i in 0..300u64 {
        let body = format!("due-{i}");
        producer
            .send_delayed(
                Message::new("due", body.clone()),
                Duration::from_millis(1500 + i * 5),
            )
            .await
            .unwrap();
        sent.insert(body);
    }
    tokio::time::sleep(Duration::from_millis(1700)).await;
    let leader = ferromq_integration_tests::find_leader(&group).expect("a leader");
    group[leader].process.kill9();

    let (seen, stop, task) = run_consumer(&client, "watch", "due", |_| ConsumeStatus::Success);
    wait_until("every scheduled message", || {
        let seen = seen.lock().unwrap();
        let bodies: std::collections::BTreeSet<String> =
            seen.iter().map(|(_, m)| body(m)).collect();
        bodies == sent
    })
    .await;
    group[leader].restart();
    // Nothing more comes, and the queues hold each message once.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(stored_messages(&client, "watch", "due").await, 300);
    stop.cancel();
    within(WAIT, task).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_schedules_fails_first_and_traces() {
    let dir = tempfile::tempdir().unwrap();
    let nameserver = start_nameserver(dir.path(), &[]);
    let _broker = broker_with_short_levels(dir.path(), &nameserver.addr);
    let client = client(&nameserver.addr).await;
    client.create_topic("cli-jobs", 1).await.unwrap();
    wait_for_route(&client, "cli-jobs", WAIT).await;
    let addr = nameserver.addr.clone();
    let cli = move |args: &[&str]| {
        let mut all = vec!["--nameserver", addr.as_str()];
        all.extend_from_slice(args);
        let output = ferromq_integration_tests::ferromq(&all);
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (ok, out, err) = cli(&[
        "send", "--topic", "cli-jobs", "--body", "job", "--delay", "300ms",
    ]);
    assert!(ok, "{out}{err}");
    assert!(out.starts_with("scheduled "), "{out}");
    let id = out.split_whitespace().nth(1).unwrap().to_string();

    let (ok, out, err) = tokio::task::spawn_blocking(move || {
        cli(&[
            "consume",
            "--topic",
            "cli-jobs",
            "--group",
            "cli-workers",
            "--fail-first",
            "2",
            "--count",
            "1",
            "--json",
            "--timeout",
            "20s",
        ])
    })
    .await
    .unwrap();
    assert!(ok, "{out}{err}");
    assert_eq!(err.matches("failing ").count(), 2, "{err}");
    let line: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(line["id"], id.as_str());
    assert_eq!(line["reconsume_times"], 2);

    let output = ferromq_integration_tests::ferromq(&[
        "--nameserver",
        &nameserver.addr,
        "trace",
        &id,
        "--json",
    ]);
    assert!(output.status.success());
    let trace: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let group = &trace["groups"][0];
    assert_eq!(group["group"], "cli-workers", "{trace}");
    assert_eq!(group["state"], "consumed", "{trace}");
    assert_eq!(group["deliveries"], 3);
    let output = ferromq_integration_tests::ferromq(&[
        "--nameserver",
        &nameserver.addr,
        "trace",
        "00000000000000000000000000000000",
    ]);
    assert!(!output.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_cli_shows_groups_messages_dead_letters_and_raft() {
    let dir = tempfile::tempdir().unwrap();
    let nameserver = start_nameserver(dir.path(), &[]);
    let _broker = broker_with_short_levels(dir.path(), &nameserver.addr);
    let client = client(&nameserver.addr).await;
    client.create_topic("audit", 1).await.unwrap();
    wait_for_route(&client, "audit", WAIT).await;
    let poison = client
        .producer()
        .send(Message::new("audit", "bad").with_key("case-1"))
        .await
        .unwrap();
    // Dead-lettered at once (no retries allowed).
    let consumer = client
        .consumer("auditors")
        .subscribe("audit", "*")
        .config(ConsumerConfig {
            max_reconsume_times: 0,
            ..ConsumerConfig::default()
        })
        .build()
        .await
        .unwrap();
    let stop = CancellationToken::new();
    let running =
        tokio::spawn(consumer.run(|_| async { ConsumeStatus::RetryLater(None) }, stop.clone()));
    let trace_client = client.clone();
    let id = poison.message_id;
    let deadline = Instant::now() + WAIT;
    loop {
        let trace = trace_client.trace(id).await.unwrap();
        if trace.groups.iter().any(|g| g.dead_lettered_ms.is_some()) {
            break;
        }
        assert!(Instant::now() < deadline, "never dead-lettered: {trace:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    within(WAIT, running).await.unwrap().unwrap();

    let addr = nameserver.addr.clone();
    let id = id.to_string();
    let asked = id.clone();
    let outputs = tokio::task::spawn_blocking(move || {
        let admin = |args: &[&str]| {
            let mut all = vec!["--nameserver", addr.as_str(), "admin"];
            all.extend_from_slice(args);
            let output = ferromq_integration_tests::ferromq(&all);
            (
                output.status.success(),
                String::from_utf8_lossy(&output.stdout).into_owned(),
                String::from_utf8_lossy(&output.stderr).into_owned(),
            )
        };
        vec![
            admin(&["cluster"]),
            admin(&["raft", "status", "--json"]),
            admin(&["topic", "list"]),
            admin(&[
                "message", "query", "--topic", "audit", "--key", "case-1", "--json",
            ]),
            admin(&["message", "trace", &asked, "--json"]),
            admin(&["dlq", "list", "auditors", "--json"]),
            admin(&[
                "dlq", "resend", "auditors", "--offset", "0", "--to", "retry",
            ]),
            admin(&["group", "lag", "auditors", "--topic", "audit"]),
            admin(&["message", "get", "not-an-id"]),
        ]
    })
    .await
    .unwrap();
    for (ok, out, err) in &outputs[..8] {
        assert!(ok, "{out}{err}");
    }
    assert!(outputs[0].1.contains("Leader"), "{}", outputs[0].1);
    let raft: serde_json::Value = serde_json::from_str(outputs[1].1.trim()).unwrap();
    assert_eq!(raft["role"], "Leader");
    assert!(outputs[2].1.contains("audit"), "{}", outputs[2].1);
    let found: serde_json::Value = serde_json::from_str(outputs[3].1.trim()).unwrap();
    assert_eq!(found[0]["id"], id.as_str());
    let trace: serde_json::Value = serde_json::from_str(outputs[4].1.trim()).unwrap();
    assert_eq!(trace["groups"][0]["state"], "dead_lettered", "{trace}");
    let page: serde_json::Value = serde_json::from_str(outputs[5].1.trim()).unwrap();
    assert_eq!(page["messages"][0]["id"], id.as_str());
    assert!(outputs[6].1.contains("RETRY"), "{}", outputs[6].1);
    assert!(
        outputs[7].1.to_uppercase().contains("TOTAL_LAG"),
        "{}",
        outputs[7].1
    );
    let (ok, _, err) = &outputs[8];
    assert!(!ok && err.contains("400"), "{err}");
}
