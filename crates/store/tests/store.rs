//! The store through its public interface: apply, read, checkpoint, crash and replay.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use ferromq_protocol::message::{
    decode_record, encode_record, put_length_prefixed, tag_hash, Message, MessageIdGenerator,
};
use ferromq_store::{
    command::{
        encode_cancel_scheduled, encode_commit_offsets, encode_create_topic, encode_delete_topic,
        encode_deliver, encode_messages, encode_messages_of, encode_update_topic, CancelScheduled,
        CommitOffsets, DeleteTopic, MessagesKind,
    },
    default_topic, ApplyOutcome, CommittedEntry, LogEntry, ReadStatus, Store, StoreConfig,
    ENTRY_NORMAL,
};

fn config() -> StoreConfig {
    StoreConfig {
        segment_bytes: 16 * 1024,
        cq_units_per_file: 64,
        retention: Duration::from_secs(3600),
        cut_corruption: false,
    }
}

fn send_body(messages: &[Message]) -> Bytes {
    let ids = MessageIdGenerator::default();
    let mut body = BytesMut::new();
    for message in messages {
        let mut record = BytesMut::new();
        encode_record(ids.next_id(), 1, message, &mut record);
        put_length_prefixed(&mut body, &record);
    }
    body.freeze()
}

/// Appends payloads to the log as new entries and applies them, as the Raft loop does.
fn propose(store: &Store, payloads: Vec<Vec<u8>>) -> Vec<ApplyOutcome> {
    let last = store.log().last_index();
    let entries: Vec<LogEntry> = payloads
        .into_iter()
        .enumerate()
        .map(|(i, payload)| LogEntry {
            term: 1,
            index: last + 1 + i as u64,
            entry_type: ENTRY_NORMAL,
            payload: Bytes::from(payload),
        })
        .collect();
    let positions = store.log().append(&entries).unwrap();
    store.log().sync().unwrap();
    let committed: Vec<CommittedEntry> = entries
        .into_iter()
        .zip(positions)
        .map(|(entry, position)| CommittedEntry {
            index: entry.index,
            term: entry.term,
            entry_type: entry.entry_type,
            position,
            payload: entry.payload,
        })
        .collect();
    store.apply(&committed).unwrap()
}

fn replay_all(store: &Store) {
    let from = store.applied_index() + 1;
    let to = store.log().last_index() + 1;
    let entries: Vec<CommittedEntry> = store
        .log()
        .entries(from, to, None)
        .unwrap()
        .into_iter()
        .map(|(position, entry)| CommittedEntry {
            index: entry.index,
            term: entry.term,
            entry_type: entry.entry_type,
            position,
            payload: entry.payload,
        })
        .collect();
    store.apply(&entries).unwrap();
}

fn messages(topic: &str, n: usize, tag: &str) -> Vec<Message> {
    (0..n)
        .map(|i| {
            Message::new(topic, format!("{tag}-{i}"))
                .with_tag(tag)
                .with_key(format!("k{i}"))
        })
        .collect()
}

fn bodies(store: &Store, topic: &str, queue: u32, from: u64, filter: &[u64]) -> Vec<String> {
    let read = store
        .read_queue(topic, queue, from, 1000, 1 << 20, filter)
        .unwrap();
    read.messages
        .into_iter()
        .map(|(_, record)| String::from_utf8(decode_record(record).unwrap().body.to_vec()).unwrap())
        .collect()
}

#[test]
fn applied_messages_get_consecutive_offsets_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config()).unwrap();
    let outcomes = propose(
        &store,
        vec![
            encode_create_topic(&default_topic("T", 2)),
            encode_messages("T", 1, 3, &send_body(&messages("T", 3, "A")), 10),
            encode_messages("T", 1, 2, &send_body(&messages("T", 2, "B")), 11),
            encode_messages(
                "Missing",
                0,
                1,
                &send_body(&messages("Missing", 1, "A")),
                12,
            ),
            encode_messages("T", 5, 1, &send_body(&messages("T", 1, "A")), 13),
        ],
    );
    assert_eq!(outcomes[0], ApplyOutcome::TopicCreated { created: true });
    assert!(matches!(
        outcomes[1],
        ApplyOutcome::Appended {
            first_offset: 0,
            count: 3,
            store_ts_ms: 10,
            ..
        }
    ));
    assert!(matches!(
        outcomes[2],
        ApplyOutcome::Appended {
            first_offset: 3,
            count: 2,
            ..
        }
    ));
    assert!(matches!(outcomes[3], ApplyOutcome::Rejected(_)));
    assert!(matches!(outcomes[4], ApplyOutcome::Rejected(_)));
    assert_eq!(
        bodies(&store, "T", 1, 0, &[]),
        ["A-0", "A-1", "A-2", "B-0", "B-1"]
    );
    assert_eq!(
        bodies(&store, "T", 1, 2, &[tag_hash(Some("B"))]),
        ["B-0", "B-1"]
    );
    assert_eq!(
        store.queue_offsets("T").unwrap(),
        vec![(0, 0, 0), (1, 0, 5)]
    );
    let found = store.find_by_key("T", "k1", 10).unwrap();
    assert_eq!(found.len(), 2);
    assert_eq!((found[0].queue_id, found[0].queue_offset), (1, 1));
}

#[test]
fn an_entry_with_a_malformed_record_is_rejected_whole() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config()).unwrap();
    let mut body = BytesMut::from(&send_body(&messages("T", 2, "A"))[..]);
    ferromq_protocol::message::put_length_prefixed(&mut body, b"not a record");
    let outcomes = propose(
        &store,
        vec![
            encode_create_topic(&default_topic("T", 1)),
            encode_messages("T", 0, 3, &body, 1),
            encode_messages("T", 0, 1, &send_body(&messages("T", 1, "B")), 2),
        ],
    );
    assert!(
        matches!(outcomes[1], ApplyOutcome::Rejected(_)),
        "{:?}",
        outcomes[1]
    );
    assert!(matches!(
        outcomes[2],
        ApplyOutcome::Appended {
            first_offset: 0,
            ..
        }
    ));
    assert_eq!(bodies(&store, "T", 0, 0, &[]), ["B-0"]);
}

#[test]
fn a_failed_apply_publishes_nothing_and_blocks_checkpoints_until_reopened() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config()).unwrap();
    propose(&store, vec![encode_create_topic(&default_topic("T", 1))]);
    store.checkpoint().unwrap();
    let applied = store.applied_index();
    // The queue directory cannot be created: the next message's apply fails half-way.
    std::fs::write(dir.path().join("cq").join("T"), b"in the way").unwrap();
    let entry = LogEntry {
        term: 1,
        index: store.log().last_index() + 1,
        entry_type: ENTRY_NORMAL,
        payload: Bytes::from(encode_messages(
            "T",
            0,
            1,
            &send_body(&messages("T", 1, "A")),
            1,
        )),
    };
    let position = store.log().append(std::slice::from_ref(&entry)).unwrap()[0];
    store.log().sync().unwrap();
    let committed = CommittedEntry {
        index: entry.index,
        term: entry.term,
        entry_type: entry.entry_type,
        position,
        payload: entry.payload,
    };
    assert!(store.apply(std::slice::from_ref(&committed)).is_err());
    assert_eq!(
        store.applied_index(),
        applied,
        "nothing past the failure counts as applied"
    );
    assert!(store.is_failed());
    assert!(
        store.checkpoint().is_err(),
        "no checkpoint may cover half-written state"
    );
    drop(store);

    std::fs::remove_file(dir.path().join("cq").join("T")).unwrap();
    let store = Store::open(dir.path(), config()).unwrap();
    replay_all(&store);
    assert_eq!(bodies(&store, "T", 0, 0, &[]), ["A-0"]);
}

#[test]
fn a_retried_send_is_recognised_and_answered_with_the_original_offsets_even_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let body = send_body(&messages("T", 3, "A"));
    let window = ferromq_store::dedup::DEDUP_WINDOW_MS;
    {
        let store = Store::open(dir.path(), config()).unwrap();
        let outcomes = propose(
            &store,
            vec![
                encode_create_topic(&default_topic("T", 2)),
                encode_messages("T", 1, 3, &body, 1_000),
                encode_messages("T", 0, 3, &body, 2_000),
            ],
        );
        assert!(matches!(
            outcomes[1],
            ApplyOutcome::Appended {
                queue_id: 1,
                first_offset: 0,
                ..
            }
        ));
        assert_eq!(
            outcomes[2],
            ApplyOutcome::Duplicate {
                topic: "T".into(),
                queue_id: 1,
                first_offset: 0,
                count: 3,
                store_ts_ms: 1_000
            },
            "a retry, even to another queue, is not stored again"
        );
        store.checkpoint().unwrap();
    }
    let store = Store::open(dir.path(), config()).unwrap();
    replay_all(&store);
    let outcomes = propose(
        &store,
        vec![
            encode_messages("T", 1, 3, &body, 3_000),
            encode_messages("T", 1, 3, &body, 1_001 + window),
        ],
    );
    assert!(
        matches!(
            outcomes[0],
            ApplyOutcome::Duplicate {
                first_offset: 0,
                ..
            }
        ),
        "{:?}",
        outcomes[0]
    );
    assert!(
        matches!(
            outcomes[1],
            ApplyOutcome::Appended {
                first_offset: 3,
                ..
            }
        ),
        "after the window a send is new again: {:?}",
        outcomes[1]
    );
    assert_eq!(
        store.queue_offsets("T").unwrap(),
        vec![(0, 0, 0), (1, 0, 6)]
    );
}

#[test]
fn out_of_range_offsets_are_reported_with_the_valid_range() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config()).unwrap();
    propose(
        &store,
        vec![
            encode_create_topic(&default_topic("T", 1)),
            encode_messages("T", 0, 2, &send_body(&messages("T", 2, "A")), 1),
        ],
    );
    let read = store.read_queue("T", 0, 9, 10, 1 << 20, &[]).unwrap();
    assert_eq!(read.status, ReadStatus::OffsetMoved);
    assert_eq!(
        (read.next_offset, read.min_offset, read.max_offset),
        (2, 0, 2)
    );
    let read = store.read_queue("T", 0, 2, 10, 1 << 20, &[]).unwrap();
    assert_eq!(read.status, ReadStatus::Empty);
}

#[test]
fn restart_without_checkpoint_replays_everything() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path(), config()).unwrap();
        propose(
            &store,
            vec![
                encode_create_topic(&default_topic("T", 1)),
                encode_messages("T", 0, 50, &send_body(&messages("T", 50, "A")), 1),
                encode_commit_offsets(&CommitOffsets {
                    group: "g".into(),
                    offsets: vec![("T".into(), 0, 7)],
                }),
            ],
        );
    }
    let store = Store::open(dir.path(), config()).unwrap();
    assert_eq!(store.applied_index(), 0);
    replay_all(&store);
    assert_eq!(bodies(&store, "T", 0, 0, &[]).len(), 50);
    assert_eq!(store.consumer_offset("g", "T", 0).unwrap(), Some(7));
}

#[test]
fn topics_grow_queues_and_are_deleted_with_their_queues_offsets_and_keys_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let delete = || encode_delete_topic(&DeleteTopic { name: "T".into() });
    {
        let store = Store::open(dir.path(), config()).unwrap();
        let outcomes = propose(
            &store,
            vec![
                encode_create_topic(&default_topic("T", 1)),
                encode_messages("T", 0, 20, &send_body(&messages("T", 20, "A")), 1),
                encode_commit_offsets(&CommitOffsets {
                    group: "g".into(),
                    offsets: vec![("T".into(), 0, 5)],
                }),
                encode_update_topic(&default_topic("T", 3)),
                encode_messages("T", 2, 1, &send_body(&messages("T", 1, "B")), 2),
                encode_update_topic(&default_topic("T", 2)),
                encode_update_topic(&default_topic("Missing", 2)),
            ],
        );
        assert_eq!(outcomes[3], ApplyOutcome::TopicUpdated);
        assert!(
            matches!(&outcomes[5], ApplyOutcome::Rejected(r) if r.contains("cannot be removed"))
        );
        assert!(matches!(&outcomes[6], ApplyOutcome::Rejected(r) if r.contains("does not exist")));
        assert_eq!(store.topic("T").unwrap().queues, 3);
        assert_eq!(bodies(&store, "T", 2, 0, &[]), ["B-0"]);
        assert_eq!(store.checkpoint().unwrap(), 7);
        // Messages appended in the same apply call as the delete, then the delete.
        let outcomes = propose(
            &store,
            vec![
                encode_messages("T", 0, 2, &send_body(&messages("T", 2, "C")), 3),
                delete(),
                delete(),
            ],
        );
        assert_eq!(outcomes[1], ApplyOutcome::TopicDeleted);
        assert!(matches!(&outcomes[2], ApplyOutcome::Rejected(_)));
        assert!(store.topic("T").is_none());
        assert!(store.queue_offsets("T").is_none());
        assert_eq!(store.consumer_offset("g", "T", 0).unwrap(), None);
        assert!(store.find_by_key("T", "k1", 10).unwrap().is_empty());
        assert!(!dir.path().join("cq").join("T").exists());
        // Created again under the same name: empty queues, no old keys.
        propose(
            &store,
            vec![
                encode_create_topic(&default_topic("T", 1)),
                encode_messages("T", 0, 1, &send_body(&messages("T", 1, "D")), 4),
            ],
        );
        assert_eq!(bodies(&store, "T", 0, 0, &[]), ["D-0"]);
        assert_eq!(store.find_by_key("T", "k0", 10).unwrap().len(), 1);
        // Crash before a checkpoint covers the delete.
    }
    let store = Store::open(dir.path(), config()).unwrap();
    replay_all(&store);
    assert_eq!(store.topic("T").unwrap().queues, 1);
    assert_eq!(bodies(&store, "T", 0, 0, &[]), ["D-0"]);
    assert_eq!(store.consumer_offset("g", "T", 0).unwrap(), None);
    store.checkpoint().unwrap();
    assert_eq!(
        std::fs::read_dir(dir.path().join("cq-deleted"))
            .unwrap()
            .count(),
        0,
        "a checkpoint past the delete removes the old queues"
    );
    drop(store);
    let store = Store::open(dir.path(), config()).unwrap();
    assert_eq!(store.queue_offsets("T").unwrap(), vec![(0, 0, 1)]);
    assert_eq!(bodies(&store, "T", 0, 0, &[]), ["D-0"]);

    // A delete whose database writes outlive the crash (RocksDB flushes at close) while the
    // checkpoint predates it: replay still removes the checkpointed queues, and a commit
    // proposed before the delete does not bring its offset back.
    let delete_t = || encode_delete_topic(&DeleteTopic { name: "T".into() });
    store.checkpoint().unwrap();
    propose(
        &store,
        vec![
            // Waiting for its time when the topic goes: it goes too.
            scheduled_send("T", 0, &send_body(&messages("T", 1, "S")), 1, 1_000),
            encode_commit_offsets(&CommitOffsets {
                group: "g".into(),
                offsets: vec![("T".into(), 0, 1)],
            }),
            delete_t(),
            encode_commit_offsets(&CommitOffsets {
                group: "late".into(),
                offsets: vec![("T".into(), 0, 1)],
            }),
        ],
    );
    drop(store);
    let store = Store::open(dir.path(), config()).unwrap();
    replay_all(&store);
    assert!(store.topic("T").is_none());
    assert!(store.queue_offsets("T").is_none());
    assert!(store.scheduled_due(0, u64::MAX, 10).unwrap().is_empty());
    store.checkpoint().unwrap();
    drop(store);
    let store = Store::open(dir.path(), config()).unwrap();
    propose(
        &store,
        vec![
            encode_create_topic(&default_topic("T", 1)),
            encode_messages("T", 0, 1, &send_body(&messages("T", 1, "E")), 5),
        ],
    );
    assert_eq!(bodies(&store, "T", 0, 0, &[]), ["E-0"]);
    assert_eq!(store.consumer_offset("g", "T", 0).unwrap(), None);
    assert_eq!(store.consumer_offset("late", "T", 0).unwrap(), None);
}

#[test]
fn restart_after_checkpoint_cuts_queues_to_the_checkpoint_and_replays_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path(), config()).unwrap();
        propose(
            &store,
            vec![
                encode_create_topic(&default_topic("T", 1)),
                encode_messages("T", 0, 100, &send_body(&messages("T", 100, "A")), 1),
            ],
        );
        assert_eq!(store.checkpoint().unwrap(), 2);
        // Applied after the checkpoint: these units must not be doubled by replay.
        propose(
            &store,
            vec![
                encode_messages("T", 0, 30, &send_body(&messages("T", 30, "B")), 2),
                encode_create_topic(&default_topic("U", 1)),
                encode_messages("U", 0, 3, &send_body(&messages("U", 3, "C")), 3),
            ],
        );
    }
    let store = Store::open(dir.path(), config()).unwrap();
    assert_eq!(store.applied_index(), 2);
    assert_eq!(store.queue_offsets("T").unwrap(), vec![(0, 0, 100)]);
    replay_all(&store);
    assert_eq!(store.queue_offsets("T").unwrap(), vec![(0, 0, 130)]);
    let all = bodies(&store, "T", 0, 0, &[]);
    assert_eq!(all.len(), 130);
    assert_eq!(all[100], "B-0");
    assert_eq!(bodies(&store, "U", 0, 0, &[]), ["C-0", "C-1", "C-2"]);
}

#[test]
fn retention_deletes_old_segments_and_moves_queue_minimums() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config()).unwrap();
    propose(&store, vec![encode_create_topic(&default_topic("T", 1))]);
    for _ in 0..40 {
        propose(
            &store,
            vec![encode_messages(
                "T",
                0,
                10,
                &send_body(&messages("T", 10, "A")),
                1,
            )],
        );
    }
    let before = store.log_bytes();
    // Nothing is deleted before it is checkpointed, however old.
    let future = SystemTime::now() + Duration::from_secs(7200);
    assert_eq!(store.enforce_retention(future).unwrap(), None);
    store.checkpoint().unwrap();
    assert_eq!(
        store.enforce_retention(SystemTime::now()).unwrap(),
        None,
        "young segments stay"
    );
    let start = store
        .enforce_retention(future)
        .unwrap()
        .expect("old segments deleted");
    assert!(store.log_bytes() < before);
    let (_, min, max) = store.queue_offsets("T").unwrap()[0];
    assert!(min > 0 && max == 400, "min {min} max {max}");
    let read = store.read_queue("T", 0, 0, 10, 1 << 20, &[]).unwrap();
    assert_eq!(read.status, ReadStatus::OffsetMoved);
    assert_eq!(read.next_offset, min);
    assert_eq!(bodies(&store, "T", 0, min, &[]).len() as u64, 400 - min);
    drop(store);
    let store = Store::open(dir.path(), config()).unwrap();
    assert_eq!(store.log().first_index(), start.index + 1);
    assert_eq!(store.queue_offsets("T").unwrap()[0], (0, min, 400));
}

/// Copies `from`'s log entries after `after` into `to` and applies them, as a follower does.
fn replicate(from: &Store, to: &Store, after: u64) {
    let entries: Vec<LogEntry> = from
        .log()
        .entries(after + 1, from.log().last_index() + 1, None)
        .unwrap()
        .into_iter()
        .map(|(_, entry)| entry)
        .collect();
    let positions = to.log().append(&entries).unwrap();
    let committed: Vec<CommittedEntry> = entries
        .into_iter()
        .zip(positions)
        .map(|(entry, position)| CommittedEntry {
            index: entry.index,
            term: entry.term,
            entry_type: entry.entry_type,
            position,
            payload: entry.payload,
        })
        .collect();
    to.apply(&committed).unwrap();
}

#[test]
fn a_replica_starts_from_the_snapshot_at_the_log_start_and_converges() {
    let leader_dir = tempfile::tempdir().unwrap();
    let leader = Store::open(leader_dir.path(), config()).unwrap();
    propose(&leader, vec![encode_create_topic(&default_topic("T", 2))]);
    for round in 0..40u64 {
        let queue = (round % 2) as u32;
        let body = send_body(&messages("T", 10, &format!("R{round}")));
        propose(&leader, vec![encode_messages("T", queue, 10, &body, 1)]);
        let commit = CommitOffsets {
            group: "G".into(),
            offsets: vec![("T".into(), queue, round * 5)],
        };
        propose(&leader, vec![encode_commit_offsets(&commit)]);
    }
    // Nothing to install before retention deleted anything.
    assert!(leader.snapshot_at_log_start().unwrap().is_none());
    leader.checkpoint().unwrap();
    let future = SystemTime::now() + Duration::from_secs(7200);
    let start = leader
        .enforce_retention(future)
        .unwrap()
        .expect("compacted");
    let (point, snapshot) = leader.snapshot_at_log_start().unwrap().expect("a base");
    assert_eq!(point, start);

    // A brand-new replica, and one whose log diverged, both end up equal to the leader.
    let fresh_dir = tempfile::tempdir().unwrap();
    let stale_dir = tempfile::tempdir().unwrap();
    let stale = Store::open(stale_dir.path(), config()).unwrap();
    propose(
        &stale,
        vec![encode_create_topic(&default_topic("Other", 1))],
    );
    drop(stale);
    for dir in [fresh_dir.path(), stale_dir.path()] {
        let replica = Store::open(dir, config()).unwrap();
        let base = replica.install_snapshot(&snapshot).unwrap();
        assert_eq!(base.point(), start);
        assert_eq!(replica.applied(), start);
        assert_eq!(replica.log().first_index(), start.index + 1);
        assert!(replica.topic("Other").is_none());
        replicate(&leader, &replica, start.index);
        drop(replica);
        // And after a restart.
        let replica = Store::open(dir, config()).unwrap();
        replay_all(&replica);
        assert_eq!(replica.applied(), leader.applied());
        for queue in 0..2 {
            assert_eq!(
                replica.queue_offsets("T").unwrap()[queue as usize],
                leader.queue_offsets("T").unwrap()[queue as usize]
            );
            let (_, min, _) = leader.queue_offsets("T").unwrap()[queue as usize];
            assert_eq!(
                bodies(&replica, "T", queue, min, &[]),
                bodies(&leader, "T", queue, min, &[])
            );
            assert_eq!(
                replica.consumer_offset("G", "T", queue).unwrap(),
                leader.consumer_offset("G", "T", queue).unwrap()
            );
        }
    }
}

#[test]
fn a_damaged_snapshot_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config()).unwrap();
    propose(&store, vec![encode_create_topic(&default_topic("T", 1))]);
    assert!(store.install_snapshot(b"\x00\x00\x00\x00garbage").is_err());
    assert!(!store.is_failed());
    assert!(store.topic("T").is_some());
    assert_eq!(store.applied_index(), 1);
}

#[test]
fn a_corrupt_log_opened_for_repair_is_cut_and_derived_state_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config()).unwrap();
    propose(&store, vec![encode_create_topic(&default_topic("T", 1))]);
    for round in 0..30 {
        let body = send_body(&messages("T", 10, &format!("R{round}")));
        propose(&store, vec![encode_messages("T", 0, 10, &body, 1)]);
    }
    store.checkpoint().unwrap();
    drop(store);
    // Damage a record in the first (sealed) segment.
    let segment = dir.path().join("log").join(format!("{:020}", 0));
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes[5000] ^= 0x40;
    std::fs::write(&segment, bytes).unwrap();

    assert!(
        Store::open(dir.path(), config()).is_err(),
        "refused by default"
    );
    let repair = StoreConfig {
        cut_corruption: true,
        ..config()
    };
    let store = Store::open(dir.path(), repair).unwrap();
    assert!(store.open_report().corruption.is_some());
    let last = store.log().last_index();
    assert!(last < 30, "cut at the damage: {last}");
    replay_all(&store);
    assert_eq!(store.applied_index(), last);
    let (_, min, max) = store.queue_offsets("T").unwrap()[0];
    assert_eq!(
        (min, max),
        (0, (last - 1) * 10),
        "queues rebuilt up to the cut"
    );
    assert_eq!(bodies(&store, "T", 0, 0, &[]).len() as u64, max);
    // The log takes new entries after the cut.
    propose(
        &store,
        vec![encode_messages(
            "T",
            0,
            1,
            &send_body(&messages("T", 1, "new")),
            1,
        )],
    );
    assert_eq!(store.queue_offsets("T").unwrap()[0].2, max + 1);
}

fn scheduled_send(topic: &str, queue: u32, body: &Bytes, count: u32, due_ms: u64) -> Vec<u8> {
    encode_messages_of(
        &MessagesKind::Schedule {
            due_ms,
            dedup: true,
        },
        topic,
        queue,
        count,
        body,
        1,
    )
}

#[test]
fn scheduled_messages_wait_outside_the_queue_until_delivered_once_and_survive_replay() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config()).unwrap();
    propose(&store, vec![encode_create_topic(&default_topic("T", 2))]);
    let early = send_body(&messages("T", 2, "early"));
    let late = send_body(&messages("T", 1, "late"));
    let outcomes = propose(
        &store,
        vec![
            scheduled_send("T", 0, &early, 2, 1_000),
            scheduled_send("T", 1, &late, 1, 5_000),
            // A producer's retry of the first send: recognised, not scheduled twice.
            scheduled_send("T", 0, &early, 2, 1_000),
        ],
    );
    assert!(matches!(
        outcomes[0],
        ApplyOutcome::Scheduled {
            due_ms: 1_000,
            count: 2,
            ..
        }
    ));
    assert!(matches!(outcomes[2], ApplyOutcome::Duplicate { .. }));
    assert_eq!(
        store.queue_offsets("T").unwrap(),
        vec![(0, 0, 0), (1, 0, 0)]
    );
    assert_eq!(store.scheduled_due(0, u64::MAX, 100).unwrap().len(), 3);

    let due = store.scheduled_due(0, 2_000, 100).unwrap();
    assert_eq!(due.len(), 2);
    let delivered = propose(&store, vec![encode_deliver(&due, 2_000)]);
    assert!(matches!(
        delivered[0],
        ApplyOutcome::Appended {
            first_offset: 0,
            count: 2,
            ..
        }
    ));
    assert_eq!(bodies(&store, "T", 0, 0, &[]), vec!["early-0", "early-1"]);
    let found = store.find_by_id(&due[0].id).unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(
        (found[0].0.topic.as_str(), found[0].0.queue_offset),
        ("T", 0)
    );

    // Cancel the late one.
    let late_message = store.scheduled_due(0, u64::MAX, 100).unwrap().remove(0);
    assert_eq!(
        store.scheduled_with_id(&late_message.id).unwrap(),
        vec![(5_000, "T".to_string())]
    );
    let cancel = CancelScheduled {
        due_ms: late_message.due_ms,
        id: late_message.id,
        topic: "T".into(),
    };
    assert_eq!(
        propose(&store, vec![encode_cancel_scheduled(&cancel)]),
        vec![ApplyOutcome::Cancelled]
    );
    assert!(store.scheduled_due(0, u64::MAX, 100).unwrap().is_empty());

    // A crash without a checkpoint replays everything to the same state.
    drop(store);
    let store = Store::open(dir.path(), config()).unwrap();
    replay_all(&store);
    assert!(store.scheduled_due(0, u64::MAX, 100).unwrap().is_empty());
    assert_eq!(bodies(&store, "T", 0, 0, &[]), vec!["early-0", "early-1"]);
    assert_eq!(bodies(&store, "T", 1, 0, &[]), Vec::<String>::new());
}

#[test]
fn scheduled_messages_travel_in_snapshots_after_their_entries_are_deleted() {
    let leader_dir = tempfile::tempdir().unwrap();
    let leader = Store::open(leader_dir.path(), config()).unwrap();
    propose(&leader, vec![encode_create_topic(&default_topic("T", 1))]);
    let body = send_body(&messages("T", 3, "later"));
    propose(&leader, vec![scheduled_send("T", 0, &body, 3, 9_000)]);
    for round in 0..40 {
        let filler = send_body(&messages("T", 10, &format!("R{round}")));
        propose(&leader, vec![encode_messages("T", 0, 10, &filler, 1)]);
    }
    leader.checkpoint().unwrap();
    let future = SystemTime::now() + Duration::from_secs(7200);
    leader
        .enforce_retention(future)
        .unwrap()
        .expect("compacted");
    // The entry that scheduled them is gone; they are still waiting.
    assert!(leader.log().first_index() > 2);
    assert_eq!(leader.scheduled_due(0, u64::MAX, 10).unwrap().len(), 3);

    let (_, snapshot) = leader.snapshot_at_log_start().unwrap().expect("a base");
    let replica_dir = tempfile::tempdir().unwrap();
    let replica = Store::open(replica_dir.path(), config()).unwrap();
    replica.install_snapshot(&snapshot).unwrap();
    assert_eq!(
        replica.scheduled_due(0, u64::MAX, 10).unwrap(),
        leader.scheduled_due(0, u64::MAX, 10).unwrap()
    );
}

#[test]
fn one_message_may_wait_twice_for_the_same_topic() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config()).unwrap();
    propose(&store, vec![encode_create_topic(&default_topic("R", 1))]);
    let body = send_body(&messages("R", 1, "retry"));
    let copy = |due_ms| {
        encode_messages_of(
            &MessagesKind::Schedule {
                due_ms,
                dedup: false,
            },
            "R",
            0,
            1,
            &body,
            1,
        )
    };
    propose(&store, vec![copy(100), copy(200)]);
    let waiting = store.scheduled_due(0, u64::MAX, 10).unwrap();
    assert_eq!(waiting.len(), 2);
    let id = waiting[0].id;
    assert_eq!(
        store.scheduled_with_id(&id).unwrap(),
        vec![(100, "R".to_string()), (200, "R".to_string())]
    );
    assert_eq!(
        store.scheduled_by_id(&id, "R").unwrap().unwrap().due_ms,
        100
    );
    propose(&store, vec![encode_deliver(&waiting[..1], 150)]);
    // The second copy is still found by its id.
    assert_eq!(
        store.scheduled_with_id(&id).unwrap(),
        vec![(200, "R".to_string())]
    );
    assert_eq!(
        store.scheduled_by_id(&id, "R").unwrap().unwrap().due_ms,
        200
    );
}
