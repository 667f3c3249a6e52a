//! A replica whose commit log is damaged in the middle: it starts, cuts the log at the bad
//! record, refuses to vote until a leader elected without it has given the lost entries back,
//! and then holds exactly what the others hold.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ferromq_client::{Message, StartFrom};
use ferromq_integration_tests::{
    client, find_leader, http_get, http_post, start_group, start_nameserver, try_raft_status,
    wait_http_ok, within, Broker,
};

const WAIT: Duration = Duration::from_secs(60);

const ENV: &[(&str, &str)] = &[("FERROMQ_STORAGE__SEGMENT_BYTES", "65536")];

fn wait_for_leader(group: &[Broker]) -> usize {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(leader) = find_leader(group) {
            return leader;
        }
        assert!(Instant::now() < deadline, "no leader elected");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Flips one bit in the middle of the broker's oldest commit-log segment.
fn damage_first_segment(broker: &Broker) {
    let segment = broker.spec.data_dir.join("log").join(format!("{:020}", 0));
    let mut bytes = std::fs::read(&segment).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x10;
    std::fs::write(&segment, bytes).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_replica_does_not_vote_until_it_has_repaired_its_log() {
    let dir = tempfile::tempdir().unwrap();
    let nameserver = start_nameserver(dir.path(), &[]);
    let mut group = start_group("mend", 3, dir.path(), &nameserver.addr, ENV);
    let client = client(&nameserver.addr).await;
    client.create_topic("ledger", 1).await.unwrap();
    let producer = client.producer();
    let mut sent = BTreeMap::new();
    let filler = "y".repeat(1000);
    for i in 0..600 {
        let body = format!("e{i}-{filler}");
        let receipt = producer
            .send(Message::new("ledger", body.clone()))
            .await
            .unwrap();
        sent.insert(receipt.queue_offset, body);
    }

    // Stop a follower and damage its oldest segment; then lose the leader too.
    let leader = wait_for_leader(&group);
    let damaged = (0..3).find(|i| *i != leader).unwrap();
    let healthy = (0..3).find(|i| *i != leader && *i != damaged).unwrap();
    group[damaged].process.terminate();
    damage_first_segment(&group[damaged]);
    group[leader].process.kill9();

    // The damaged replica starts, but with only it and one healthy member up there is no
    // leader: it will not vote for anyone before it is whole again.
    group[damaged].process = group[damaged].spec.spawn_only();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = try_raft_status(&group[damaged]) {
            break status;
        }
        assert!(Instant::now() < deadline, "damaged replica did not start");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        status["repairing_until"].as_u64().is_some(),
        "repair mode after a cut: {status}"
    );
    let (code, body) = http_get(&group[damaged].spec.admin, "/readyz").unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("repairing"), "{body}");
    std::thread::sleep(Duration::from_secs(4));
    for member in [damaged, healthy] {
        let status = try_raft_status(&group[member]).unwrap();
        assert_eq!(
            status["leader_id"], 0,
            "no leader without the damaged vote: {status}"
        );
    }

    // The old leader returns: a leader is elected without the damaged replica, which then
    // fetches what it lost and becomes an ordinary member again.
    group[leader].process = group[leader].spec.spawn_only();
    wait_http_ok(&group[damaged].spec.admin, "/readyz", WAIT);
    let status = try_raft_status(&group[damaged]).unwrap();
    assert!(status["repairing_until"].is_null(), "{status}");
    assert!(group[damaged]
        .process
        .log()
        .contains("cutting the commit log"));

    // It serves everything: make it the leader and read the queue from the start.
    let current = wait_for_leader(&group);
    let damaged_id = status["node_id"].as_u64().unwrap();
    if current != damaged {
        let (code, body) = http_post(
            &group[current].spec.admin,
            &format!("/v1/raft:transfer-leader?to={damaged_id}"),
            "",
        )
        .unwrap();
        assert_eq!(code, 200, "{body}");
    }
    assert_eq!(wait_for_leader(&group), damaged);
    let mut consumer = client
        .consumer("check")
        .subscribe("ledger", "*")
        .start_from(StartFrom::First)
        .build()
        .await
        .unwrap();
    for (offset, body) in &sent {
        let message = within(WAIT, consumer.recv()).await.unwrap();
        assert_eq!(message.queue_offset, *offset);
        assert_eq!(&String::from_utf8(message.body.to_vec()).unwrap(), body);
    }
    consumer.shutdown().await.unwrap();
}
