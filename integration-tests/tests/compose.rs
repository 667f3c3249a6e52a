//! The container images in the local compose cluster (deploy/compose): produce and consume,
//! stop the leader's container, keep producing, and find every acknowledged message.
//!
//! Ignored by default: it needs Docker and the images (`scripts/images.sh`), and takes the
//! fixed loopback ports of `scripts/cluster.sh`. `scripts/test.sh` builds the images and runs it
//! with `cargo nextest run --run-ignored ignored-only --test compose`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use ferromq_client::{BrokerRole, Client, ConsumerConfig, Message};
use ferromq_integration_tests::within;

fn cluster(args: &[&str]) {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("..");
    let out = Command::new(root.join("scripts/cluster.sh"))
        .args(args)
        .output()
        .expect("scripts/cluster.sh runs");
    assert!(
        out.status.success(),
        "cluster.sh {args:?}:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Takes the cluster down even when the test fails.
struct Down;

impl Drop for Down {
    fn drop(&mut self) {
        cluster(&["down"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Docker and the images; scripts/test.sh runs it"]
async fn the_compose_cluster_fails_over_without_losing_acknowledged_messages() {
    cluster(&["down"]);
    let _down = Down;
    cluster(&["up"]);
    let client = Client::builder()
        .name_servers(["127.0.0.1:9876", "127.0.0.1:9886"])
        .request_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap();
    client.create_topic("orders", 4).await.unwrap();
    let producer = client.producer();
    let mut acknowledged = BTreeSet::new();
    let send = |i: usize| {
        let producer = producer.clone();
        async move {
            let body = format!("order-{i}");
            producer
                .send(Message::new("orders", body.clone()))
                .await
                .ok()
                .map(|_| body)
        }
    };
    for i in 0..300 {
        acknowledged.insert(send(i).await.expect("sends before the failure succeed"));
    }

    // Stop the leader's container; producing continues once a follower has taken over.
    let cluster_view = client.cluster().await.unwrap();
    let leader = cluster_view
        .brokers
        .iter()
        .find(|b| b.role == BrokerRole::Leader)
        .expect("a leader")
        .node_id;
    cluster(&["stop", &format!("broker-a-{}", leader - 1)]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut i = 300;
    let mut after_failover = 0;
    while after_failover < 300 {
        assert!(Instant::now() < deadline, "producing did not resume");
        if let Some(body) = send(i).await {
            acknowledged.insert(body);
            after_failover += 1;
        }
        i += 1;
    }

    // Every acknowledged message is there.
    let mut consumer = client
        .consumer("audit")
        .subscribe("orders", "*")
        .config(ConsumerConfig {
            heartbeat_interval_ms: 300,
            ..ConsumerConfig::default()
        })
        .build()
        .await
        .unwrap();
    let mut missing = acknowledged.clone();
    while !missing.is_empty() {
        let message = within(Duration::from_secs(60), consumer.recv())
            .await
            .unwrap();
        missing.remove(&String::from_utf8(message.body.to_vec()).unwrap());
    }
    consumer.shutdown().await.unwrap();
    client.shutdown().await;
}
