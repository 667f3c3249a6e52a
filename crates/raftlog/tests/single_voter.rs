//! A one-voter group over a real store: proposals are committed, applied and answered, and a
//! restart replays what was committed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use ferromq_protocol::message::{encode_record, put_length_prefixed, Message, MessageIdGenerator};
use ferromq_raftlog::{Members, NoPeers, RaftConfig, RaftMetrics, RaftNode, Role, StateMachine};
use ferromq_store::{
    command::{encode_create_topic, encode_messages},
    default_topic, ApplyOutcome, CommittedEntry, Store, StoreConfig, StoreError,
};

struct Apply(Arc<Store>);

impl StateMachine for Apply {
    type Output = ApplyOutcome;
    fn apply(&mut self, entries: &[CommittedEntry]) -> Result<Vec<ApplyOutcome>, StoreError> {
        self.0.apply(entries)
    }
}

fn open(dir: &std::path::Path) -> (Arc<Store>, RaftNode<ApplyOutcome>) {
    let store = Arc::new(
        Store::open(
            dir,
            StoreConfig {
                segment_bytes: 64 * 1024,
                ..StoreConfig::default()
            },
        )
        .unwrap(),
    );
    let node = RaftNode::start(
        store.clone(),
        RaftConfig {
            tick: Duration::from_millis(20),
            ..RaftConfig::default()
        },
        Apply(store.clone()),
        Box::new(NoPeers),
        RaftMetrics::new(&prometheus::Registry::new()),
        Members::default(),
    )
    .unwrap();
    (store, node)
}

fn body(n: usize) -> Vec<u8> {
    let ids = MessageIdGenerator::default();
    let mut body = BytesMut::new();
    for i in 0..n {
        let mut record = BytesMut::new();
        encode_record(
            ids.next_id(),
            1,
            &Message::new("T", format!("m{i}")),
            &mut record,
        );
        put_length_prefixed(&mut body, &record);
    }
    body.to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_proposals_are_committed_applied_and_answered() {
    let dir = tempfile::tempdir().unwrap();
    let (store, node) = open(dir.path());
    assert_eq!(node.status().role, Role::Leader);
    let created = node
        .propose(encode_create_topic(&default_topic("T", 1)))
        .await
        .unwrap();
    assert_eq!(created, ApplyOutcome::TopicCreated { created: true });

    let node = Arc::new(node);
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let node = node.clone();
        tasks.push(tokio::spawn(async move {
            node.propose(encode_messages("T", 0, 2, &body(2), 5))
                .await
                .unwrap()
        }));
    }
    let mut firsts = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            ApplyOutcome::Appended {
                first_offset,
                count: 2,
                ..
            } => firsts.push(first_offset),
            other => panic!("unexpected outcome {other:?}"),
        }
    }
    firsts.sort_unstable();
    assert_eq!(firsts, (0..200).map(|i| i * 2).collect::<Vec<u64>>());
    assert_eq!(store.queue_offsets("T").unwrap(), vec![(0, 0, 400)]);
    let status = node.status();
    assert_eq!(status.commit_index, status.applied_index);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_replays_committed_entries_and_keeps_offsets() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (_store, node) = open(dir.path());
        node.propose(encode_create_topic(&default_topic("T", 1)))
            .await
            .unwrap();
        for _ in 0..10 {
            node.propose(encode_messages("T", 0, 3, &body(3), 5))
                .await
                .unwrap();
        }
        node.shutdown();
    }
    let (store, node) = open(dir.path());
    assert_eq!(store.queue_offsets("T").unwrap(), vec![(0, 0, 30)]);
    let outcome = node
        .propose(encode_messages("T", 0, 1, &body(1), 6))
        .await
        .unwrap();
    assert!(
        matches!(
            outcome,
            ApplyOutcome::Appended {
                first_offset: 30,
                ..
            }
        ),
        "{outcome:?}"
    );
    assert!(
        node.status().term >= 2,
        "a restarted node campaigns in a new term"
    );
}
