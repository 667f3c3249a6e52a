//! Client authentication and permissions on a broker's client port (`[auth]`): connections
//! without valid credentials are refused, and each permission (publish, subscribe, group,
//! admin) is enforced per topic and group, default deny.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use ferromq_client::{Client, Message};
use ferromq_integration_tests::{
    consume_distinct, ferromq, send_numbered, start_nameserver, Broker,
};

const USERS: &str = r#"[
  { access_key = "orders-app", secret_key = "orders-secret-0123", publish = ["orders"], subscribe = ["orders"], groups = ["billing"] },
  { access_key = "reader", secret_key = "reader-secret-01234", subscribe = ["orders"], groups = ["audit-*"] },
  { access_key = "ops", secret_key = "ops-secret-0123456", admin = true }
]"#;

async fn client_as(nameserver: &str, credentials: Option<(&str, &str)>) -> Client {
    let mut builder = Client::builder()
        .name_servers([nameserver])
        .request_timeout(Duration::from_secs(5));
    if let Some((access_key, secret_key)) = credentials {
        builder = builder.credentials(access_key, secret_key);
    }
    builder.connect().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_checked_and_every_permission_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let nameserver = start_nameserver(dir.path(), &[]);
    let _broker = Broker::start(
        &dir.path().join("b"),
        &nameserver.addr,
        dir.path(),
        &[
            ("FERROMQ_AUTH__ENABLED", "true"),
            ("FERROMQ_AUTH__USERS", USERS),
        ],
    );
    let ns = nameserver.addr.as_str();

    // The operator creates the topic; applications may not.
    let ops = client_as(ns, Some(("ops", "ops-secret-0123456"))).await;
    ops.create_topic("orders", 2).await.unwrap();
    let app = client_as(ns, Some(("orders-app", "orders-secret-0123"))).await;
    let err = app.create_topic("payments", 2).await.unwrap_err();
    assert!(err.to_string().contains("may not administer"), "{err}");

    // No credentials, or a wrong secret: the connection itself is refused.
    for credentials in [None, Some(("orders-app", "not-the-secret-0000"))] {
        let stranger = client_as(ns, credentials).await;
        let err = stranger
            .producer()
            .send(Message::new("orders", "sneaky"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("authentication failed"), "{err}");
    }

    // Publish: only to granted topics.
    let producer = app.producer();
    send_numbered(&producer, "orders", "order", 5).await;
    let err = producer
        .send(Message::new("payments", "not granted"))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("may not publish to topic \"payments\""),
        "{err}"
    );
    let reader = client_as(ns, Some(("reader", "reader-secret-01234"))).await;
    let err = reader
        .producer()
        .send(Message::new("orders", "readers do not write"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("may not publish"), "{err}");

    // Subscribe: as a granted group (by prefix here) on a granted topic.
    let mut consumer = consume_distinct(&reader, "audit-eu", "orders", 5).await;
    consumer.commit().await.unwrap();
    consumer.shutdown().await.unwrap();
    // Another group's backlog, or a group not granted, is refused.
    let err = reader.lag("billing", "orders").await.unwrap_err();
    assert!(
        err.to_string().contains("may not act as group \"billing\""),
        "{err}"
    );
    assert!(app.lag("billing", "orders").await.is_ok());

    // Traces reveal every group and topic a message reached: operators only.
    let id = producer
        .send(Message::new("orders", "traced"))
        .await
        .unwrap()
        .message_id;
    let err = app.trace(id).await.unwrap_err();
    assert!(err.to_string().contains("may not administer"), "{err}");
    assert!(ops.trace(id).await.is_ok());

    // The CLI takes the same credentials.
    let granted = ferromq(&[
        "--nameserver",
        ns,
        "--access-key",
        "orders-app",
        "--secret-key",
        "orders-secret-0123",
        "send",
        "--topic",
        "orders",
        "--body",
        "from the cli",
    ]);
    assert!(
        granted.status.success(),
        "{}",
        String::from_utf8_lossy(&granted.stderr)
    );
    let anonymous = ferromq(&[
        "--nameserver",
        ns,
        "send",
        "--topic",
        "orders",
        "--body",
        "x",
    ]);
    assert!(!anonymous.status.success());
    assert!(String::from_utf8_lossy(&anonymous.stderr).contains("authentication failed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nameserver_with_auth_takes_registrations_only_from_admin_keys() {
    let dir = tempfile::tempdir().unwrap();
    let auth = [
        ("FERROMQ_AUTH__ENABLED", "true"),
        ("FERROMQ_AUTH__USERS", USERS),
    ];
    let nameserver = start_nameserver(dir.path(), &auth);
    let ns = nameserver.addr.as_str();

    // A broker with an application's key may not register: no route appears.
    let _impostor = Broker::start(
        &dir.path().join("impostor"),
        ns,
        dir.path(),
        &[
            ("FERROMQ_GROUP", "impostor"),
            ("FERROMQ_NAMESERVER_CREDENTIALS__ACCESS_KEY", "orders-app"),
            (
                "FERROMQ_NAMESERVER_CREDENTIALS__SECRET_KEY",
                "orders-secret-0123",
            ),
        ],
    );
    let _broker = Broker::start(
        &dir.path().join("b"),
        ns,
        dir.path(),
        &[
            ("FERROMQ_NAMESERVER_CREDENTIALS__ACCESS_KEY", "ops"),
            (
                "FERROMQ_NAMESERVER_CREDENTIALS__SECRET_KEY",
                "ops-secret-0123456",
            ),
        ],
    );

    // Clients need a valid key to read routes.
    let anonymous = Client::builder()
        .name_servers([ns])
        .request_timeout(Duration::from_secs(5))
        .connect()
        .await;
    assert!(
        anonymous.is_err(),
        "an anonymous client reached the nameserver"
    );
    let app = client_as(ns, Some(("orders-app", "orders-secret-0123"))).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let cluster = loop {
        let cluster = app.cluster().await.unwrap();
        if !cluster.brokers.is_empty() || std::time::Instant::now() > deadline {
            break cluster;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let groups: Vec<&str> = cluster.brokers.iter().map(|b| b.group.as_str()).collect();
    assert_eq!(
        groups,
        ["broker-a"],
        "only the admin-keyed broker registered"
    );
    assert!(_impostor.process.log().contains("registration failed"));
    app.producer()
        .send(Message::new("orders", "routed"))
        .await
        .unwrap();
}
