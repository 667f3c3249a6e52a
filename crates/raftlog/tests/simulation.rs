//! Deterministic simulation of a three-voter group over real stores (on tmpfs): the real Raft
//! loop code ([`Driver`]) is stepped by a seeded scheduler that delays, drops, duplicates and
//! reorders messages, partitions members, and crashes them with the loss of everything not
//! synced (a power loss; sometimes a damaged disk also loses synced bytes at the log's end, and
//! the member must repair from its peers), between steps or at crash points inside the storage and Raft code
//! (`fail` crate: after an append before its fsync, before an fsync, before applying, between
//! the consume queues and RocksDB, before a checkpoint, before the hard state, after the fsync
//! but before the acknowledgements). Clients propose sends throughout.
//!
//! Checked on every step and at the end:
//! - at most one leader per term;
//! - every member applies the same entry at each index (also when replaying after a crash);
//! - every acknowledged proposal is the entry applied at the index it was acknowledged with,
//!   on every member, once the faults stop;
//! - the members' consume queues hold the same messages.
//!
//! `FERROMQ_SIM_SEEDS=N` runs N seeds (default 24), `FERROMQ_SIM_SEED=S` only seed S; a seed
//! that ever fails belongs in `REGRESSION_SEEDS`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use ferromq_protocol::message::{
    decode_record, encode_record, put_length_prefixed, Message, MessageId,
};
use ferromq_raftlog::{
    Driver, Members, PeerSender, ProposeError, RaftConfig, RaftMessage, RaftMetrics, Role,
    StateMachine,
};
use ferromq_store::{
    command::{encode_create_topic, encode_messages},
    default_topic, CommittedEntry, Store, StoreConfig, StoreError,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::oneshot;

/// Seeds that once failed; always run.
const REGRESSION_SEEDS: &[u64] = &[];
const NODES: u64 = 3;
const FAULTY_STEPS: u64 = 1500;
const HEAL_STEPS: u64 = 3000;
const CRASH_POINTS: &[&str] = &[
    "commitlog::after_append",
    "commitlog::before_sync",
    "store::before_apply",
    "store::between_queues_and_state",
    "store::before_checkpoint",
    "raft::write_hard_state",
    "raft::before_persisted_messages",
];

fn hash(bytes: &[u8]) -> u64 {
    let mut hasher = DefaultHasher::new();
    bytes.hash(&mut hasher);
    hasher.finish()
}

/// What was applied at each index, by anyone: the first application fixes it.
#[derive(Default)]
struct History {
    applied: BTreeMap<u64, (u64, u64)>,
}

/// Applies to the real store and checks every applied entry against the shared history.
struct Recorder {
    node: u64,
    store: Arc<Store>,
    history: Arc<Mutex<History>>,
}

impl StateMachine for Recorder {
    type Output = u64;

    fn apply(&mut self, entries: &[CommittedEntry]) -> Result<Vec<u64>, StoreError> {
        self.store.apply(entries)?;
        let mut history = self.history.lock().unwrap();
        for entry in entries {
            let seen = (entry.term, hash(&entry.payload));
            let first = *history.applied.entry(entry.index).or_insert(seen);
            assert_eq!(
                first, seen,
                "node {} applied a different entry at index {}",
                self.node, entry.index
            );
        }
        Ok(entries.iter().map(|e| e.index).collect())
    }
}

#[derive(Clone, Default)]
struct Outbox(Arc<Mutex<Vec<RaftMessage>>>);

impl PeerSender for Outbox {
    fn send(&mut self, messages: Vec<RaftMessage>) {
        self.0.lock().unwrap().extend(messages);
    }
}

struct Node {
    id: u64,
    dir: PathBuf,
    store: Option<Arc<Store>>,
    driver: Option<Driver<Recorder>>,
    outbox: Outbox,
    /// Step at which a crashed node comes back.
    down_until: Option<u64>,
}

fn store_config() -> StoreConfig {
    StoreConfig {
        segment_bytes: 64 * 1024,
        cq_units_per_file: 1000,
        cut_corruption: true,
        ..StoreConfig::default()
    }
}

impl Node {
    /// Starts (or restarts) the node; a crash point firing during startup leaves it down.
    fn start(&mut self, history: &Arc<Mutex<History>>) -> bool {
        let store = match Store::open(&self.dir, store_config()) {
            Ok(store) => Arc::new(store),
            Err(_) => return false,
        };
        let config = RaftConfig {
            node_id: self.id,
            voters: (1..=NODES).collect(),
            // Fixed, distinct timeouts: deterministic, and no endless split votes.
            election_ticks: 8 + 3 * self.id as usize,
            heartbeat_ticks: 2,
            randomized_election: false,
            ..RaftConfig::default()
        };
        let recorder = Recorder {
            node: self.id,
            store: store.clone(),
            history: history.clone(),
        };
        let driver = Driver::open(
            store.clone(),
            config,
            recorder,
            Box::new(self.outbox.clone()),
            RaftMetrics::new(&prometheus::Registry::new()),
            Members::default(),
        );
        let Ok(driver) = driver else {
            store.log().simulate_power_loss().unwrap();
            return false;
        };
        self.store = Some(store);
        self.driver = Some(driver);
        self.down_until = None;
        true
    }

    /// A power loss: unsynced log bytes are gone, memory is gone.
    fn crash(&mut self, until: u64) {
        self.crash_losing(until, 0);
    }

    /// A power loss that also takes `damage` synced bytes off the newest segment's end (a
    /// failing disk): the node lost entries it acknowledged and must repair from its peers.
    fn crash_losing(&mut self, until: u64, damage: u64) {
        if let Some(store) = self.store.take() {
            store.log().simulate_power_loss().unwrap();
        }
        if damage > 0 {
            let newest = std::fs::read_dir(self.dir.join("log"))
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.file_name().is_some_and(|n| n.len() == 20))
                .max()
                .unwrap();
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(&newest)
                .unwrap();
            let len = file.metadata().unwrap().len();
            file.set_len(len.saturating_sub(damage)).unwrap();
        }
        self.driver = None;
        self.outbox.0.lock().unwrap().clear();
        self.down_until = Some(until);
    }

    fn is_up(&self) -> bool {
        self.driver.is_some()
    }
}

struct InFlight {
    at: u64,
    to: u64,
    message: RaftMessage,
}

struct Proposal {
    payload_hash: u64,
    answer: oneshot::Receiver<Result<u64, ProposeError>>,
}

fn send_payload(seq: u64) -> Vec<u8> {
    let mut id = [0u8; 16];
    id[8..].copy_from_slice(&seq.to_be_bytes());
    let mut record = BytesMut::new();
    encode_record(
        MessageId(id),
        seq,
        &Message::new("T", format!("m{seq}")),
        &mut record,
    );
    let mut body = BytesMut::new();
    put_length_prefixed(&mut body, &record);
    encode_messages("T", 0, 1, &body, 1_000_000 + seq)
}

fn shm_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        tempfile::tempdir_in(shm).unwrap()
    } else {
        tempfile::tempdir().unwrap()
    }
}

fn run(seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let root = shm_dir();
    let history = Arc::new(Mutex::new(History::default()));
    let mut nodes: Vec<Node> = (1..=NODES)
        .map(|id| Node {
            id,
            dir: root.path().join(format!("n{id}")),
            store: None,
            driver: None,
            outbox: Outbox::default(),
            down_until: None,
        })
        .collect();
    for node in &mut nodes {
        assert!(node.start(&history));
    }
    let mut network: Vec<InFlight> = Vec::new();
    // Pairs that cannot talk, until a step.
    let mut partition: Option<(Vec<u64>, u64)> = None;
    let mut proposals: Vec<Proposal> = Vec::new();
    let mut acknowledged: Vec<(u64, u64)> = Vec::new();
    let mut leaders: HashMap<u64, u64> = HashMap::new();
    let mut seq = 0u64;
    let mut topic_created = false;
    let mut crashes = 0;
    let mut crash_points = 0;

    let mut step = 0u64;
    loop {
        step += 1;
        let faulty = step <= FAULTY_STEPS;
        // Faults.
        if faulty {
            if partition.as_ref().is_some_and(|(_, until)| *until <= step) {
                partition = None;
            }
            if partition.is_none() && rng.gen_bool(0.01) {
                let isolated = rng.gen_range(1..=NODES);
                partition = Some((vec![isolated], step + rng.gen_range(20..200)));
            }
            if rng.gen_bool(0.004) {
                // The next node to pass this point crashes there.
                let point = CRASH_POINTS[rng.gen_range(0..CRASH_POINTS.len())];
                fail::cfg(point, "1*return").unwrap();
            }
            if rng.gen_bool(0.01) {
                let node = rng.gen_range(0..NODES as usize);
                let failed = nodes[node]
                    .store
                    .as_ref()
                    .is_some_and(|store| store.checkpoint().is_err());
                if failed {
                    nodes[node].crash(step + 5);
                    crash_points += 1;
                }
            }
            if rng.gen_bool(0.004) {
                let victim = rng.gen_range(0..NODES as usize);
                if nodes[victim].is_up() {
                    let until = step + rng.gen_range(5..80);
                    // Sometimes the disk also loses synced bytes at the log's end; only while
                    // every other member is up and whole (with two damaged logs, acknowledged
                    // entries may be gone for good, and the group rightly stays unavailable).
                    let others_whole = nodes.iter().enumerate().all(|(i, n)| {
                        i == victim
                            || n.driver
                                .as_ref()
                                .is_some_and(|d| d.status().repairing_until.is_none())
                    });
                    let damage = if others_whole && rng.gen_bool(0.3) {
                        rng.gen_range(1..3000)
                    } else {
                        0
                    };
                    nodes[victim].crash_losing(until, damage);
                    crashes += 1;
                }
            }
        } else {
            partition = None;
            if step == FAULTY_STEPS + 1 {
                for point in CRASH_POINTS {
                    fail::remove(point);
                }
            }
        }
        for node in &mut nodes {
            let due = node
                .down_until
                .is_some_and(|until| until <= step || !faulty);
            if due && !node.start(&history) {
                crash_points += 1;
                node.crash(step + 5);
            }
        }
        let cut = |from: u64, to: u64| {
            partition
                .as_ref()
                .is_some_and(|(side, _)| side.contains(&from) != side.contains(&to))
        };

        // Deliver what is due, in arrival order.
        let (due, later): (Vec<InFlight>, Vec<InFlight>) =
            network.drain(..).partition(|m| m.at <= step);
        network = later;
        for flight in due {
            if let Some(driver) = nodes[(flight.to - 1) as usize].driver.as_mut() {
                driver.step(flight.message);
            }
        }

        // Clients.
        if faulty && rng.gen_bool(0.3) {
            let target = rng.gen_range(0..NODES as usize);
            if let Some(driver) = nodes[target].driver.as_mut() {
                let payload = if topic_created {
                    seq += 1;
                    send_payload(seq)
                } else {
                    encode_create_topic(&default_topic("T", 1))
                };
                proposals.push(Proposal {
                    payload_hash: hash(&payload),
                    answer: driver.propose(payload),
                });
            }
        }

        // Time passes for everyone; everyone processes.
        for node in &mut nodes {
            if let Some(driver) = node.driver.as_mut() {
                if driver.tick().and_then(|()| driver.process()).is_err() {
                    // A crash point fired: the process would die here.
                    crash_points += 1;
                    node.crash(step + rng.gen_range(5..40));
                    continue;
                }
                let status = driver.status();
                if status.role == Role::Leader {
                    let leader = *leaders.entry(status.term).or_insert(node.id);
                    assert_eq!(
                        leader, node.id,
                        "seed {seed}: two leaders in term {}",
                        status.term
                    );
                }
            }
        }

        // The network takes what was sent.
        for node in &nodes {
            let sent: Vec<RaftMessage> = node.outbox.0.lock().unwrap().drain(..).collect();
            for message in sent {
                let to = message.to;
                if faulty && (cut(node.id, to) || rng.gen_bool(0.05)) {
                    continue;
                }
                let delay = if faulty { rng.gen_range(1..4) } else { 1 };
                if faulty && rng.gen_bool(0.01) {
                    network.push(InFlight {
                        at: step + delay + 1,
                        to,
                        message: message.clone(),
                    });
                }
                network.push(InFlight {
                    at: step + delay,
                    to,
                    message,
                });
            }
        }

        // Answers.
        proposals.retain_mut(|proposal| match proposal.answer.try_recv() {
            Ok(Ok(index)) => {
                acknowledged.push((index, proposal.payload_hash));
                topic_created = true;
                false
            }
            Ok(Err(_)) | Err(oneshot::error::TryRecvError::Closed) => false,
            Err(oneshot::error::TryRecvError::Empty) => true,
        });

        if !faulty {
            let applied: Vec<u64> = nodes
                .iter()
                .map(|n| n.store.as_ref().map_or(0, |s| s.applied_index()))
                .collect();
            let settled = proposals.is_empty()
                && applied.iter().all(|a| *a == applied[0])
                && acknowledged.iter().all(|(index, _)| *index <= applied[0]);
            if settled {
                break;
            }
            if step >= FAULTY_STEPS + HEAL_STEPS {
                let statuses: Vec<String> = nodes
                    .iter()
                    .map(|n| format!("{:?}", n.driver.as_ref().map(|d| d.status())))
                    .collect();
                panic!(
                    "seed {seed}: no agreement after the faults stopped (applied {applied:?})\n{}",
                    statuses.join("\n")
                );
            }
        }
    }

    // Every acknowledged proposal is the entry every member applied at its index.
    let history = history.lock().unwrap();
    for (index, payload_hash) in &acknowledged {
        assert_eq!(
            history.applied.get(index).map(|(_, h)| *h),
            Some(*payload_hash),
            "seed {seed}: acknowledged entry at {index} lost or replaced"
        );
    }
    // The members derived the same queues.
    let queues: Vec<Vec<String>> = nodes
        .iter()
        .map(|node| {
            let store = node.store.as_ref().unwrap();
            let read = store.read_queue("T", 0, 0, 100_000, 1 << 30, &[]).unwrap();
            read.messages
                .into_iter()
                .map(|(_, record)| {
                    String::from_utf8(decode_record(record).unwrap().body.to_vec()).unwrap()
                })
                .collect()
        })
        .collect();
    assert!(
        queues.iter().all(|q| *q == queues[0]),
        "seed {seed}: members' queues differ"
    );
    eprintln!(
        "seed {seed}: {} acknowledged, {crashes} crashes, {crash_points} at crash points, {} terms with a leader, {} entries, {} messages queued, {step} steps",
        acknowledged.len(),
        leaders.len(),
        history.applied.len(),
        queues[0].len()
    );
    assert!(
        acknowledged.len() > 20,
        "seed {seed}: the simulation made too little progress ({} acknowledged)",
        acknowledged.len()
    );
}

fn seeds() -> Vec<u64> {
    if let Some(seed) = std::env::var("FERROMQ_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return vec![seed];
    }
    let count: u64 = std::env::var("FERROMQ_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(24);
    REGRESSION_SEEDS.iter().copied().chain(0..count).collect()
}

#[test]
fn a_group_under_random_faults_agrees_and_keeps_every_acknowledged_entry() {
    for seed in seeds() {
        run(seed);
    }
}
