//! Membership changes through the admin API on real processes: a member is removed, a brand
//! new broker joins after retention deleted the start of the log (so it must start from a
//! snapshot), is promoted once caught up, and then leads the group with every retained
//! message.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ferromq_client::{Message, StartFrom};
use ferromq_integration_tests::{
    client, ferromq, find_leader, http_get, http_post, join_group, raft_status, start_group,
    start_nameserver, try_raft_status, within, Broker,
};

const WAIT: Duration = Duration::from_secs(60);

/// Small segments, retention of about a second, frequent checkpoints: the log start moves
/// while the test runs.
const ENV: &[(&str, &str)] = &[
    ("FERROMQ_STORAGE__SEGMENT_BYTES", "65536"),
    ("FERROMQ_STORAGE__RETENTION_HOURS", "0.0003"),
    ("FERROMQ_STORAGE__RETENTION_CHECK_INTERVAL_MS", "200"),
    ("FERROMQ_STORAGE__CHECKPOINT_INTERVAL_MS", "200"),
    // Every snapshot goes by ticket: the member fetches the base over the peer port.
    ("FERROMQ_RAFT__SNAPSHOT_INLINE_MAX_BYTES", "0"),
];

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn leader_of(group: &[&Broker]) -> usize {
    let deadline = Instant::now() + WAIT;
    loop {
        let leader = group
            .iter()
            .position(|b| try_raft_status(b).is_some_and(|s| s["role"] == "Leader"));
        if let Some(leader) = leader {
            return leader;
        }
        if Instant::now() > deadline {
            let mut report = String::new();
            for broker in group {
                let log = broker.process.log();
                let tail: Vec<&str> = log.lines().rev().take(25).collect();
                report.push_str(&format!(
                    "\n== {:?}\n{}\n",
                    try_raft_status(broker),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                ));
            }
            panic!("no leader within {WAIT:?}:{report}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// POSTs to a broker's admin endpoint; on a transport error, fails with the broker's log.
fn post(broker: &Broker, path: &str, json: &str) -> (u16, String) {
    http_post(&broker.spec.admin, path, json).unwrap_or_else(|err| {
        let log = broker.process.log();
        let tail: Vec<&str> = log.lines().rev().take(60).collect();
        panic!(
            "POST {path}: {err}\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
    })
}

/// Asks the current leader for a membership change with `ferromq admin raft …`, retrying
/// while the answer is retriable (leadership moving, another change in progress, outcome
/// unknown). Returns the CLI's error output when it fails.
fn change_members(group: &[&Broker], args: &[&str]) -> Result<(), String> {
    let deadline = Instant::now() + WAIT;
    let mut retried = false;
    loop {
        let leader = leader_of(group);
        let mut all = vec!["admin", "--admin", &group[leader].spec.admin, "raft"];
        all.extend_from_slice(args);
        let out = ferromq(&all);
        if out.status.success() {
            return Ok(());
        }
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        // An earlier attempt whose outcome was unknown did happen after all.
        let done_before = err.contains("already a member") || err.contains("is not a member");
        if retried && done_before {
            return Ok(());
        }
        if !err.contains("retriable") || Instant::now() > deadline {
            return Err(err);
        }
        retried = true;
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn node_id(broker: &Broker) -> u64 {
    raft_status(broker)["node_id"].as_u64().unwrap()
}

fn metric(broker: &Broker, name: &str) -> f64 {
    let (_, body) = http_get(&broker.spec.admin, "/metrics").unwrap();
    body.lines()
        .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_member_catches_up_by_snapshot_and_can_lead() {
    let dir = tempfile::tempdir().unwrap();
    let nameserver = start_nameserver(dir.path(), &[]);
    let mut group = start_group("grow", 3, dir.path(), &nameserver.addr, ENV);
    let client = client(&nameserver.addr).await;
    client.create_topic("events", 2).await.unwrap();

    // Enough data for many segments; remember what went where.
    let producer = client.producer();
    let mut sent: BTreeMap<(u32, u64), String> = BTreeMap::new();
    let filler = "x".repeat(1000);
    for i in 0..1500 {
        let body = format!("m{i}-{filler}");
        let receipt = producer
            .send(Message::new("events", body.clone()))
            .await
            .unwrap();
        sent.insert((receipt.queue_id, receipt.queue_offset), body);
    }
    let members: Vec<&Broker> = group.iter().collect();
    let leader = leader_of(&members);
    wait_until("retention deletes the start of the leader's log", || {
        raft_status(&group[leader])["first_index"].as_u64().unwrap() > 200
    });

    // Remove a follower; refusals are clear.
    let follower = (0..3).find(|i| *i != leader).unwrap();
    let follower_id = node_id(&group[follower]);
    let leader_id = node_id(&group[leader]);
    let (status, body) = post(
        &group[leader],
        "/v1/raft/members",
        &format!(r#"{{"action":"remove","id":{leader_id}}}"#),
    );
    assert_eq!(status, 400, "removing the leader is refused: {body}");
    assert!(body.contains("transfer leadership first"), "{body}");
    let (status, body) = post(&group[leader], "/v1/raft/members", r#"{"action":"grow"}"#);
    assert_eq!(status, 400, "{body}");
    let follower_arg = follower_id.to_string();
    change_members(
        &group.iter().collect::<Vec<_>>(),
        &["remove-member", &follower_arg],
    )
    .unwrap();
    let removed = group.remove(follower);
    drop(removed);
    let leader = leader_of(&group.iter().collect::<Vec<_>>());
    assert_eq!(
        raft_status(&group[leader])["voters"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // A fresh broker joins, gets a snapshot (the log it would need is gone), is promoted.
    let remaining: Vec<&Broker> = group.iter().collect();
    let (joiner, joiner_raft) =
        join_group("grow", 4, &remaining, dir.path(), &nameserver.addr, ENV);
    change_members(
        &group.iter().collect::<Vec<_>>(),
        &[
            "add-member",
            "4",
            "--raft-addr",
            &joiner_raft,
            "--client-addr",
            &joiner.spec.addr,
        ],
    )
    .unwrap();
    wait_until("the new member is promoted to voter", || {
        let leader = leader_of(&group.iter().collect::<Vec<_>>());
        let status = raft_status(&group[leader]);
        status["voters"].as_array().unwrap().len() == 3
            && status["learners"].as_array().unwrap().is_empty()
    });
    assert!(metric(&joiner, "mq_raft_snapshots_installed_total") >= 1.0);
    // It came by ticket, fetched in chunks over the peer port.
    assert!(joiner.process.log().contains("fetched a snapshot base"));
    assert!(metric(&group[leader], "mq_raft_snapshots_sent_total") >= 1.0);

    // The new member takes over and serves everything it should have.
    let leader = leader_of(&group.iter().collect::<Vec<_>>());
    let (status, body) = post(&group[leader], "/v1/raft:transfer-leader?to=4", "");
    assert_eq!(status, 200, "{body}");
    group.push(joiner);
    let everyone: Vec<&Broker> = group.iter().collect();
    assert_eq!(node_id(everyone[leader_of(&everyone)]), 4);

    for i in 0..100 {
        let body = format!("after-{i}");
        let receipt = producer
            .send(Message::new("events", body.clone()))
            .await
            .unwrap();
        sent.insert((receipt.queue_id, receipt.queue_offset), body);
    }
    let mut reader = client
        .consumer("verify")
        .subscribe("events", "*")
        .start_from(StartFrom::First)
        .build()
        .await
        .unwrap();
    let mut seen: BTreeMap<u32, Vec<(u64, String)>> = BTreeMap::new();
    let last_offsets: BTreeMap<u32, u64> =
        sent.keys()
            .fold(BTreeMap::new(), |mut last, (queue, offset)| {
                last.insert(*queue, *offset);
                last
            });
    while seen
        .iter()
        .map(|(queue, messages)| messages.last().map(|m| m.0) == last_offsets.get(queue).copied())
        .filter(|done| *done)
        .count()
        < last_offsets.len()
    {
        let message = within(WAIT, reader.recv()).await.unwrap();
        let body = String::from_utf8(message.body.to_vec()).unwrap();
        seen.entry(message.queue_id)
            .or_default()
            .push((message.queue_offset, body));
    }
    for (queue, messages) in &seen {
        let first = messages[0].0;
        assert!(first > 0, "queue {queue}: retention moved its start");
        for (i, (offset, body)) in messages.iter().enumerate() {
            assert_eq!(*offset, first + i as u64, "queue {queue} is contiguous");
            assert_eq!(
                Some(body),
                sent.get(&(*queue, *offset)),
                "queue {queue} offset {offset}"
            );
        }
    }
    reader.shutdown().await.unwrap();

    assert!(find_leader(&group).is_some());
}
