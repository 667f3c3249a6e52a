//! Brokers leave the routes when their heartbeats stop (after the expiry), when their
//! connection closes, or when they shut down; and come back when they return.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use ferromq_integration_tests::{client, http_get, start_nameserver, wait_for_route, Broker};

fn registered_brokers(admin: &str) -> usize {
    let (status, body) = http_get(admin, "/v1/cluster").unwrap();
    assert_eq!(status, 200);
    let cluster: serde_json::Value = serde_json::from_str(&body).unwrap();
    cluster["brokers"].as_array().map_or(0, Vec::len)
}

/// Waits for the broker count to become `want`; returns how long that took.
fn wait_for_brokers(admin: &str, want: usize, timeout: Duration) -> Duration {
    let started = Instant::now();
    while registered_brokers(admin) != want {
        assert!(
            started.elapsed() < timeout,
            "broker count did not become {want} within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_broker_expires_and_reappears_when_it_heartbeats_again() {
    let dir = tempfile::tempdir().unwrap();
    // 120 s in production; shortened here.
    let nameserver = start_nameserver(
        dir.path(),
        &[
            ("FERROMQ_BROKER_EXPIRY_MS", "2000"),
            ("FERROMQ_SCAN_INTERVAL_MS", "100"),
        ],
    );
    let broker = Broker::start(
        &dir.path().join("data"),
        &nameserver.addr,
        dir.path(),
        &[("FERROMQ_HEARTBEAT_INTERVAL_MS", "200")],
    );
    let client = client(&nameserver.addr).await;
    wait_for_route(&client, "t", Duration::from_secs(10)).await;
    wait_for_brokers(&nameserver.admin, 1, Duration::from_secs(5));

    // Frozen: the connection stays open but no heartbeat arrives.
    broker.process.signal("STOP");
    let gone_after = wait_for_brokers(&nameserver.admin, 0, Duration::from_secs(10));
    assert!(
        gone_after >= Duration::from_millis(1500),
        "expired too early: {gone_after:?}"
    );
    assert!(client.fetch_route("t").await.is_err(), "route must be gone");

    broker.process.signal("CONT");
    wait_for_brokers(&nameserver.admin, 1, Duration::from_secs(10));
    wait_for_route(&client, "t", Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_broker_leaves_at_once_and_a_stopped_one_unregisters() {
    let dir = tempfile::tempdir().unwrap();
    let nameserver = start_nameserver(dir.path(), &[]);
    let mut broker = Broker::start(&dir.path().join("data"), &nameserver.addr, dir.path(), &[]);
    wait_for_brokers(&nameserver.admin, 1, Duration::from_secs(5));

    broker.process.kill9();
    // A closed connection drops the broker at once, long before the 120 s expiry.
    wait_for_brokers(&nameserver.admin, 0, Duration::from_secs(5));

    broker.restart();
    wait_for_brokers(&nameserver.admin, 1, Duration::from_secs(5));
    let status = broker.process.terminate();
    assert!(status.success(), "broker exit status {status}");
    wait_for_brokers(&nameserver.admin, 0, Duration::from_secs(5));
    assert!(
        nameserver.process.log().contains("broker unregistered"),
        "graceful stop unregisters: {}",
        nameserver.process.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brokers_register_with_every_nameserver_and_clients_survive_losing_one() {
    let dir = tempfile::tempdir().unwrap();
    for sub in ["ns1", "ns2"] {
        std::fs::create_dir_all(dir.path().join(sub)).unwrap();
    }
    let mut first = start_nameserver(&dir.path().join("ns1"), &[]);
    let second = start_nameserver(&dir.path().join("ns2"), &[]);
    let both = format!("{},{}", first.addr, second.addr);
    let _broker = Broker::start(&dir.path().join("data"), &both, dir.path(), &[]);
    wait_for_brokers(&first.admin, 1, Duration::from_secs(5));
    wait_for_brokers(&second.admin, 1, Duration::from_secs(5));

    let client = ferromq_client::Client::builder()
        .name_servers([first.addr.clone(), second.addr.clone()])
        .connect()
        .await
        .unwrap();
    first.process.kill9();
    for _ in 0..3 {
        // Every lookup tries the nameservers in turn; the dead one costs one failed connect.
        client.fetch_route("t").await.unwrap();
    }
    let receipt = client
        .producer()
        .send(ferromq_client::Message::new("t", "still routed"))
        .await
        .unwrap();
    assert_eq!(receipt.topic, "t");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_with_thousands_of_topics_is_routed() {
    use bytes::Bytes;
    use ferromq_protocol::headers::{perm, BrokerRole, RegisterBrokerRequest, TopicConfig};
    use ferromq_protocol::{codec, RequestCode};

    let dir = tempfile::tempdir().unwrap();
    let nameserver = start_nameserver(dir.path(), &[]);
    // Far more than a 64 KiB header could carry.
    let topics: Vec<TopicConfig> = (0..5000)
        .map(|i| TopicConfig {
            name: format!("{}-{i}", "t".repeat(100)),
            queues: 4,
            perm: perm::READ_WRITE,
        })
        .collect();
    let registration = RegisterBrokerRequest {
        cluster: "c".into(),
        group: "big".into(),
        node_id: 1,
        client_addr: "127.0.0.1:1".into(),
        admin_addr: "127.0.0.1:2".into(),
        role: BrokerRole::Leader,
        term: 1,
        auto_create_topics: false,
        default_queues: 4,
    };
    let connection = ferromq_integration_tests::raw_connection(&nameserver.addr, "fake-broker")
        .await
        .unwrap();
    connection
        .request(
            RequestCode::RegisterBroker,
            &registration,
            Bytes::from(codec::encode(&topics)),
        )
        .await
        .unwrap()
        .into_result()
        .unwrap();
    let client = client(&nameserver.addr).await;
    let route = client.fetch_route(&topics[4999].name).await.unwrap();
    assert_eq!(route.groups[0].leader.as_deref(), Some("127.0.0.1:1"));
}
