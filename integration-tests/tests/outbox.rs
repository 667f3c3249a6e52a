//! The outbox (local transaction message table) against a real broker, on PostgreSQL (the
//! server `scripts/postgres.sh` runs on loopback) and on SQLite: every scenario runs on both.
//! Relays run in-process or as processes of their own (`ferromq-outbox-relay`), which can crash
//! and compete as in production.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use ferromq_client::outbox::{
    Outbox, OutboxConfig, OutboxError, OutboxId, OutboxMessage, OutboxRow, OutboxStats,
    OutboxStatus, RelayCounters, OUTBOX_KEY_PROPERTY,
};
use ferromq_client::{
    Client, ConsumeMode, ConsumeStatus, ConsumerConfig, Idempotent, MemoryKeyStore, Message,
    MessageId, ReceivedMessage, SendReceipt, TransactionProducer, TransactionState,
};
use ferromq_integration_tests::captured_metrics::capture_metrics;
use ferromq_integration_tests::outbox::{start_relay_process, TestDatabase};
use ferromq_integration_tests::{
    binary, client, http_get, start_nameserver, start_standalone, stored_messages, wait_for_route,
    within, Broker, Nameserver, Process,
};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(30);
const TOPIC: &str = "orders";

/// Every scenario below, once per database.
macro_rules! on_both_databases {
    ($($scenario:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario::<sqlx::Sqlite>().await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario::<sqlx::Postgres>().await
                }
            )*
        }
    };
}

on_both_databases!(
    rollback_of_the_business_transaction_leaves_no_message,
    a_relay_crash_after_sending_gives_a_duplicate_the_idempotent_consumer_drops,
    two_relays_never_send_the_same_row_at_the_same_time,
    messages_go_out_when_the_broker_is_back,
    a_claim_larger_than_one_send_goes_out_in_several,
    a_message_lost_after_it_was_sent_is_sent_again,
    rows_no_group_has_reached_are_not_traced,
    a_broadcast_group_is_tracked_by_its_members_names,
    two_trackers_share_the_sent_rows_and_decide_each_once,
    messages_the_broker_refuses_fail_alone_and_hold_back_their_key,
    finished_rows_are_archived_after_the_retention,
    rows_nobody_can_finish_end_failed_or_dead_lettered,
    check_backs_are_answered_from_the_outbox_table,
    a_transactional_row_no_broker_stores_is_sent_again,
    an_open_transactions_row_waits_for_the_brokers_decision,
    concurrent_claims_never_overlap_and_keep_each_keys_order,
    a_stuck_key_does_not_hold_back_other_rows,
    only_a_row_never_sent_holds_back_its_key_when_failed,
    a_version_1_table_is_upgraded_and_its_rows_keep_their_keys_order,
    enqueues_of_one_sharding_key_take_turns,
);

/// SQLite keeps a value of the wrong type that a writer outside the SDK put in a column (a
/// BLOB in the TEXT columns `keys` and `sharding_key` here): that row fails alone, its error
/// naming the column, and the rows around it go out. (PostgreSQL refuses such a write in the
/// first place.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_row_with_a_column_of_the_wrong_type_fails_alone() {
    use ferromq_client::outbox::OutboxDatabase;
    use sqlx::Sqlite;
    let cluster = Cluster::start(&[]).await;
    let (outbox, pool, _) = open::<Sqlite>(&cluster, fast()).await;
    let mut connection = pool.acquire().await.unwrap();
    outbox
        .enqueue(&mut *connection, order_created(1).dedup_key(dedup_key(1)))
        .await
        .unwrap();
    Sqlite::execute(
        &pool,
        "INSERT INTO ferromq_outbox (dedup_key, topic, keys, properties, body, created_ms,
             next_attempt_ms)
         VALUES ('written-by-hand', 'orders', X'5B5D', '{}', X'00', 0, 0)",
    )
    .await;
    // A BLOB sharding key (what a driver binding bytes writes): the claim reads every pending
    // row's key, so this must not stop the claims of all rows.
    Sqlite::execute(
        &pool,
        "INSERT INTO ferromq_outbox (dedup_key, topic, keys, properties, body, sharding_key,
             created_ms, next_attempt_ms)
         VALUES ('key-written-by-hand', 'orders', '[]', '{}', X'00', X'6B', 0, 0)",
    )
    .await;
    outbox
        .enqueue(&mut *connection, order_created(3).dedup_key(dedup_key(3)))
        .await
        .unwrap();
    drop(connection);

    let relay = outbox.start_relay(&cluster.client);
    for id in [1, 3] {
        wait_row(&outbox, id, "sent", |row| row.status == OutboxStatus::Sent).await;
    }
    wait_stats(&outbox, "the hand-written rows failed", |s| s.failed == 2).await;
    for (id, column) in [(2, "\"keys\""), (3, "\"sharding_key\"")] {
        let raw = Sqlite::row_by_id(&pool, id).await.unwrap().unwrap();
        assert_eq!(raw.status, "failed");
        let error = raw.last_error.unwrap_or_default();
        assert!(error.contains(column), "{error}");
    }
    // Reading it through the API says the same instead of inventing a row.
    let refused = outbox.row(OutboxId(2)).await.unwrap_err();
    assert!(
        matches!(&refused, OutboxError::CorruptRow { id: 2, reason } if reason.contains("\"keys\"")),
        "{refused:?}"
    );
    ferromq_integration_tests::wait_until("the failure counted", WAIT, || {
        relay.counters().failed == 2
    })
    .await;
    relay.shutdown().await;
}

/// The same for a sent row that consumption tracking reads (a BLOB in its TEXT column
/// `message_id`, which the decision is recorded against): it fails at once, its error naming
/// the column, and the rows tracked in the same rounds are marked consumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_sent_row_with_a_column_of_the_wrong_type_fails_alone() {
    use ferromq_client::outbox::OutboxDatabase;
    use sqlx::Sqlite;
    let cluster = Cluster::start(&[]).await;
    let config = OutboxConfig {
        track_groups: tracked_on_orders(&["stock"]),
        ..fast()
    };
    let (outbox, pool, _) = open::<Sqlite>(&cluster, config).await;
    // Due for a check before any other row: every round takes it first.
    Sqlite::execute(
        &pool,
        "INSERT INTO ferromq_outbox (dedup_key, topic, keys, properties, body, status,
             created_ms, next_attempt_ms, message_id, broker_group, queue_id, queue_offset,
             sent_ms, next_check_ms)
         VALUES ('written-by-hand', 'orders', '[]', '{}', X'00', 'sent', 0, 0, X'00',
                 'broker-a', 0, 0, 0, 0)",
    )
    .await;
    let relay = outbox.start_relay(&cluster.client);
    let recorder = Recorder::start(&cluster.client, "stock").await;
    place_orders(&outbox, &pool, 1..11, 5, false).await;

    wait_stats(&outbox, "every order consumed", |s| s.consumed == 10).await;
    let raw = Sqlite::row_by_id(&pool, 1).await.unwrap().unwrap();
    assert_eq!(raw.status, "failed");
    let error = raw.last_error.unwrap_or_default();
    assert!(error.contains("\"message_id\""), "{error}");
    ferromq_integration_tests::wait_until("the failure counted", WAIT, || {
        relay.counters().failed == 1
    })
    .await;
    recorder.stop().await;
    relay.shutdown().await;
}

/// The README's quick start: `ferromq standalone`, then the outbox example against it.
#[test]
fn the_outbox_example_runs_against_a_standalone_node() {
    let node = start_standalone();
    let output = std::process::Command::new(binary("examples/outbox_orders"))
        .env("FERROMQ_NAMESERVER", &node.nameserver)
        .env("ORDERS", "30")
        .env("TMPDIR", node.data.path())
        .output()
        .expect("the example runs (cargo builds examples with the tests)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("30 orders placed, 24 accepted"), "{stdout}");
    assert!(
        stdout.contains("orders saved: 24; events consumed: 24; stock reserved: 24"),
        "{stdout}"
    );
}

/// A nameserver, one broker (group `broker-a`) or more, and a client, with the topic `orders`
/// (4 queues in each broker group).
struct Cluster {
    dir: tempfile::TempDir,
    nameserver: Nameserver,
    broker: Broker,
    _other_brokers: Vec<Broker>,
    client: Client,
}

impl Cluster {
    async fn start(broker_env: &[(&str, &str)]) -> Cluster {
        Cluster::start_groups(1, broker_env).await
    }

    /// A cluster of `groups` single-broker groups: `broker-a`, `broker-b`, …
    async fn start_groups(groups: u8, broker_env: &[(&str, &str)]) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let nameserver = start_nameserver(dir.path(), &[]);
        let mut brokers: Vec<Broker> = (b'a'..b'a' + groups)
            .map(|letter| {
                let group = format!("broker-{}", letter as char);
                let mut env = broker_env.to_vec();
                env.push(("FERROMQ_GROUP", &group));
                Broker::start(&dir.path().join(&group), &nameserver.addr, dir.path(), &env)
            })
            .collect();
        let client = client(&nameserver.addr).await;
        let deadline = Instant::now() + WAIT;
        while client.cluster().await.unwrap().brokers.len() < usize::from(groups) {
            assert!(Instant::now() < deadline, "brokers not registered");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        client.create_topic(TOPIC, 4).await.unwrap();
        wait_for_route(&client, TOPIC, WAIT).await;
        Cluster {
            dir,
            nameserver,
            broker: brokers.remove(0),
            _other_brokers: brokers,
            client,
        }
    }

    /// The broker group's name.
    async fn broker_group(&self) -> String {
        self.client.cluster().await.unwrap().brokers[0]
            .group
            .clone()
    }

    /// Messages stored in `topic` (over every queue).
    async fn stored(&self, topic: &str) -> u64 {
        stored_messages(&self.client, "nobody", topic).await
    }
}

/// Settings that make every wait of a test short (but give a slow machine's sends time).
fn fast() -> OutboxConfig {
    OutboxConfig {
        poll_interval_ms: 20,
        send_timeout_ms: 5_000,
        lease_ms: 15_000,
        backoff_initial_ms: 100,
        backoff_max_ms: 1_000,
        track_interval_ms: 200,
        housekeeping_interval_ms: 200,
        ..OutboxConfig::default()
    }
}

/// `track_groups` naming these consumer groups on `orders`.
fn tracked_on_orders(groups: &[&str]) -> BTreeMap<String, Vec<String>> {
    [(
        TOPIC.to_string(),
        groups.iter().map(|g| g.to_string()).collect(),
    )]
    .into()
}

/// The event of order `id`, with the dedup key `order-<id>-created`.
fn order_created(id: i64) -> OutboxMessage {
    Message::new(TOPIC, format!("order {id}"))
        .with_tag("created")
        .with_key(format!("order-{id}"))
        .into()
}

fn dedup_key(id: i64) -> String {
    format!("order-{id}-created")
}

async fn open<DB: TestDatabase>(
    cluster: &Cluster,
    config: OutboxConfig,
) -> (Outbox<DB>, sqlx::Pool<DB>, String) {
    open_in(cluster.dir.path(), config).await
}

/// A fresh database (files under `dir` if it has any) with the outbox tables migrated.
async fn open_in<DB: TestDatabase>(
    dir: &std::path::Path,
    config: OutboxConfig,
) -> (Outbox<DB>, sqlx::Pool<DB>, String) {
    let (pool, url) = DB::create(dir).await;
    let outbox = Outbox::new(pool.clone(), config).unwrap();
    outbox.migrate().await.unwrap();
    (outbox, pool, url)
}

/// Places orders `ids`, `per_transaction` at a time: each order row and its event in one
/// transaction; every other order has its customer as sharding key when `keyed`.
async fn place_orders<DB: TestDatabase>(
    outbox: &Outbox<DB>,
    pool: &sqlx::Pool<DB>,
    ids: std::ops::Range<i64>,
    per_transaction: usize,
    keyed: bool,
) {
    let ids: Vec<i64> = ids.collect();
    for chunk in ids.chunks(per_transaction) {
        let mut transaction = pool.begin().await.unwrap();
        for &id in chunk {
            DB::insert_order(&mut *transaction, id).await.unwrap();
            let mut message = order_created(id).dedup_key(dedup_key(id));
            if keyed && id % 2 == 0 {
                message = message.sharding_key(format!("customer-{}", id % 5));
            }
            outbox.enqueue(&mut *transaction, message).await.unwrap();
        }
        transaction.commit().await.unwrap();
    }
}

async fn row<DB: TestDatabase>(outbox: &Outbox<DB>, id: i64) -> OutboxRow {
    outbox
        .row_by_dedup_key(&dedup_key(id))
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("no row for order {id}"))
}

/// Polls the table's counts until `done` holds.
async fn wait_stats<DB: TestDatabase>(
    outbox: &Outbox<DB>,
    what: &str,
    done: impl Fn(&OutboxStats) -> bool,
) -> OutboxStats {
    let deadline = Instant::now() + WAIT;
    loop {
        let stats = outbox.stats().await.unwrap();
        if done(&stats) {
            return stats;
        }
        assert!(Instant::now() < deadline, "{what}: {stats:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls until the outbox table and its archive hold these many rows.
async fn wait_row_counts<DB: TestDatabase>(pool: &sqlx::Pool<DB>, expected: (i64, i64)) {
    let deadline = Instant::now() + WAIT;
    loop {
        let counts = DB::count_rows(pool).await;
        if counts == expected {
            return;
        }
        assert!(Instant::now() < deadline, "rows, archived: {counts:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls a row until `done` holds.
async fn wait_row<DB: TestDatabase>(
    outbox: &Outbox<DB>,
    id: i64,
    what: &str,
    done: impl Fn(&OutboxRow) -> bool,
) -> OutboxRow {
    wait_row_by_key(outbox, &dedup_key(id), what, done).await
}

/// Polls the row with this dedup key until `done` holds.
async fn wait_row_by_key<DB: TestDatabase>(
    outbox: &Outbox<DB>,
    dedup_key: &str,
    what: &str,
    done: impl Fn(&OutboxRow) -> bool,
) -> OutboxRow {
    let deadline = Instant::now() + WAIT;
    loop {
        let row = outbox
            .row_by_dedup_key(dedup_key)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("no row with dedup key {dedup_key}"));
        if done(&row) {
            return row;
        }
        assert!(Instant::now() < deadline, "{what}: {row:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_exit(process: &mut Process) -> std::process::ExitStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = process.child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "{} still runs:\n{}",
            process.name,
            process.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A consumer of `group` on `orders` running in the background, recording the messages it
/// handles; stop it with the token.
struct Recorder {
    /// The messages handled, with when.
    seen: Arc<Mutex<Vec<(SystemTime, ReceivedMessage)>>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Recorder {
    async fn start(client: &Client, group: &str) -> Recorder {
        Recorder::start_failing(client, group, |_| false).await
    }

    /// A recorder whose handler fails the messages `fails` picks; the group dead-letters a
    /// failed message at once (no retries).
    async fn start_failing(
        client: &Client,
        group: &str,
        fails: fn(&ReceivedMessage) -> bool,
    ) -> Recorder {
        Recorder::start_with(client, group, ConsumerConfig::default(), fails).await
    }

    /// Member `member` of the broadcast group `group`.
    async fn start_member(client: &Client, group: &str, member: &str) -> Recorder {
        let config = ConsumerConfig {
            mode: ConsumeMode::Broadcast,
            broadcast_id: Some(member.to_string()),
            ..ConsumerConfig::default()
        };
        Recorder::start_with(client, group, config, |_| false).await
    }

    async fn start_with(
        client: &Client,
        group: &str,
        config: ConsumerConfig,
        fails: fn(&ReceivedMessage) -> bool,
    ) -> Recorder {
        let consumer = client
            .consumer(group)
            .subscribe(TOPIC, "*")
            .config(ConsumerConfig {
                commit_interval_ms: 100,
                heartbeat_interval_ms: 300,
                max_reconsume_times: 0,
                ..config
            })
            .build()
            .await
            .unwrap();
        let seen: Arc<Mutex<Vec<(SystemTime, ReceivedMessage)>>> = Arc::default();
        let stop = CancellationToken::new();
        let (record, stopper) = (seen.clone(), stop.clone());
        let task = tokio::spawn(async move {
            consumer
                .run(
                    move |message| {
                        let status = if fails(&message) {
                            ConsumeStatus::RetryLater(None)
                        } else {
                            ConsumeStatus::Success
                        };
                        record.lock().unwrap().push((SystemTime::now(), message));
                        async move { status }
                    },
                    stopper,
                )
                .await
                .unwrap();
        });
        Recorder { seen, stop, task }
    }

    /// The first key (the outbox's dedup key) of every message handled.
    fn first_keys(&self) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|(_, m)| m.keys[0].clone())
            .collect()
    }

    /// When the first message with this first key was handled.
    fn handled_at(&self, first_key: &str) -> Option<SystemTime> {
        let seen = self.seen.lock().unwrap();
        seen.iter()
            .find(|(_, m)| m.keys[0] == first_key)
            .map(|(at, _)| *at)
    }

    async fn wait_for(&self, what: &str, done: impl Fn(&[String]) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !done(&self.first_keys()) {
            assert!(Instant::now() < deadline, "{what}: {:?}", self.first_keys());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(self) {
        self.stop.cancel();
        within(WAIT, self.task).await.unwrap();
    }
}

async fn rollback_of_the_business_transaction_leaves_no_message<DB: TestDatabase>() {
    let cluster = Cluster::start(&[]).await;
    let (outbox, pool, _) = open::<DB>(&cluster, fast()).await;
    // Every instance migrates at start; a schema in place is left alone.
    outbox.migrate().await.unwrap();

    let mut rolled_back = pool.begin().await.unwrap();
    DB::insert_order(&mut *rolled_back, 1).await.unwrap();
    outbox
        .enqueue(&mut *rolled_back, order_created(1).dedup_key(dedup_key(1)))
        .await
        .unwrap();
    rolled_back.rollback().await.unwrap();

    let mut committed = pool.begin().await.unwrap();
    DB::insert_order(&mut *committed, 2).await.unwrap();
    let id = outbox
        .enqueue(&mut *committed, order_created(2).dedup_key(dedup_key(2)))
        .await
        .unwrap();
    // The same event twice is refused, and the transaction goes on.
    match outbox
        .enqueue(&mut *committed, order_created(2).dedup_key(dedup_key(2)))
        .await
    {
        Err(OutboxError::DuplicateKey(key)) => assert_eq!(key, dedup_key(2)),
        other => panic!("a second row with the same dedup key: {other:?}"),
    }
    DB::insert_order(&mut *committed, 3).await.unwrap();
    committed.commit().await.unwrap();
    assert_eq!(DB::count_orders(&pool).await, 2);

    // What a broker would refuse is refused at once, before anything is stored.
    let refused = [
        OutboxMessage::new(Message::new("no spaces in topics", "x")),
        order_created(4)
            .sharding_key("customer-4")
            .delay(Duration::from_secs(5)),
        Message::new(TOPIC, "x")
            .with_property(OUTBOX_KEY_PROPERTY, "mine")
            .into(),
        Message::new(TOPIC, vec![0u8; 5 * 1024 * 1024]).into(),
        order_created(4).sharding_key(""),
    ];
    let mut connection = pool.acquire().await.unwrap();
    for message in refused {
        let result = outbox.enqueue(&mut *connection, message).await;
        assert!(
            matches!(result, Err(OutboxError::InvalidMessage(_))),
            "{result:?}"
        );
    }
    drop(connection);
    assert_eq!(outbox.stats().await.unwrap().pending, 1);

    let relay = outbox.start_relay(&cluster.client);
    wait_stats(&outbox, "the committed message sent", |s| s.sent == 1).await;
    let row = outbox.row(id).await.unwrap().unwrap();
    assert_eq!(row.status, OutboxStatus::Sent);
    assert_eq!(row.keys, vec!["order-2"]);
    assert_eq!(row.sent_by.as_deref(), Some(relay.owner()));
    assert_eq!(row.attempts, 1);
    assert_eq!(cluster.stored(TOPIC).await, 1, "only the committed message");

    let recorder = Recorder::start(&cluster.client, "billing").await;
    recorder
        .wait_for("the committed message", |keys| !keys.is_empty())
        .await;
    let message = recorder.seen.lock().unwrap()[0].1.clone();
    assert_eq!(message.id, row.message_id.unwrap());
    assert_eq!(message.keys, vec![dedup_key(2), "order-2".into()]);
    assert_eq!(message.properties[OUTBOX_KEY_PROPERTY], dedup_key(2));
    assert_eq!(message.tag.as_deref(), Some("created"));
    ferromq_integration_tests::wait_until("the send counted", WAIT, || relay.counters().sends == 1)
        .await;
    recorder.stop().await;
    relay.shutdown().await;
}

async fn a_relay_crash_after_sending_gives_a_duplicate_the_idempotent_consumer_drops<
    DB: TestDatabase,
>() {
    let cluster = Cluster::start(&[]).await;
    // A short lease, so the survivor takes the dead relay's rows over soon.
    let config = OutboxConfig {
        send_timeout_ms: 2_000,
        lease_ms: 6_000,
        ..fast()
    };
    let (outbox, pool, url) = open::<DB>(&cluster, config.clone()).await;
    place_orders(&outbox, &pool, 0..10, 5, false).await;

    let mut crashing = start_relay_process(
        "relay-crashing",
        cluster.dir.path(),
        &cluster.nameserver.addr,
        &url,
        &config,
        &[("FAILPOINTS", "outbox::before_record_sends=return")],
    );
    let status = wait_exit(&mut crashing).await;
    assert!(!status.success(), "the relay was to crash: {status}");
    // The broker has all ten; the table still says pending, under the dead relay's lease.
    assert_eq!(cluster.stored(TOPIC).await, 10);
    let stats = outbox.stats().await.unwrap();
    assert_eq!(stats.pending, 10, "{stats:?}");

    // Another relay takes the rows over when the lease runs out and sends them again.
    let _relay = start_relay_process(
        "relay-survivor",
        cluster.dir.path(),
        &cluster.nameserver.addr,
        &url,
        &config,
        &[],
    );
    wait_stats(&outbox, "all rows sent by the survivor", |s| s.sent == 10).await;
    assert_eq!(cluster.stored(TOPIC).await, 20, "each message twice");
    for id in 0..10 {
        let row = row(&outbox, id).await;
        assert!(
            row.sent_by
                .as_deref()
                .unwrap()
                .starts_with("relay-survivor"),
            "{row:?}"
        );
    }

    // An idempotent consumer handles each order once.
    let processed: Arc<Mutex<Vec<String>>> = Arc::default();
    let record = processed.clone();
    let idempotent = Idempotent::new(
        MemoryKeyStore::new(1_000),
        move |message: ReceivedMessage| {
            let record = record.clone();
            async move {
                record
                    .lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&message.body).into_owned());
                ConsumeStatus::Success
            }
        },
        Duration::from_secs(30),
    );
    let consumer = cluster
        .client
        .consumer("shipping")
        .subscribe(TOPIC, "*")
        .build()
        .await
        .unwrap();
    let deliveries = Arc::new(Mutex::new(0usize));
    let stop = CancellationToken::new();
    let count = deliveries.clone();
    let run = tokio::spawn(consumer.run(
        move |message| {
            *count.lock().unwrap() += 1;
            idempotent.handle(message)
        },
        stop.clone(),
    ));
    ferromq_integration_tests::wait_until("twenty deliveries", WAIT, || {
        *deliveries.lock().unwrap() >= 20
    })
    .await;
    stop.cancel();
    within(WAIT, run).await.unwrap().unwrap();
    let processed = processed.lock().unwrap().clone();
    let distinct: BTreeSet<&String> = processed.iter().collect();
    assert_eq!(processed.len(), 10, "{processed:?}");
    assert_eq!(distinct.len(), 10);
}

async fn two_relays_never_send_the_same_row_at_the_same_time<DB: TestDatabase>() {
    let cluster = Cluster::start(&[]).await;
    let config = OutboxConfig {
        batch_size: 5,
        ..fast()
    };
    let (outbox, pool, url) = open::<DB>(&cluster, config.clone()).await;
    let relays: Vec<Process> = ["relay-a", "relay-b"]
        .iter()
        .map(|name| {
            start_relay_process(
                name,
                cluster.dir.path(),
                &cluster.nameserver.addr,
                &url,
                &config,
                &[],
            )
        })
        .collect();
    for relay in &relays {
        ferromq_integration_tests::wait_until("the relay to run", WAIT, || {
            relay.log().contains("running")
        })
        .await;
    }
    const ORDERS: i64 = 600;
    place_orders(&outbox, &pool, 0..ORDERS, 10, true).await;
    wait_stats(&outbox, "every row sent", |s| s.sent == ORDERS as u64).await;

    // Each row was sent exactly once (no relay crashed, so any copy more is a double send).
    assert_eq!(cluster.stored(TOPIC).await, ORDERS as u64);
    let mut senders = BTreeMap::<String, u32>::new();
    let mut by_key = BTreeMap::<String, Vec<OutboxRow>>::new();
    for id in 0..ORDERS {
        let row = row(&outbox, id).await;
        *senders.entry(row.sent_by.clone().unwrap()).or_default() += 1;
        if let Some(key) = &row.sharding_key {
            by_key.entry(key.clone()).or_default().push(row);
        }
    }
    assert_eq!(senders.len(), 2, "both relays sent rows: {senders:?}");
    // A key's rows went to one queue in enqueue order.
    assert_eq!(by_key.len(), 5);
    for (key, rows) in by_key {
        let queue = (&rows[0].broker_group, rows[0].queue_id);
        for pair in rows.windows(2) {
            assert_eq!((&pair[1].broker_group, pair[1].queue_id), queue, "{key}");
            assert!(
                pair[0].queue_offset < pair[1].queue_offset,
                "{key}: order {} after {}",
                pair[0].dedup_key,
                pair[1].dedup_key
            );
        }
    }
}

async fn messages_go_out_when_the_broker_is_back<DB: TestDatabase>() {
    let mut cluster = Cluster::start(&[]).await;
    let (outbox, pool, _) = open::<DB>(&cluster, fast()).await;
    let relay = outbox.start_relay(&cluster.client);
    place_orders(&outbox, &pool, 0..5, 5, true).await;
    wait_stats(&outbox, "the first orders sent", |s| s.sent == 5).await;

    cluster.broker.process.kill9();
    place_orders(&outbox, &pool, 5..25, 4, true).await;
    wait_row(&outbox, 5, "attempts while the broker is down", |row| {
        row.attempts >= 2 && row.last_error.is_some()
    })
    .await;
    assert_eq!(outbox.stats().await.unwrap().pending, 20);

    cluster.broker.restart();
    wait_stats(&outbox, "every order sent after the restart", |s| {
        s.sent == 25
    })
    .await;
    let recorder = Recorder::start(&cluster.client, "billing").await;
    recorder
        .wait_for("every order", |keys| {
            keys.iter().collect::<HashSet<_>>().len() == 25
        })
        .await;
    ferromq_integration_tests::wait_until("the failed attempts counted", WAIT, || {
        relay.counters().send_failures > 0
    })
    .await;
    assert_eq!(relay.counters().failed, 0);
    recorder.stop().await;
    relay.shutdown().await;
}

/// Small bodies with large properties (tracing headers, say): a claim's bodies fit the
/// broker's limit for a batch many times over, but the messages do not fit one frame. The
/// relay splits them over as few sends as carry them (once, one oversized send failed like a
/// network error and was retried until every row ended `failed`).
async fn a_claim_larger_than_one_send_goes_out_in_several<DB: TestDatabase>() {
    let cluster = Cluster::start(&[]).await;
    let header = "x".repeat(15_000);
    let event = |id: i64| {
        Message::new(TOPIC, format!("order {id}"))
            .with_key(format!("order-{id}"))
            .with_property("trace", header.clone())
    };
    // The relay adds a dedup key to each, so these rows take a little more than this.
    let one_send = cluster.client.producer().max_batch_bytes();
    let per_message = ferromq_protocol::message::send_body_len(&event(0));
    let rows = i64::try_from(one_send / per_message).unwrap() + 50;
    let (outbox, pool, _) = open::<DB>(
        &cluster,
        OutboxConfig {
            batch_size: u32::try_from(rows).unwrap(),
            ..fast()
        },
    )
    .await;
    let mut transaction = pool.begin().await.unwrap();
    let mut ids = Vec::new();
    for id in 0..rows {
        ids.push(outbox.enqueue(&mut *transaction, event(id)).await.unwrap());
    }
    transaction.commit().await.unwrap();

    let relay = outbox.start_relay(&cluster.client);
    wait_stats(&outbox, "every row sent", |s| s.sent == rows as u64).await;
    assert_eq!(relay.counters().send_failures, 0);
    assert_eq!(cluster.stored(TOPIC).await, rows as u64);
    // Two batch sends, not one refused send and then a send per row: a batch's rows have
    // consecutive offsets in one queue.
    let mut places = Vec::new();
    for id in ids {
        let row = outbox.row(id).await.unwrap().unwrap();
        places.push((row.queue_id.unwrap(), row.queue_offset.unwrap()));
    }
    let sends = 1 + places
        .windows(2)
        .filter(|pair| pair[1] != (pair[0].0, pair[0].1 + 1))
        .count();
    assert!(sends <= 2, "{rows} rows went out in {sends} sends");
    relay.shutdown().await;
}

async fn a_message_lost_after_it_was_sent_is_sent_again<DB: TestDatabase>() {
    let cluster = Cluster::start_groups(2, &[]).await;
    let config = OutboxConfig {
        track_groups: tracked_on_orders(&["stock"]),
        resend_after_ms: 1_500,
        ..fast()
    };
    let (outbox, pool, _) = open::<DB>(&cluster, config).await;
    let relay = outbox.start_relay(&cluster.client);
    let recorder = Recorder::start(&cluster.client, "stock").await;

    place_orders(&outbox, &pool, 1..2, 1, false).await;
    let first = wait_row(&outbox, 1, "order 1 consumed", |row| {
        row.status == OutboxStatus::Consumed
    })
    .await;
    assert_eq!(first.resends, 0);
    // Each message's consumption is traced in the broker group that stores it.
    place_orders(&outbox, &pool, 10..20, 1, true).await;
    wait_stats(&outbox, "orders 10 to 19 consumed", |s| s.consumed == 11).await;
    let mut groups = BTreeSet::new();
    for id in 10..20 {
        groups.insert(row(&outbox, id).await.broker_group.unwrap());
    }
    assert_eq!(
        groups.len(),
        2,
        "messages in both broker groups: {groups:?}"
    );

    // A message the broker acknowledged and then lost.
    let lost = record_sent_but_lost(&cluster, &outbox, &pool, 2).await;
    let second = wait_row(&outbox, 2, "order 2 sent again and consumed", |row| {
        row.status == OutboxStatus::Consumed
    })
    .await;
    assert_eq!(second.resends, 1);
    assert_ne!(second.message_id, Some(lost));
    assert!(recorder.first_keys().contains(&dedup_key(2)));

    // A group that has not reached a message yet explains the wait: no re-send.
    recorder.stop().await;
    place_orders(&outbox, &pool, 3..4, 1, false).await;
    let waiting = wait_row(&outbox, 3, "order 3 overdue and checked", |row| {
        row.last_error
            .as_deref()
            .is_some_and(|e| e.contains("have not reached it"))
    })
    .await;
    assert_eq!(waiting.status, OutboxStatus::Sent);
    assert_eq!(waiting.resends, 0);
    let recorder = Recorder::start(&cluster.client, "stock").await;
    let third = wait_row(&outbox, 3, "order 3 consumed", |row| {
        row.status == OutboxStatus::Consumed
    })
    .await;
    assert_eq!(third.resends, 0);
    ferromq_integration_tests::wait_until("13 consumed, one re-send counted", WAIT, || {
        let counters = relay.counters();
        (counters.resends, counters.consumed) == (1, 13)
    })
    .await;
    recorder.stop().await;
    relay.shutdown().await;
}

/// While no tracked group has reached its rows (no consumer runs), tracking asks the broker
/// for the group's offsets only, not for a trace of each row, and looks at them less often the
/// longer they wait; once the group consumes them, they are traced and marked consumed.
async fn rows_no_group_has_reached_are_not_traced<DB: TestDatabase>() {
    let cluster = Cluster::start(&[]).await;
    let config = OutboxConfig {
        track_groups: tracked_on_orders(&["stock"]),
        ..fast()
    };
    let interval = config.track_interval_ms as i64;
    let (outbox, pool, _) = open::<DB>(&cluster, config).await;
    let relay = outbox.start_relay(&cluster.client);
    place_orders(&outbox, &pool, 0..20, 5, false).await;
    for id in 0..20 {
        wait_row(&outbox, id, "looked at after two intervals", |row| {
            let checked_after_ms = row.checked_ms.zip(row.sent_ms).map(|(c, s)| c - s);
            row.status == OutboxStatus::Sent && checked_after_ms >= Some(2 * interval)
        })
        .await;
    }
    // A quarter of its wait goes by before the next look: past 12 intervals, 3 or more.
    wait_row(&outbox, 0, "looked at less often as it waits", |row| {
        row.status == OutboxStatus::Sent
            && row
                .checked_ms
                .is_some_and(|c| row.next_check_ms - c >= 3 * interval)
    })
    .await;
    assert_eq!(traces_answered(&cluster), 0);

    let recorder = Recorder::start(&cluster.client, "stock").await;
    wait_stats(&outbox, "every order consumed", |s| s.consumed == 20).await;
    let traced = traces_answered(&cluster);
    assert!(traced >= 20, "{traced} traces for 20 consumed rows");
    recorder.stop().await;
    relay.shutdown().await;
}

/// A broadcast group has no offsets of its own (each member commits under
/// `<group>%BROADCAST%<member>`), so tracking names its members: a row is consumed once every
/// named member acknowledged it. Naming the group itself leaves its rows `sent`, with a note
/// that says what to name instead.
async fn a_broadcast_group_is_tracked_by_its_members_names<DB: TestDatabase>() {
    let cluster = Cluster::start(&[]).await;
    let members = ["caches%BROADCAST%host-a", "caches%BROADCAST%host-b"];
    let config = OutboxConfig {
        track_groups: tracked_on_orders(&members),
        ..fast()
    };
    let (outbox, pool, _) = open::<DB>(&cluster, config).await;
    let relay = outbox.start_relay(&cluster.client);
    let host_a = Recorder::start_member(&cluster.client, "caches", "host-a").await;
    place_orders(&outbox, &pool, 0..5, 5, false).await;
    host_a
        .wait_for("host-a handled every order", |keys| keys.len() == 5)
        .await;
    // Looked at after host-a committed (every 100 ms), and again (so the first look's decision
    // is recorded): host-b has not consumed them yet.
    for id in 0..5 {
        let handled_ms = host_a
            .handled_at(&dedup_key(id))
            .unwrap()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        let first = wait_row(&outbox, id, "checked after host-a consumed it", |row| {
            row.checked_ms > Some(handled_ms + 500)
        })
        .await;
        let again = wait_row(&outbox, id, "checked again", |row| {
            row.checked_ms > first.checked_ms
        })
        .await;
        assert_eq!(again.status, OutboxStatus::Sent);
    }
    let host_b = Recorder::start_member(&cluster.client, "caches", "host-b").await;
    wait_stats(&outbox, "every order consumed by both members", |s| {
        s.consumed == 5
    })
    .await;
    relay.shutdown().await;

    let bare = Outbox::<DB>::new(
        pool.clone(),
        OutboxConfig {
            track_groups: tracked_on_orders(&["caches"]),
            resend_after_ms: 1_000,
            ..fast()
        },
    )
    .unwrap();
    let relay = bare.start_relay(&cluster.client);
    place_orders(&bare, &pool, 5..6, 1, false).await;
    let noted = wait_row(&bare, 5, "a note on tracking a broadcast group", |row| {
        row.last_error
            .as_deref()
            .is_some_and(|e| e.contains("track its members by name"))
    })
    .await;
    assert_eq!((noted.status, noted.resends), (OutboxStatus::Sent, 0));
    let note = noted.last_error.unwrap();
    assert!(note.contains(&members.join(", ")), "{note}");
    relay.shutdown().await;
    host_a.stop().await;
    host_b.stop().await;
}

/// Two relays' trackers take different sent rows in each round (a taken row is marked looked
/// at), so every row's consumption is decided, and counted, once: the relays' counts add up to
/// the rows, not more.
async fn two_trackers_share_the_sent_rows_and_decide_each_once<DB: TestDatabase>() {
    let cluster = Cluster::start(&[]).await;
    let config = OutboxConfig {
        track_groups: tracked_on_orders(&["stock"]),
        track_batch: 10,
        ..fast()
    };
    let (outbox, pool, _) = open::<DB>(&cluster, config).await;
    let relays = [
        outbox.start_relay(&cluster.client),
        outbox.start_relay(&cluster.client),
    ];
    let recorder = Recorder::start(&cluster.client, "stock").await;
    const ORDERS: u64 = 200;
    place_orders(&outbox, &pool, 0..ORDERS as i64, 10, false).await;
    wait_stats(&outbox, "every order consumed", |s| s.consumed == ORDERS).await;
    let total = |counters: [RelayCounters; 2]| {
        (
            counters[0].sends + counters[1].sends,
            counters[0].consumed + counters[1].consumed,
        )
    };
    ferromq_integration_tests::wait_until("the relays' counts reach the rows", WAIT, || {
        let (sends, consumed) = total(relays.each_ref().map(|relay| relay.counters()));
        sends >= ORDERS && consumed >= ORDERS
    })
    .await;
    let counts = relays.each_ref().map(|relay| relay.counters());
    assert_eq!(total(counts), (ORDERS, ORDERS), "{counts:?}");
    // Both relays tracked rows (10 per round each, with 200 rows to look at).
    assert!(
        counts.iter().all(|c| c.consumed > 0),
        "consumptions counted by each relay: {counts:?}"
    );
    assert_eq!(recorder.first_keys().len(), ORDERS as usize);
    recorder.stop().await;
    for relay in relays {
        relay.shutdown().await;
    }
}

/// Trace requests the broker answered, from its `/metrics`.
fn traces_answered(cluster: &Cluster) -> u64 {
    let (_, metrics) = http_get(&cluster.broker.spec.admin, "/metrics").unwrap();
    let prefix = r#"mq_rpc_duration_seconds_count{request_code="get_trace""#;
    metrics
        .lines()
        .filter(|line| line.starts_with(prefix))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// A broker whose limit is 1000 bytes of bodies per send: a batch over it goes row by row,
/// a message over it fails at once (no retry can help) and holds back the later rows of its
/// sharding key until it is retried or discarded.
async fn messages_the_broker_refuses_fail_alone_and_hold_back_their_key<DB: TestDatabase>() {
    let cluster = Cluster::start(&[("FERROMQ_LIMITS__MAX_MESSAGE_BYTES", "1000")]).await;
    let (outbox, pool, _) = open::<DB>(&cluster, fast()).await;
    let event = |id: i64, bytes: usize| {
        OutboxMessage::new(Message::new(TOPIC, vec![b'x'; bytes]).with_key(format!("order-{id}")))
            .dedup_key(dedup_key(id))
    };
    let mut transaction = pool.begin().await.unwrap();
    for (id, bytes) in [(1, 600), (2, 600), (3, 600), (4, 2_000)] {
        outbox
            .enqueue(&mut *transaction, event(id, bytes))
            .await
            .unwrap();
    }
    for (id, bytes) in [(5, 500), (6, 1_500), (7, 100)] {
        let message = event(id, bytes).sharding_key("customer-1");
        outbox.enqueue(&mut *transaction, message).await.unwrap();
    }
    transaction.commit().await.unwrap();

    let relay = outbox.start_relay(&cluster.client);
    for id in [1, 2, 3, 5] {
        wait_row(&outbox, id, "sent alone", |row| {
            row.status == OutboxStatus::Sent
        })
        .await;
    }
    for id in [4, 6] {
        let failed = wait_row(&outbox, id, "refused", |row| {
            row.status == OutboxStatus::Failed
        })
        .await;
        assert_eq!(failed.attempts, 1, "a refusal is not retried: {failed:?}");
        let error = failed.last_error.unwrap_or_default();
        assert!(error.contains("message_too_large"), "{error}");
    }
    // Rounds go on (a later row is sent), and the key's last row still waits behind row 6.
    let mut connection = pool.acquire().await.unwrap();
    outbox
        .enqueue(&mut *connection, event(8, 10))
        .await
        .unwrap();
    drop(connection);
    wait_row(&outbox, 8, "a later row sent", |row| {
        row.status == OutboxStatus::Sent
    })
    .await;
    let waiting = row(&outbox, 7).await;
    assert_eq!(
        (waiting.status, waiting.attempts),
        (OutboxStatus::Pending, 0)
    );
    ferromq_integration_tests::wait_until("two rows counted failed", WAIT, || {
        relay.counters().failed == 2
    })
    .await;

    // Retried, the refusal comes again; discarded, the key moves on.
    assert_eq!(
        outbox
            .retry_failed(Some(row(&outbox, 4).await.id))
            .await
            .unwrap(),
        1
    );
    assert_eq!(outbox.retry_failed(Some(OutboxId(-1))).await.unwrap(), 0);
    ferromq_integration_tests::wait_until("the retried row refused again", WAIT, || {
        relay.counters().failed == 3
    })
    .await;
    let discarded = row(&outbox, 6).await.id;
    assert_eq!(outbox.discard_failed(Some(discarded)).await.unwrap(), 1);
    assert!(outbox.row(discarded).await.unwrap().is_none());
    wait_row(&outbox, 7, "the key's last row sent", |row| {
        row.status == OutboxStatus::Sent
    })
    .await;
    let stats = outbox.stats().await.unwrap();
    assert_eq!(
        (stats.sent, stats.failed, stats.pending),
        (6, 1, 0),
        "{stats:?}"
    );
    relay.shutdown().await;
}

async fn finished_rows_are_archived_after_the_retention<DB: TestDatabase>() {
    let cluster = Cluster::start(&[]).await;
    let config = OutboxConfig {
        retention_ms: 0,
        archive: true,
        schedule_ahead_ms: 1_500,
        ..fast()
    };
    let (outbox, pool, _) = open::<DB>(&cluster, config).await;
    place_orders(&outbox, &pool, 0..5, 5, false).await;
    let soon = SystemTime::now() + Duration::from_secs(4);
    let far = SystemTime::now() + Duration::from_secs(30 * 24 * 3600);
    let mut connection = pool.acquire().await.unwrap();
    for (id, due) in [(8, soon), (9, far)] {
        let message = order_created(id).dedup_key(dedup_key(id)).deliver_at(due);
        outbox.enqueue(&mut *connection, message).await.unwrap();
    }
    drop(connection);
    // Both wait in the table until schedule_ahead_ms before they are due.
    for id in [8, 9] {
        let waiting = row(&outbox, id).await;
        let due_ms = waiting.deliver_at_ms.unwrap();
        assert_eq!(waiting.next_attempt_ms, due_ms - 1_500);
    }
    let held_until_ms = row(&outbox, 8).await.next_attempt_ms;
    let relay = outbox.start_relay(&cluster.client);
    let recorder = Recorder::start(&cluster.client, "billing").await;
    // Sent rows are finished (nothing tracks consumption): archived. The one due in a month
    // waits in the table, unsent: brokers schedule only so far ahead.
    wait_row_counts(&pool, (1, 6)).await;
    let waiting = row(&outbox, 9).await;
    assert_eq!(
        (waiting.status, waiting.attempts),
        (OutboxStatus::Pending, 0)
    );
    // The one due soon went to the broker ahead of time, not before, and reached consumers
    // when due.
    let sent_ms = DB::archived_sent_ms(&pool, &dedup_key(8)).await.unwrap();
    assert!(
        sent_ms >= held_until_ms,
        "sent at {sent_ms}, held until {held_until_ms}"
    );
    recorder
        .wait_for("order 8", |keys| keys.contains(&dedup_key(8)))
        .await;
    let handled = recorder.handled_at(&dedup_key(8)).unwrap();
    assert!(
        handled >= soon - Duration::from_millis(50),
        "order 8 handled {:?} before it was due",
        soon.duration_since(handled).unwrap_or_default()
    );
    recorder.stop().await;
    relay.shutdown().await;
}

/// Rows nobody can finish end with their error, and show in the gauges: one no broker takes
/// (its topic has no route) is `failed` after `max_attempts`, one lost after it was sent is
/// `failed` when no re-send is left, one the tracked group dead-letters is `dead_lettered`.
/// Failed rows stay for an operator; the dead-lettered one (its message waits in the group's
/// dead-letter queue) is deleted after the retention, like the consumed one.
async fn rows_nobody_can_finish_end_failed_or_dead_lettered<DB: TestDatabase>() {
    let metrics = capture_metrics();
    let cluster = Cluster::start(&[("FERROMQ_TOPICS__AUTO_CREATE", "false")]).await;
    let config = OutboxConfig {
        track_groups: tracked_on_orders(&["stock"]),
        max_attempts: 2,
        max_resends: 0,
        resend_after_ms: 1_000,
        // Long enough to see the dead-lettered row before it goes.
        retention_ms: 5_000,
        ..fast()
    };
    let (outbox, pool, _) = open::<DB>(&cluster, config).await;
    let relay = outbox.start_relay(&cluster.client);
    let stock = Recorder::start_failing(&cluster.client, "stock", |message| {
        message.keys[0] == dedup_key(2)
    })
    .await;

    place_orders(&outbox, &pool, 1..3, 2, false).await;
    let mut connection = pool.acquire().await.unwrap();
    let no_route = Message::new("nowhere", "order 3").with_key("order-3");
    outbox
        .enqueue(
            &mut *connection,
            OutboxMessage::new(no_route).dedup_key(dedup_key(3)),
        )
        .await
        .unwrap();
    drop(connection);
    let lost = record_sent_but_lost(&cluster, &outbox, &pool, 4).await;

    let dead = wait_row(&outbox, 2, "dead-lettered by the group", |row| {
        row.status == OutboxStatus::DeadLettered
    })
    .await;
    let error = dead.last_error.unwrap_or_default();
    assert!(error.contains("stock"), "{error}");

    let unrouted = wait_row(&outbox, 3, "no route, attempts exhausted", |row| {
        row.status == OutboxStatus::Failed
    })
    .await;
    assert_eq!(unrouted.attempts, 2);
    let error = unrouted.last_error.unwrap_or_default();
    assert!(
        error.contains("attempt 2") && error.contains("nowhere"),
        "{error}"
    );

    let given_up = wait_row(&outbox, 4, "lost, no re-send left", |row| {
        row.status == OutboxStatus::Failed
    })
    .await;
    assert_eq!((given_up.resends, given_up.message_id), (0, Some(lost)));
    let error = given_up.last_error.unwrap_or_default();
    assert!(error.contains("after 0 re-sends"), "{error}");

    // After the retention the consumed and the dead-lettered rows are deleted (no archive);
    // the failed ones stay.
    wait_row_counts(&pool, (2, 0)).await;
    for id in [1, 2] {
        assert!(outbox
            .row_by_dedup_key(&dedup_key(id))
            .await
            .unwrap()
            .is_none());
    }
    let stats = outbox.stats().await.unwrap();
    assert_eq!(
        (stats.pending, stats.failed, stats.dead_lettered),
        (0, 2, 0),
        "{stats:?}"
    );

    // What the application's metrics exporter sees: the relay's counts, and the row gauges.
    // (Tracking looked at the two sent rows at least once each: how often depends on timing.)
    let counts = RelayCounters {
        sends: 2,
        resends: 0,
        send_failures: 2,
        failed: 2,
        consumed: 1,
        dead_lettered: 1,
        checks: 0,
    };
    let recorded = [
        ("mq_outbox_sends_total", 2.0),
        ("mq_outbox_resends_total", 0.0),
        ("mq_outbox_send_failures_total", 2.0),
        ("mq_outbox_failed_total", 2.0),
        ("mq_outbox_consumed_total", 1.0),
        ("mq_outbox_dead_lettered_total", 1.0),
        (r#"mq_outbox_rows{status="pending"}"#, 0.0),
        (r#"mq_outbox_rows{status="failed"}"#, 2.0),
        (r#"mq_outbox_rows{status="dead_lettered"}"#, 0.0),
        ("mq_outbox_oldest_pending_age_seconds", 0.0),
    ];
    let expected = (counts, recorded.map(|(_, value)| value));
    let seen = || {
        (
            RelayCounters {
                checks: 0,
                ..relay.counters()
            },
            recorded.map(|(key, _)| metrics.value(key)),
        )
    };
    let deadline = Instant::now() + WAIT;
    while seen() != expected {
        assert!(
            Instant::now() < deadline,
            "counted and recorded: {:?}",
            seen()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let checks = relay.counters().checks;
    assert!(checks >= 2, "{checks} checks");
    assert_eq!(metrics.value("mq_outbox_checks_total"), checks as f64);
    stock.stop().await;
    relay.shutdown().await;
}

async fn check_backs_are_answered_from_the_outbox_table<DB: TestDatabase>() {
    let cluster = Cluster::start(&[
        ("FERROMQ_TRANSACTIONS__CHECK_AFTER_MS", "500"),
        ("FERROMQ_TRANSACTIONS__CHECK_INTERVAL_MS", "500"),
    ])
    .await;
    // Long enough for a slow machine's local commit to land before a check-back says no.
    let config = OutboxConfig {
        transaction_grace_ms: 5_000,
        ..fast()
    };
    let (outbox, pool, _) = open::<DB>(&cluster, config).await;
    let producer = forgetful_producer(&cluster, &outbox, &pool).await;
    for (id, tag) in [(1, "commit"), (2, "rollback")] {
        let message = outbox
            .prepare_transactional(
                Message::new(TOPIC, format!("order {id}"))
                    .with_tag(tag)
                    .with_key(format!("order-{id}")),
            )
            .unwrap();
        let (_, state) = producer.send_in_transaction(message).await.unwrap();
        assert_eq!(state, TransactionState::Unknown);
    }
    let ended = |result: &str| {
        let (_, metrics) = http_get(&cluster.broker.spec.admin, "/metrics").unwrap();
        metrics
            .lines()
            .any(|line| line == format!("mq_transactions_ended_total{{result=\"{result}\"}} 1"))
    };
    ferromq_integration_tests::wait_until("a commit and a rollback by check-back", WAIT, || {
        ended("commit") && ended("rollback")
    })
    .await;
    let recorder = Recorder::start(&cluster.client, "billing").await;
    recorder
        .wait_for("the committed order", |keys| !keys.is_empty())
        .await;
    let message = recorder.seen.lock().unwrap()[0].1.clone();
    assert_eq!(message.keys[1], "order-1");
    assert_eq!(DB::count_orders(&pool).await, 1);
    // A relay confirms its row once the committed message is seen stored.
    let relay = outbox.start_relay(&cluster.client);
    let confirmed = wait_row_by_key(&outbox, &message.keys[0], "confirmed", |row| {
        row.finished_ms.is_some()
    })
    .await;
    assert_eq!(confirmed.status, OutboxStatus::Sent);
    assert_eq!(confirmed.message_id, Some(message.id));
    assert_eq!(outbox.stats().await.unwrap().sent, 1);
    recorder.stop().await;
    relay.shutdown().await;
    producer.shutdown();
}

/// A transactional producer whose local transaction records the order (its id from the
/// message's `order-<id>` key) beside the half message's row, commits unless the tag is
/// `rollback`, then "crashes" before telling the broker: only check-backs decide.
async fn forgetful_producer<DB: TestDatabase>(
    cluster: &Cluster,
    outbox: &Outbox<DB>,
    pool: &sqlx::Pool<DB>,
) -> TransactionProducer {
    let (writer, orders) = (outbox.clone(), pool.clone());
    let listener = outbox.transaction_listener(move |message: Message, receipt: SendReceipt| {
        let (outbox, pool) = (writer.clone(), orders.clone());
        async move {
            let id: i64 = message.keys[1]
                .trim_start_matches("order-")
                .parse()
                .unwrap();
            let mut transaction = pool.begin().await.unwrap();
            DB::insert_order(&mut *transaction, id).await.unwrap();
            outbox
                .record_transactional(&mut *transaction, &message, &receipt)
                .await
                .unwrap();
            if message.tag.as_deref() == Some("rollback") {
                transaction.rollback().await.unwrap();
            } else {
                transaction.commit().await.unwrap();
            }
            TransactionState::Unknown
        }
    });
    cluster
        .client
        .transaction_producer("order-service", listener)
        .await
        .unwrap()
}

/// A broker transaction's row whose message no broker stores in time (rolled back or parked
/// at the broker after the local transaction committed, say) is sent again, even with nothing
/// tracking consumption.
async fn a_transactional_row_no_broker_stores_is_sent_again<DB: TestDatabase>() {
    let cluster = Cluster::start(&[]).await;
    let config = OutboxConfig {
        resend_after_ms: 1_000,
        ..fast()
    };
    let (outbox, pool, _) = open::<DB>(&cluster, config).await;
    let relay = outbox.start_relay(&cluster.client);
    let never_committed = record_sent_but_lost(&cluster, &outbox, &pool, 1).await;
    let sent = wait_row(&outbox, 1, "sent again and finished", |row| {
        row.resends == 1 && row.status == OutboxStatus::Sent && row.finished_ms.is_some()
    })
    .await;
    assert_ne!(sent.message_id, Some(never_committed));
    let recorder = Recorder::start(&cluster.client, "billing").await;
    recorder
        .wait_for("the re-sent message", |keys| keys.contains(&dedup_key(1)))
        .await;
    recorder.stop().await;
    relay.shutdown().await;
}

/// A broker transaction still undecided after `resend_after_ms` (its first check-back comes
/// later) is waited for, not sent again: the check-back commits it, and the row is confirmed
/// under the half message's id without a re-send.
async fn an_open_transactions_row_waits_for_the_brokers_decision<DB: TestDatabase>() {
    let cluster = Cluster::start(&[("FERROMQ_TRANSACTIONS__CHECK_AFTER_MS", "5000")]).await;
    let config = OutboxConfig {
        resend_after_ms: 500,
        ..fast()
    };
    let (outbox, pool, _) = open::<DB>(&cluster, config).await;
    let relay = outbox.start_relay(&cluster.client);
    let producer = forgetful_producer(&cluster, &outbox, &pool).await;
    let message = outbox
        .prepare_transactional(order_created(1).dedup_key(dedup_key(1)))
        .unwrap();
    let (receipt, _) = producer.send_in_transaction(message).await.unwrap();
    // The trace shows the half message as an open transaction.
    let trace = cluster.client.trace(receipt.message_id).await.unwrap();
    let pending = trace.transaction.expect("the open transaction is traced");
    assert_eq!(
        (pending.topic.as_str(), pending.producer_group.as_str()),
        (TOPIC, "order-service")
    );
    assert!(trace.stored.is_none());
    // A peer of protocol version 3 still gets the trace it knows, without the transaction.
    let old_peer = ferromq_transport::Connection::connect(
        &cluster.broker.spec.addr,
        "version-3-client",
        Arc::new(ferromq_transport::TransportConfig {
            max_version: 3,
            ..Default::default()
        }),
        Arc::new(ferromq_transport::RejectAll),
    )
    .await
    .unwrap();
    let old_trace: ferromq_protocol::headers::MessageTraceV3 = old_peer
        .request(
            ferromq_client::RequestCode::GetTrace,
            &ferromq_protocol::headers::GetTraceRequest {
                id: receipt.message_id,
            },
            bytes::Bytes::new(),
        )
        .await
        .unwrap()
        .decode()
        .unwrap();
    assert_eq!((old_trace.id, old_trace.stored), (receipt.message_id, None));
    let waiting = wait_row(&outbox, 1, "the open transaction noted", |row| {
        row.last_error
            .as_deref()
            .is_some_and(|note| note.contains("transaction still open"))
    })
    .await;
    assert_eq!(waiting.resends, 0);
    let confirmed = wait_row(&outbox, 1, "confirmed after the check-back", |row| {
        row.finished_ms.is_some()
    })
    .await;
    assert_eq!(
        (confirmed.resends, confirmed.message_id),
        (0, Some(receipt.message_id))
    );
    let trace = cluster.client.trace(receipt.message_id).await.unwrap();
    assert!(
        trace.transaction.is_none() && trace.stored.is_some(),
        "{trace:?}"
    );
    relay.shutdown().await;
    producer.shutdown();
}

/// Records order `id` and its event as sent under a message id no broker stores (a half message
/// the broker rolled back or lost after the local transaction committed, as far as the table
/// can tell); returns that id.
async fn record_sent_but_lost<DB: TestDatabase>(
    cluster: &Cluster,
    outbox: &Outbox<DB>,
    pool: &sqlx::Pool<DB>,
    id: i64,
) -> MessageId {
    let message = outbox
        .prepare_transactional(order_created(id).dedup_key(dedup_key(id)))
        .unwrap();
    let lost = SendReceipt {
        message_id: MessageId([id as u8 | 0x50; 16]),
        topic: TOPIC.into(),
        broker_group: cluster.broker_group().await,
        queue_id: 0,
        queue_offset: 0,
        store_ts_ms: 0,
        due_ms: None,
    };
    let mut transaction = pool.begin().await.unwrap();
    DB::insert_order(&mut *transaction, id).await.unwrap();
    outbox
        .record_transactional(&mut *transaction, &message, &lost)
        .await
        .unwrap();
    transaction.commit().await.unwrap();
    lost.message_id
}

/// The claim itself, under contention: several claimers in parallel, each sending some rows
/// and failing others (which back off); no row is ever held by two claimers, and a keyed row
/// is claimed only after every earlier row of its key was sent.
async fn concurrent_claims_never_overlap_and_keep_each_keys_order<DB: TestDatabase>() {
    use ferromq_client::outbox::internals::{now_ms, SendOutcome, SentAs};
    const ROWS: i64 = 300;
    let dir = tempfile::tempdir().unwrap();
    let (outbox, pool, _) = open_in::<DB>(dir.path(), fast()).await;
    // Row id → its sharding key.
    let mut keys = BTreeMap::<i64, Option<String>>::new();
    let mut transaction = pool.begin().await.unwrap();
    for n in 0..ROWS {
        let key = (n % 3 != 0).then(|| format!("customer-{}", n % 4));
        let mut message = order_created(n).dedup_key(dedup_key(n));
        if let Some(key) = &key {
            message = message.sharding_key(key.clone());
        }
        let id = outbox.enqueue(&mut *transaction, message).await.unwrap();
        keys.insert(id.0, key);
    }
    transaction.commit().await.unwrap();
    let keys = Arc::new(keys);

    let held: Arc<Mutex<HashSet<i64>>> = Arc::default();
    let sent: Arc<Mutex<HashSet<i64>>> = Arc::default();
    let mut claimers = Vec::new();
    for claimer in 0..4u64 {
        let (pool, keys, held, sent) = (pool.clone(), keys.clone(), held.clone(), sent.clone());
        claimers.push(tokio::spawn(async move {
            let owner = format!("claimer-{claimer}");
            for round in 0u64.. {
                let now = now_ms();
                let rows = DB::claim(&pool, &owner, now, now + 60_000, 7)
                    .await
                    .unwrap();
                if rows.is_empty() {
                    if sent.lock().unwrap().len() == ROWS as usize {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
                {
                    let mut held = held.lock().unwrap();
                    let sent = sent.lock().unwrap();
                    for row in &rows {
                        assert!(held.insert(row.id), "row {} claimed twice", row.id);
                        let Some(key) = &row.sharding_key else {
                            continue;
                        };
                        let earlier_unsent = keys.range(..row.id).any(|(other, other_key)| {
                            other_key.as_ref() == Some(key)
                                && !sent.contains(other)
                                && rows.iter().all(|r| r.id != *other)
                        });
                        assert!(
                            !earlier_unsent,
                            "row {} claimed before its key's earlier rows",
                            row.id
                        );
                    }
                }
                // Fail one row in three (it backs off briefly) and, as a relay does, everything
                // after it of the same key.
                let mut outcomes = Vec::new();
                let mut failed_keys = HashSet::new();
                for row in &rows {
                    let after_failure = row
                        .sharding_key
                        .as_ref()
                        .is_some_and(|k| failed_keys.contains(k));
                    if after_failure || (row.id as u64 + round + claimer).is_multiple_of(3) {
                        if let Some(key) = &row.sharding_key {
                            failed_keys.insert(key.clone());
                        }
                        outcomes.push(SendOutcome::Retry {
                            id: row.id,
                            attempts: row.attempts + 1,
                            next_attempt_ms: now_ms() + 10,
                            error: "simulated".into(),
                        });
                    } else {
                        outcomes.push(SendOutcome::Sent {
                            id: row.id,
                            sent: SentAs {
                                message_id: format!("{:032x}", row.id),
                                broker_group: "g".into(),
                                queue_id: 0,
                                queue_offset: row.id,
                                sent_by: owner.clone(),
                                sent_ms: now_ms(),
                                first_check_ms: now_ms(),
                                finished: true,
                            },
                        });
                    }
                }
                // Bookkeeping first: the rows are free once the outcomes are recorded.
                {
                    let mut held = held.lock().unwrap();
                    let mut sent = sent.lock().unwrap();
                    for outcome in &outcomes {
                        match outcome {
                            SendOutcome::Sent { id, .. } => {
                                sent.insert(*id);
                                held.remove(id);
                            }
                            SendOutcome::Retry { id, .. } => {
                                held.remove(id);
                            }
                            _ => unreachable!(),
                        }
                    }
                }
                let recorded = DB::record_sends(&pool, &owner, &outcomes).await.unwrap();
                assert_eq!(recorded.updated, outcomes.len() as u64);
            }
        }));
    }
    for claimer in claimers {
        within(Duration::from_secs(120), claimer).await.unwrap();
    }
    let stats = outbox.stats().await.unwrap();
    assert_eq!(stats.sent, ROWS as u64, "{stats:?}");
}

/// A key whose first row backs off (or failed) must not fill every claim with rows it holds
/// back: the rows behind it are left out before the claim's limit, so other rows go.
async fn a_stuck_key_does_not_hold_back_other_rows<DB: TestDatabase>() {
    use ferromq_client::outbox::internals::{now_ms, SendOutcome};
    let dir = tempfile::tempdir().unwrap();
    let (outbox, pool, _) = open_in::<DB>(dir.path(), fast()).await;
    let mut transaction = pool.begin().await.unwrap();
    for n in 0..25 {
        let mut message = order_created(n).dedup_key(dedup_key(n));
        if n < 20 {
            message = message.sharding_key("customer-1");
        }
        outbox.enqueue(&mut *transaction, message).await.unwrap();
    }
    transaction.commit().await.unwrap();

    let now = now_ms();
    let first = DB::claim(&pool, "relay-1", now, now + 60_000, 5)
        .await
        .unwrap();
    let keys: Vec<&str> = first
        .iter()
        .map(|r| r.sharding_key.as_deref().unwrap())
        .collect();
    assert_eq!(keys, vec!["customer-1"; 5]);
    // The key's first row backs off for an hour; the other four are given back.
    let mut outcomes = vec![SendOutcome::Retry {
        id: first[0].id,
        attempts: 1,
        next_attempt_ms: now + 3_600_000,
        error: "simulated".into(),
    }];
    outcomes.extend(
        first[1..]
            .iter()
            .map(|row| SendOutcome::Release { id: row.id }),
    );
    DB::record_sends(&pool, "relay-1", &outcomes).await.unwrap();

    let second = DB::claim(&pool, "relay-2", now, now + 60_000, 5)
        .await
        .unwrap();
    assert_eq!(second.len(), 5, "{second:?}");
    assert!(
        second.iter().all(|row| row.sharding_key.is_none()),
        "{second:?}"
    );
    // Giving up on a row counts only for the relay that holds it.
    let give_up = [SendOutcome::Failed {
        id: second[0].id,
        attempts: 1,
        now_ms: now,
        error: "simulated".into(),
    }];
    for (owner, updated) in [("relay-1", 0), ("relay-2", 1)] {
        let recorded = DB::record_sends(&pool, owner, &give_up).await.unwrap();
        assert_eq!(
            (recorded.updated, recorded.failed),
            (updated, updated),
            "{owner}"
        );
    }
}

/// A keyed row that failed before any send holds back its key's later rows (they would
/// overtake it); one given up on after it was sent (its re-sends lost) does not, since the
/// key's later rows went out behind it already.
async fn only_a_row_never_sent_holds_back_its_key_when_failed<DB: TestDatabase>() {
    use ferromq_client::outbox::internals::{now_ms, SendOutcome, SentAs, TrackOutcome};
    let dir = tempfile::tempdir().unwrap();
    let (outbox, pool, _) = open_in::<DB>(dir.path(), fast()).await;
    let enqueue = |n: i64| {
        let (outbox, pool) = (outbox.clone(), pool.clone());
        async move {
            let mut connection = pool.acquire().await.unwrap();
            let message = order_created(n)
                .dedup_key(dedup_key(n))
                .sharding_key("customer-1");
            outbox.enqueue(&mut *connection, message).await.unwrap().0
        }
    };
    let now = now_ms();
    let claim = || {
        let now = now_ms();
        DB::claim(&pool, "relay-1", now, now + 60_000, 10)
    };

    // Row 1 is sent, then given up on by tracking; row 2 is claimed behind it.
    let sent = enqueue(1).await;
    let claimed = claim().await.unwrap();
    let message_id = format!("{sent:032x}");
    let outcome = SendOutcome::Sent {
        id: sent,
        sent: SentAs {
            message_id: message_id.clone(),
            broker_group: "g".into(),
            queue_id: 0,
            queue_offset: 0,
            sent_by: "relay-1".into(),
            sent_ms: now,
            first_check_ms: now,
            finished: false,
        },
    };
    assert_eq!(claimed.len(), 1);
    DB::record_sends(&pool, "relay-1", &[outcome])
        .await
        .unwrap();
    let give_up = TrackOutcome::GiveUp {
        id: sent,
        message_id,
        now_ms: now,
        error: "lost; not consumed after 3 re-sends".into(),
    };
    assert_eq!(
        DB::record_tracking(&pool, &[give_up]).await.unwrap(),
        [true]
    );
    let after_sent = enqueue(2).await;
    let ids: Vec<i64> = claim().await.unwrap().iter().map(|r| r.id).collect();
    assert_eq!(ids, [after_sent]);

    // Row 2 fails at its send; row 3 waits behind it until an operator decides.
    let fail = SendOutcome::Failed {
        id: after_sent,
        attempts: 1,
        now_ms: now,
        error: "refused".into(),
    };
    let recorded = DB::record_sends(&pool, "relay-1", &[fail]).await.unwrap();
    assert_eq!(recorded.failed, 1);
    let behind = enqueue(3).await;
    assert!(claim().await.unwrap().is_empty());
    outbox
        .discard_failed(Some(OutboxId(after_sent)))
        .await
        .unwrap();
    let ids: Vec<i64> = claim().await.unwrap().iter().map(|r| r.id).collect();
    assert_eq!(ids, [behind]);
    let stats = outbox.stats().await.unwrap();
    assert_eq!((stats.failed, stats.pending), (1, 1), "{stats:?}");
}

/// A table of schema version 1 (rows due from their enqueue time, no holding index, tracked by
/// last check) is upgraded in place: its rows keep holding back their keys' later rows, and
/// its sent rows are due for a look at once; a schema newer than this SDK knows is refused.
async fn a_version_1_table_is_upgraded_and_its_rows_keep_their_keys_order<DB: TestDatabase>() {
    use ferromq_client::outbox::internals::now_ms;
    let dir = tempfile::tempdir().unwrap();
    let (outbox, pool, _) = open_in::<DB>(dir.path(), fast()).await;
    let mut transaction = pool.begin().await.unwrap();
    for (n, key) in [(1, "customer-1"), (2, "customer-1"), (3, "customer-2")] {
        let message = order_created(n).dedup_key(dedup_key(n)).sharding_key(key);
        outbox.enqueue(&mut *transaction, message).await.unwrap();
    }
    let sent = outbox
        .enqueue(&mut *transaction, order_created(4))
        .await
        .unwrap()
        .0;
    assert_eq!(sent, 4);
    transaction.commit().await.unwrap();
    // Back to version 1, with the rows as it wrote them; row 1 backs off after a failed send,
    // row 4 was sent a minute ago and checked since.
    DB::execute(
        &pool,
        "DROP INDEX ferromq_outbox_holding;
         DROP INDEX ferromq_outbox_tracking;
         ALTER TABLE ferromq_outbox DROP COLUMN next_check_ms;
         ALTER TABLE ferromq_outbox_archive DROP COLUMN next_check_ms;
         CREATE INDEX ferromq_outbox_unconfirmed ON ferromq_outbox (checked_ms, id)
             WHERE status = 'sent' AND finished_ms IS NULL;
         DELETE FROM ferromq_outbox_migrations WHERE version IN (2, 3);
         UPDATE ferromq_outbox SET next_attempt_ms = created_ms;
         UPDATE ferromq_outbox SET attempts = 1, next_attempt_ms = created_ms + 3600000
             WHERE id = 1;
         UPDATE ferromq_outbox SET status = 'sent', message_id = 'm4', broker_group = 'g',
             sent_ms = created_ms - 60000, checked_ms = created_ms - 60000
         WHERE id = 4;",
    )
    .await;

    outbox.migrate().await.unwrap();
    let now = now_ms();
    let claimed: Vec<i64> = DB::claim(&pool, "relay-1", now, now + 60_000, 10)
        .await
        .unwrap()
        .iter()
        .map(|row| row.id)
        .collect();
    assert_eq!(claimed, [3], "row 2 waits behind row 1");
    let due = DB::take_sent_rows(&pool, now, now + 60_000, 10)
        .await
        .unwrap();
    assert_eq!(due.iter().map(|row| row.id).collect::<Vec<_>>(), [sent]);
    // Versions 2 and 3 are in place: their indexes exist.
    DB::execute(
        &pool,
        "DROP INDEX ferromq_outbox_holding; DROP INDEX ferromq_outbox_tracking",
    )
    .await;

    DB::execute(
        &pool,
        "INSERT INTO ferromq_outbox_migrations (version, applied_ms) VALUES (99, 0)",
    )
    .await;
    let refused = outbox.migrate().await.unwrap_err();
    assert!(
        matches!(
            refused,
            OutboxError::SchemaTooNew {
                found: 99,
                known: 3
            }
        ),
        "{refused:?}"
    );
}

/// Two transactions enqueueing for one sharding key take turns: the second waits for the
/// first to end, so ids (the relay's send order) follow commit order. Other keys do not wait
/// on PostgreSQL (SQLite has one writer at a time anyway).
async fn enqueues_of_one_sharding_key_take_turns<DB: TestDatabase>() {
    let dir = tempfile::tempdir().unwrap();
    let (outbox, pool, _) = open_in::<DB>(dir.path(), fast()).await;
    let mut first = pool.begin().await.unwrap();
    let first_id = outbox
        .enqueue(&mut *first, order_created(1).sharding_key("customer-1"))
        .await
        .unwrap();

    let enqueue = |message: OutboxMessage| {
        let (outbox, pool) = (outbox.clone(), pool.clone());
        tokio::spawn(async move {
            let mut transaction = pool.begin().await.unwrap();
            let id = outbox.enqueue(&mut *transaction, message).await.unwrap();
            transaction.commit().await.unwrap();
            id
        })
    };
    if <DB as TestDatabase>::NAME == "postgres" {
        let other_key = enqueue(order_created(3).sharding_key("customer-2"));
        within(WAIT, other_key).await.unwrap();
    }
    let same_key = enqueue(order_created(2).sharding_key("customer-1"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !same_key.is_finished(),
        "the second enqueue of the key did not wait"
    );
    first.commit().await.unwrap();
    let second_id = within(WAIT, same_key).await.unwrap();
    assert!(first_id < second_id, "{first_id} then {second_id}");
}
