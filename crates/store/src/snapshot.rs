//! Snapshot bases: the derived state as it was just before the first entry of each commit-log
//! segment, kept next to the log so that retention can delete whole segments and a replica
//! that needs deleted entries (lagging far behind, or new) can start from the base at the
//! leader's log start and replay the rest of the log.
//!
//! A base holds what applying the entries up to its index produced (topics, consumer offsets,
//! consume-queue lengths, the idempotent-producer window) and the Raft layer's replicated
//! values (membership). Message bodies are not in it: they stay in the log, and the entries a
//! base covers are exactly the ones retention has deleted. Scheduled messages are the exception:
//! they wait outside the log (their entries may be deleted before they are due), so the base
//! carries them whole.
//!
//! File: `snapshots/<index, 20 digits>.snap` = `crc32c u32 | bincode(SnapshotBase)`, written to
//! a temporary name, synced, renamed and the directory synced.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use ferromq_protocol::{codec, headers::TopicConfig};
use serde::{Deserialize, Serialize};

use crate::commit_log::LogPoint;
use crate::dedup::StoredSend;
use crate::durable::sync_dir;
use crate::error::{Result, StoreError};
use crate::state::ScheduledMessage;

/// Raft-layer values (in the `raft` column family) that are replicated state, not per-node
/// state: they travel in snapshots. Hard state (term, vote) never does.
pub const REPLICATED_RAFT_KEYS: [&str; 2] = ["conf_state", "members"];

/// The derived state after applying every entry up to `index`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotBase {
    pub index: u64,
    pub term: u64,
    pub topics: Vec<TopicConfig>,
    /// (group, topic, queue id, offset)
    pub offsets: Vec<(String, String, u32, u64)>,
    /// (topic, queue id, number of units)
    pub queues: Vec<(String, u32, u64)>,
    pub recent_sends: Vec<StoredSend>,
    pub locks: Vec<crate::locks::QueueLock>,
    /// (key, value) of [`REPLICATED_RAFT_KEYS`] that were set.
    pub raft_values: Vec<(String, Vec<u8>)>,
    /// Messages waiting for their delivery time.
    pub scheduled: Vec<ScheduledMessage>,
    /// Half messages of open transactions.
    pub halves: Vec<crate::state::HalfMessage>,
}

impl SnapshotBase {
    pub fn point(&self) -> LogPoint {
        LogPoint {
            index: self.index,
            term: self.term,
        }
    }

    /// The bytes of a base file, which are also what a snapshot message carries.
    pub fn encode(&self) -> Vec<u8> {
        let body = codec::encode(self);
        let mut bytes = Vec::with_capacity(body.len() + 4);
        bytes.extend_from_slice(&crc32c::crc32c(&body).to_be_bytes());
        bytes.extend_from_slice(&body);
        bytes
    }

    /// Checks and decodes bytes from a file or from a peer.
    pub fn decode(bytes: &[u8]) -> Result<SnapshotBase> {
        let bad = |reason: String| StoreError::Decode {
            what: "snapshot",
            reason,
        };
        if bytes.len() < 4 {
            return Err(bad(format!("{} bytes", bytes.len())));
        }
        let (crc, body) = bytes.split_at(4);
        let expected = u32::from_be_bytes([crc[0], crc[1], crc[2], crc[3]]);
        if crc32c::crc32c(body) != expected {
            return Err(bad("checksum mismatch".into()));
        }
        let base: SnapshotBase = codec::decode(body).map_err(|err| bad(err.to_string()))?;
        for (key, _) in &base.raft_values {
            if !REPLICATED_RAFT_KEYS.contains(&key.as_str()) {
                return Err(bad(format!("unexpected raft value {key:?}")));
            }
        }
        Ok(base)
    }
}

/// The directory of base files.
#[derive(Debug)]
pub struct SnapshotDir {
    dir: PathBuf,
}

fn file_name(index: u64) -> String {
    format!("{index:020}.snap")
}

impl SnapshotDir {
    /// Opens the directory and removes temporary files a crash left behind (only here: while
    /// the store runs, a temporary file is a save in progress).
    pub fn open(dir: &Path) -> Result<SnapshotDir> {
        fs::create_dir_all(dir).map_err(StoreError::io(dir))?;
        for entry in fs::read_dir(dir).map_err(StoreError::io(dir))? {
            let path = entry.map_err(StoreError::io(dir))?.path();
            if path.extension().is_some_and(|e| e == "tmp") {
                fs::remove_file(&path).map_err(StoreError::io(&path))?;
            }
        }
        Ok(SnapshotDir {
            dir: dir.to_path_buf(),
        })
    }

    /// Writes the base durably (replacing one with the same index).
    pub fn save(&self, bytes: &[u8], index: u64) -> Result<()> {
        let path = self.dir.join(file_name(index));
        let temporary = self.dir.join(format!("{}.tmp", file_name(index)));
        let mut file = fs::File::create(&temporary).map_err(StoreError::io(&temporary))?;
        file.write_all(bytes)
            .and_then(|()| file.sync_all())
            .map_err(StoreError::io(&temporary))?;
        fs::rename(&temporary, &path).map_err(StoreError::io(&path))?;
        sync_dir(&self.dir)
    }

    /// The raw bytes of the base at `index`, if there is one.
    pub fn read(&self, index: u64) -> Result<Option<Vec<u8>>> {
        let path = self.dir.join(file_name(index));
        match fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StoreError::Io { path, source }),
        }
    }

    /// Size of the base saved at `index`, if there is one.
    pub fn size(&self, index: u64) -> Result<Option<u64>> {
        let path = self.dir.join(file_name(index));
        match fs::metadata(&path) {
            Ok(metadata) => Ok(Some(metadata.len())),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StoreError::Io { path, source }),
        }
    }

    /// Up to `len` bytes of the base saved at `index`, from `offset` (fewer at its end).
    pub fn read_range(&self, index: u64, offset: u64, len: usize) -> Result<Option<Vec<u8>>> {
        use std::io::{Read, Seek, SeekFrom};
        let path = self.dir.join(file_name(index));
        let mut file = match fs::File::open(&path) {
            Ok(file) => file,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StoreError::Io { path, source }),
        };
        let mut chunk = Vec::with_capacity(len.min(64 << 20));
        file.seek(SeekFrom::Start(offset))
            .and_then(|_| file.take(len as u64).read_to_end(&mut chunk))
            .map_err(StoreError::io(&path))?;
        Ok(Some(chunk))
    }

    pub fn contains(&self, index: u64) -> bool {
        self.dir.join(file_name(index)).exists()
    }

    /// Deletes bases older than `index` (their segments are gone). Safe while a base is being
    /// saved: temporary files are left alone.
    pub fn remove_before(&self, index: u64) -> Result<()> {
        for entry in fs::read_dir(&self.dir).map_err(StoreError::io(&self.dir))? {
            let entry = entry.map_err(StoreError::io(&self.dir))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let stale = name
                .strip_suffix(".snap")
                .and_then(|number| number.parse::<u64>().ok())
                .is_some_and(|i| i < index);
            if stale {
                let path = entry.path();
                fs::remove_file(&path).map_err(StoreError::io(&path))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bases_round_trip_and_damage_is_detected() {
        let base = SnapshotBase {
            index: 42,
            term: 3,
            offsets: vec![("g".into(), "t".into(), 1, 7)],
            queues: vec![("t".into(), 1, 9)],
            raft_values: vec![("conf_state".into(), vec![1, 2, 3])],
            ..SnapshotBase::default()
        };
        let bytes = base.encode();
        assert_eq!(SnapshotBase::decode(&bytes).ok(), Some(base));
        let mut damaged = bytes.clone();
        let last = damaged.len() - 1;
        damaged[last] ^= 1;
        assert!(SnapshotBase::decode(&damaged).is_err());
        assert!(SnapshotBase::decode(&bytes[..3]).is_err());
    }

    #[test]
    fn only_replicated_raft_values_are_accepted() {
        let base = SnapshotBase {
            raft_values: vec![("hard_state".into(), vec![0; 24])],
            ..SnapshotBase::default()
        };
        assert!(SnapshotBase::decode(&base.encode()).is_err());
    }

    #[test]
    fn stale_bases_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let snapshots = SnapshotDir::open(dir.path()).unwrap();
        for index in [10, 20, 30] {
            snapshots.save(b"x", index).unwrap();
        }
        // A save in progress is not disturbed; a crash's leftover goes at the next open.
        let in_progress = dir.path().join("00000000000000000040.snap.tmp");
        std::fs::write(&in_progress, b"partial").unwrap();
        snapshots.remove_before(20).unwrap();
        assert!(in_progress.exists());
        assert!(!snapshots.contains(10));
        assert!(snapshots.contains(20) && snapshots.contains(30));
        assert_eq!(snapshots.read(30).unwrap().as_deref(), Some(&b"x"[..]));
        assert_eq!(snapshots.read(11).unwrap(), None);
        drop(snapshots);
        SnapshotDir::open(dir.path()).unwrap();
        assert!(!in_progress.exists());
    }
}
