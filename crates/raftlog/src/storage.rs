//! `raft::Storage` over the store's commit log: the segments *are* the Raft log. Hard state and
//! membership live in RocksDB. Recently appended entries stay in memory so applying and
//! replicating them never reads them back from disk.

use std::collections::VecDeque;
use std::sync::Arc;

use ferromq_protocol::codec;
use ferromq_store::{CommittedEntry, LogEntry, Store, StoreError};
use protobuf::Message as _;
use raft::prelude::{ConfState, Entry, EntryType, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError};
use serde::{Deserialize, Serialize};

const KEY_HARD_STATE: &str = "hard_state";
pub(crate) const KEY_CONF_STATE: &str = "conf_state";
/// Last index known synced to the commit log (written after each sync, not itself synced).
const KEY_WATERMARK: &str = "log_watermark";
/// Set while the node must fetch lost entries before it may vote again (see `repair_target`).
const KEY_REPAIR_TARGET: &str = "repair_target";
/// Largest snapshot sent: one Raft message in one peer frame (64 MiB by default).
const MAX_SNAPSHOT_BYTES: usize = 60 * 1024 * 1024;
/// Bytes of recent entries kept in memory.
const CACHE_BYTES: usize = 64 * 1024 * 1024;

#[derive(Debug, Serialize, Deserialize)]
struct StoredConfState {
    voters: Vec<u64>,
    learners: Vec<u64>,
    voters_outgoing: Vec<u64>,
    learners_next: Vec<u64>,
    auto_leave: bool,
}

fn entry_type_code(entry_type: EntryType) -> u8 {
    match entry_type {
        EntryType::EntryNormal => 0,
        EntryType::EntryConfChange => 1,
        EntryType::EntryConfChangeV2 => 2,
    }
}

fn entry_type_from(code: u8) -> Result<EntryType, StoreError> {
    match code {
        0 => Ok(EntryType::EntryNormal),
        1 => Ok(EntryType::EntryConfChange),
        2 => Ok(EntryType::EntryConfChangeV2),
        other => Err(StoreError::Decode {
            what: "entry type",
            reason: format!("unknown entry type {other}"),
        }),
    }
}

fn decode_conf_state(bytes: &[u8]) -> Result<ConfState, StoreError> {
    let stored: StoredConfState = codec::decode(bytes).map_err(|err| StoreError::Decode {
        what: "conf state",
        reason: err.to_string(),
    })?;
    Ok(ConfState {
        voters: stored.voters,
        learners: stored.learners,
        voters_outgoing: stored.voters_outgoing,
        learners_next: stored.learners_next,
        auto_leave: stored.auto_leave,
        ..ConfState::default()
    })
}

pub(crate) fn to_raft_entry(entry: LogEntry) -> Result<Entry, StoreError> {
    Ok(Entry {
        entry_type: entry_type_from(entry.entry_type)?,
        term: entry.term,
        index: entry.index,
        data: entry.payload,
        ..Entry::default()
    })
}

fn store_error(err: StoreError) -> raft::Error {
    match err {
        StoreError::Unavailable { .. } => raft::Error::Store(StorageError::Unavailable),
        other => raft::Error::Store(StorageError::Other(Box::new(other))),
    }
}

pub struct RaftStorage {
    store: Arc<Store>,
    hard_state: HardState,
    conf_state: ConfState,
    /// Contiguous recent entries with their log positions.
    cache: VecDeque<(Entry, u64)>,
    cache_bytes: usize,
    /// Commit index as last written to RocksDB.
    persisted_commit: u64,
    watermark: u64,
    repair_target: Option<u64>,
    /// Larger snapshot bases go out of band (see `ticket`).
    snapshot_inline_max: u64,
}

fn read_u64(state: &ferromq_store::state::StateDb, key: &str) -> Result<Option<u64>, StoreError> {
    match state.raft_value(key)? {
        None => Ok(None),
        Some(bytes) => bytes
            .as_slice()
            .try_into()
            .map(|b| Some(u64::from_be_bytes(b)))
            .map_err(|_| StoreError::Decode {
                what: "raft value",
                reason: format!("{key}: {} bytes, expected 8", bytes.len()),
            }),
    }
}

impl RaftStorage {
    /// Loads hard state and membership. A commit index beyond the log (possible only after a
    /// power loss with the `async` flush policy) is clamped to the last entry.
    pub fn open(store: Arc<Store>) -> Result<RaftStorage, StoreError> {
        let state = store.state();
        let mut hard_state = HardState::default();
        if let Some(bytes) = state.raft_value(KEY_HARD_STATE)? {
            if bytes.len() != 24 {
                return Err(StoreError::Decode {
                    what: "hard state",
                    reason: format!("{} bytes, expected 24", bytes.len()),
                });
            }
            let field = |i: usize| {
                u64::from_be_bytes(bytes[i * 8..i * 8 + 8].try_into().unwrap_or_default())
            };
            hard_state.term = field(0);
            hard_state.vote = field(1);
            hard_state.commit = field(2);
        }
        let last = store.log().last_index();
        // The log lost entries this node had synced (a corrupt record was cut, or an async-flush
        // power loss) or knew committed: it may have helped commit them, so it must not vote
        // until it has them again from a leader.
        let watermark = read_u64(state, KEY_WATERMARK)?.unwrap_or(0);
        let mut repair_target = read_u64(state, KEY_REPAIR_TARGET)?.filter(|t| *t > 0);
        let lost_up_to = watermark.max(hard_state.commit);
        // Also raised when a repairing node lost more (it may have acknowledged entries past
        // its old target meanwhile).
        if lost_up_to > last && repair_target.is_none_or(|target| target < lost_up_to) {
            tracing::warn!(
                lost_up_to,
                last,
                "the commit log lost entries; not voting until they are fetched again"
            );
            state.save_raft_value(KEY_REPAIR_TARGET, &lost_up_to.to_be_bytes(), true)?;
            repair_target = Some(lost_up_to);
        }
        if hard_state.commit > last {
            hard_state.commit = last;
        }
        // Applied entries were committed, even if the lazily written commit index lags.
        let persisted_commit = hard_state.commit;
        hard_state.commit = hard_state.commit.max(store.applied_index().min(last));
        let conf_state = match state.raft_value(KEY_CONF_STATE)? {
            Some(bytes) => decode_conf_state(&bytes)?,
            None => ConfState::default(),
        };
        Ok(RaftStorage {
            store,
            hard_state,
            conf_state,
            cache: VecDeque::new(),
            cache_bytes: 0,
            persisted_commit,
            watermark,
            repair_target,
            snapshot_inline_max: u64::MAX,
        })
    }

    /// Snapshot bases larger than this go out of band (see `ticket`).
    pub fn set_snapshot_inline_max(&mut self, bytes: u64) {
        self.snapshot_inline_max = bytes;
    }

    /// The index this node must have again (committed, from a leader) before it may vote or
    /// campaign; `None` when its log lost nothing.
    pub fn repair_target(&self) -> Option<u64> {
        self.repair_target
    }

    /// Ends repair mode, durably.
    pub fn finish_repair(&mut self) -> Result<(), StoreError> {
        self.store
            .state()
            .save_raft_value(KEY_REPAIR_TARGET, &0u64.to_be_bytes(), true)?;
        self.repair_target = None;
        Ok(())
    }

    /// Durably lowers the watermark to `index` (before the log is cut or replaced).
    fn lower_watermark(&mut self, index: u64) -> Result<(), StoreError> {
        if index < self.watermark {
            self.store
                .state()
                .save_raft_value(KEY_WATERMARK, &index.to_be_bytes(), true)?;
            self.watermark = index;
        }
        Ok(())
    }

    /// Records that the log is synced up to its last index (after each commit-log sync).
    pub fn note_synced(&mut self) -> Result<(), StoreError> {
        let last = self.store.log().last_index();
        if last != self.watermark {
            self.store
                .state()
                .save_raft_value(KEY_WATERMARK, &last.to_be_bytes(), false)?;
            self.watermark = last;
        }
        Ok(())
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    /// Starts the log of a founding member of a new group (no membership, empty log): one
    /// committed conf-change entry per founding voter at term 1, written identically by every
    /// founder, so membership is in the log from its first entry and a member added later
    /// learns it by replicating the log. The entries are applied by the startup replay.
    pub fn bootstrap(&mut self, voters: &[u64]) -> Result<bool, StoreError> {
        let last = self.store.log().last_index();
        // A crash between writing the founding entries and the hard state leaves term 0 and
        // nothing but term-1 entries: nothing else can have happened yet, so start over.
        let interrupted = self.conf_state.voters.is_empty()
            && self.hard_state.term == 0
            && last > 0
            && last <= voters.len() as u64
            && self.store.log().term(last) == Some(1);
        if interrupted {
            tracing::warn!(last, "finishing an interrupted bootstrap");
            self.store.log().truncate_from(1)?;
            self.cache.clear();
            self.cache_bytes = 0;
        }
        if !self.conf_state.voters.is_empty() || self.store.log().last_index() > 0 {
            return Ok(false);
        }
        let mut voters = voters.to_vec();
        voters.sort_unstable();
        voters.dedup();
        let mut entries = Vec::with_capacity(voters.len());
        for (i, id) in voters.iter().enumerate() {
            let data = crate::membership::promotion(*id)
                .write_to_bytes()
                .map_err(|err| {
                    StoreError::Inconsistent(format!("encoding a conf change: {err}"))
                })?;
            entries.push(Entry {
                entry_type: EntryType::EntryConfChange,
                term: 1,
                index: i as u64 + 1,
                data: data.into(),
                ..Entry::default()
            });
        }
        self.append(&entries)?;
        self.store.log().sync()?;
        self.hard_state = HardState {
            term: 1,
            vote: 0,
            commit: voters.len() as u64,
            ..HardState::default()
        };
        self.write_hard_state(true)?;
        Ok(true)
    }

    /// Replaces everything with a snapshot from the leader: the store installs it, then
    /// membership and the commit index follow.
    pub fn apply_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), StoreError> {
        let metadata = snapshot.get_metadata();
        // Checked before anything is replaced.
        let base = ferromq_store::SnapshotBase::decode(&snapshot.data)?;
        if base.index != metadata.index || base.term != metadata.term {
            return Err(StoreError::Inconsistent(format!(
                "snapshot data is at {}/{} but its metadata says {}/{}",
                base.index, base.term, metadata.index, metadata.term
            )));
        }
        self.lower_watermark(base.index)?;
        self.store.install_snapshot(&snapshot.data)?;
        self.cache.clear();
        self.cache_bytes = 0;
        self.set_conf_state(metadata.get_conf_state().clone())?;
        self.hard_state.commit = self.hard_state.commit.max(metadata.index);
        self.hard_state.term = self.hard_state.term.max(metadata.term);
        self.write_hard_state(true)
    }

    pub fn set_conf_state(&mut self, conf_state: ConfState) -> Result<(), StoreError> {
        let stored = StoredConfState {
            voters: conf_state.voters.clone(),
            learners: conf_state.learners.clone(),
            voters_outgoing: conf_state.voters_outgoing.clone(),
            learners_next: conf_state.learners_next.clone(),
            auto_leave: conf_state.auto_leave,
        };
        self.store
            .state()
            .save_raft_value(KEY_CONF_STATE, &codec::encode(&stored), true)?;
        self.conf_state = conf_state;
        Ok(())
    }

    /// Records the hard state. A new term or vote is written and synced before any message
    /// goes out. A change of the commit index alone stays in memory until
    /// [`RaftStorage::persist_commit`]: an entry that is in the log and was committed is
    /// committed again after a restart, so the persisted commit index only bounds the replay.
    pub fn set_hard_state(&mut self, hard_state: &HardState) -> Result<(), StoreError> {
        let vote_changed =
            hard_state.term != self.hard_state.term || hard_state.vote != self.hard_state.vote;
        self.hard_state = hard_state.clone();
        if vote_changed {
            self.write_hard_state(true)?;
        }
        Ok(())
    }

    pub fn set_commit(&mut self, commit: u64) {
        self.hard_state.commit = commit;
    }

    /// Writes the commit index if it moved since the last write.
    pub fn persist_commit(&mut self) -> Result<(), StoreError> {
        if self.hard_state.commit != self.persisted_commit {
            self.write_hard_state(false)?;
        }
        Ok(())
    }

    fn write_hard_state(&mut self, sync: bool) -> Result<(), StoreError> {
        fail::fail_point!("raft::write_hard_state", |_| Err(StoreError::injected(
            "raft::write_hard_state"
        )));
        let mut bytes = Vec::with_capacity(24);
        bytes.extend_from_slice(&self.hard_state.term.to_be_bytes());
        bytes.extend_from_slice(&self.hard_state.vote.to_be_bytes());
        bytes.extend_from_slice(&self.hard_state.commit.to_be_bytes());
        self.store
            .state()
            .save_raft_value(KEY_HARD_STATE, &bytes, sync)?;
        self.persisted_commit = self.hard_state.commit;
        Ok(())
    }

    /// Appends entries from a `Ready`, replacing any conflicting suffix. Not durable until the
    /// commit log is synced.
    pub fn append(&mut self, entries: &[Entry]) -> Result<(), StoreError> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        let store = self.store.clone();
        let log = store.log();
        if first.index <= log.last_index() {
            // Entries a leader overwrites were never committed: lower the watermark first, so
            // a crash right after the cut does not look like lost data (and force repair).
            self.lower_watermark(first.index - 1)?;
            log.truncate_from(first.index)?;
            while self
                .cache
                .back()
                .is_some_and(|(e, _)| e.index >= first.index)
            {
                let (entry, _) = self.cache.pop_back().expect("checked");
                self.cache_bytes -= entry.data.len();
            }
        }
        let log_entries: Vec<LogEntry> = entries
            .iter()
            .map(|e| LogEntry {
                term: e.term,
                index: e.index,
                entry_type: entry_type_code(e.entry_type),
                payload: e.data.clone(),
            })
            .collect();
        let positions = log.append(&log_entries)?;
        if self
            .cache
            .back()
            .is_some_and(|(e, _)| e.index + 1 != first.index)
        {
            self.cache.clear();
            self.cache_bytes = 0;
        }
        for (entry, position) in entries.iter().zip(positions) {
            self.cache_bytes += entry.data.len();
            self.cache.push_back((entry.clone(), position));
        }
        while self.cache_bytes > CACHE_BYTES && self.cache.len() > 1 {
            let (entry, _) = self.cache.pop_front().expect("non-empty");
            self.cache_bytes -= entry.data.len();
        }
        Ok(())
    }

    /// Turns committed Raft entries into what the state machine applies.
    pub fn committed(&self, entries: Vec<Entry>) -> Result<Vec<CommittedEntry>, StoreError> {
        let mut committed = Vec::with_capacity(entries.len());
        for entry in entries {
            let position = match self.cached(entry.index) {
                Some((_, position)) => *position,
                None => {
                    self.store
                        .log()
                        .entries(entry.index, entry.index + 1, None)?[0]
                        .0
                }
            };
            committed.push(CommittedEntry {
                index: entry.index,
                term: entry.term,
                entry_type: entry_type_code(entry.entry_type),
                position,
                payload: entry.data,
            });
        }
        Ok(committed)
    }

    fn cached(&self, index: u64) -> Option<&(Entry, u64)> {
        let first = self.cache.front()?.0.index;
        self.cache.get(index.checked_sub(first)? as usize)
    }
}

impl raft::Storage for RaftStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let max_size = max_size.into();
        let log = self.store.log();
        if low < log.first_index() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > log.last_index() + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let cache_first = self.cache.front().map(|(e, _)| e.index);
        let mut entries: Vec<Entry> = match cache_first {
            Some(first) if first <= low => (low..high)
                .map_while(|i| self.cached(i).map(|(e, _)| e.clone()))
                .collect(),
            _ => Vec::new(),
        };
        if (entries.len() as u64) < high - low {
            entries = log
                .entries(low, high, max_size)
                .map_err(|err| match err {
                    // Retention deleted the segment since the check above.
                    StoreError::Unavailable { .. } if low < log.first_index() => {
                        raft::Error::Store(StorageError::Compacted)
                    }
                    other => store_error(other),
                })?
                .into_iter()
                .map(|(_, e)| to_raft_entry(e))
                .collect::<Result<_, _>>()
                .map_err(store_error)?;
        }
        raft::util::limit_size(&mut entries, max_size);
        Ok(entries)
    }

    fn term(&self, index: u64) -> raft::Result<u64> {
        let log = self.store.log();
        if index + 1 < log.first_index() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        log.term(index)
            .ok_or(raft::Error::Store(StorageError::Unavailable))
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.store.log().first_index())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.store.log().last_index())
    }

    /// The base at the log start: a replica that needs entries retention deleted starts from
    /// it. Only ever asked for when the log was compacted.
    fn snapshot(&self, _request_index: u64, to: u64) -> raft::Result<Snapshot> {
        let unavailable = raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable);
        let (point, bytes) = match self.store.snapshot_size_at_log_start() {
            Ok(Some((point, size))) if size > self.snapshot_inline_max => {
                // Out of band: the receiver fetches the base itself.
                let ticket = crate::ticket::SnapshotTicket {
                    index: point.index,
                    len: size,
                };
                (point, ticket.encode())
            }
            Ok(Some(_)) => match self.store.snapshot_at_log_start() {
                Ok(Some(found)) => found,
                Ok(None) => return Err(unavailable),
                Err(err) => {
                    tracing::error!(%err, to, "cannot read the snapshot base");
                    return Err(unavailable);
                }
            },
            Ok(None) => return Err(unavailable),
            Err(err) => {
                tracing::error!(%err, to, "cannot read the snapshot base");
                return Err(unavailable);
            }
        };
        if bytes.len() > MAX_SNAPSHOT_BYTES {
            // It would not fit one peer frame; say so loudly rather than retry forever.
            tracing::error!(
                to,
                bytes = bytes.len(),
                limit = MAX_SNAPSHOT_BYTES,
                "snapshot base too large to send; the member cannot catch up"
            );
            return Err(unavailable);
        }
        // The current membership, not the one at the base: the receiver must find itself in
        // it (a member added after the base would refuse the snapshot), and replaying the
        // conf changes after the base onto it changes nothing, since each sets one member's
        // role outright.
        let conf_state = self.conf_state.clone();
        tracing::info!(
            to,
            index = point.index,
            bytes = bytes.len(),
            "sending a snapshot"
        );
        let mut metadata = SnapshotMetadata {
            index: point.index,
            term: point.term,
            ..SnapshotMetadata::default()
        };
        metadata.set_conf_state(conf_state);
        let mut snapshot = Snapshot {
            data: bytes.into(),
            ..Snapshot::default()
        };
        snapshot.set_metadata(metadata);
        Ok(snapshot)
    }
}
