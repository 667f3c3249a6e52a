//! Consumer groups through real brokers: clustering members share the queues evenly and take
//! over a dead member's queues within a couple of heartbeats without skipping a message;
//! broadcast members each read everything and resume under their own name; a group can start
//! from a point in time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ferromq_client::{Client, ConsumeMode, ConsumerConfig, Message, StartFrom};
use ferromq_integration_tests::{
    http_get, start_nameserver, wait_for_route, within, Broker, Nameserver,
};

const WAIT: Duration = Duration::from_secs(30);

/// What each consumer received: (queue, offset, body).
type Received = Arc<Mutex<Vec<(u32, u64, String)>>>;

/// A nameserver, a broker and a producer client, with the topic `orders` of `queues` queues.
async fn setup(
    queues: u32,
    broker_env: &[(&str, &str)],
) -> (tempfile::TempDir, Nameserver, Broker, Client) {
    let dir = tempfile::tempdir().unwrap();
    let nameserver = start_nameserver(dir.path(), &[]);
    let broker = Broker::start(
        &dir.path().join("b"),
        &nameserver.addr,
        dir.path(),
        broker_env,
    );
    let client = new_client(&nameserver.addr, "producer").await;
    client.create_topic("orders", queues).await.unwrap();
    wait_for_route(&client, "orders", WAIT).await;
    (dir, nameserver, broker, client)
}

/// Messages the broker delivered to `group` by pulls (`mq_messages_out_total`).
fn messages_out(broker: &Broker, group: &str) -> f64 {
    let (_, metrics) = http_get(&broker.spec.admin, "/metrics").unwrap();
    let label = format!("group=\"{group}\"");
    metrics
        .lines()
        .filter(|l| l.starts_with("mq_messages_out_total") && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn new_client(nameserver: &str, name: &str) -> Client {
    Client::builder()
        .name_servers([nameserver])
        .client_id(name)
        .request_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap()
}

/// A consumer of `group` running in its own task with its own client (so aborting the task
/// is the member dying: its connections close).
fn spawn_member(
    nameserver: String,
    name: &'static str,
    group: &'static str,
    config: ConsumerConfig,
) -> (tokio::task::JoinHandle<()>, Received) {
    let received: Received = Arc::default();
    let sink = received.clone();
    let task = tokio::spawn(async move {
        let client = new_client(&nameserver, name).await;
        let mut consumer = client
            .consumer(group)
            .subscribe("orders", "*")
            .config(config)
            .build()
            .await
            .unwrap();
        while let Some(message) = consumer.recv().await {
            let body = String::from_utf8(message.body.to_vec()).unwrap();
            sink.lock()
                .unwrap()
                .push((message.queue_id, message.queue_offset, body));
        }
    });
    (task, received)
}

fn queues_of(received: &Received) -> BTreeSet<u32> {
    received
        .lock()
        .unwrap()
        .iter()
        .map(|(q, _, _)| *q)
        .collect()
}

fn bodies(received: &[&Received]) -> BTreeSet<String> {
    received
        .iter()
        .flat_map(|r| {
            r.lock()
                .unwrap()
                .iter()
                .map(|m| m.2.clone())
                .collect::<Vec<_>>()
        })
        .collect()
}

async fn send(client: &Client, prefix: &str, count: usize) -> BTreeSet<String> {
    let producer = client.producer();
    let mut sent = BTreeSet::new();
    for i in 0..count {
        let body = format!("{prefix}-{i}");
        // The producer spreads them over the queues, one after the other.
        producer
            .send(Message::new("orders", body.clone()))
            .await
            .unwrap();
        sent.insert(body);
    }
    sent
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Members of `group` reading its subscribed topic (each clustering consumer is listed once
/// more, reading the group's retry topic).
fn member_count(broker: &Broker, group: &str) -> usize {
    let (status, body) = http_get(&broker.spec.admin, &format!("/v1/groups/{group}")).unwrap();
    if status == 404 {
        return 0;
    }
    let detail: serde_json::Value = serde_json::from_str(&body).unwrap();
    detail["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| !m["topic"].as_str().unwrap().starts_with('%'))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clustering_members_share_queues_and_take_over_a_dead_member_without_gaps() {
    let (_dir, nameserver, broker, client) = setup(8, &[]).await;

    let config = ConsumerConfig {
        heartbeat_interval_ms: 500,
        commit_interval_ms: 200,
        ..ConsumerConfig::default()
    };
    let members: Vec<_> = ["alpha", "beta", "gamma"]
        .into_iter()
        .map(|name| spawn_member(nameserver.addr.clone(), name, "billing", config.clone()))
        .collect();
    wait_until("three members", || member_count(&broker, "billing") == 3).await;

    // The producer sticks to a queue per send attempt; send enough to touch all eight.
    let mut sent = BTreeSet::new();
    for round in 0..8 {
        sent.extend(send(&client, &format!("first{round}"), 40).await);
    }
    let all: Vec<&Received> = members.iter().map(|(_, r)| r).collect();
    wait_until("first batch consumed", || bodies(&all).is_superset(&sent)).await;
    let shares: Vec<BTreeSet<u32>> = members.iter().map(|(_, r)| queues_of(r)).collect();
    for (i, a) in shares.iter().enumerate() {
        for b in &shares[i + 1..] {
            assert!(a.is_disjoint(b), "a queue read by two members: {shares:?}");
        }
    }
    let sizes: Vec<usize> = shares.iter().map(BTreeSet::len).collect();
    assert!(
        sizes.iter().all(|s| *s <= 3),
        "8 queues over 3 members are shared 3/3/2 at most: {shares:?}"
    );

    // A member dies (its connections close): the other two take its queues over.
    let (dead, _) = &members[2];
    dead.abort();
    let died = Instant::now();
    wait_until("two members", || member_count(&broker, "billing") == 2).await;
    let mut later = BTreeSet::new();
    for round in 0..8 {
        later.extend(send(&client, &format!("later{round}"), 40).await);
    }
    let survivors: Vec<&Received> = members[..2].iter().map(|(_, r)| r).collect();
    wait_until("later batch consumed by the survivors", || {
        bodies(&survivors).is_superset(&later)
    })
    .await;
    let takeover = died.elapsed();
    let owned: BTreeSet<u32> = survivors.iter().flat_map(|r| queues_of(r)).collect();
    assert_eq!(owned.len(), 8, "survivors read every queue: {owned:?}");
    assert!(takeover < WAIT, "takeover took {takeover:?}");
    // Nothing skipped: every message sent reached the group.
    let everyone = bodies(&all);
    assert!(everyone.is_superset(&sent) && everyone.is_superset(&later));
    for (task, _) in &members {
        task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_member_is_dropped_after_its_heartbeats_stop() {
    let (_dir, nameserver, broker, _client) =
        setup(4, &[("FERROMQ_CONSUMER_EXPIRY_MS", "1500")]).await;
    // A member whose heartbeats stop but whose connection stays open: a hung process.
    let hung = ConsumerConfig {
        heartbeat_interval_ms: 3_600_000,
        ..ConsumerConfig::default()
    };
    let (hung_task, _) = spawn_member(nameserver.addr.clone(), "hung", "audit", hung);
    wait_until("one member", || member_count(&broker, "audit") == 1).await;
    let started = Instant::now();
    wait_until("the silent member expires", || {
        member_count(&broker, "audit") == 0
    })
    .await;
    assert!(started.elapsed() >= Duration::from_millis(1000));
    hung_task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_members_each_read_everything_and_resume_under_their_name() {
    let (_dir, nameserver, _broker, client) = setup(4, &[]).await;
    let sent = send(&client, "news", 100).await;

    let broadcast = |name: &str| ConsumerConfig {
        mode: ConsumeMode::Broadcast,
        broadcast_id: Some(name.to_string()),
        ..ConsumerConfig::default()
    };
    let mut seen: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for name in ["screen-1", "screen-2"] {
        let reader = new_client(&nameserver.addr, name).await;
        let mut consumer = reader
            .consumer("screens")
            .subscribe("orders", "*")
            .config(broadcast(name))
            .build()
            .await
            .unwrap();
        let mut got = BTreeSet::new();
        while got.len() < sent.len() {
            let message = within(WAIT, consumer.recv()).await.unwrap();
            got.insert(String::from_utf8(message.body.to_vec()).unwrap());
        }
        consumer.commit().await.unwrap();
        consumer.shutdown().await.unwrap();
        seen.insert(name, got);
    }
    assert_eq!(seen["screen-1"], sent);
    assert_eq!(seen["screen-2"], sent);

    // screen-1 comes back: it continues after what it consumed.
    let more = send(&client, "more", 20).await;
    let reader = new_client(&nameserver.addr, "screen-1").await;
    let mut consumer = reader
        .consumer("screens")
        .subscribe("orders", "*")
        .config(broadcast("screen-1"))
        .build()
        .await
        .unwrap();
    let mut got = BTreeSet::new();
    while got.len() < more.len() {
        let message = within(WAIT, consumer.recv()).await.unwrap();
        let body = String::from_utf8(message.body.to_vec()).unwrap();
        assert!(
            more.contains(&body),
            "{body} was consumed before the restart"
        );
        got.insert(body);
    }
    consumer.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_group_can_start_from_a_point_in_time() {
    let (_dir, _nameserver, _broker, client) = setup(2, &[]).await;
    send(&client, "old", 50).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let new = send(&client, "new", 50).await;

    let mut consumer = client
        .consumer("late")
        .subscribe("orders", "*")
        .start_from(StartFrom::Timestamp(since))
        .build()
        .await
        .unwrap();
    let mut got = BTreeSet::new();
    while got.len() < new.len() {
        let message = within(WAIT, consumer.recv()).await.unwrap();
        let body = String::from_utf8(message.body.to_vec()).unwrap();
        assert!(
            body.starts_with("new-"),
            "{body} was stored before the start time"
        );
        got.insert(body);
    }
    assert_eq!(got, new);
    consumer.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_shows_what_a_group_has_not_consumed_yet() {
    let (_dir, nameserver, broker, client) = setup(2, &[]).await;
    send(&client, "pending", 100).await;
    let mut consumer = client
        .consumer("slow")
        .subscribe("orders", "*")
        .build()
        .await
        .unwrap();
    for _ in 0..40 {
        within(WAIT, consumer.recv()).await.unwrap();
    }
    consumer.commit().await.unwrap();
    consumer.shutdown().await.unwrap();

    let lags = client.lag("slow", "orders").await.unwrap();
    assert_eq!(lags.len(), 2);
    let total: u64 = lags.iter().map(|l| l.queue.lag).sum();
    assert_eq!(total, 60, "{lags:?}");
    assert!(lags
        .iter()
        .filter(|l| l.queue.lag > 0)
        .all(|l| l.queue.oldest_unconsumed_ms.is_some()));

    let (status, body) = http_get(&broker.spec.admin, "/v1/groups/slow/lag").unwrap();
    assert_eq!(status, 200, "{body}");
    let topics: serde_json::Value = serde_json::from_str(&body).unwrap();
    let orders = topics
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["topic"] == "orders")
        .unwrap();
    assert_eq!(orders["total_lag"], 60, "{topics}");
    let (status, _) = http_get(&broker.spec.admin, "/v1/groups/bad%20name/lag").unwrap();
    assert_eq!(status, 400);

    let output = ferromq_integration_tests::ferromq(&[
        "--nameserver",
        &nameserver.addr,
        "lag",
        "--group",
        "slow",
        "--topic",
        "orders",
        "--json",
    ]);
    assert!(output.status.success(), "{output:?}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["total_lag"], 60);
}

/// A commit right after the last message arrived covers everything received, also while the
/// pull that fetched those messages is still handing them out (such a commit once stored the
/// batch's first offset: about one round in ten showed the whole batch as lag).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_right_after_the_last_message_leaves_no_lag() {
    let (_dir, _nameserver, _broker, client) = setup(2, &[]).await;
    let mut consumer = client
        .consumer("eager")
        .subscribe("orders", "*")
        .build()
        .await
        .unwrap();
    for round in 0..30 {
        let mut expected = send(&client, &format!("round-{round}"), 6).await;
        while !expected.is_empty() {
            let message = within(WAIT, consumer.recv()).await.unwrap();
            expected.remove(String::from_utf8_lossy(&message.body).as_ref());
        }
        consumer.commit().await.unwrap();
        let lags = client.lag("eager", "orders").await.unwrap();
        let total: u64 = lags.iter().map(|l| l.queue.lag).sum();
        assert_eq!(total, 0, "round {round}: {lags:?}");
    }
    consumer.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resetting_offsets_moves_a_running_group() {
    let (_dir, _nameserver, broker, client) = setup(1, &[]).await;
    let sent = send(&client, "replay", 30).await;
    let mut consumer = client
        .consumer("replayers")
        .subscribe("orders", "*")
        .config(ConsumerConfig {
            heartbeat_interval_ms: 300,
            ..ConsumerConfig::default()
        })
        .build()
        .await
        .unwrap();
    let mut first = BTreeSet::new();
    while first.len() < sent.len() {
        let message = within(WAIT, consumer.recv()).await.unwrap();
        first.insert(String::from_utf8(message.body.to_vec()).unwrap());
    }
    consumer.commit().await.unwrap();
    wait_until("the member is known", || {
        member_count(&broker, "replayers") == 1
    })
    .await;

    let (status, body) = ferromq_integration_tests::http_post(
        &broker.spec.admin,
        "/v1/groups/replayers/offsets:reset",
        r#"{"topic":"orders","to":"first"}"#,
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    // The running member starts over from the first message.
    let again = within(WAIT, consumer.recv()).await.unwrap();
    assert_eq!(again.queue_offset, 0);
    consumer.shutdown().await.unwrap();

    let (status, body) = ferromq_integration_tests::http_post(
        &broker.spec.admin,
        "/v1/groups/replayers/offsets:reset",
        r#"{"topic":"orders","to":"first","offset":3}"#,
    )
    .unwrap();
    assert_eq!(status, 400, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sql_selector_delivers_exactly_the_matching_messages() {
    let (_dir, _nameserver, broker, client) = setup(2, &[]).await;
    let producer = client.producer();
    let mut wanted = BTreeSet::new();
    for i in 0..200u32 {
        let region = ["eu", "us", "apac"][i as usize % 3];
        let mut message = Message::new("orders", format!("order-{i}"))
            .with_property("region", region)
            .with_property("amount", (i * 7 % 300).to_string());
        if i % 10 == 0 {
            message = message.with_property("vip", "yes");
        }
        let selected = region == "eu" && (i * 7 % 300 > 150 || i % 10 == 0);
        if selected {
            wanted.insert(format!("order-{i}"));
        }
        producer.send(message).await.unwrap();
    }
    // A syntax error is refused when subscribing, with where it is.
    let refused = client
        .consumer("picky")
        .subscribe_sql("orders", "region = 'eu' AND (amount >")
        .build()
        .await
        .err()
        .expect("refused");
    assert!(refused.to_string().contains("at byte"), "{refused}");

    let mut consumer = client
        .consumer("picky")
        .subscribe_sql(
            "orders",
            "region = 'eu' AND (amount > 150 OR vip IS NOT NULL)",
        )
        .build()
        .await
        .unwrap();
    let mut got = BTreeSet::new();
    while got.len() < wanted.len() {
        let message = within(WAIT, consumer.recv()).await.unwrap();
        got.insert(String::from_utf8(message.body.to_vec()).unwrap());
    }
    assert_eq!(got, wanted);
    // Filtered-out messages advanced the group's offsets: nothing is left to deliver.
    consumer.commit().await.unwrap();
    consumer.shutdown().await.unwrap();
    let lags = client.lag("picky", "orders").await.unwrap();
    assert_eq!(lags.iter().map(|l| l.queue.lag).sum::<u64>(), 0, "{lags:?}");
    // The broker did the filtering: it sent only the selected messages.
    assert_eq!(messages_out(&broker, "picky") as usize, wanted.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_slows_pulling_instead_of_buffering_everything() {
    let (_dir, _nameserver, broker, client) = setup(1, &[]).await;
    send(&client, "backlog", 300).await;
    let mut consumer = client
        .consumer("slow")
        .subscribe("orders", "*")
        .config(ConsumerConfig {
            max_buffered_per_queue: 10,
            ..ConsumerConfig::default()
        })
        .build()
        .await
        .unwrap();
    within(WAIT, consumer.recv()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pulled = messages_out(&broker, "slow");
    assert!(
        pulled <= 11.0,
        "pulled {pulled} messages for a consumer that took 1"
    );
    // Consuming makes room: everything arrives.
    for _ in 1..300 {
        within(WAIT, consumer.recv()).await.unwrap();
    }
    consumer.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_times_out_gets_the_message_again() {
    let (_dir, _nameserver, _broker, client) = setup(1, &[]).await;
    send(&client, "once", 1).await;
    let consumer = client
        .consumer("patient")
        .subscribe("orders", "*")
        .config(ConsumerConfig {
            consume_timeout_ms: 200,
            ..ConsumerConfig::default()
        })
        .build()
        .await
        .unwrap();
    let calls = Arc::new(Mutex::new(Vec::new()));
    let stop = tokio_util::sync::CancellationToken::new();
    let (seen, stopper) = (calls.clone(), stop.clone());
    let running = tokio::spawn(consumer.run(
        move |message| {
            let (seen, stopper) = (seen.clone(), stopper.clone());
            async move {
                let attempt = {
                    let mut seen = seen.lock().unwrap();
                    seen.push(message.queue_offset);
                    seen.len()
                };
                if attempt == 1 {
                    // Hangs past the consume timeout.
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
                stopper.cancel();
                ferromq_client::ConsumeStatus::Success
            }
        },
        stop,
    ));
    within(WAIT, running).await.unwrap().unwrap();
    assert_eq!(
        *calls.lock().unwrap(),
        vec![0, 0],
        "handed again after the timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_finds_messages_by_key_and_by_position() {
    let (_dir, _nameserver, broker, client) = setup(1, &[]).await;
    let producer = client.producer();
    for i in 0..5 {
        producer
            .send(
                Message::new("orders", format!("order {i}"))
                    .with_key(format!("order-{i}"))
                    .with_property("region", "eu"),
            )
            .await
            .unwrap();
    }
    // One group consumed the first three messages.
    let mut consumer = client
        .consumer("fulfilment")
        .subscribe("orders", "*")
        .build()
        .await
        .unwrap();
    for _ in 0..3 {
        within(WAIT, consumer.recv()).await.unwrap();
    }
    consumer.commit().await.unwrap();
    consumer.shutdown().await.unwrap();
    let get = |path: &str| {
        let (status, body) = http_get(&broker.spec.admin, path).unwrap();
        (
            status,
            serde_json::from_str::<serde_json::Value>(&body).unwrap(),
        )
    };
    let (_, found) = get("/v1/messages?topic=orders&key=order-1");
    assert_eq!(found[0]["consumed_by"][0]["group"], "fulfilment");
    assert_eq!(found[0]["consumed_by"][0]["consumed"], true);
    let (status, found) = get("/v1/messages?topic=orders&key=order-3");
    assert_eq!(status, 200);
    assert_eq!(found.as_array().unwrap().len(), 1);
    assert_eq!(found[0]["body"], "order 3");
    assert_eq!(found[0]["properties"]["region"], "eu");
    assert_eq!(found[0]["offset"], 3);
    assert_eq!(found[0]["consumed_by"][0]["consumed"], false, "{found}");
    let (_, found) = get("/v1/messages?topic=orders&queue=0&offset=1&limit=2");
    let bodies: Vec<&str> = found
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["body"].as_str().unwrap())
        .collect();
    assert_eq!(bodies, ["order 1", "order 2"]);
    let (status, error) = get("/v1/messages?topic=orders");
    assert_eq!(status, 400);
    assert_eq!(error["code"], "invalid_request");
    let (status, _) = get("/v1/messages?topic=nothing&key=x");
    assert_eq!(status, 404);
}
