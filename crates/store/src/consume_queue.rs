//! A consume queue: for one (topic, queue), fixed-size units pointing into the commit log, so
//! queue offset → message is one read. Units are derived from the log by apply and rebuilt from
//! it after a crash.
//!
//! Unit layout (big-endian, 20 bytes): `log position u64 | record size u32 | tag hash u64`.
//! Files hold `units_per_file` units each and are named by their first queue offset (20 digits).

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use crate::durable::{sync_dir, sync_if_dirty};
use crate::error::{Result, StoreError};

pub const UNIT_BYTES: u64 = 20;

/// Where one message of a queue lives in the commit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CqUnit {
    pub position: u64,
    pub size: u32,
    pub tag_hash: u64,
}

impl CqUnit {
    fn encode(&self, dst: &mut Vec<u8>) {
        dst.extend_from_slice(&self.position.to_be_bytes());
        dst.extend_from_slice(&self.size.to_be_bytes());
        dst.extend_from_slice(&self.tag_hash.to_be_bytes());
    }

    fn decode(bytes: &[u8]) -> CqUnit {
        let position = u64::from_be_bytes(bytes[0..8].try_into().unwrap_or_default());
        let size = u32::from_be_bytes(bytes[8..12].try_into().unwrap_or_default());
        let tag_hash = u64::from_be_bytes(bytes[12..20].try_into().unwrap_or_default());
        CqUnit {
            position,
            size,
            tag_hash,
        }
    }
}

#[derive(Debug)]
struct CqFile {
    path: PathBuf,
    first_offset: u64,
    file: File,
    dirty: AtomicBool,
    sync_lock: parking_lot::Mutex<()>,
}

#[derive(Debug)]
pub struct ConsumeQueue {
    dir: PathBuf,
    units_per_file: u64,
    files: RwLock<Vec<Arc<CqFile>>>,
    /// Oldest offset still stored.
    min_offset: AtomicU64,
    /// Offset the next unit gets; units below it are readable.
    max_offset: AtomicU64,
    writer: Mutex<()>,
}

/// Creates `dir` and its missing parents, syncing each parent so the new entries survive a
/// power loss (a checkpoint may list this queue right after).
fn create_dir_durably(dir: &Path) -> Result<()> {
    let mut missing = Vec::new();
    let mut at = Some(dir);
    while let Some(path) = at {
        if path.exists() {
            break;
        }
        missing.push(path);
        at = path.parent();
    }
    for path in missing.iter().rev() {
        fs::create_dir(path)
            .or_else(|err| if path.is_dir() { Ok(()) } else { Err(err) })
            .map_err(StoreError::io(*path))?;
        if let Some(parent) = path.parent() {
            sync_dir(parent)?;
        }
    }
    Ok(())
}

fn file_name(first_offset: u64) -> String {
    format!("{first_offset:020}")
}

fn open_file(path: PathBuf, first_offset: u64) -> Result<CqFile> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(StoreError::io(&path))?;
    Ok(CqFile {
        path,
        first_offset,
        file,
        dirty: AtomicBool::new(false),
        sync_lock: parking_lot::Mutex::new(()),
    })
}

impl ConsumeQueue {
    /// Opens the queue in `dir` and cuts it to `length` units: units past the last checkpoint
    /// are rebuilt by replaying the log. Fails if the files hold fewer units than `length`.
    pub fn open(dir: &Path, units_per_file: u64, length: u64) -> Result<ConsumeQueue> {
        create_dir_durably(dir)?;
        let mut firsts: Vec<u64> = Vec::new();
        for entry in fs::read_dir(dir).map_err(StoreError::io(dir))? {
            let entry = entry.map_err(StoreError::io(dir))?;
            if let Some(first) = entry
                .file_name()
                .to_str()
                .filter(|n| n.len() == 20)
                .and_then(|n| n.parse::<u64>().ok())
            {
                firsts.push(first);
            }
        }
        firsts.sort_unstable();
        let mut files = Vec::new();
        for first in firsts {
            let path = dir.join(file_name(first));
            // A queue's first file may start exactly at `length` (an empty queue, or one that
            // starts where a snapshot left it); any later file that does is past the checkpoint.
            if first > length || (first == length && !files.is_empty()) {
                // Wholly past the checkpoint: rebuilt by replay.
                fs::remove_file(&path).map_err(StoreError::io(&path))?;
                continue;
            }
            files.push(Arc::new(open_file(path, first)?));
        }
        let min_offset = files.first().map_or(length, |f| f.first_offset);
        if let Some(last) = files.last() {
            let wanted = (length - last.first_offset) * UNIT_BYTES;
            let actual = last
                .file
                .metadata()
                .map_err(StoreError::io(&last.path))?
                .len();
            if actual < wanted {
                return Err(StoreError::Inconsistent(format!(
                    "{} holds {} units, the checkpoint expects {}",
                    last.path.display(),
                    actual / UNIT_BYTES,
                    wanted / UNIT_BYTES
                )));
            }
            last.file
                .set_len(wanted)
                .map_err(StoreError::io(&last.path))?;
        } else if length > 0 {
            return Err(StoreError::Inconsistent(format!(
                "{} has no files but the checkpoint expects {length} units",
                dir.display()
            )));
        }
        Ok(ConsumeQueue {
            dir: dir.to_path_buf(),
            units_per_file,
            files: RwLock::new(files),
            min_offset: AtomicU64::new(min_offset),
            max_offset: AtomicU64::new(length),
            writer: Mutex::new(()),
        })
    }

    /// Creates an empty queue whose first unit will have offset `offset` (installing a
    /// snapshot: the units before it live only on the replicas that kept those segments). Any
    /// files already in `dir` are removed.
    pub fn create_at(dir: &Path, units_per_file: u64, offset: u64) -> Result<ConsumeQueue> {
        if dir.exists() {
            fs::remove_dir_all(dir).map_err(StoreError::io(dir))?;
        }
        create_dir_durably(dir)?;
        let file = open_file(dir.join(file_name(offset)), offset)?;
        sync_dir(dir)?;
        Ok(ConsumeQueue {
            dir: dir.to_path_buf(),
            units_per_file,
            files: RwLock::new(vec![Arc::new(file)]),
            min_offset: AtomicU64::new(offset),
            max_offset: AtomicU64::new(offset),
            writer: Mutex::new(()),
        })
    }

    pub fn min_offset(&self) -> u64 {
        self.min_offset.load(Ordering::Acquire)
    }

    pub fn max_offset(&self) -> u64 {
        self.max_offset.load(Ordering::Acquire)
    }

    /// Appends units at `max_offset`, then publishes them to readers.
    pub fn append(&self, units: &[CqUnit]) -> Result<()> {
        let _writer = self.writer.lock();
        let mut next = self.max_offset();
        let mut remaining = units;
        while !remaining.is_empty() {
            let file = self.file_for_append(next)?;
            let room = (file.first_offset + self.units_per_file - next) as usize;
            let (now, later) = remaining.split_at(room.min(remaining.len()));
            let mut bytes = Vec::with_capacity(now.len() * UNIT_BYTES as usize);
            for unit in now {
                unit.encode(&mut bytes);
            }
            file.file
                .write_all_at(&bytes, (next - file.first_offset) * UNIT_BYTES)
                .map_err(StoreError::io(&file.path))?;
            file.dirty.store(true, Ordering::Release);
            next += now.len() as u64;
            remaining = later;
        }
        self.max_offset.store(next, Ordering::Release);
        Ok(())
    }

    fn file_for_append(&self, offset: u64) -> Result<Arc<CqFile>> {
        if let Some(last) = self.files.read().last() {
            if offset < last.first_offset + self.units_per_file {
                return Ok(last.clone());
            }
        }
        // Files follow each other; the first one starts where the queue starts.
        let first = match self.files.read().last() {
            Some(last) => last.first_offset + self.units_per_file,
            None => offset,
        };
        let file = Arc::new(open_file(self.dir.join(file_name(first)), first)?);
        sync_dir(&self.dir)?;
        self.files.write().push(file.clone());
        Ok(file)
    }

    /// Up to `max_units` units from `offset`, or from the minimum offset if `offset` is older;
    /// returns the offset of the first unit with them.
    pub fn read(&self, offset: u64, max_units: usize) -> Result<(u64, Vec<CqUnit>)> {
        let start = offset.max(self.min_offset());
        let mut at = start;
        let end = self.max_offset().min(at.saturating_add(max_units as u64));
        let mut units = Vec::new();
        while at < end {
            let file = {
                let files = self.files.read();
                let i = files.partition_point(|f| f.first_offset <= at);
                match i.checked_sub(1).and_then(|i| files.get(i)) {
                    Some(file) => file.clone(),
                    None => break,
                }
            };
            let file_end = (file.first_offset + self.units_per_file).min(end);
            let count = (file_end - at) as usize;
            let mut bytes = vec![0u8; count * UNIT_BYTES as usize];
            file.file
                .read_exact_at(&mut bytes, (at - file.first_offset) * UNIT_BYTES)
                .map_err(StoreError::io(&file.path))?;
            units.extend(bytes.chunks_exact(UNIT_BYTES as usize).map(CqUnit::decode));
            at = file_end;
        }
        Ok((start, units))
    }

    /// Makes every appended unit durable.
    pub fn sync(&self) -> Result<()> {
        let files: Vec<Arc<CqFile>> = self.files.read().clone();
        for file in files {
            sync_if_dirty(&file.file, &file.dirty, &file.sync_lock, &file.path)?;
        }
        Ok(())
    }

    /// Retention: forgets units that point before `log_start` (their segments were deleted),
    /// deleting whole files. Returns the new minimum offset.
    pub fn trim_before(&self, log_start: u64) -> Result<u64> {
        let _writer = self.writer.lock();
        let max = self.max_offset();
        loop {
            let first = match self.files.read().first() {
                Some(first) => first.clone(),
                None => break,
            };
            let file_end = (first.first_offset + self.units_per_file).min(max);
            let is_last = self.files.read().len() == 1;
            if is_last || file_end == 0 {
                break;
            }
            let (_, last_unit) = self.read(file_end - 1, 1)?;
            if last_unit.first().is_some_and(|u| u.position >= log_start) {
                break;
            }
            fs::remove_file(&first.path).map_err(StoreError::io(&first.path))?;
            self.files.write().remove(0);
            self.min_offset.store(file_end, Ordering::Release);
        }
        // Within the first remaining file, skip units that point before the log start.
        let mut low = self.min_offset();
        let mut high = max;
        while low < high {
            let mid = low + (high - low) / 2;
            let (_, unit) = self.read(mid, 1)?;
            if unit.first().is_some_and(|u| u.position < log_start) {
                low = mid + 1;
            } else {
                high = mid;
            }
        }
        self.min_offset.store(low, Ordering::Release);
        Ok(low)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(i: u64) -> CqUnit {
        CqUnit {
            position: i * 100,
            size: 90,
            tag_hash: i % 3,
        }
    }

    #[test]
    fn units_append_and_read_across_files() {
        let dir = tempfile::tempdir().unwrap();
        let queue = ConsumeQueue::open(dir.path(), 8, 0).unwrap();
        let units: Vec<CqUnit> = (0..30).map(unit).collect();
        queue.append(&units[..5]).unwrap();
        queue.append(&units[5..]).unwrap();
        assert_eq!(queue.max_offset(), 30);
        assert_eq!(queue.read(0, 100).unwrap(), (0, units.clone()));
        assert_eq!(queue.read(6, 4).unwrap(), (6, units[6..10].to_vec()));
        assert!(queue.read(30, 4).unwrap().1.is_empty());
    }

    #[test]
    fn reopening_cuts_units_past_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        {
            let queue = ConsumeQueue::open(dir.path(), 8, 0).unwrap();
            queue
                .append(&(0..20).map(unit).collect::<Vec<_>>())
                .unwrap();
            queue.sync().unwrap();
        }
        let queue = ConsumeQueue::open(dir.path(), 8, 11).unwrap();
        assert_eq!(queue.max_offset(), 11);
        queue.append(&[unit(99)]).unwrap();
        assert_eq!(queue.read(11, 5).unwrap(), (11, vec![unit(99)]));
    }

    #[test]
    fn a_queue_shorter_than_its_checkpoint_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        {
            let queue = ConsumeQueue::open(dir.path(), 8, 0).unwrap();
            queue.append(&(0..3).map(unit).collect::<Vec<_>>()).unwrap();
        }
        assert!(ConsumeQueue::open(dir.path(), 8, 5).is_err());
    }

    #[test]
    fn a_queue_created_at_an_offset_appends_and_reopens_from_there() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q");
        let queue = ConsumeQueue::create_at(&path, 4, 10).unwrap();
        assert_eq!((queue.min_offset(), queue.max_offset()), (10, 10));
        drop(queue);
        // Reopened empty at its start (a crash right after installing a snapshot).
        let queue = ConsumeQueue::open(&path, 4, 10).unwrap();
        assert_eq!((queue.min_offset(), queue.max_offset()), (10, 10));
        let units: Vec<CqUnit> = (10..19).map(unit).collect();
        queue.append(&units).unwrap();
        let (start, read) = queue.read(0, 100).unwrap();
        assert_eq!(start, 10);
        assert_eq!(read, units);
        drop(queue);
        let queue = ConsumeQueue::open(&path, 4, 19).unwrap();
        assert_eq!((queue.min_offset(), queue.max_offset()), (10, 19));
        assert_eq!(queue.read(13, 3).unwrap(), (13, units[3..6].to_vec()));
    }

    #[test]
    fn trimming_drops_units_before_the_log_start() {
        let dir = tempfile::tempdir().unwrap();
        let queue = ConsumeQueue::open(dir.path(), 8, 0).unwrap();
        queue
            .append(&(0..30).map(unit).collect::<Vec<_>>())
            .unwrap();
        assert_eq!(queue.trim_before(1750).unwrap(), 18);
        assert_eq!(queue.min_offset(), 18);
        assert_eq!(queue.read(0, 2).unwrap(), (18, vec![unit(18), unit(19)]));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
        drop(queue);
        let reopened = ConsumeQueue::open(dir.path(), 8, 30).unwrap();
        assert_eq!(reopened.min_offset(), 16);
    }
}
