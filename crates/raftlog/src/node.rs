//! The Raft node: one dedicated thread runs the ready loop (tick, take proposals and peer
//! messages, persist, send, apply, answer proposers), in the shape of raft-rs's
//! `five_mem_node` example. Proposals that arrive while a cycle persists are batched into the
//! next cycle, so concurrent sends share one fsync (group commit).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ferromq_store::{CommittedEntry, Store, StoreError};
use protobuf::Message as _;
use raft::prelude::{ConfChange, Entry, EntryType, Message, MessageType};
use raft::{RawNode, SnapshotStatus, StateRole};
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};
use tracing::{debug, error, info, warn};

use crate::membership::{self, Members, MembershipChange, MembershipError};
use crate::metrics::RaftMetrics;
use crate::storage::RaftStorage;

/// When appended entries become durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlushPolicy {
    /// fsync before an entry counts as persisted (and before any send is acknowledged).
    Sync,
    /// fsync on an interval; an acknowledged send can be lost in a power failure.
    Async,
}

#[derive(Debug, Clone)]
pub struct RaftConfig {
    pub node_id: u64,
    /// Voters of a brand-new group; ignored once the node has a membership.
    pub voters: Vec<u64>,
    /// Joining an existing group: start with an empty log and no membership, and wait for the
    /// leader (which adds this node with a membership change) to send the log or a snapshot.
    pub join: bool,
    /// Randomize each election timeout in `[election_ticks, 2 × election_ticks)` (Raft's
    /// defence against split votes). Off only in deterministic simulations, which give each
    /// node its own fixed timeout instead.
    pub randomized_election: bool,
    pub tick: Duration,
    pub election_ticks: usize,
    pub heartbeat_ticks: usize,
    pub flush: FlushPolicy,
    /// fsync interval under [`FlushPolicy::Async`].
    pub flush_interval: Duration,
    /// Proposals and messages taken per cycle at most.
    pub max_batch: usize,
    /// Proposals and messages waiting for the loop at most; senders wait beyond that.
    pub queue_capacity: usize,
    /// Snapshot bases larger than this are not put in the Raft message: it carries a ticket,
    /// and the receiver fetches the base over the peer port (see `ticket`).
    pub snapshot_inline_max_bytes: u64,
}

impl Default for RaftConfig {
    fn default() -> Self {
        RaftConfig {
            node_id: 1,
            voters: vec![1],
            join: false,
            randomized_election: true,
            tick: Duration::from_millis(100),
            election_ticks: 10,
            heartbeat_ticks: 2,
            flush: FlushPolicy::Sync,
            flush_interval: Duration::from_millis(200),
            max_batch: 4096,
            queue_capacity: 8192,
            snapshot_inline_max_bytes: 16 << 20,
        }
    }
}

/// Applies committed entries; called on the Raft thread, in log order, also for the replay of
/// committed entries at startup. An error stops the node (fail-stop).
pub trait StateMachine: Send + 'static {
    type Output: Send + 'static;
    fn apply(&mut self, entries: &[CommittedEntry]) -> Result<Vec<Self::Output>, StoreError>;

    /// Called after a snapshot from the leader replaced the store's state.
    fn restored(&mut self) {}
}

/// Delivers Raft messages to other members of the group.
pub trait PeerSender: Send + 'static {
    fn send(&mut self, messages: Vec<Message>);
}

/// The peer sender of a group without other members: there is never anyone to send to.
pub struct NoPeers;

impl PeerSender for NoPeers {
    fn send(&mut self, messages: Vec<Message>) {
        for message in messages {
            error!(to = message.to, "raft message for an unknown peer dropped");
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    Leader,
    Follower,
    Candidate,
    PreCandidate,
}

impl From<StateRole> for Role {
    fn from(role: StateRole) -> Role {
        match role {
            StateRole::Leader => Role::Leader,
            StateRole::Follower => Role::Follower,
            StateRole::Candidate => Role::Candidate,
            StateRole::PreCandidate => Role::PreCandidate,
        }
    }
}

/// What the node looks like from outside, updated after every cycle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RaftStatus {
    pub node_id: u64,
    pub role: Role,
    pub term: u64,
    /// 0 when no leader is known.
    pub leader_id: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    /// First entry still in the log (earlier ones were deleted by retention).
    pub first_index: u64,
    pub last_index: u64,
    pub voters: Vec<u64>,
    /// Members receiving the log without a vote yet (promoted once caught up).
    pub learners: Vec<u64>,
    /// Set while this node's log lacks entries it had (a cut corrupt record, a lost tail): it
    /// neither votes nor campaigns until it has this index again, committed, from a leader.
    pub repairing_until: Option<u64>,
    /// Set when the node stopped on a storage error.
    pub failed: Option<String>,
}

/// Why a proposal was not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    #[error("not the leader (leader: {leader_id:?})")]
    NotLeader { leader_id: Option<u64> },
    /// Leadership changed before the entry was applied; it may or may not be in the log.
    #[error("proposal dropped by a leadership change; outcome unknown")]
    Dropped,
    #[error("raft node stopped")]
    Stopped,
}

enum Event<O> {
    Propose {
        payload: Vec<u8>,
        /// Refused unless this node still leads in this term.
        term: Option<u64>,
        reply: oneshot::Sender<Result<O, ProposeError>>,
    },
    Step(Box<Message>),
    Progress(oneshot::Sender<Vec<PeerProgress>>),
    TransferLeader(u64),
    ChangeMembership {
        change: MembershipChange,
        reply: oneshot::Sender<Result<(), MembershipError>>,
    },
    Shutdown,
}

/// Replication progress of one member, as the leader sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeerProgress {
    pub id: u64,
    /// Highest index known to be in the member's log.
    pub match_index: u64,
    pub next_index: u64,
    /// `Probe`, `Replicate` or `Snapshot`.
    pub state: String,
}

#[derive(Debug, thiserror::Error)]
pub enum RaftError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    #[error("cannot start raft thread: {0}")]
    Thread(std::io::Error),
}

/// Log positions, updated every cycle without waking anyone.
#[derive(Default)]
struct Progress {
    commit_index: AtomicU64,
    applied_index: AtomicU64,
    last_index: AtomicU64,
    /// Set if the Raft thread died of a panic.
    failed: parking_lot::Mutex<Option<String>>,
}

/// A running Raft node. [`RaftNode::shutdown`] stops it; dropping it stops it too.
pub struct RaftNode<O> {
    events: flume::Sender<Event<O>>,
    /// Sent only when role, term, leader, membership or failure change.
    status: watch::Receiver<RaftStatus>,
    progress: Arc<Progress>,
    store: Arc<Store>,
    thread: parking_lot::Mutex<Option<JoinHandle<()>>>,
}

impl<O: Send + 'static> RaftNode<O> {
    /// Replays committed entries the state machine has not seen, then starts the loop.
    pub fn start<SM: StateMachine<Output = O>>(
        store: Arc<Store>,
        config: RaftConfig,
        state_machine: SM,
        peers: Box<dyn PeerSender>,
        metrics: RaftMetrics,
        members: Members,
    ) -> Result<RaftNode<O>, RaftError> {
        let (events_tx, events_rx) = flume::bounded(config.queue_capacity);
        let node_loop = NodeLoop::open(
            store.clone(),
            config.clone(),
            state_machine,
            peers,
            metrics,
            members,
        )?;
        let status_rx = node_loop.status.subscribe();
        let progress = node_loop.progress.clone();
        let panicked = progress.clone();
        let thread = std::thread::Builder::new()
            .name(format!("raft-{}", config.node_id))
            .spawn(move || {
                // A panic (a bug, or raft-rs refusing an impossible message) stops the node like
                // a storage error does: visibly, not with a frozen status.
                let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    node_loop.run(events_rx)
                }));
                if outcome.is_err() {
                    error!("raft thread panicked; the node has stopped");
                    *panicked.failed.lock() = Some("raft thread panicked".into());
                }
            })
            .map_err(RaftError::Thread)?;
        Ok(RaftNode {
            events: events_tx,
            status: status_rx,
            progress,
            store,
            thread: parking_lot::Mutex::new(Some(thread)),
        })
    }

    /// Proposes an entry and waits until it is committed and applied; returns what applying
    /// it produced.
    pub async fn propose(&self, payload: Vec<u8>) -> Result<O, ProposeError> {
        self.propose_event(payload, None).await
    }

    /// Like [`RaftNode::propose`], but only in `term`: a decision made from what this leader
    /// saw in one term must not be logged in a later term of its (another leader may have
    /// acted in between).
    pub async fn propose_in_term(&self, payload: Vec<u8>, term: u64) -> Result<O, ProposeError> {
        self.propose_event(payload, Some(term)).await
    }

    async fn propose_event(&self, payload: Vec<u8>, term: Option<u64>) -> Result<O, ProposeError> {
        let (reply, answer) = oneshot::channel();
        self.events
            .send_async(Event::Propose {
                payload,
                term,
                reply,
            })
            .await
            .map_err(|_| ProposeError::Stopped)?;
        answer.await.map_err(|_| ProposeError::Stopped)?
    }

    /// Each member's replication progress; empty unless this node leads.
    pub async fn peer_progress(&self) -> Result<Vec<PeerProgress>, ProposeError> {
        let (reply, answer) = oneshot::channel();
        self.events
            .send_async(Event::Progress(reply))
            .await
            .map_err(|_| ProposeError::Stopped)?;
        answer.await.map_err(|_| ProposeError::Stopped)
    }

    /// Asks the leader to hand leadership to `to` (which should be caught up); follow
    /// [`RaftNode::subscribe`] to see it happen.
    pub async fn transfer_leader(&self, to: u64) -> Result<(), ProposeError> {
        self.events
            .send_async(Event::TransferLeader(to))
            .await
            .map_err(|_| ProposeError::Stopped)
    }

    /// Proposes a membership change and waits until it is applied. An added learner becomes a
    /// voter later, when the leader sees it caught up.
    pub async fn change_membership(&self, change: MembershipChange) -> Result<(), MembershipError> {
        let (reply, answer) = oneshot::channel();
        self.events
            .send_async(Event::ChangeMembership { change, reply })
            .await
            .map_err(|_| MembershipError::Stopped)?;
        answer.await.map_err(|_| MembershipError::Stopped)?
    }

    /// Hands a message from a peer to the node.
    pub async fn step(&self, message: Message) -> Result<(), ProposeError> {
        self.events
            .send_async(Event::Step(Box::new(message)))
            .await
            .map_err(|_| ProposeError::Stopped)
    }

    pub fn status(&self) -> RaftStatus {
        let mut status = self.status.borrow().clone();
        status.commit_index = self.progress.commit_index.load(Ordering::Acquire);
        status.applied_index = self.progress.applied_index.load(Ordering::Acquire);
        status.last_index = self.progress.last_index.load(Ordering::Acquire);
        status.first_index = self.store.log().first_index();
        if let Some(failed) = self.progress.failed.lock().clone() {
            status.failed = Some(failed);
        }
        status
    }

    /// A receiver woken when the role, term, leader, membership or failure state change (its
    /// log indices may be stale; [`RaftNode::status`] has fresh ones).
    pub fn subscribe(&self) -> watch::Receiver<RaftStatus> {
        self.status.clone()
    }

    /// Stops the loop after the current cycle and waits for it; pending proposals fail with
    /// `Stopped`. Later calls do nothing.
    pub fn shutdown(&self) {
        let _ = self.events.send(Event::Shutdown);
        let thread = self.thread.lock().take();
        if let Some(thread) = thread {
            if thread.join().is_err() {
                error!("raft thread panicked");
            }
        }
    }
}

impl<O> Drop for RaftNode<O> {
    fn drop(&mut self) {
        let _ = self.events.send(Event::Shutdown);
        if let Some(thread) = self.thread.lock().take() {
            let _ = thread.join();
        }
    }
}

/// A Raft node driven by its caller instead of a thread: the caller hands it messages, ticks
/// and proposals and calls [`Driver::process`]; nothing happens in between. For deterministic
/// simulation of whole groups; [`RaftNode`] runs the same code on its own thread.
pub struct Driver<SM: StateMachine> {
    node: NodeLoop<SM>,
}

impl<SM: StateMachine> Driver<SM> {
    pub fn open(
        store: Arc<Store>,
        config: RaftConfig,
        state_machine: SM,
        peers: Box<dyn PeerSender>,
        metrics: RaftMetrics,
        members: Members,
    ) -> Result<Driver<SM>, RaftError> {
        let node = NodeLoop::open(store, config, state_machine, peers, metrics, members)?;
        Ok(Driver { node })
    }

    /// Proposes an entry; the receiver is answered when it is applied (or dropped).
    pub fn propose(
        &mut self,
        payload: Vec<u8>,
    ) -> oneshot::Receiver<Result<SM::Output, ProposeError>> {
        let (reply, answer) = oneshot::channel();
        self.node.handle(Event::Propose {
            payload,
            term: None,
            reply,
        });
        answer
    }

    pub fn change_membership(
        &mut self,
        change: MembershipChange,
    ) -> oneshot::Receiver<Result<(), MembershipError>> {
        let (reply, answer) = oneshot::channel();
        self.node.handle(Event::ChangeMembership { change, reply });
        answer
    }

    pub fn step(&mut self, message: Message) {
        self.node.handle(Event::Step(Box::new(message)));
    }

    pub fn tick(&mut self) -> Result<(), StoreError> {
        self.node.tick(Instant::now())
    }

    pub fn process(&mut self) -> Result<(), StoreError> {
        self.node.process()
    }

    pub fn status(&self) -> RaftStatus {
        status_of(&self.node.raw, None)
    }
}

fn replay<SM: StateMachine>(
    store: &Store,
    storage: &mut RaftStorage,
    commit: u64,
    state_machine: &mut SM,
    members: &Members,
) -> Result<u64, StoreError> {
    let mut replayed = 0;
    while store.applied_index() < commit {
        let from = store.applied_index() + 1;
        let entries = store
            .log()
            .entries(from, commit + 1, Some(64 * 1024 * 1024))?;
        let raft_entries: Vec<Entry> = entries
            .into_iter()
            .map(|(_, e)| crate::storage::to_raft_entry(e))
            .collect::<Result<_, _>>()?;
        for run in split_at_conf_changes(raft_entries) {
            let conf_change = run.last().and_then(decode_conf_change).transpose()?;
            let committed = storage.committed(run)?;
            replayed += committed.len() as u64;
            state_machine.apply(&committed)?;
            if let Some(change) = conf_change {
                // Re-applying a change the stored membership already reflects is harmless:
                // each change sets one member's role outright.
                let mut conf_state = storage.conf_state().clone();
                membership::apply_to(&mut conf_state, &change);
                storage.set_conf_state(conf_state)?;
                members.apply(&change, store.state())?;
            }
        }
    }
    Ok(replayed)
}

/// Splits entries into runs that end with a conf change (or at the end), so a change is
/// applied after everything before it and before everything after it.
fn split_at_conf_changes(entries: Vec<Entry>) -> Vec<Vec<Entry>> {
    let mut runs = vec![Vec::new()];
    for entry in entries {
        let is_change = entry.entry_type != EntryType::EntryNormal;
        runs.last_mut().expect("never empty").push(entry);
        if is_change {
            runs.push(Vec::new());
        }
    }
    runs.retain(|run| !run.is_empty());
    runs
}

/// The conf change an entry carries, if it is a conf-change entry.
fn decode_conf_change(entry: &Entry) -> Option<Result<ConfChange, StoreError>> {
    match entry.entry_type {
        EntryType::EntryNormal => None,
        EntryType::EntryConfChange => Some(ConfChange::parse_from_bytes(&entry.data).map_err(
            |err| StoreError::Decode {
                what: "conf change",
                reason: format!("entry {}: {err}", entry.index),
            },
        )),
        EntryType::EntryConfChangeV2 => Some(Err(StoreError::Inconsistent(format!(
            "joint membership change at index {} is not supported",
            entry.index
        )))),
    }
}

fn status_of(raw: &RawNode<RaftStorage>, failed: Option<String>) -> RaftStatus {
    let raft = &raw.raft;
    RaftStatus {
        node_id: raft.id,
        role: raft.state.into(),
        term: raft.term,
        leader_id: raft.leader_id,
        commit_index: raft.raft_log.committed,
        applied_index: raft.raft_log.applied,
        first_index: raw.store().store().log().first_index(),
        last_index: raft.raft_log.last_index(),
        voters: raw.store().conf_state().voters.clone(),
        learners: raw.store().conf_state().learners.clone(),
        repairing_until: raw.store().repair_target(),
        failed,
    }
}

struct Waiter<O> {
    index: u64,
    term: u64,
    reply: oneshot::Sender<Result<O, ProposeError>>,
}

struct MembershipWaiter {
    index: u64,
    term: u64,
    reply: oneshot::Sender<Result<(), MembershipError>>,
}

/// A snapshot not acknowledged this long is reported failed, so Raft sends it again.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(30);

struct NodeLoop<SM: StateMachine> {
    raw: RawNode<RaftStorage>,
    progress: Arc<Progress>,
    state_machine: SM,
    peers: Box<dyn PeerSender>,
    /// Proposals waiting to be applied, in index order.
    waiters: VecDeque<Waiter<SM::Output>>,
    membership_waiters: VecDeque<MembershipWaiter>,
    members: Members,
    /// Followers sent a snapshot, and when.
    snapshots_sent: HashMap<u64, Instant>,
    config: RaftConfig,
    status: watch::Sender<RaftStatus>,
    metrics: RaftMetrics,
}

impl<SM: StateMachine> NodeLoop<SM> {
    /// Opens the Raft state over the store: bootstraps a founding member, replays committed
    /// entries the state machine has not seen, and runs the first cycle.
    fn open(
        store: Arc<Store>,
        config: RaftConfig,
        mut state_machine: SM,
        peers: Box<dyn PeerSender>,
        metrics: RaftMetrics,
        members: Members,
    ) -> Result<NodeLoop<SM>, RaftError> {
        let mut storage = RaftStorage::open(store.clone())?;
        storage.set_snapshot_inline_max(config.snapshot_inline_max_bytes);
        if config.join {
            if storage.conf_state().voters.is_empty() {
                info!("waiting for the group's leader to add this node");
            }
        } else if storage.bootstrap(&config.voters)? {
            info!(voters = ?config.voters, "bootstrapped a new raft group");
        }
        let commit = storage.hard_state().commit;
        let replayed = replay(&store, &mut storage, commit, &mut state_machine, &members)?;
        if replayed > 0 {
            info!(
                replayed,
                applied = store.applied_index(),
                "replayed committed entries"
            );
        }

        let mut raft_config = raft::Config {
            id: config.node_id,
            election_tick: config.election_ticks,
            heartbeat_tick: config.heartbeat_ticks,
            applied: store.applied_index(),
            max_size_per_msg: 1024 * 1024,
            max_inflight_msgs: 256,
            check_quorum: true,
            pre_vote: true,
            ..raft::Config::default()
        };
        if !config.randomized_election {
            raft_config.min_election_tick = config.election_ticks;
            raft_config.max_election_tick = config.election_ticks + 1;
        }
        raft_config.validate()?;
        let single_voter = storage.conf_state().voters == [config.node_id];
        let mut raw = RawNode::new(&raft_config, storage, &crate::logger::logger())?;
        if single_voter && raw.store().repair_target().is_none() {
            // Alone in the group: lead at once instead of waiting for an election timeout.
            raw.campaign()?;
        }
        let (status_tx, _) = watch::channel(status_of(&raw, None));
        let mut node_loop = NodeLoop {
            progress: Arc::new(Progress::default()),
            raw,
            state_machine,
            peers,
            waiters: VecDeque::new(),
            membership_waiters: VecDeque::new(),
            members,
            snapshots_sent: HashMap::new(),
            config,
            status: status_tx,
            metrics,
        };
        node_loop.on_ready().map_err(RaftError::Store)?;
        node_loop.publish_status(None);
        Ok(node_loop)
    }

    /// One election/heartbeat tick, and the leader's periodic duties.
    fn tick(&mut self, now: Instant) -> Result<(), StoreError> {
        // A repairing node never times out into an election.
        if self.raw.store().repair_target().is_none() || self.raw.raft.state == StateRole::Leader {
            self.raw.tick();
        }
        self.raw.mut_store().persist_commit()?;
        if self.raw.raft.state == StateRole::Leader {
            self.promote_caught_up_learner();
            self.retry_lost_snapshots(now);
        }
        Ok(())
    }

    /// Persists, sends and applies whatever Raft has ready.
    fn process(&mut self) -> Result<(), StoreError> {
        self.on_ready()?;
        self.check_repaired()
    }

    fn run(mut self, events: flume::Receiver<Event<SM::Output>>) {
        let mut next_tick = Instant::now() + self.config.tick;
        let mut next_flush = Instant::now() + self.config.flush_interval;
        let mut stopping = false;
        while !stopping {
            let deadline = match self.config.flush {
                FlushPolicy::Sync => next_tick,
                FlushPolicy::Async => next_tick.min(next_flush),
            };
            match events.recv_deadline(deadline) {
                Ok(event) => {
                    stopping = !self.handle(event);
                    for _ in 1..self.config.max_batch {
                        match events.try_recv() {
                            Ok(event) if !stopping => stopping = !self.handle(event),
                            _ => break,
                        }
                    }
                }
                Err(flume::RecvTimeoutError::Timeout) => {}
                Err(flume::RecvTimeoutError::Disconnected) => stopping = true,
            }
            let now = Instant::now();
            let mut result = Ok(());
            if now >= next_tick {
                next_tick = now + self.config.tick;
                result = self.tick(now);
            }
            if result.is_ok() {
                result = self.process();
            }
            if result.is_ok()
                && self.config.flush == FlushPolicy::Async
                && (now >= next_flush || stopping)
            {
                result = self.sync_log();
                next_flush = now + self.config.flush_interval;
            }
            if result.is_ok() && stopping {
                result = self.raw.mut_store().persist_commit();
            }
            if let Err(err) = result {
                error!(%err, "raft node stopping on a storage error");
                self.publish_status(Some(err.to_string()));
                break;
            }
        }
        // Proposed but not applied: they may still commit under another leader.
        self.drop_waiters();
        for event in events.drain() {
            if let Event::Propose { reply, .. } = event {
                let _ = reply.send(Err(ProposeError::Stopped));
            }
        }
        info!(node_id = self.config.node_id, "raft node stopped");
    }

    /// Returns false on shutdown.
    fn handle(&mut self, event: Event<SM::Output>) -> bool {
        match event {
            Event::Propose {
                payload,
                term,
                reply,
            } => {
                if self.raw.raft.state != StateRole::Leader {
                    let leader_id = Some(self.raw.raft.leader_id).filter(|id| *id != 0);
                    let _ = reply.send(Err(ProposeError::NotLeader { leader_id }));
                    return true;
                }
                if term.is_some_and(|term| term != self.raw.raft.term) {
                    let _ = reply.send(Err(ProposeError::Dropped));
                    return true;
                }
                match self.raw.propose(Vec::new(), payload) {
                    Ok(()) => {
                        self.metrics.proposals.inc();
                        self.waiters.push_back(Waiter {
                            index: self.raw.raft.raft_log.last_index(),
                            term: self.raw.raft.term,
                            reply,
                        });
                    }
                    Err(err) => {
                        warn!(%err, "proposal refused");
                        let _ = reply.send(Err(ProposeError::Dropped));
                    }
                }
                true
            }
            Event::Step(message) => {
                let election = matches!(
                    message.get_msg_type(),
                    MessageType::MsgRequestVote
                        | MessageType::MsgRequestPreVote
                        | MessageType::MsgTimeoutNow
                );
                if election && self.raw.store().repair_target().is_some() {
                    debug!(from = message.from, kind = ?message.get_msg_type(), "repairing: no vote, no campaign");
                    return true;
                }
                let mut message = *message;
                self.accept_lost_entries(&mut message);
                if let Err(err) = self.raw.step(message) {
                    debug!(%err, "raft message refused");
                }
                true
            }
            Event::Progress(reply) => {
                let progress = if self.raw.raft.state == StateRole::Leader {
                    let mut peers: Vec<PeerProgress> = self
                        .raw
                        .raft
                        .prs()
                        .iter()
                        .map(|(id, progress)| PeerProgress {
                            id: *id,
                            match_index: progress.matched,
                            next_index: progress.next_idx,
                            state: format!("{:?}", progress.state),
                        })
                        .collect();
                    peers.sort_by_key(|p| p.id);
                    peers
                } else {
                    Vec::new()
                };
                let _ = reply.send(progress);
                true
            }
            Event::TransferLeader(to) => {
                info!(to, "transferring leadership");
                self.raw.transfer_leader(to);
                true
            }
            Event::ChangeMembership { change, reply } => {
                let _ = match self.propose_membership_change(&change) {
                    Ok(()) => {
                        self.membership_waiters.push_back(MembershipWaiter {
                            index: self.raw.raft.raft_log.last_index(),
                            term: self.raw.raft.term,
                            reply,
                        });
                        Ok(())
                    }
                    Err(err) => reply.send(Err(err)),
                };
                true
            }
            Event::Shutdown => false,
        }
    }

    /// Raft assumes a member never loses entries it acknowledged; a repaired member did. As its
    /// leader, stop believing its old match index when it says its log is shorter (raft-rs
    /// would ignore that rejection as stale and never resend); as the member, do not take a
    /// commit index beyond its log from a heartbeat (raft-rs would stop).
    fn accept_lost_entries(&mut self, message: &mut Message) {
        let last_index = self.raw.raft.raft_log.last_index();
        match message.get_msg_type() {
            MessageType::MsgHeartbeat if message.commit > last_index => {
                debug!(
                    commit = message.commit,
                    last_index, "heartbeat commit beyond the log (it lost entries); clamped"
                );
                // The leader believes this log is longer and would never resend: tell it with
                // a rejection naming where the log really ends.
                let mut reply = Message::default();
                reply.set_msg_type(MessageType::MsgAppendResponse);
                reply.to = message.from;
                reply.from = self.raw.raft.id;
                reply.term = message.term;
                reply.reject = true;
                reply.index = message.commit;
                reply.reject_hint = last_index;
                self.send(vec![reply]);
                message.commit = last_index;
            }
            MessageType::MsgAppendResponse
                if message.reject && self.raw.raft.state == StateRole::Leader =>
            {
                let from = message.from;
                let hint = message.reject_hint;
                if let Some(progress) = self.raw.raft.mut_prs().get_mut(from) {
                    if hint < progress.matched {
                        warn!(
                            member = from,
                            had = progress.matched,
                            has = hint,
                            "member lost acknowledged entries; sending them again"
                        );
                        progress.matched = 0;
                        progress.become_probe();
                        progress.next_idx = hint + 1;
                        // Answer the rejection as a fresh probe: send from its log's end.
                        message.index = hint;
                    }
                }
            }
            _ => {}
        }
    }

    fn propose_membership_change(
        &mut self,
        change: &MembershipChange,
    ) -> Result<(), MembershipError> {
        let raft = &self.raw.raft;
        if raft.state != StateRole::Leader {
            let leader_id = Some(raft.leader_id).filter(|id| *id != 0);
            return Err(MembershipError::NotLeader { leader_id });
        }
        if raft.has_pending_conf() {
            return Err(MembershipError::InProgress);
        }
        membership::validate(change, self.raw.store().conf_state(), raft.id)?;
        info!(?change, "proposing a membership change");
        self.raw
            .propose_conf_change(Vec::new(), membership::conf_change(change))
            .map_err(|err| MembershipError::Invalid(err.to_string()))
    }

    /// Promotes one learner whose log has caught up with the commit index.
    fn promote_caught_up_learner(&mut self) {
        let raft = &self.raw.raft;
        if raft.has_pending_conf() {
            return;
        }
        let committed = raft.raft_log.committed;
        let caught_up = self
            .raw
            .store()
            .conf_state()
            .learners
            .iter()
            .copied()
            .find(|id| {
                raft.prs()
                    .get(*id)
                    .is_some_and(|progress| progress.matched >= committed)
            });
        if let Some(id) = caught_up {
            info!(id, "learner caught up; promoting it to voter");
            if let Err(err) = self
                .raw
                .propose_conf_change(Vec::new(), membership::promotion(id))
            {
                warn!(id, %err, "promotion refused");
            }
        }
    }

    /// A snapshot message can be lost on the way; Raft waits for it forever unless told.
    fn retry_lost_snapshots(&mut self, now: Instant) {
        let lost: Vec<u64> = self
            .snapshots_sent
            .iter()
            .filter(|(_, sent)| now.duration_since(**sent) > SNAPSHOT_TIMEOUT)
            .map(|(id, _)| *id)
            .collect();
        for id in lost {
            self.snapshots_sent.remove(&id);
            let waiting = self
                .raw
                .raft
                .prs()
                .get(id)
                .is_some_and(|progress| progress.state == raft::ProgressState::Snapshot);
            if waiting {
                warn!(id, "snapshot not acknowledged in time; sending it again");
                self.raw.report_snapshot(id, SnapshotStatus::Failure);
            }
        }
    }

    fn send(&mut self, messages: Vec<Message>) {
        for message in &messages {
            if message.get_msg_type() == MessageType::MsgSnapshot {
                self.snapshots_sent.insert(message.to, Instant::now());
                self.metrics.snapshots_sent.inc();
            }
        }
        self.peers.send(messages);
    }

    fn sync_log(&mut self) -> Result<(), StoreError> {
        let started = Instant::now();
        self.raw.store().store().log().sync()?;
        self.metrics
            .fsync_seconds
            .observe(started.elapsed().as_secs_f64());
        self.raw.mut_store().note_synced()
    }

    fn on_ready(&mut self) -> Result<(), StoreError> {
        if !self.raw.has_ready() {
            return Ok(());
        }
        let mut ready = self.raw.ready();
        if !ready.messages().is_empty() {
            let messages = ready.take_messages();
            self.send(messages);
        }
        if !ready.snapshot().is_empty() {
            let snapshot = ready.snapshot().clone();
            info!(
                index = snapshot.get_metadata().index,
                term = snapshot.get_metadata().term,
                "installing a snapshot from the leader"
            );
            self.raw.mut_store().apply_snapshot(&snapshot)?;
            self.raw.mut_store().note_synced()?;
            self.members.reload(self.raw.store().store().state())?;
            self.state_machine.restored();
            self.metrics.snapshots_installed.inc();
        }
        self.apply(ready.take_committed_entries())?;
        let appended = !ready.entries().is_empty();
        if appended {
            self.raw.mut_store().append(ready.entries())?;
        }
        if let Some(hard_state) = ready.hs() {
            let hard_state = hard_state.clone();
            self.raw.mut_store().set_hard_state(&hard_state)?;
        }
        if appended && self.config.flush == FlushPolicy::Sync {
            self.sync_log()?;
        }
        // Crash point: entries and hard state durable, the acknowledgements not yet sent.
        fail::fail_point!("raft::before_persisted_messages", |_| Err(
            StoreError::injected("raft::before_persisted_messages")
        ));
        if !ready.persisted_messages().is_empty() {
            let messages = ready.take_persisted_messages();
            self.send(messages);
        }
        let mut light = self.raw.advance(ready);
        if let Some(commit) = light.commit_index() {
            self.raw.mut_store().set_commit(commit);
        }
        let messages = light.take_messages();
        self.send(messages);
        self.apply(light.take_committed_entries())?;
        self.raw.advance_apply();
        if self.raw.raft.state != StateRole::Leader {
            self.drop_waiters();
        }
        self.publish_status(None);
        Ok(())
    }

    fn apply(&mut self, entries: Vec<Entry>) -> Result<(), StoreError> {
        for run in split_at_conf_changes(entries) {
            let conf_change = run.last().and_then(decode_conf_change).transpose()?;
            let last = run.last().map(|e| (e.index, e.term));
            self.apply_run(run, conf_change.is_some())?;
            if let (Some(change), Some((index, term))) = (conf_change, last) {
                self.apply_conf_change(&change, index, term)?;
            }
        }
        Ok(())
    }

    fn apply_conf_change(
        &mut self,
        change: &ConfChange,
        index: u64,
        term: u64,
    ) -> Result<(), StoreError> {
        let result = match self.raw.apply_conf_change(change) {
            Ok(conf_state) => {
                info!(index, ?conf_state, "membership changed");
                self.raw.mut_store().set_conf_state(conf_state)?;
                self.members
                    .apply(change, self.raw.store().store().state())?;
                Ok(())
            }
            // Refused the same way on every member (the state is the same everywhere).
            Err(err) => {
                warn!(index, %err, "membership change refused");
                Err(MembershipError::Invalid(err.to_string()))
            }
        };
        while self
            .membership_waiters
            .front()
            .is_some_and(|w| w.index <= index)
        {
            let waiter = self.membership_waiters.pop_front().expect("checked");
            let answer = if waiter.index == index && waiter.term == term {
                result.clone()
            } else {
                Err(MembershipError::Dropped)
            };
            let _ = waiter.reply.send(answer);
        }
        Ok(())
    }

    /// Applies entries through the state machine (a conf change, `ends_with_change`, is a
    /// no-op there) and answers their proposers.
    fn apply_run(&mut self, entries: Vec<Entry>, ends_with_change: bool) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        let first_index = entries[0].index;
        let last_index = entries[entries.len() - 1].index - u64::from(ends_with_change);
        // A membership proposal the leader turned into an empty entry (raft-rs does that when
        // another change is pending) will never be applied as a change.
        while self
            .membership_waiters
            .front()
            .is_some_and(|w| w.index >= first_index && w.index <= last_index)
        {
            let waiter = self.membership_waiters.pop_front().expect("checked");
            let _ = waiter.reply.send(Err(MembershipError::InProgress));
        }
        let committed = self.raw.store().committed(entries)?;
        let outputs = self.state_machine.apply(&committed)?;
        for (entry, output) in committed.iter().zip(outputs) {
            while self.waiters.front().is_some_and(|w| w.index < entry.index) {
                let stale = self.waiters.pop_front().expect("checked");
                let _ = stale.reply.send(Err(ProposeError::Dropped));
            }
            if self.waiters.front().is_some_and(|w| w.index == entry.index) {
                let waiter = self.waiters.pop_front().expect("checked");
                let result = if waiter.term == entry.term {
                    Ok(output)
                } else {
                    Err(ProposeError::Dropped)
                };
                let _ = waiter.reply.send(result);
            }
        }
        Ok(())
    }

    /// Repair ends once a leader elected without this node has given it, committed, every
    /// entry it may have helped commit before: from then on its log holds all it promised.
    fn check_repaired(&mut self) -> Result<(), StoreError> {
        let Some(target) = self.raw.store().repair_target() else {
            return Ok(());
        };
        let raft = &self.raw.raft;
        let leader_known = raft.leader_id != 0 && raft.leader_id != raft.id;
        let alone = self.raw.store().conf_state().voters == [raft.id];
        if alone || (leader_known && raft.raft_log.committed >= target) {
            if alone {
                warn!(
                    target,
                    "alone in the group: nothing to repair from; entries after the cut are lost"
                );
            } else {
                info!(
                    target,
                    leader_id = raft.leader_id,
                    "log repaired from the leader; voting again"
                );
            }
            self.raw.mut_store().finish_repair()?;
            self.publish_status(None);
        }
        Ok(())
    }

    /// Leadership was lost: what this node proposed may still commit under the new leader, or
    /// not; tell the proposers now rather than when (if ever) their index is reached.
    fn drop_waiters(&mut self) {
        for waiter in self.waiters.drain(..) {
            let _ = waiter.reply.send(Err(ProposeError::Dropped));
        }
        for waiter in self.membership_waiters.drain(..) {
            let _ = waiter.reply.send(Err(MembershipError::Dropped));
        }
    }

    fn publish_status(&mut self, failed: Option<String>) {
        let status = status_of(&self.raw, failed);
        self.metrics.observe(&status);
        self.progress
            .commit_index
            .store(status.commit_index, Ordering::Release);
        self.progress
            .applied_index
            .store(status.applied_index, Ordering::Release);
        self.progress
            .last_index
            .store(status.last_index, Ordering::Release);
        self.status.send_if_modified(|current| {
            let same = current.role == status.role
                && current.repairing_until == status.repairing_until
                && current.term == status.term
                && current.leader_id == status.leader_id
                && current.voters == status.voters
                && current.failed == status.failed;
            if same {
                return false;
            }
            info!(
                node_id = status.node_id,
                term = status.term,
                leader_id = status.leader_id,
                role = ?status.role,
                "raft role changed"
            );
            *current = status;
            true
        });
    }
}
