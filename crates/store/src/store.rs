//! The broker's store: the commit log plus everything derived from it by applying committed
//! entries (consume queues, topics, consumer offsets, key index), checkpoints that bound replay
//! after a crash, and retention.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use ferromq_protocol::{
    headers::{perm, TopicConfig},
    message::{peek_record, tag_hash},
};
use parking_lot::{Mutex, RwLock};
use tracing::{info, warn};

use crate::command::{self, Command, MessagesKind};
use crate::commit_log::{CommitLog, LogPoint, OpenReport, RECORD_HEADER_BYTES};
use crate::consume_queue::{ConsumeQueue, CqUnit};
use crate::dedup::{DedupWindow, StoredSend};
use crate::deleted_queues;
use crate::error::{Result, StoreError};
use crate::locks::LockTable;
use crate::snapshot::{SnapshotBase, SnapshotDir, REPLICATED_RAFT_KEYS};
use crate::state::{Checkpoint, HalfMessage, IdHit, KeyHit, ScheduledMessage, StateDb};

/// Raft's entry type for ordinary entries; other types (membership changes) carry no command.
pub const ENTRY_NORMAL: u8 = 0;
/// Reads of message records are merged when they lie this close together in one segment.
const MAX_MERGED_READ_BYTES: u64 = 1024 * 1024;

#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Commit-log segment size (1 GiB by default; small in tests).
    pub segment_bytes: u64,
    /// Units per consume-queue file (300 000 units = 6 MB, as RocketMQ).
    pub cq_units_per_file: u64,
    /// Whole segments older than this are deleted.
    pub retention: Duration,
    /// A corrupt record anywhere cuts the log there instead of refusing to open: for a
    /// replica of a group, which fetches what was cut from its peers (and must not vote until
    /// it has, which the Raft layer enforces).
    pub cut_corruption: bool,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            segment_bytes: 1 << 30,
            cq_units_per_file: 300_000,
            retention: Duration::from_secs(72 * 3600),
            cut_corruption: false,
        }
    }
}

/// A committed entry handed to [`Store::apply`].
#[derive(Debug, Clone)]
pub struct CommittedEntry {
    pub index: u64,
    pub term: u64,
    pub entry_type: u8,
    /// Position of the entry's record in the commit log.
    pub position: u64,
    pub payload: Bytes,
}

/// What applying one entry did; the proposer of the entry gets it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyOutcome {
    Noop,
    Appended {
        topic: String,
        queue_id: u32,
        first_offset: u64,
        count: u32,
        store_ts_ms: u64,
        bytes: u64,
    },
    /// A send retried after an unknown outcome: nothing stored again; where the original went.
    Duplicate {
        topic: String,
        queue_id: u32,
        first_offset: u64,
        count: u32,
        store_ts_ms: u64,
    },
    /// Held back until `due_ms` (see [`Store::scheduled_due`]).
    Scheduled {
        topic: String,
        queue_id: u32,
        due_ms: u64,
        count: u32,
    },
    Cancelled,
    /// Half messages of a transaction, held until it is committed or rolled back.
    HalfStored {
        topic: String,
        queue_id: u32,
        count: u32,
        store_ts_ms: u64,
    },
    /// The queues of a lock request its member holds now.
    Locked {
        queue_ids: Vec<u32>,
    },
    OffsetsCommitted,
    TopicCreated {
        created: bool,
    },
    TopicUpdated,
    TopicDeleted,
    /// The command was refused the same way on every replica (unknown topic, bad queue).
    Rejected(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadStatus {
    Found,
    Empty,
    /// The requested offset was outside the queue; `next_offset` is where to continue.
    OffsetMoved,
}

/// The answer to a queue read.
#[derive(Debug, Clone)]
pub struct QueueRead {
    pub status: ReadStatus,
    /// (queue offset, record bytes)
    pub messages: Vec<(u64, Bytes)>,
    pub next_offset: u64,
    pub min_offset: u64,
    pub max_offset: u64,
}

/// How far a consumer group is behind on one queue.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QueueLag {
    pub queue_id: u32,
    /// What the group committed; `None` if it never did.
    pub committed: Option<u64>,
    pub min_offset: u64,
    pub max_offset: u64,
    /// Messages stored but not yet consumed by the group.
    pub lag: u64,
    /// Store time of the oldest unconsumed message, if there is one.
    pub oldest_unconsumed_ms: Option<u64>,
}

/// A message found through the key index.
#[derive(Debug, Clone)]
pub struct FoundMessage {
    pub queue_id: u32,
    pub queue_offset: u64,
    pub record: Bytes,
}

type QueueKey = (String, u32);

pub struct Store {
    dir: PathBuf,
    config: StoreConfig,
    log: CommitLog,
    db: StateDb,
    topics: RwLock<BTreeMap<String, TopicConfig>>,
    queues: RwLock<HashMap<QueueKey, Arc<ConsumeQueue>>>,
    /// Last applied entry; also serializes apply against checkpoint snapshots.
    applied: Mutex<LogPoint>,
    applied_index: AtomicU64,
    checkpointed_index: AtomicU64,
    log_start_position: Arc<AtomicU64>,
    checkpoint_lock: Mutex<()>,
    open_report: OpenReport,
    failed: AtomicBool,
    /// Recent sends, to drop retried duplicates (see `dedup`).
    dedup: Mutex<DedupWindow>,
    /// Derived state at each segment start, for retention and snapshots (see `snapshot`).
    snapshots: SnapshotDir,
    /// The earliest due time scheduled since the timer last asked (see
    /// [`Store::take_schedule_hint`]); 0 at open: anything may be due.
    schedule_hint: AtomicU64,
    /// Orderly consumers' queue locks (see `locks`).
    locks: Mutex<LockTable>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

fn queue_dir(root: &Path, topic: &str, queue_id: u32) -> PathBuf {
    root.join("cq").join(topic).join(queue_id.to_string())
}

impl Store {
    /// Opens the store in `dir`: cuts a torn log tail, restores derived state to the last
    /// checkpoint. Entries after [`Store::applied`] must then be replayed through
    /// [`Store::apply`] before serving (the Raft layer does this with the committed ones).
    pub fn open(dir: &Path, config: StoreConfig) -> Result<Store> {
        for sub in ["log", "cq", "state", "snapshots"] {
            fs::create_dir_all(dir.join(sub)).map_err(StoreError::io(dir.join(sub)))?;
        }
        let log_start_position = Arc::new(AtomicU64::new(0));
        let db = StateDb::open(&dir.join("state"), log_start_position.clone())?;
        let start = db.log_start()?;
        let (log, open_report) = if config.cut_corruption {
            CommitLog::open_cutting_corruption(&dir.join("log"), config.segment_bytes, start)?
        } else {
            CommitLog::open(&dir.join("log"), config.segment_bytes, start)?
        };
        log_start_position.store(log.start_position(), Ordering::Release);

        let snapshots = SnapshotDir::open(&dir.join("snapshots"))?;
        let mut checkpoint = db.checkpoint()?;
        let behind_start = checkpoint
            .as_ref()
            .is_none_or(|c| c.applied_index < start.index);
        if start.index > 0 && behind_start {
            // Derived state older than the log start: a snapshot install was interrupted.
            let base = base_at(&snapshots, start.index)?;
            checkpoint = Some(restore_from_base(dir, &config, &db, &base)?);
            info!(index = base.index, "finished installing a snapshot");
        }
        let checkpoint = checkpoint.unwrap_or(Checkpoint {
            applied_index: start.index,
            applied_term: start.term,
            queues: Vec::new(),
            recent_sends: Vec::new(),
            locks: Vec::new(),
        });
        let mut checkpoint = checkpoint;
        let repairable = open_report.truncated_bytes > 0 || config.cut_corruption;
        if checkpoint.applied_index > log.last_index() && repairable {
            // Derived state covers entries the log no longer has (just cut, or lost whole by a
            // damaged disk, which a group member repairs from its peers): rebuild it from the
            // base at the log start (or from nothing) and replay what is left.
            warn!(
                checkpoint = checkpoint.applied_index,
                last = log.last_index(),
                "derived state is ahead of the repaired log; rebuilding it"
            );
            let base = match start.index {
                0 => SnapshotBase::default(),
                index => base_at(&snapshots, index)?,
            };
            checkpoint = restore_from_base(dir, &config, &db, &base)?;
        }
        if checkpoint.applied_index > log.last_index() {
            return Err(StoreError::Inconsistent(format!(
                "derived state was checkpointed at index {} but the log ends at {} (log data lost?)",
                checkpoint.applied_index,
                log.last_index()
            )));
        }

        deleted_queues::restore(dir, checkpoint.applied_index)?;
        let queues = open_queues(dir, &config, &checkpoint, log.start_position())?;
        remove_unlisted_queue_dirs(&dir.join("cq"), &queues)?;

        let topics = db
            .topics()?
            .into_iter()
            .map(|t| (t.name.clone(), t))
            .collect();
        let applied = LogPoint {
            index: checkpoint.applied_index,
            term: checkpoint.applied_term,
        };
        let dedup = DedupWindow::restore(checkpoint.recent_sends);
        let locks = LockTable::restore(&checkpoint.locks);
        info!(
            dir = %dir.display(),
            applied = applied.index,
            last = log.last_index(),
            cut_bytes = open_report.truncated_bytes,
            "store opened"
        );
        Ok(Store {
            dir: dir.to_path_buf(),
            config,
            log,
            db,
            topics: RwLock::new(topics),
            queues: RwLock::new(queues),
            applied: Mutex::new(applied),
            applied_index: AtomicU64::new(applied.index),
            checkpointed_index: AtomicU64::new(applied.index),
            log_start_position,
            checkpoint_lock: Mutex::new(()),
            open_report,
            failed: AtomicBool::new(false),
            dedup: Mutex::new(dedup),
            snapshots,
            schedule_hint: AtomicU64::new(0),
            locks: Mutex::new(locks),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn log(&self) -> &CommitLog {
        &self.log
    }

    pub fn state(&self) -> &StateDb {
        &self.db
    }

    /// What opening the commit log found (torn tail cut, segments).
    pub fn open_report(&self) -> &OpenReport {
        &self.open_report
    }

    /// The last applied entry.
    pub fn applied(&self) -> LogPoint {
        *self.applied.lock()
    }

    pub fn applied_index(&self) -> u64 {
        self.applied_index.load(Ordering::Acquire)
    }

    /// (free, total) bytes of the file system holding the store, for "disk filling" alerts.
    pub fn disk_space(&self) -> Result<(u64, u64)> {
        let stats = rustix::fs::statvfs(&self.dir).map_err(|err| StoreError::Io {
            path: self.dir.clone(),
            source: err.into(),
        })?;
        Ok((
            stats.f_bavail.saturating_mul(stats.f_frsize),
            stats.f_blocks.saturating_mul(stats.f_frsize),
        ))
    }

    /// Bytes of commit log on disk.
    pub fn log_bytes(&self) -> u64 {
        self.log.end_position() - self.log.start_position()
    }

    fn queue(&self, topic: &str, queue_id: u32) -> Option<Arc<ConsumeQueue>> {
        self.queues
            .read()
            .get(&(topic.to_string(), queue_id))
            .cloned()
    }

    fn queue_or_create(&self, topic: &str, queue_id: u32) -> Result<Arc<ConsumeQueue>> {
        if let Some(queue) = self.queue(topic, queue_id) {
            return Ok(queue);
        }
        let queue = Arc::new(ConsumeQueue::open(
            &queue_dir(&self.dir, topic, queue_id),
            self.config.cq_units_per_file,
            0,
        )?);
        self.queues
            .write()
            .insert((topic.to_string(), queue_id), queue.clone());
        Ok(queue)
    }

    /// Applies committed entries in order. Deterministic: every replica derives the same state
    /// and outcomes from the same entries. Entries at or below the applied index are skipped.
    pub fn apply(&self, entries: &[CommittedEntry]) -> Result<Vec<ApplyOutcome>> {
        if self.failed.load(Ordering::Acquire) {
            return Err(StoreError::Failed);
        }
        let mut applied = self.applied.lock();
        let mut outcomes = Vec::with_capacity(entries.len());
        let mut rest = entries;
        while let Some(first) = rest.first() {
            // Apply up to (not including) the next entry that begins a segment.
            let run = rest
                .iter()
                .skip(1)
                .position(|e| self.starts_segment(e))
                .map_or(rest.len(), |i| i + 1);
            let (now, later) = rest.split_at(run);
            let mut result = Ok(());
            if first.index == applied.index + 1 && self.starts_segment(first) {
                result = self.capture_base(*applied);
            }
            let result = result.and_then(|()| self.apply_locked(*applied, now));
            match result {
                Ok((last, run_outcomes)) => {
                    *applied = last;
                    self.applied_index.store(last.index, Ordering::Release);
                    outcomes.extend(run_outcomes);
                }
                Err(err) => {
                    // Some derived state may be half written: no checkpoint may cover it, so
                    // the next start replays from the last good checkpoint.
                    self.failed.store(true, Ordering::Release);
                    return Err(err);
                }
            }
            rest = later;
        }
        Ok(outcomes)
    }

    /// Removes a topic (by the entry at `index`) and sets its consume queues aside until a
    /// checkpoint covers the delete (see `deleted_queues`). Appends to its queues staged
    /// earlier in this apply call are written first, so no queue is written after it moved.
    fn delete_topic(
        &self,
        name: &str,
        index: u64,
        batch: &mut crate::state::DerivedBatch<'_>,
        pending: &mut Vec<(Arc<ConsumeQueue>, Vec<CqUnit>)>,
    ) -> Result<ApplyOutcome> {
        let known = self.topics.write().remove(name).is_some();
        // Replay after a crash may find the topic already gone from the database (written
        // after the checkpoint) while its checkpointed queues are open: delete those too.
        let has_queues = self.queues.read().keys().any(|(topic, _)| topic == name);
        if !known && !has_queues {
            return Ok(ApplyOutcome::Rejected(format!(
                "topic {name:?} does not exist"
            )));
        }
        // Everything staged before the delete is written first, queues and database alike, so
        // the reads below see offsets and scheduled messages this apply call staged.
        for (queue, units) in pending.drain(..) {
            queue.append(&units)?;
        }
        batch.write_now()?;
        for (due_ms, id) in self.db.scheduled_for_topic(name)? {
            batch.delete_scheduled(due_ms, &id, name);
        }
        for half in self.db.half_messages()? {
            if half.topic == name {
                batch.delete_half(&half.id, name);
            }
        }
        let offsets: Vec<(String, u32)> = self
            .db
            .all_offsets()?
            .into_iter()
            .filter(|(_, topic, _, _)| topic == name)
            .map(|(group, _, queue_id, _)| (group, queue_id))
            .collect();
        batch.delete_topic(name, &offsets);
        self.queues.write().retain(|(topic, _), _| topic != name);
        deleted_queues::set_aside(&self.dir, name, index)?;
        Ok(ApplyOutcome::TopicDeleted)
    }

    fn starts_segment(&self, entry: &CommittedEntry) -> bool {
        entry.index > 1 && self.log.is_segment_start(entry.position)
    }

    /// Saves the derived state after `point` as the snapshot base of the segment that starts
    /// with the next entry. Called with the apply lock held, between applied runs.
    fn capture_base(&self, point: LogPoint) -> Result<()> {
        if point.index == 0 || self.snapshots.contains(point.index) {
            // Replay after a restart reaches the same point with the same state.
            return Ok(());
        }
        let mut queues: Vec<(String, u32, u64)> = self
            .queues
            .read()
            .iter()
            .map(|((topic, queue_id), queue)| (topic.clone(), *queue_id, queue.max_offset()))
            .collect();
        queues.sort();
        let mut raft_values = Vec::new();
        for key in REPLICATED_RAFT_KEYS {
            if let Some(value) = self.db.raft_value(key)? {
                raft_values.push((key.to_string(), value));
            }
        }
        let base = SnapshotBase {
            index: point.index,
            term: point.term,
            topics: self.topics.read().values().cloned().collect(),
            offsets: self.db.all_offsets()?,
            queues,
            recent_sends: self.dedup.lock().snapshot(),
            locks: self.locks.lock().snapshot(),
            raft_values,
            scheduled: self.db.all_scheduled()?,
            halves: self.db.half_messages()?,
        };
        self.snapshots.save(&base.encode(), point.index)
    }

    /// The snapshot a replica needing entries before the log start installs: the base at the
    /// log start, encoded. `None` if the log was never compacted (or a compaction raced).
    pub fn snapshot_at_log_start(&self) -> Result<Option<(LogPoint, Vec<u8>)>> {
        let start = self.log.start();
        if start.index == 0 {
            return Ok(None);
        }
        Ok(self
            .snapshots
            .read(start.index)?
            .map(|bytes| (start, bytes)))
    }

    /// The log start and the size of the base there, without reading it.
    pub fn snapshot_size_at_log_start(&self) -> Result<Option<(LogPoint, u64)>> {
        let start = self.log.start();
        if start.index == 0 {
            return Ok(None);
        }
        Ok(self.snapshots.size(start.index)?.map(|size| (start, size)))
    }

    /// A piece of the base saved at `index` (for a member fetching a large snapshot).
    pub fn snapshot_chunk(&self, index: u64, offset: u64, len: usize) -> Result<Option<Vec<u8>>> {
        self.snapshots.read_range(index, offset, len)
    }

    /// Replaces the whole store with a snapshot from the leader: the log continues after the
    /// snapshot's index, derived state is the snapshot's. Crash-safe: the base and the new log
    /// start are durable before anything is removed, and an interrupted install finishes at
    /// the next open.
    pub fn install_snapshot(&self, bytes: &[u8]) -> Result<SnapshotBase> {
        let base = SnapshotBase::decode(bytes)?;
        let _one_at_a_time = self.checkpoint_lock.lock();
        let mut applied = self.applied.lock();
        let result = (|| {
            self.snapshots.save(bytes, base.index)?;
            self.db.save_log_start(base.point())?;
            self.log.reset(base.point())?;
            self.log_start_position
                .store(self.log.start_position(), Ordering::Release);
            let checkpoint = restore_from_base(&self.dir, &self.config, &self.db, &base)?;
            let start = self.log.start_position();
            *self.queues.write() = open_queues(&self.dir, &self.config, &checkpoint, start)?;
            *self.topics.write() = base
                .topics
                .iter()
                .map(|t| (t.name.clone(), t.clone()))
                .collect();
            *self.dedup.lock() = DedupWindow::restore(base.recent_sends.clone());
            *self.locks.lock() = LockTable::restore(&base.locks);
            self.snapshots.remove_before(base.index)
        })();
        if let Err(err) = result {
            self.failed.store(true, Ordering::Release);
            return Err(err);
        }
        *applied = base.point();
        self.schedule_hint.store(0, Ordering::Release);
        self.applied_index.store(base.index, Ordering::Release);
        self.checkpointed_index.store(base.index, Ordering::Release);
        info!(index = base.index, term = base.term, "installed a snapshot");
        Ok(base)
    }

    /// Applies `entries` after `applied`; returns the new last applied entry. Changes nothing
    /// visible (applied index, checkpointable state) unless every write succeeded.
    fn apply_locked(
        &self,
        applied: LogPoint,
        entries: &[CommittedEntry],
    ) -> Result<(LogPoint, Vec<ApplyOutcome>)> {
        fail::fail_point!("store::before_apply", |_| Err(StoreError::injected(
            "store::before_apply"
        )));
        let mut last = applied;
        let mut batch = self.db.batch();
        // Sends recognised in this call; they join the window only if every write succeeds.
        let mut staged: Vec<StoredSend> = Vec::new();
        let dedup = self.dedup.lock();
        let mut pending: Vec<(Arc<ConsumeQueue>, Vec<CqUnit>)> = Vec::new();
        let mut outcomes = Vec::with_capacity(entries.len());
        for entry in entries {
            if entry.index <= last.index {
                outcomes.push(ApplyOutcome::Noop);
                continue;
            }
            assert_eq!(
                entry.index,
                last.index + 1,
                "entries are applied in order without gaps"
            );
            let outcome = if entry.entry_type != ENTRY_NORMAL {
                ApplyOutcome::Noop
            } else {
                match command::decode(&entry.payload) {
                    Ok(command) => self.apply_command(
                        command,
                        entry,
                        &mut batch,
                        &mut pending,
                        (&dedup, &mut staged),
                    )?,
                    Err(err) => ApplyOutcome::Rejected(err.to_string()),
                }
            };
            outcomes.push(outcome);
            last = LogPoint {
                index: entry.index,
                term: entry.term,
            };
        }
        for (queue, units) in &pending {
            queue.append(units)?;
        }
        // Crash point: consume queues written, RocksDB state not.
        fail::fail_point!("store::between_queues_and_state", |_| Err(
            StoreError::injected("store::between_queues_and_state")
        ));
        batch.write()?;
        // Only now can the timer find them.
        for outcome in &outcomes {
            if let ApplyOutcome::Scheduled { due_ms, .. } = outcome {
                self.schedule_hint.fetch_min(*due_ms, Ordering::AcqRel);
            }
        }
        let mut dedup = dedup;
        for send in staged {
            dedup.insert(send);
        }
        Ok((last, outcomes))
    }

    /// True once an apply failed; the store then refuses to apply or checkpoint until reopened.
    pub fn is_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    fn apply_command(
        &self,
        command: Command,
        entry: &CommittedEntry,
        batch: &mut crate::state::DerivedBatch<'_>,
        pending: &mut Vec<(Arc<ConsumeQueue>, Vec<CqUnit>)>,
        (dedup, staged): (&DedupWindow, &mut Vec<StoredSend>),
    ) -> Result<ApplyOutcome> {
        Ok(match command {
            Command::Noop => ApplyOutcome::Noop,
            Command::CreateTopic(topic) => {
                let mut topics = self.topics.write();
                if topics.contains_key(&topic.name) {
                    ApplyOutcome::TopicCreated { created: false }
                } else {
                    batch.put_topic(&topic);
                    topics.insert(topic.name.clone(), topic);
                    ApplyOutcome::TopicCreated { created: true }
                }
            }
            Command::UpdateTopic(update) => {
                let mut topics = self.topics.write();
                match topics.get(&update.name) {
                    None => {
                        ApplyOutcome::Rejected(format!("topic {:?} does not exist", update.name))
                    }
                    Some(existing) if update.queues < existing.queues => {
                        ApplyOutcome::Rejected(format!(
                            "topic {:?} has {} queues; queues cannot be removed (messages in \
                             them would become unreachable)",
                            update.name, existing.queues
                        ))
                    }
                    Some(_) => {
                        batch.put_topic(&update);
                        topics.insert(update.name.clone(), update);
                        ApplyOutcome::TopicUpdated
                    }
                }
            }
            Command::DeleteTopic(delete) => {
                self.delete_topic(&delete.name, entry.index, batch, pending)?
            }
            Command::CommitOffsets(commit) => {
                let topics = self.topics.read();
                for (topic, queue_id, offset) in &commit.offsets {
                    // A commit proposed before its topic was deleted (or for a queue it no
                    // longer has) must not come back to life with a re-created topic.
                    if topics.get(topic).is_some_and(|t| *queue_id < t.queues) {
                        batch.put_offset(&commit.group, topic, *queue_id, *offset);
                    }
                }
                ApplyOutcome::OffsetsCommitted
            }
            Command::QueueLocks(change) => ApplyOutcome::Locked {
                queue_ids: self.locks.lock().apply(&change),
            },
            Command::EndHalf(end) => {
                batch.delete_half(&end.id, &end.topic);
                ApplyOutcome::Cancelled
            }
            Command::HalfChecked(checked) => {
                batch.put_half_checks(&checked.id, &checked.topic, checked.checks, checked.at_ms);
                ApplyOutcome::Noop
            }
            Command::CancelScheduled(cancel) => {
                batch.delete_scheduled(cancel.due_ms, &cancel.id, &cancel.topic);
                ApplyOutcome::Cancelled
            }
            Command::Messages {
                kind,
                topic,
                queue_id,
                records,
            } => {
                let queues = self.topics.read().get(&topic).map(|t| t.queues);
                let refused = match queues {
                    None => Some(format!("topic {topic:?} does not exist")),
                    Some(queues) if queue_id >= queues => Some(format!(
                        "queue {queue_id} out of range: topic {topic:?} has {queues} queues"
                    )),
                    Some(_) => None,
                };
                // Check every record before changing anything: a bad one rejects the whole entry,
                // the same way on every replica.
                let mut peeks = Vec::with_capacity(records.len());
                for (_, record) in &records {
                    match peek_record(record) {
                        Ok(peek) => peeks.push(peek),
                        Err(err) => {
                            return Ok(ApplyOutcome::Rejected(format!(
                                "malformed message record: {err}"
                            )))
                        }
                    }
                }
                if let MessagesKind::Deliver { due_ms } = &kind {
                    // Due messages leave the schedule even if their topic is gone meanwhile:
                    // otherwise the timer would offer them forever.
                    for ((_, record), due) in records.iter().zip(due_ms) {
                        if let Some(id) = record_id(record) {
                            batch.delete_scheduled(*due, &id, &topic);
                        }
                    }
                }
                if let Some(reason) = refused {
                    // A commit whose topic is gone leaves its half message in place (to be
                    // parked later) rather than losing it.
                    return Ok(ApplyOutcome::Rejected(reason));
                }
                if let MessagesKind::Commit { half_topic } = &kind {
                    for (_, record) in &records {
                        if let Some(id) = record_id(record) {
                            batch.delete_half(&id, half_topic);
                        }
                    }
                }
                let first_id = peeks_first_id(&records);
                let now_ms = peeks.first().map_or(0, |p| p.store_ts_ms);
                let dedup_applies = matches!(
                    kind,
                    MessagesKind::Send
                        | MessagesKind::Schedule { dedup: true, .. }
                        | MessagesKind::Half { .. }
                );
                let earlier = first_id.filter(|_| dedup_applies).and_then(|id| {
                    staged
                        .iter()
                        .find(|send| send.first_id == id)
                        .copied()
                        .or_else(|| dedup.lookup(&id, now_ms))
                });
                if let Some(original) = earlier {
                    return Ok(ApplyOutcome::Duplicate {
                        topic,
                        queue_id: original.queue_id,
                        first_offset: original.first_offset,
                        count: original.count,
                        store_ts_ms: original.store_ts_ms,
                    });
                }
                let stage = |staged: &mut Vec<StoredSend>, first_offset: u64| {
                    if let (true, Some(first_id)) = (dedup_applies, first_id) {
                        staged.push(StoredSend {
                            first_id,
                            queue_id,
                            first_offset,
                            count: records.len() as u32,
                            store_ts_ms: now_ms,
                        });
                    }
                };
                if let MessagesKind::Half { producer_group } = &kind {
                    for (_, record) in &records {
                        let Some(id) = record_id(record) else {
                            continue;
                        };
                        batch.put_half(&HalfMessage {
                            id,
                            topic: topic.clone(),
                            queue_id,
                            producer_group: producer_group.clone(),
                            stored_ms: now_ms,
                            checks: 0,
                            last_check_ms: 0,
                            record: record.to_vec(),
                        });
                    }
                    stage(staged, 0);
                    return Ok(ApplyOutcome::HalfStored {
                        topic,
                        queue_id,
                        count: records.len() as u32,
                        store_ts_ms: now_ms,
                    });
                }
                if let MessagesKind::Schedule { due_ms, .. } = kind {
                    for (_, record) in &records {
                        let Some(id) = record_id(record) else {
                            continue;
                        };
                        batch.put_scheduled(&ScheduledMessage {
                            due_ms,
                            id,
                            topic: topic.clone(),
                            queue_id,
                            record: record.to_vec(),
                        });
                    }
                    stage(staged, 0);
                    return Ok(ApplyOutcome::Scheduled {
                        topic,
                        queue_id,
                        due_ms,
                        count: records.len() as u32,
                    });
                }
                let queue = self.queue_or_create(&topic, queue_id)?;
                let slot = match pending.iter().position(|(q, _)| Arc::ptr_eq(q, &queue)) {
                    Some(slot) => slot,
                    None => {
                        pending.push((queue.clone(), Vec::new()));
                        pending.len() - 1
                    }
                };
                let first_offset = queue.max_offset() + pending[slot].1.len() as u64;
                let mut bytes = 0u64;
                for (i, ((offset_in_payload, record), peek)) in
                    records.iter().zip(&peeks).enumerate()
                {
                    let position =
                        entry.position + RECORD_HEADER_BYTES as u64 + *offset_in_payload as u64;
                    let hit = KeyHit {
                        queue_id,
                        queue_offset: first_offset + i as u64,
                        position,
                        size: record.len() as u32,
                    };
                    bytes += record.len() as u64;
                    for key in &peek.keys {
                        batch.put_key(&topic, key, hit);
                    }
                    if let Some(id) = record_id(record) {
                        batch.put_id(&id, &topic, hit);
                    }
                    pending[slot].1.push(CqUnit {
                        position,
                        size: hit.size,
                        tag_hash: tag_hash(peek.tag),
                    });
                }
                stage(staged, first_offset);
                ApplyOutcome::Appended {
                    topic,
                    queue_id,
                    first_offset,
                    count: records.len() as u32,
                    store_ts_ms: peeks.last().map_or(0, |p| p.store_ts_ms),
                    bytes,
                }
            }
        })
    }

    /// Store time of the oldest message still in the commit log (looked for in the first
    /// entries from the log start), or `None` when none is there.
    pub fn oldest_message_store_ms(&self) -> Result<Option<u64>> {
        let first = self.log.first_index().max(1);
        let last = self.log.last_index();
        if first > last {
            return Ok(None);
        }
        let high = (first + 256).min(last + 1);
        for (_, entry) in self.log.entries(first, high, Some(1 << 20))? {
            if let Ok(Command::Messages { records, .. }) = command::decode(&entry.payload) {
                if let Some(peek) = records.first().and_then(|(_, r)| peek_record(r).ok()) {
                    return Ok(Some(peek.store_ts_ms));
                }
            }
        }
        Ok(None)
    }

    pub fn topic(&self, name: &str) -> Option<TopicConfig> {
        self.topics.read().get(name).cloned()
    }

    pub fn topic_count(&self) -> usize {
        self.topics.read().len()
    }

    pub fn topics(&self) -> Vec<TopicConfig> {
        self.topics.read().values().cloned().collect()
    }

    /// (queue id, min offset, max offset) of every queue of `topic`.
    pub fn queue_offsets(&self, topic: &str) -> Option<Vec<(u32, u64, u64)>> {
        let queues = self.topics.read().get(topic)?.queues;
        Some(
            (0..queues)
                .map(|queue_id| match self.queue(topic, queue_id) {
                    Some(queue) => (queue_id, queue.min_offset(), queue.max_offset()),
                    None => (queue_id, 0, 0),
                })
                .collect(),
        )
    }

    pub fn consumer_offset(&self, group: &str, topic: &str, queue_id: u32) -> Result<Option<u64>> {
        self.db.consumer_offset(group, topic, queue_id)
    }

    /// Reads up to `max_messages` messages (and about `max_bytes`, at least one) of a queue
    /// from `offset`, skipping messages whose tag hash is not in `tag_hashes` (if non-empty).
    pub fn read_queue(
        &self,
        topic: &str,
        queue_id: u32,
        offset: u64,
        max_messages: usize,
        max_bytes: usize,
        tag_hashes: &[u64],
    ) -> Result<QueueRead> {
        self.read_queue_filtered(
            topic,
            queue_id,
            offset,
            max_messages,
            max_bytes,
            tag_hashes,
            None,
        )
    }

    /// Like [`Store::read_queue`], also dropping records `keep` refuses (an SQL selector over
    /// their properties); `next_offset` moves past them all the same.
    #[allow(clippy::too_many_arguments)]
    pub fn read_queue_filtered(
        &self,
        topic: &str,
        queue_id: u32,
        offset: u64,
        max_messages: usize,
        max_bytes: usize,
        tag_hashes: &[u64],
        keep: Option<&(dyn Fn(&Bytes) -> bool + Send + Sync)>,
    ) -> Result<QueueRead> {
        let Some(queue) = self.queue(topic, queue_id) else {
            return Ok(QueueRead {
                status: if offset == 0 {
                    ReadStatus::Empty
                } else {
                    ReadStatus::OffsetMoved
                },
                messages: Vec::new(),
                next_offset: 0,
                min_offset: 0,
                max_offset: 0,
            });
        };
        let (min_offset, max_offset) = (queue.min_offset(), queue.max_offset());
        let mut read = QueueRead {
            status: ReadStatus::Empty,
            messages: Vec::new(),
            next_offset: offset,
            min_offset,
            max_offset,
        };
        if offset < min_offset || offset > max_offset {
            read.status = ReadStatus::OffsetMoved;
            read.next_offset = offset.clamp(min_offset, max_offset);
            return Ok(read);
        }
        // With a filter, scan further so a run of skipped messages does not end the read early.
        let scan = if tag_hashes.is_empty() {
            max_messages
        } else {
            (max_messages * 8).max(256)
        };
        // Retention may have moved the minimum since it was checked: number from where the
        // read really started.
        let (start, units) = queue.read(offset, scan.max(1))?;
        read.next_offset = start;
        let mut selected: Vec<(u64, CqUnit)> = Vec::new();
        let mut bytes = 0usize;
        for (i, unit) in units.iter().enumerate() {
            let at = start + i as u64;
            if selected.len() >= max_messages || (bytes >= max_bytes && !selected.is_empty()) {
                break;
            }
            read.next_offset = at + 1;
            if tag_hashes.is_empty() || tag_hashes.contains(&unit.tag_hash) {
                bytes += unit.size as usize;
                selected.push((at, *unit));
            }
        }
        read.messages = self.read_records(&selected)?;
        if let Some(keep) = keep {
            read.messages.retain(|(_, record)| keep(record));
        }
        if !read.messages.is_empty() {
            read.status = ReadStatus::Found;
        }
        Ok(read)
    }

    /// How far behind `group` is on each queue of `topic`.
    pub fn group_lag(&self, group: &str, topic: &str) -> Result<Option<Vec<QueueLag>>> {
        let Some(queues) = self.queue_offsets(topic) else {
            return Ok(None);
        };
        let mut lags = Vec::with_capacity(queues.len());
        for (queue_id, min_offset, max_offset) in queues {
            let committed = self.consumer_offset(group, topic, queue_id)?;
            let next = committed
                .unwrap_or(min_offset)
                .clamp(min_offset, max_offset);
            let oldest_unconsumed_ms = if next < max_offset {
                let read = self.read_queue(topic, queue_id, next, 1, 1, &[])?;
                read.messages
                    .first()
                    .and_then(|(_, record)| peek_record(record).ok())
                    .map(|peek| peek.store_ts_ms)
            } else {
                None
            };
            lags.push(QueueLag {
                queue_id,
                committed,
                min_offset,
                max_offset,
                lag: max_offset - next,
                oldest_unconsumed_ms,
            });
        }
        Ok(Some(lags))
    }

    /// Every (group, topic) with committed offsets.
    pub fn consumer_groups(&self) -> Result<Vec<(String, String)>> {
        let mut pairs: Vec<(String, String)> = self
            .db
            .all_offsets()?
            .into_iter()
            .map(|(group, topic, _, _)| (group, topic))
            .collect();
        pairs.dedup();
        Ok(pairs)
    }

    /// The first offset of a queue whose message was stored at or after `timestamp_ms` (store
    /// times grow with offsets: they are stamped by the leader in log order); the queue's end
    /// if none was, its start if all were.
    pub fn search_offset(&self, topic: &str, queue_id: u32, timestamp_ms: u64) -> Result<u64> {
        let Some(queue) = self.queue(topic, queue_id) else {
            return Ok(0);
        };
        let (mut low, mut high) = (queue.min_offset(), queue.max_offset());
        while low < high {
            let middle = low + (high - low) / 2;
            let (at, units) = queue.read(middle, 1)?;
            let Some(unit) = units.first() else {
                // Retention moved the start past `middle` meanwhile.
                low = at.max(middle + 1);
                continue;
            };
            let record = self.read_records(&[(at, *unit)])?;
            let stored_at = record
                .first()
                .and_then(|(_, bytes)| peek_record(bytes).ok())
                .map_or(0, |peek| peek.store_ts_ms);
            if stored_at < timestamp_ms {
                low = at + 1;
            } else {
                high = at;
            }
        }
        Ok(low)
    }

    /// Reads the records units point to, merging neighbours into one read.
    fn read_records(&self, units: &[(u64, CqUnit)]) -> Result<Vec<(u64, Bytes)>> {
        let mut records = Vec::with_capacity(units.len());
        let mut i = 0;
        while i < units.len() {
            let start = units[i].1.position;
            let Some((_, segment_end)) = self.log.segment_bounds(start) else {
                return Err(StoreError::Inconsistent(format!(
                    "no segment holds position {start}"
                )));
            };
            let mut end = start + units[i].1.size as u64;
            let mut j = i + 1;
            while j < units.len() {
                let unit = units[j].1;
                let unit_end = unit.position + unit.size as u64;
                if unit.position < end
                    || unit_end > segment_end
                    || unit_end - start > MAX_MERGED_READ_BYTES
                {
                    break;
                }
                end = unit_end;
                j += 1;
            }
            let span = self.log.read_at(start, (end - start) as usize)?;
            for (offset, unit) in &units[i..j] {
                let from = (unit.position - start) as usize;
                records.push((*offset, span.slice(from..from + unit.size as usize)));
            }
            i = j;
        }
        Ok(records)
    }

    /// Messages of `topic` stored with `key`, oldest first.
    pub fn find_by_key(&self, topic: &str, key: &str, limit: usize) -> Result<Vec<FoundMessage>> {
        let start = self.log_start_position.load(Ordering::Acquire);
        self.db
            .find_by_key(topic, key, limit, start)?
            .into_iter()
            .map(|hit| {
                Ok(FoundMessage {
                    queue_id: hit.queue_id,
                    queue_offset: hit.queue_offset,
                    record: self.log.read_at(hit.position, hit.size as usize)?,
                })
            })
            .collect()
    }

    /// The queue locks held now (some may have expired since their last renewal).
    pub fn queue_locks(&self) -> Vec<crate::locks::QueueLock> {
        self.locks.lock().snapshot()
    }

    /// Every stored copy of the message with this id (the original, retries, its dead letter)
    /// with its record, in log order.
    pub fn find_by_id(&self, id: &[u8; 16]) -> Result<Vec<(IdHit, Bytes)>> {
        let start = self.log_start_position.load(Ordering::Acquire);
        self.db
            .find_by_id(id, start)?
            .into_iter()
            .map(|hit| {
                let record = self.log.read_at(hit.position, hit.size as usize)?;
                Ok((hit, record))
            })
            .collect()
    }

    /// Scheduled messages due by `due_by_ms`, from due time `after_ms` on, in due order.
    pub fn scheduled_due(
        &self,
        after_ms: u64,
        due_by_ms: u64,
        limit: usize,
    ) -> Result<Vec<ScheduledMessage>> {
        self.db.scheduled_due(after_ms, due_by_ms, limit)
    }

    /// Every half message of an open transaction.
    pub fn half_messages(&self) -> Result<Vec<HalfMessage>> {
        self.db.half_messages()
    }

    /// The half message with this id in `topic`, if its transaction is still open.
    pub fn half(&self, id: &[u8; 16], topic: &str) -> Result<Option<HalfMessage>> {
        self.db.half(id, topic)
    }

    /// The earliest due time of messages scheduled since the last call (`u64::MAX` if none):
    /// a timer that has seen everything due before some time needs to look again from here.
    pub fn take_schedule_hint(&self) -> u64 {
        self.schedule_hint.swap(u64::MAX, Ordering::AcqRel)
    }

    /// The scheduled message with this id bound for `topic`, if it is still waiting.
    pub fn scheduled_by_id(&self, id: &[u8; 16], topic: &str) -> Result<Option<ScheduledMessage>> {
        self.db.scheduled_by_id(id, topic)
    }

    /// The half messages with this id whose transactions are still open.
    pub fn halves_with_id(&self, id: &[u8; 16]) -> Result<Vec<HalfMessage>> {
        self.db.halves_with_id(id)
    }

    /// (due time, topic) of every waiting message with this id.
    pub fn scheduled_with_id(&self, id: &[u8; 16]) -> Result<Vec<(u64, String)>> {
        self.db.scheduled_with_id(id)
    }

    /// About how many messages wait for their delivery time.
    pub fn scheduled_estimate(&self) -> u64 {
        self.db.scheduled_estimate()
    }

    /// Makes derived state durable up to the current applied index, so a restart replays only
    /// what comes after. Safe to call while apply runs.
    pub fn checkpoint(&self) -> Result<u64> {
        let _one_at_a_time = self.checkpoint_lock.lock();
        let (point, queues, recent_sends, locks) = {
            let applied = self.applied.lock();
            // Checked under the apply lock: a failed apply sets it before releasing the lock.
            if self.is_failed() {
                return Err(StoreError::Failed);
            }
            let queues: Vec<(String, u32, Arc<ConsumeQueue>, u64)> = self
                .queues
                .read()
                .iter()
                .map(|((topic, queue_id), queue)| {
                    (topic.clone(), *queue_id, queue.clone(), queue.max_offset())
                })
                .collect();
            (
                *applied,
                queues,
                self.dedup.lock().snapshot(),
                self.locks.lock().snapshot(),
            )
        };
        // Under the async flush policy the log may lag the applied index: sync it after taking
        // the applied point, so the checkpoint never claims entries the log could still lose.
        self.log.sync()?;
        for (_, _, queue, _) in &queues {
            queue.sync()?;
        }
        let checkpoint = Checkpoint {
            applied_index: point.index,
            applied_term: point.term,
            queues: queues
                .into_iter()
                .map(|(topic, queue_id, _, length)| (topic, queue_id, length))
                .collect(),
            recent_sends,
            locks,
        };
        fail::fail_point!("store::before_checkpoint", |_| Err(StoreError::injected(
            "store::before_checkpoint"
        )));
        self.db.save_checkpoint(&checkpoint)?;
        self.checkpointed_index
            .store(point.index, Ordering::Release);
        deleted_queues::purge(&self.dir, point.index)?;
        Ok(point.index)
    }

    /// Deletes whole segments older than the retention time (and whose entries are
    /// checkpointed), then forgets the consume-queue units and index entries pointing into them.
    /// Returns the new log start, if anything was deleted.
    pub fn enforce_retention(&self, now: SystemTime) -> Result<Option<LogPoint>> {
        // Not while a snapshot is installed (which moves the log start itself) or a checkpoint
        // is taken: the log start must only ever move forward.
        let _one_at_a_time = self.checkpoint_lock.lock();
        let limit = self.checkpointed_index.load(Ordering::Acquire);
        let Some(cutoff) = now.checked_sub(self.config.retention) else {
            return Ok(None);
        };
        let mut compact_index = None;
        for (last_index, modified) in self.log.sealed_segments() {
            let expired = modified.is_some_and(|m| m < cutoff);
            if !expired || last_index > limit {
                break;
            }
            // A replica that needs the deleted entries starts from this base instead.
            if self.snapshots.contains(last_index) {
                compact_index = Some(last_index);
            }
        }
        let Some(index) = compact_index else {
            return Ok(None);
        };
        let Some(point) = self.log.compaction_point(index) else {
            return Ok(None);
        };
        if point.index <= self.log.start().index {
            return Ok(None);
        }
        // Record the new start first: a crash before the files are gone finishes the job at open.
        self.db.save_log_start(point)?;
        self.log.compact_to(index)?;
        let start_position = self.log.start_position();
        self.log_start_position
            .store(start_position, Ordering::Release);
        let queues: Vec<Arc<ConsumeQueue>> = self.queues.read().values().cloned().collect();
        for queue in queues {
            queue.trim_before(start_position)?;
        }
        self.snapshots.remove_before(point.index)?;
        info!(
            index = point.index,
            start_position, "retention deleted old commit-log segments"
        );
        Ok(Some(point))
    }
}

/// The snapshot base saved at `index`, which must exist (the log starts after it).
fn base_at(snapshots: &SnapshotDir, index: u64) -> Result<SnapshotBase> {
    let bytes = snapshots.read(index)?.ok_or_else(|| {
        StoreError::Inconsistent(format!(
            "the log starts after index {index} but neither a checkpoint nor a snapshot base \
             covers it"
        ))
    })?;
    SnapshotBase::decode(&bytes)
}

/// Opens the consume queues a checkpoint lists, cut to its lengths and to the log start.
fn open_queues(
    dir: &Path,
    config: &StoreConfig,
    checkpoint: &Checkpoint,
    log_start_position: u64,
) -> Result<HashMap<QueueKey, Arc<ConsumeQueue>>> {
    let mut queues = HashMap::new();
    for (topic, queue_id, length) in &checkpoint.queues {
        let queue = ConsumeQueue::open(
            &queue_dir(dir, topic, *queue_id),
            config.cq_units_per_file,
            *length,
        )?;
        queue.trim_before(log_start_position)?;
        queues.insert((topic.clone(), *queue_id), Arc::new(queue));
    }
    Ok(queues)
}

/// Writes a snapshot base's derived state to disk (RocksDB, empty consume queues at the
/// base's lengths, membership) and checkpoints it; returns the checkpoint.
fn restore_from_base(
    dir: &Path,
    config: &StoreConfig,
    db: &StateDb,
    base: &SnapshotBase,
) -> Result<Checkpoint> {
    db.replace_derived(&base.topics, &base.offsets, &base.scheduled, &base.halves)?;
    for (key, value) in &base.raft_values {
        db.save_raft_value(key, value, true)?;
    }
    deleted_queues::clear(dir)?;
    let cq = dir.join("cq");
    fs::remove_dir_all(&cq).map_err(StoreError::io(&cq))?;
    fs::create_dir_all(&cq).map_err(StoreError::io(&cq))?;
    for (topic, queue_id, length) in &base.queues {
        let queue_dir = queue_dir(dir, topic, *queue_id);
        let queue = ConsumeQueue::create_at(&queue_dir, config.cq_units_per_file, *length)?;
        queue.sync()?;
    }
    let checkpoint = Checkpoint {
        applied_index: base.index,
        applied_term: base.term,
        queues: base.queues.clone(),
        recent_sends: base.recent_sends.clone(),
        locks: base.locks.clone(),
    };
    db.save_checkpoint(&checkpoint)?;
    Ok(checkpoint)
}

fn peeks_first_id(records: &[(usize, Bytes)]) -> Option<[u8; 16]> {
    let (_, record) = records.first()?;
    record_id(record)
}

/// The message id of a record (already checked by `peek_record`).
fn record_id(record: &[u8]) -> Option<[u8; 16]> {
    record.get(2..18)?.try_into().ok()
}

/// Queue directories without a checkpoint entry hold only units that replay rebuilds.
fn remove_unlisted_queue_dirs(
    cq_root: &Path,
    queues: &HashMap<QueueKey, Arc<ConsumeQueue>>,
) -> Result<()> {
    for topic_dir in fs::read_dir(cq_root).map_err(StoreError::io(cq_root))? {
        let topic_dir = topic_dir.map_err(StoreError::io(cq_root))?.path();
        let Some(topic) = topic_dir
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_string)
        else {
            continue;
        };
        for queue_dir in fs::read_dir(&topic_dir).map_err(StoreError::io(&topic_dir))? {
            let queue_dir = queue_dir.map_err(StoreError::io(&topic_dir))?.path();
            let queue_id = queue_dir
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.parse::<u32>().ok());
            let listed = queue_id.is_some_and(|q| queues.contains_key(&(topic.clone(), q)));
            if !listed {
                warn!(dir = %queue_dir.display(), "removing consume queue not covered by the checkpoint; replay rebuilds it");
                fs::remove_dir_all(&queue_dir).map_err(StoreError::io(&queue_dir))?;
            }
        }
    }
    Ok(())
}

/// A topic config with the defaults for auto-created topics.
pub fn default_topic(name: &str, queues: u32) -> TopicConfig {
    TopicConfig {
        name: name.to_string(),
        queues,
        perm: perm::READ_WRITE,
    }
}
