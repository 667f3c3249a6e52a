//! The admin HTTP API and `ferromq admin` over it, against real brokers: topics (create, list
//! by pages, show, update, delete), groups, connections, messages by store time, and who may
//! change things (bearer token; loopback only without one).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::UdpSocket;
use std::time::Duration;

use ferromq_client::Message;
use ferromq_integration_tests::{
    client, consume_distinct, ferromq, find_leader, http_get, http_request, send_numbered,
    start_group, start_nameserver, Broker,
};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(20);

/// `ferromq admin --admin ADDR --json ARGS…`: the parsed answer, or the error text.
fn admin(addr: &str, args: &[&str]) -> Result<Value, String> {
    let mut all = vec!["admin", "--admin", addr, "--json"];
    all.extend_from_slice(args);
    let out = ferromq(&all);
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|err| panic!("not JSON ({err}): {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_groups_connections_and_messages_through_the_api_and_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let nameserver = start_nameserver(dir.path(), &[]);
    let broker = Broker::start(&dir.path().join("b"), &nameserver.addr, dir.path(), &[]);
    let api = broker.spec.admin.as_str();

    // Create: 201 the first time, the same answer again, a conflict when it differs.
    let created = admin(api, &["topic", "create", "orders", "--queues", "2"]).unwrap();
    assert_eq!(created["queues"], 2);
    assert_eq!(created["writable"], true);
    assert_eq!(
        admin(api, &["topic", "create", "orders", "--queues", "2"]).unwrap(),
        created
    );
    let err = admin(api, &["topic", "create", "orders", "--queues", "3"]).unwrap_err();
    assert!(
        err.contains("409") && err.contains("already exists"),
        "{err}"
    );
    let err = admin(api, &["topic", "create", "bad name"]).unwrap_err();
    assert!(err.contains("400"), "{err}");
    for name in ["a1", "a2", "a3"] {
        admin(api, &["topic", "create", name]).unwrap();
    }

    // Lists come in pages: `next` continues where the last page stopped.
    let mut names = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut args = vec!["topic", "list", "--limit", "2"];
        if let Some(after) = &after {
            args.extend(["--after", after.as_str()]);
        }
        let page = admin(api, &args).unwrap();
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 2);
        names.extend(
            items
                .iter()
                .map(|t| t["name"].as_str().unwrap().to_string()),
        );
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_string()),
            None => break,
        }
    }
    assert_eq!(names, ["a1", "a2", "a3", "orders"]);
    let (status, body) = http_get(api, "/v1/topics?limit=0").unwrap();
    assert_eq!(status, 400, "{body}");
    assert_eq!(json(&body)["code"], "invalid_request");

    // Produce and consume, then look at the group, its connection and the messages.
    let client = client(&nameserver.addr).await;
    let producer = client.producer();
    let before = ferromq_protocol::message::now_millis();
    send_numbered(&producer, "orders", "order", 6).await;
    let mut consumer = consume_distinct(&client, "billing", "orders", 6).await;
    consumer.commit().await.unwrap();

    let shown = admin(api, &["topic", "show", "orders"]).unwrap();
    assert_eq!(shown["messages"], 6);
    assert_eq!(shown["queue_offsets"].as_array().unwrap().len(), 2);

    let group = admin(api, &["group", "show", "billing"]).unwrap();
    assert_eq!(group["mode"], "clustering");
    assert!(
        group["subscriptions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["topic"] == "orders" && s["expression"] == "*"),
        "{group}"
    );
    let orders_lag = group["lag"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["topic"] == "orders")
        .cloned()
        .unwrap_or_else(|| panic!("no lag for orders: {group}"));
    assert_eq!(orders_lag["total_lag"], 0);
    let groups = admin(api, &["group", "list"]).unwrap();
    assert!(groups["items"]
        .as_array()
        .unwrap()
        .iter()
        .any(|g| g["group"] == "billing" && g["members"].as_u64().unwrap() >= 1));
    let err = admin(api, &["group", "show", "nobody"]).unwrap_err();
    assert!(err.contains("404"), "{err}");

    let (status, body) = http_get(api, "/v1/connections").unwrap();
    assert_eq!(status, 200, "{body}");
    let connections = json(&body);
    assert!(
        connections["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["requests"].as_u64().unwrap() > 0 && c["peer_addr"] != ""),
        "{connections}"
    );

    let from = before.to_string();
    let found = admin(
        api,
        &["message", "query", "--topic", "orders", "--from-ms", &from],
    )
    .unwrap();
    let bodies: Vec<&str> = found
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["body"].as_str().unwrap())
        .collect();
    let mut sorted = bodies.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        ["order-0", "order-1", "order-2", "order-3", "order-4", "order-5"]
    );
    let times: Vec<u64> = found
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["store_time_ms"].as_u64().unwrap())
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "oldest first: {times:?}"
    );
    let (status, body) = http_get(api, "/v1/messages?topic=orders&from=10&to=5").unwrap();
    assert_eq!(status, 400, "{body}");

    // Update: more queues, read-only; fewer queues is refused.
    let updated = admin(
        api,
        &["topic", "update", "orders", "--queues", "4", "--perm", "r"],
    )
    .unwrap();
    assert_eq!(updated["queues"], 4);
    assert_eq!(updated["writable"], false);
    let err = admin(api, &["topic", "update", "orders", "--queues", "1"]).unwrap_err();
    assert!(err.contains("cannot be removed"), "{err}");
    let refused = producer
        .send(Message::new("orders", "while read-only"))
        .await;
    assert!(refused.is_err(), "a read-only topic takes no sends");
    assert_eq!(
        admin(api, &["topic", "show", "orders"]).unwrap()["queue_offsets"]
            .as_array()
            .unwrap()
            .len(),
        4
    );

    // Delete: the topic, its queues and the offsets committed on it are gone.
    consumer.shutdown().await.unwrap();
    let deleted = admin(api, &["topic", "delete", "orders"]).unwrap();
    assert_eq!(deleted["deleted"], "orders");
    let err = admin(api, &["topic", "show", "orders"]).unwrap_err();
    assert!(err.contains("404"), "{err}");
    let (_, body) = http_get(api, "/v1/groups/billing/lag?topic=orders").unwrap();
    assert_eq!(json(&body), serde_json::json!([]), "offsets are gone");
    let err = admin(api, &["topic", "delete", "orders"]).unwrap_err();
    assert!(err.contains("404"), "{err}");
}

/// A local address of this machine that is not loopback, to reach the broker from "outside".
fn non_loopback_ip() -> std::net::IpAddr {
    // Connecting a UDP socket sends nothing; it only picks the outgoing interface.
    let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
    socket.connect("10.255.255.255:9").unwrap();
    let ip = socket.local_addr().unwrap().ip();
    assert!(
        !ip.is_loopback(),
        "this machine needs a non-loopback address"
    );
    ip
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_need_the_token_or_else_come_from_loopback_only() {
    let dir = tempfile::tempdir().unwrap();
    let nameserver = start_nameserver(dir.path(), &[]);
    let guarded = Broker::start(
        &dir.path().join("guarded"),
        &nameserver.addr,
        dir.path(),
        &[
            ("FERROMQ_ADMIN_TOKEN", "s3cret-token"),
            ("FERROMQ_ADMIN_PROTECT_READS", "true"),
        ],
    );
    let api = guarded.spec.admin.as_str();
    let create = r#"{"name":"audit","queues":1}"#;
    for headers in [vec![], vec![("Authorization", "Bearer wrong-token")]] {
        let (status, body) = http_request("POST", api, "/v1/topics", create, &headers).unwrap();
        assert_eq!(status, 401, "{body}");
        assert_eq!(json(&body)["code"], "unauthorized");
    }
    let err = admin(api, &["topic", "create", "audit"]).unwrap_err();
    assert!(err.contains("401"), "{err}");
    // With admin_protect_reads, reads under /v1/ need the token too; probes, metrics and the
    // OpenAPI document stay open.
    assert_eq!(http_get(api, "/v1/topics").unwrap().0, 401);
    let bearer = [("Authorization", "Bearer s3cret-token")];
    assert_eq!(
        http_request("GET", api, "/v1/topics", "", &bearer)
            .unwrap()
            .0,
        200
    );
    for open in ["/readyz", "/livez", "/metrics", "/v1/openapi.json"] {
        assert_eq!(http_get(api, open).unwrap().0, 200, "{open}");
    }
    let (status, body) = http_request(
        "POST",
        api,
        "/v1/topics",
        create,
        &[("Authorization", "Bearer s3cret-token")],
    )
    .unwrap();
    assert_eq!(status, 201, "{body}");
    let mut args = vec!["admin", "--admin", api, "--json", "--token", "s3cret-token"];
    args.extend(["topic", "delete", "audit"]);
    assert!(ferromq(&args).status.success());
    assert!(guarded
        .process
        .log()
        .contains("changes need the bearer token"));

    // No token, admin port on every interface: reads from anywhere, changes from loopback.
    let ip = non_loopback_ip();
    let open = Broker::start_with_admin(
        &dir.path().join("open"),
        &nameserver.addr,
        dir.path(),
        &[],
        "0.0.0.0:0",
    );
    let port = open.spec.admin.rsplit(':').next().unwrap().to_string();
    assert!(open.process.log().contains("accepted only from"));
    let outside = format!("{ip}:{port}");
    let local = format!("127.0.0.1:{port}");
    assert_eq!(http_get(&outside, "/v1/topics").unwrap().0, 200);
    let (status, body) = http_request("POST", &outside, "/v1/topics", create, &[]).unwrap();
    assert_eq!(status, 403, "{body}");
    assert_eq!(json(&body)["code"], "forbidden");
    let (status, body) = http_request("POST", &local, "/v1/topics", create, &[]).unwrap();
    assert_eq!(status, 201, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_changes_go_through_the_leader_and_reach_every_member() {
    let dir = tempfile::tempdir().unwrap();
    let nameserver = start_nameserver(dir.path(), &[]);
    let group = start_group("trio", 3, dir.path(), &nameserver.addr, &[]);
    let leader = find_leader(&group).unwrap();
    let follower = (leader + 1) % 3;
    let err = admin(&group[follower].spec.admin, &["topic", "create", "shared"]).unwrap_err();
    assert!(
        err.contains("not the leader") && err.contains("send it to node"),
        "{err}"
    );
    admin(
        &group[leader].spec.admin,
        &["topic", "create", "shared", "--queues", "3"],
    )
    .unwrap();
    admin(
        &group[leader].spec.admin,
        &["topic", "update", "shared", "--queues", "5"],
    )
    .unwrap();
    for member in &group {
        ferromq_integration_tests::wait_until("every member sees 5 queues", WAIT, || {
            admin(&member.spec.admin, &["topic", "show", "shared"]).is_ok_and(|t| t["queues"] == 5)
        })
        .await;
    }
    // Without --admin the CLI asks the leader the nameserver names.
    let client = client(&nameserver.addr).await;
    ferromq_integration_tests::wait_for_route(&client, "shared", WAIT).await;
    let out = ferromq(&[
        "--nameserver",
        &nameserver.addr,
        "admin",
        "--json",
        "topic",
        "delete",
        "shared",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for member in &group {
        ferromq_integration_tests::wait_until("every member forgets the topic", WAIT, || {
            admin(&member.spec.admin, &["topic", "show", "shared"]).is_err()
        })
        .await;
    }

    // The preStop hook runs on every member: a follower does nothing, the leader hands over.
    let hook = |member: &Broker| {
        ferromq(&[
            "admin",
            "--admin",
            &member.spec.admin,
            "raft",
            "transfer-leader",
            "--if-leader",
        ])
    };
    let out = hook(&group[follower]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        find_leader(&group),
        Some(leader),
        "a follower's hook moved nothing"
    );
    let out = hook(&group[leader]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_ne!(find_leader(&group), Some(leader), "the leader handed over");
}
