//! The commit log: append-only segment files that are also the Raft log.
//!
//! Record layout (big-endian): `len u32 | crc32c u32 | term u64 | index u64 | entry_type u8 |
//! payload`, where `len` counts the bytes after the CRC and the CRC covers exactly those bytes.
//! Segments are named by the global byte position of their first byte (20 digits), positions
//! are contiguous across segments, and a record never spans two segments. Indices are
//! contiguous; terms never decrease.
//!
//! Only one thread writes (the Raft loop); readers take positions or index ranges and read with
//! `pread`, so they never wait for a write in progress longer than a metadata update.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use parking_lot::{Mutex, RwLock};
use tracing::warn;

use crate::durable::{sync_dir, sync_if_dirty};
use crate::error::{Result, StoreError};

/// Bytes before the payload: len, crc, term, index, entry type.
pub const RECORD_HEADER_BYTES: usize = 4 + 4 + 8 + 8 + 1;
/// No record is larger; a bigger length field is garbage.
pub const MAX_RECORD_BYTES: usize = 64 * 1024 * 1024;
/// A sparse index point is kept at least every this many bytes of a segment.
const SPARSE_EVERY_BYTES: u64 = 64 * 1024;
/// Chunk size for sequential scans.
const SCAN_CHUNK_BYTES: usize = 1024 * 1024;

/// One log entry as stored: Raft's term, index and entry type, and an opaque payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    pub term: u64,
    pub index: u64,
    pub entry_type: u8,
    pub payload: Bytes,
}

impl LogEntry {
    pub fn record_len(&self) -> usize {
        RECORD_HEADER_BYTES + self.payload.len()
    }
}

/// An (index, term) pair: the last entry, or the entry just before the first stored one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogPoint {
    pub index: u64,
    pub term: u64,
}

fn encode_record(entry: &LogEntry, dst: &mut BytesMut) {
    let len = (RECORD_HEADER_BYTES - 8 + entry.payload.len()) as u32;
    dst.reserve(entry.record_len());
    dst.put_u32(len);
    let crc_at = dst.len();
    dst.put_u32(0);
    let body_at = dst.len();
    dst.put_u64(entry.term);
    dst.put_u64(entry.index);
    dst.put_u8(entry.entry_type);
    dst.put_slice(&entry.payload);
    let crc = crc32c::crc32c(&dst[body_at..]);
    dst[crc_at..crc_at + 4].copy_from_slice(&crc.to_be_bytes());
}

/// Result of parsing a record at the start of a buffer.
enum Parsed {
    Record(LogEntry, usize),
    /// The buffer holds only part of the record; this many bytes are needed in total.
    Incomplete(usize),
    Invalid(String),
}

fn parse_record(buf: &Bytes) -> Parsed {
    if buf.len() < 8 {
        return Parsed::Incomplete(RECORD_HEADER_BYTES);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len < RECORD_HEADER_BYTES - 8 || len + 8 > MAX_RECORD_BYTES {
        return Parsed::Invalid(format!("record length {len} out of range"));
    }
    let total = len + 8;
    if buf.len() < total {
        return Parsed::Incomplete(total);
    }
    let stored_crc = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
    let body = &buf[8..total];
    if crc32c::crc32c(body) != stored_crc {
        return Parsed::Invalid("crc mismatch".into());
    }
    let term = u64::from_be_bytes(body[0..8].try_into().unwrap_or_default());
    let index = u64::from_be_bytes(body[8..16].try_into().unwrap_or_default());
    let entry_type = body[16];
    let payload = buf.slice(RECORD_HEADER_BYTES..total);
    Parsed::Record(
        LogEntry {
            term,
            index,
            entry_type,
            payload,
        },
        total,
    )
}

/// An open segment file.
#[derive(Debug)]
pub struct SegmentFile {
    path: PathBuf,
    /// Global position of the file's first byte.
    base: u64,
    file: File,
    len: AtomicU64,
    dirty: AtomicBool,
    sync_lock: Mutex<()>,
    /// Length known durable (after the last successful sync).
    synced_len: AtomicU64,
}

impl SegmentFile {
    fn read_at(&self, offset: u64, len: usize) -> Result<Bytes> {
        let mut buf = vec![0u8; len];
        self.file
            .read_exact_at(&mut buf, offset)
            .map_err(StoreError::io(&self.path))?;
        Ok(Bytes::from(buf))
    }

    fn sync(&self) -> Result<()> {
        let len = self.len.load(Ordering::Acquire);
        sync_if_dirty(&self.file, &self.dirty, &self.sync_lock, &self.path)?;
        self.synced_len.fetch_max(len, Ordering::AcqRel);
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Modification time, used by retention.
    pub fn modified(&self) -> Option<std::time::SystemTime> {
        self.file.metadata().and_then(|m| m.modified()).ok()
    }
}

#[derive(Debug, Clone)]
struct Segment {
    file: Arc<SegmentFile>,
    /// Index of the first record, or 0 while the segment is empty.
    first_index: u64,
    last_index: u64,
    /// (index, offset in segment) points, ascending; the first record is always one.
    sparse: Vec<(u64, u64)>,
}

impl Segment {
    fn is_empty(&self) -> bool {
        self.first_index == 0
    }

    fn note_record(&mut self, index: u64, offset: u64) {
        if self.first_index == 0 {
            self.first_index = index;
        }
        self.last_index = index;
        let due = self
            .sparse
            .last()
            .is_none_or(|(_, last)| offset - last >= SPARSE_EVERY_BYTES);
        if due {
            self.sparse.push((index, offset));
        }
    }
}

#[derive(Debug)]
struct LogState {
    segments: Vec<Segment>,
    start: LogPoint,
    last: LogPoint,
    /// (first index, term) runs covering `start.index + 1 ..= last.index`.
    terms: Vec<(u64, u64)>,
}

impl LogState {
    fn term_of(&self, index: u64) -> Option<u64> {
        if index == self.start.index {
            return Some(self.start.term);
        }
        if index < self.start.index || index > self.last.index {
            return None;
        }
        let run = self.terms.partition_point(|(first, _)| *first <= index);
        run.checked_sub(1).map(|i| self.terms[i].1)
    }

    fn push_term(&mut self, index: u64, term: u64) {
        if self.terms.last().is_none_or(|(_, t)| *t != term) {
            self.terms.push((index, term));
        }
    }

    fn segment_for_index(&self, index: u64) -> Option<&Segment> {
        let i = self
            .segments
            .partition_point(|s| !s.is_empty() && s.first_index <= index);
        let segment = self.segments.get(i.checked_sub(1)?)?;
        (!segment.is_empty() && segment.last_index >= index).then_some(segment)
    }
}

/// What opening the log found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct OpenReport {
    /// Bytes cut: a torn or corrupt tail of the last segment, or (when opened with
    /// [`CommitLog::open_cutting_corruption`]) everything from a corrupt record on.
    pub truncated_bytes: u64,
    /// A record before the newest segment's tail failed its checks (what and where); the log
    /// was cut there.
    pub corruption: Option<String>,
    pub segments: usize,
}

#[derive(Debug)]
pub struct CommitLog {
    dir: PathBuf,
    segment_bytes: u64,
    state: RwLock<LogState>,
    /// Serializes writers (append, truncate, compaction).
    writer: Mutex<()>,
}

fn segment_name(base: u64) -> String {
    format!("{base:020}")
}

fn open_segment_file(path: PathBuf, base: u64) -> Result<SegmentFile> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(StoreError::io(&path))?;
    let len = file.metadata().map_err(StoreError::io(&path))?.len();
    Ok(SegmentFile {
        path,
        base,
        file,
        len: AtomicU64::new(len),
        dirty: AtomicBool::new(false),
        sync_lock: Mutex::new(()),
        synced_len: AtomicU64::new(len),
    })
}

impl CommitLog {
    /// Opens (or creates) the log in `dir`. `start` is the entry before the first one kept, as
    /// recorded by the last compaction. Verifies every record's CRC; a bad tail in the last
    /// segment is cut (a torn write), a bad record anywhere else is [`StoreError::Corrupt`].
    pub fn open(
        dir: &Path,
        segment_bytes: u64,
        start: LogPoint,
    ) -> Result<(CommitLog, OpenReport)> {
        CommitLog::open_with(dir, segment_bytes, start, false)
    }

    /// Opens like [`CommitLog::open`], but a corrupt record anywhere cuts the log there
    /// (deleting every later segment) instead of refusing: for a replica that fetches the lost
    /// entries again from its peers. [`OpenReport`] says what was cut.
    pub fn open_cutting_corruption(
        dir: &Path,
        segment_bytes: u64,
        start: LogPoint,
    ) -> Result<(CommitLog, OpenReport)> {
        CommitLog::open_with(dir, segment_bytes, start, true)
    }

    fn open_with(
        dir: &Path,
        segment_bytes: u64,
        start: LogPoint,
        cut_corruption: bool,
    ) -> Result<(CommitLog, OpenReport)> {
        fs::create_dir_all(dir).map_err(StoreError::io(dir))?;
        let mut bases: Vec<u64> = Vec::new();
        for entry in fs::read_dir(dir).map_err(StoreError::io(dir))? {
            let entry = entry.map_err(StoreError::io(dir))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.len() == 20 && name.bytes().all(|b| b.is_ascii_digit()) {
                if let Ok(base) = name.parse() {
                    bases.push(base);
                }
            }
        }
        bases.sort_unstable();

        let mut report = OpenReport::default();
        let mut state = LogState {
            segments: Vec::new(),
            start,
            last: start,
            terms: Vec::new(),
        };
        let count = bases.len();
        let mut previous = None;
        let mut cut_at: Option<usize> = None;
        for (i, base) in bases.iter().copied().enumerate() {
            if cut_at.is_some() {
                // After a cut: everything later goes (it is fetched again from peers).
                let path = dir.join(segment_name(base));
                report.truncated_bytes += fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                fs::remove_file(&path).map_err(StoreError::io(&path))?;
                continue;
            }
            let path = dir.join(segment_name(base));
            let file = Arc::new(open_segment_file(path.clone(), base)?);
            if let Some(prior) = state.segments.last() {
                let expected = prior.file.base + prior.file.len.load(Ordering::Acquire);
                if base != expected {
                    return Err(StoreError::Corrupt {
                        path,
                        offset: 0,
                        reason: format!("segment starts at position {base}, expected {expected}"),
                    });
                }
            }
            let is_last = i + 1 == count;
            let segment = scan_segment(
                file,
                &mut state,
                &mut previous,
                is_last || cut_corruption,
                &mut report,
            )?;
            if !is_last && report.truncated_bytes > 0 {
                report.corruption = Some(format!(
                    "corrupt record in {} (sealed segment); log cut after index {}",
                    path.display(),
                    state.last.index
                ));
                cut_at = Some(i);
            }
            // A segment wholly before `start` is left over from an interrupted compaction (or,
            // if it is the last one, from an interrupted reset to a snapshot).
            if !segment.is_empty() && segment.last_index <= start.index {
                fs::remove_file(&path).map_err(StoreError::io(&path))?;
                if is_last {
                    let end = base + segment.file.len.load(Ordering::Acquire);
                    let file = open_segment_file(dir.join(segment_name(end)), end)?;
                    state.segments.push(Segment {
                        file: Arc::new(file),
                        first_index: 0,
                        last_index: 0,
                        sparse: Vec::new(),
                    });
                    state.last = start;
                    state.terms.clear();
                    sync_dir(dir)?;
                }
                continue;
            }
            state.segments.push(segment);
        }
        if let Some(first) = state.segments.iter().find(|s| !s.is_empty()) {
            if first.first_index > start.index + 1 {
                return Err(StoreError::Inconsistent(format!(
                    "the log starts at index {} but the compaction point is {}",
                    first.first_index, start.index
                )));
            }
        }
        if cut_at.is_some() {
            sync_dir(dir)?;
        }
        if state.segments.is_empty() {
            let file = open_segment_file(dir.join(segment_name(0)), 0)?;
            sync_dir(dir)?;
            state.segments.push(Segment {
                file: Arc::new(file),
                first_index: 0,
                last_index: 0,
                sparse: Vec::new(),
            });
        }
        report.segments = state.segments.len();
        Ok((
            CommitLog {
                dir: dir.to_path_buf(),
                segment_bytes,
                state: RwLock::new(state),
                writer: Mutex::new(()),
            },
            report,
        ))
    }

    pub fn first_index(&self) -> u64 {
        self.state.read().start.index + 1
    }

    pub fn last_index(&self) -> u64 {
        self.state.read().last.index
    }

    pub fn last(&self) -> LogPoint {
        self.state.read().last
    }

    pub fn start(&self) -> LogPoint {
        self.state.read().start
    }

    /// Term of `index`, for `start.index ..= last.index`.
    pub fn term(&self, index: u64) -> Option<u64> {
        self.state.read().term_of(index)
    }

    /// Global position one past the last byte written.
    pub fn end_position(&self) -> u64 {
        let state = self.state.read();
        state
            .segments
            .last()
            .map_or(0, |s| s.file.base + s.file.len.load(Ordering::Acquire))
    }

    /// Global position of the first byte still stored.
    pub fn start_position(&self) -> u64 {
        self.state
            .read()
            .segments
            .first()
            .map_or(0, |s| s.file.base)
    }

    /// Appends entries that continue the log (call [`CommitLog::truncate_from`] first on a
    /// conflict). Returns each entry's record position. Not durable until [`CommitLog::sync`].
    pub fn append(&self, entries: &[LogEntry]) -> Result<Vec<u64>> {
        let _writer = self.writer.lock();
        let mut state = self.state.write();
        let mut positions = Vec::with_capacity(entries.len());
        let mut buffer = BytesMut::new();
        for (expected, entry) in (state.last.index + 1..).zip(entries) {
            if entry.index != expected {
                return Err(StoreError::NotContiguous {
                    expected,
                    got: entry.index,
                });
            }
            assert!(
                entry.term >= state.last.term,
                "terms never decrease in a Raft log"
            );

            let active = state
                .segments
                .last()
                .expect("the log always has an active segment");
            let written = active.file.len.load(Ordering::Acquire) + buffer.len() as u64;
            if written > 0 && written + entry.record_len() as u64 > self.segment_bytes {
                self.write_buffer(&mut state, &mut buffer)?;
                self.roll(&mut state)?;
            }
            let active = state.segments.last_mut().expect("active segment");
            let offset = active.file.len.load(Ordering::Acquire) + buffer.len() as u64;
            positions.push(active.file.base + offset);
            encode_record(entry, &mut buffer);
            active.note_record(entry.index, offset);
            state.push_term(entry.index, entry.term);
            state.last = LogPoint {
                index: entry.index,
                term: entry.term,
            };
        }
        self.write_buffer(&mut state, &mut buffer)?;
        // Crash point: the entries are written but not synced.
        fail::fail_point!("commitlog::after_append", |_| Err(StoreError::injected(
            "commitlog::after_append"
        )));
        Ok(positions)
    }

    fn write_buffer(&self, state: &mut LogState, buffer: &mut BytesMut) -> Result<()> {
        if buffer.is_empty() {
            return Ok(());
        }
        let active = &state.segments.last().expect("active segment").file;
        let offset = active.len.load(Ordering::Acquire);
        active
            .file
            .write_all_at(buffer, offset)
            .map_err(StoreError::io(&active.path))?;
        active
            .len
            .store(offset + buffer.len() as u64, Ordering::Release);
        active.dirty.store(true, Ordering::Release);
        buffer.clear();
        Ok(())
    }

    fn roll(&self, state: &mut LogState) -> Result<()> {
        let previous = &state.segments.last().expect("active segment").file;
        // The sealed segment is complete on disk before its successor exists, so a crash can
        // only ever leave a torn tail in the newest segment.
        previous.sync()?;
        let base = previous.base + previous.len.load(Ordering::Acquire);
        let file = open_segment_file(self.dir.join(segment_name(base)), base)?;
        sync_dir(&self.dir)?;
        state.segments.push(Segment {
            file: Arc::new(file),
            first_index: 0,
            last_index: 0,
            sparse: Vec::new(),
        });
        Ok(())
    }

    /// Makes everything appended so far durable (fdatasync of every segment written to).
    pub fn sync(&self) -> Result<()> {
        fail::fail_point!("commitlog::before_sync", |_| Err(StoreError::injected(
            "commitlog::before_sync"
        )));
        // The newest segment always (another thread may be syncing it right now: its sync
        // waits for that one), and older ones still written since their last sync.
        let files: Vec<Arc<SegmentFile>> = self
            .state
            .read()
            .segments
            .iter()
            .rev()
            .enumerate()
            .take_while(|(i, s)| *i == 0 || s.file.dirty.load(Ordering::Acquire))
            .map(|(_, s)| s.file.clone())
            .collect();
        for file in files.iter().rev() {
            file.sync()?;
        }
        Ok(())
    }

    /// Removes entries with index ≥ `index` (a Raft leader overwrote them).
    pub fn truncate_from(&self, index: u64) -> Result<()> {
        let _writer = self.writer.lock();
        let (file, offset) = {
            let state = self.state.read();
            if index > state.last.index {
                return Ok(());
            }
            if index <= state.start.index {
                return Err(StoreError::Unavailable {
                    index,
                    first: state.start.index + 1,
                    last: state.last.index,
                });
            }
            self.locate(&state, index)?
        };
        let mut state = self.state.write();
        while state
            .segments
            .last()
            .is_some_and(|s| s.file.base > file.base)
        {
            let doomed = state.segments.pop().expect("checked above");
            fs::remove_file(&doomed.file.path).map_err(StoreError::io(&doomed.file.path))?;
        }
        // Durable at once: cut entries must never come back after a power loss (they would
        // sit where the leader's replacements were acknowledged).
        file.file
            .set_len(offset)
            .and_then(|()| file.file.sync_data())
            .map_err(StoreError::io(&file.path))?;
        file.len.store(offset, Ordering::Release);
        file.synced_len.fetch_min(offset, Ordering::AcqRel);
        file.dirty.store(true, Ordering::Release);
        let segment = state
            .segments
            .last_mut()
            .expect("segment that held the index");
        segment.sparse.retain(|(i, _)| *i < index);
        if segment.sparse.is_empty() {
            segment.first_index = 0;
            segment.last_index = 0;
        } else {
            segment.last_index = index - 1;
        }
        let term = state.term_of(index - 1).expect("index - 1 is in the log");
        state.terms.retain(|(first, _)| *first < index);
        state.last = LogPoint {
            index: index - 1,
            term,
        };
        drop(state);
        sync_dir(&self.dir)
    }

    /// Deletes whole segments whose entries are all ≤ `index`, never the active one. Returns the
    /// new start point if anything was deleted; the caller must have recorded it durably first
    /// via [`CommitLog::compaction_point`].
    pub fn compact_to(&self, index: u64) -> Result<Option<LogPoint>> {
        let _writer = self.writer.lock();
        let mut state = self.state.write();
        let mut new_start = None;
        while state.segments.len() > 1 {
            let first = &state.segments[0];
            if first.is_empty() || first.last_index > index {
                break;
            }
            let point = LogPoint {
                index: first.last_index,
                term: state.term_of(first.last_index).expect("in the log"),
            };
            let doomed = state.segments.remove(0);
            fs::remove_file(&doomed.file.path).map_err(StoreError::io(&doomed.file.path))?;
            new_start = Some(point);
        }
        if let Some(point) = new_start {
            state.start = point;
            if point.index >= state.last.index {
                state.terms.clear();
            } else {
                // Keep the run covering point + 1, starting exactly there.
                let run = state
                    .terms
                    .partition_point(|(first, _)| *first <= point.index + 1)
                    - 1;
                state.terms.drain(..run);
                state.terms[0].0 = point.index + 1;
            }
        }
        Ok(new_start)
    }

    /// Drops every entry and makes the log continue after `start` (installing a snapshot at
    /// `start`). Positions keep growing: the new, empty segment begins where the old log ended.
    /// The caller must have recorded `start` durably first, as for compaction.
    pub fn reset(&self, start: LogPoint) -> Result<()> {
        let _writer = self.writer.lock();
        let mut state = self.state.write();
        let end = state
            .segments
            .last()
            .map_or(0, |s| s.file.base + s.file.len.load(Ordering::Acquire));
        let file = open_segment_file(self.dir.join(segment_name(end)), end)?;
        for doomed in state.segments.drain(..) {
            if doomed.file.base != end {
                fs::remove_file(&doomed.file.path).map_err(StoreError::io(&doomed.file.path))?;
            }
        }
        state.segments.push(Segment {
            file: Arc::new(file),
            first_index: 0,
            last_index: 0,
            sparse: Vec::new(),
        });
        state.start = start;
        state.last = start;
        state.terms.clear();
        drop(state);
        sync_dir(&self.dir)
    }

    /// Test support for crash simulations: does to the files what a power loss would, cutting
    /// every segment to the length last synced. The log must be reopened afterwards.
    pub fn simulate_power_loss(&self) -> Result<()> {
        let _writer = self.writer.lock();
        let state = self.state.read();
        for segment in &state.segments {
            let file = &segment.file;
            let synced = file.synced_len.load(Ordering::Acquire);
            if synced < file.len.load(Ordering::Acquire) {
                file.file
                    .set_len(synced)
                    .map_err(StoreError::io(&file.path))?;
            }
        }
        Ok(())
    }

    /// Whether `position` is where a segment begins (its first record starts there).
    pub fn is_segment_start(&self, position: u64) -> bool {
        self.segment_bounds(position)
            .is_some_and(|(start, _)| start == position)
    }

    /// The start point a [`CommitLog::compact_to`] with `index` would produce, so it can be
    /// persisted before any file is deleted.
    pub fn compaction_point(&self, index: u64) -> Option<LogPoint> {
        let state = self.state.read();
        state.segments[..state.segments.len().saturating_sub(1)]
            .iter()
            .take_while(|s| !s.is_empty() && s.last_index <= index)
            .last()
            .map(|s| LogPoint {
                index: s.last_index,
                term: state.term_of(s.last_index).unwrap_or(0),
            })
    }

    /// Segments (except the active one) with their last index and modification time, oldest
    /// first, for retention decisions.
    pub fn sealed_segments(&self) -> Vec<(u64, Option<std::time::SystemTime>)> {
        let state = self.state.read();
        state.segments[..state.segments.len().saturating_sub(1)]
            .iter()
            .filter(|s| !s.is_empty())
            .map(|s| (s.last_index, s.file.modified()))
            .collect()
    }

    /// The segment file holding `index` and the record's offset in it.
    fn locate(&self, state: &LogState, index: u64) -> Result<(Arc<SegmentFile>, u64)> {
        let unavailable = || StoreError::Unavailable {
            index,
            first: state.start.index + 1,
            last: state.last.index,
        };
        let segment = state.segment_for_index(index).ok_or_else(unavailable)?;
        let point = segment.sparse.partition_point(|(i, _)| *i <= index);
        let (mut at_index, mut offset) =
            segment.sparse[point.checked_sub(1).ok_or_else(unavailable)?];
        let file = segment.file.clone();
        let len = file.len.load(Ordering::Acquire);
        while at_index < index {
            let header = file.read_at(offset, 4.min((len - offset) as usize))?;
            if header.len() < 4 {
                return Err(unavailable());
            }
            let record_len =
                u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as u64 + 8;
            offset += record_len;
            at_index += 1;
        }
        Ok((file, offset))
    }

    /// Entries `low..high` with their record positions, at most `max_bytes` of records (but at
    /// least one). Every record's CRC is checked.
    pub fn entries(
        &self,
        low: u64,
        high: u64,
        max_bytes: Option<u64>,
    ) -> Result<Vec<(u64, LogEntry)>> {
        let mut entries = Vec::new();
        if low >= high {
            return Ok(entries);
        }
        let (segments, mut file, mut offset) = {
            let state = self.state.read();
            if high > state.last.index + 1 {
                return Err(StoreError::Unavailable {
                    index: high - 1,
                    first: state.start.index + 1,
                    last: state.last.index,
                });
            }
            let (file, offset) = self.locate(&state, low)?;
            let segments: Vec<Arc<SegmentFile>> =
                state.segments.iter().map(|s| s.file.clone()).collect();
            (segments, file, offset)
        };
        let mut total = 0u64;
        let mut chunk = Bytes::new();
        let mut expected = low;
        while expected < high {
            let len = file.len.load(Ordering::Acquire);
            if offset >= len {
                // Continue in the next segment.
                let next = segments.iter().find(|s| s.base > file.base).cloned();
                match next {
                    Some(next) => {
                        file = next;
                        offset = 0;
                        chunk = Bytes::new();
                        continue;
                    }
                    None => break,
                }
            }
            if chunk.len() < RECORD_HEADER_BYTES {
                let want = SCAN_CHUNK_BYTES.min((len - offset) as usize);
                chunk = file.read_at(offset, want)?;
            }
            match parse_record(&chunk) {
                Parsed::Record(entry, size) => {
                    if entry.index != expected {
                        return Err(StoreError::Corrupt {
                            path: file.path.clone(),
                            offset,
                            reason: format!("expected index {expected}, found {}", entry.index),
                        });
                    }
                    total += size as u64;
                    if max_bytes.is_some_and(|max| total > max) && !entries.is_empty() {
                        break;
                    }
                    entries.push((file.base + offset, entry));
                    expected += 1;
                    offset += size as u64;
                    chunk = chunk.slice(size..);
                }
                Parsed::Incomplete(needed) => {
                    if offset + needed as u64 > len {
                        return Err(StoreError::Corrupt {
                            path: file.path.clone(),
                            offset,
                            reason: "record runs past the end of its segment".into(),
                        });
                    }
                    chunk = file.read_at(
                        offset,
                        needed.max(SCAN_CHUNK_BYTES.min((len - offset) as usize)),
                    )?;
                }
                Parsed::Invalid(reason) => {
                    return Err(StoreError::Corrupt {
                        path: file.path.clone(),
                        offset,
                        reason,
                    })
                }
            }
        }
        Ok(entries)
    }

    /// The [start, end) positions of the segment holding `position`.
    pub fn segment_bounds(&self, position: u64) -> Option<(u64, u64)> {
        let state = self.state.read();
        let i = state.segments.partition_point(|s| s.file.base <= position);
        let file = &state.segments.get(i.checked_sub(1)?)?.file;
        Some((file.base, file.base + file.len.load(Ordering::Acquire)))
    }

    /// Reads `len` bytes at global `position` (a message record a consume-queue unit points to).
    pub fn read_at(&self, position: u64, len: usize) -> Result<Bytes> {
        let file = {
            let state = self.state.read();
            let i = state.segments.partition_point(|s| s.file.base <= position);
            let segment = i.checked_sub(1).and_then(|i| state.segments.get(i));
            match segment {
                Some(segment) => segment.file.clone(),
                None => {
                    return Err(StoreError::Inconsistent(format!(
                        "position {position} is before the log start"
                    )))
                }
            }
        };
        let offset = position - file.base;
        if offset + len as u64 > file.len.load(Ordering::Acquire) {
            return Err(StoreError::Inconsistent(format!(
                "position {position}+{len} is past the end of {}",
                file.path.display()
            )));
        }
        file.read_at(offset, len)
    }
}

/// Reads a whole segment, verifying every record, and builds its metadata. A bad record cuts
/// the segment there if `may_cut` (the newest segment's torn tail, or any damage when the log
/// is repaired from peers); otherwise it is [`StoreError::Corrupt`].
fn scan_segment(
    file: Arc<SegmentFile>,
    state: &mut LogState,
    previous: &mut Option<LogPoint>,
    may_cut: bool,
    report: &mut OpenReport,
) -> Result<Segment> {
    let mut segment = Segment {
        file: file.clone(),
        first_index: 0,
        last_index: 0,
        sparse: Vec::new(),
    };
    let len = file.len.load(Ordering::Acquire);
    let mut offset = 0u64;
    let mut chunk = Bytes::new();
    let mut problem: Option<String> = None;
    while offset < len {
        if chunk.len() < RECORD_HEADER_BYTES {
            chunk = file.read_at(offset, SCAN_CHUNK_BYTES.min((len - offset) as usize))?;
        }
        match parse_record(&chunk) {
            Parsed::Record(entry, size) => {
                let follows = match *previous {
                    Some(p) => entry.index == p.index + 1,
                    // The log's first record may sit at or before `start` (not yet compacted).
                    None => entry.index <= state.start.index + 1,
                };
                if !follows {
                    problem = Some(format!(
                        "index {} does not follow {:?}",
                        entry.index, previous
                    ));
                    break;
                }
                if previous.is_some_and(|p| entry.term < p.term) {
                    problem = Some(format!("term {} decreases", entry.term));
                    break;
                }
                *previous = Some(LogPoint {
                    index: entry.index,
                    term: entry.term,
                });
                segment.note_record(entry.index, offset);
                if entry.index > state.start.index {
                    state.push_term(entry.index, entry.term);
                    state.last = LogPoint {
                        index: entry.index,
                        term: entry.term,
                    };
                }
                offset += size as u64;
                chunk = chunk.slice(size..);
            }
            Parsed::Incomplete(needed) => {
                if offset + needed as u64 > len {
                    problem = Some("record runs past the end of the segment".into());
                    break;
                }
                chunk = file.read_at(
                    offset,
                    needed.max(SCAN_CHUNK_BYTES.min((len - offset) as usize)),
                )?;
            }
            Parsed::Invalid(reason) => {
                problem = Some(reason);
                break;
            }
        }
    }
    if let Some(reason) = problem {
        if !may_cut {
            return Err(StoreError::Corrupt {
                path: file.path.clone(),
                offset,
                reason,
            });
        }
        warn!(
            path = %file.path.display(),
            offset,
            cut_bytes = len - offset,
            %reason,
            "cutting the commit log at a bad record"
        );
        file.file
            .set_len(offset)
            .map_err(StoreError::io(&file.path))?;
        file.file.sync_all().map_err(StoreError::io(&file.path))?;
        file.len.store(offset, Ordering::Release);
        report.truncated_bytes += len - offset;
    }
    Ok(segment)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64, payload: &[u8]) -> LogEntry {
        LogEntry {
            term,
            index,
            entry_type: 0,
            payload: Bytes::copy_from_slice(payload),
        }
    }

    fn entries(range: std::ops::RangeInclusive<u64>, term: u64, size: usize) -> Vec<LogEntry> {
        range
            .map(|i| entry(i, term, &vec![i as u8; size]))
            .collect()
    }

    #[test]
    fn appended_entries_read_back_across_segment_rolls() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = CommitLog::open(dir.path(), 4096, LogPoint::default()).unwrap();
        let written = entries(1..=200, 1, 100);
        log.append(&written).unwrap();
        log.sync().unwrap();
        assert_eq!(log.last_index(), 200);
        let read: Vec<LogEntry> = log
            .entries(1, 201, None)
            .unwrap()
            .into_iter()
            .map(|(_, e)| e)
            .collect();
        assert_eq!(read, written);
        let (position, entry) = log.entries(150, 151, None).unwrap().remove(0);
        assert_eq!(entry, written[149]);
        assert_eq!(
            log.read_at(position + RECORD_HEADER_BYTES as u64, 100)
                .unwrap(),
            written[149].payload
        );
        assert!(fs::read_dir(dir.path()).unwrap().count() > 3);
    }

    #[test]
    fn reopening_rebuilds_indices_and_terms() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (log, _) = CommitLog::open(dir.path(), 2048, LogPoint::default()).unwrap();
            log.append(&entries(1..=50, 1, 64)).unwrap();
            log.append(&entries(51..=80, 3, 64)).unwrap();
            log.sync().unwrap();
        }
        let (log, report) = CommitLog::open(dir.path(), 2048, LogPoint::default()).unwrap();
        assert_eq!(report.truncated_bytes, 0);
        assert_eq!(log.last(), LogPoint { index: 80, term: 3 });
        assert_eq!(log.term(50), Some(1));
        assert_eq!(log.term(51), Some(3));
        assert_eq!(log.entries(79, 81, None).unwrap().len(), 2);
    }

    #[test]
    fn torn_tail_is_cut_on_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (log, _) = CommitLog::open(dir.path(), 1 << 20, LogPoint::default()).unwrap();
            log.append(&entries(1..=10, 1, 100)).unwrap();
            log.sync().unwrap();
        }
        let path = dir.path().join(segment_name(0));
        let len = fs::metadata(&path).unwrap().len();
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(len - 30).unwrap();
        let (log, report) = CommitLog::open(dir.path(), 1 << 20, LogPoint::default()).unwrap();
        assert_eq!(log.last_index(), 9);
        assert_eq!(report.truncated_bytes, 125 - 30);
        log.append(&entries(10..=12, 2, 10)).unwrap();
        assert_eq!(log.entries(1, 13, None).unwrap().len(), 12);
    }

    #[test]
    fn corruption_in_a_sealed_segment_refuses_to_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (log, _) = CommitLog::open(dir.path(), 1024, LogPoint::default()).unwrap();
            log.append(&entries(1..=40, 1, 100)).unwrap();
            log.sync().unwrap();
        }
        let path = dir.path().join(segment_name(0));
        let mut bytes = fs::read(&path).unwrap();
        bytes[300] ^= 0x01;
        fs::write(&path, bytes).unwrap();
        let err = CommitLog::open(dir.path(), 1024, LogPoint::default()).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");

        // A replica that repairs from peers cuts there instead, dropping later segments.
        let (log, report) =
            CommitLog::open_cutting_corruption(dir.path(), 1024, LogPoint::default()).unwrap();
        assert!(report.corruption.is_some());
        assert!(report.truncated_bytes > 0);
        assert!(
            log.last_index() < 3,
            "cut at the damaged record: {}",
            log.last_index()
        );
        assert_eq!(
            log.entries(1, log.last_index() + 1, None).unwrap().len() as u64,
            log.last_index()
        );
        log.append(&entries(log.last_index() + 1..=40, 2, 100))
            .unwrap();
        drop(log);
        let (log, report) = CommitLog::open(dir.path(), 1024, LogPoint::default()).unwrap();
        assert_eq!(
            report,
            OpenReport {
                segments: report.segments,
                ..OpenReport::default()
            }
        );
        assert_eq!(log.last_index(), 40);
    }

    #[test]
    fn truncation_replaces_a_conflicting_suffix() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = CommitLog::open(dir.path(), 1024, LogPoint::default()).unwrap();
        log.append(&entries(1..=30, 1, 100)).unwrap();
        log.truncate_from(12).unwrap();
        assert_eq!(log.last(), LogPoint { index: 11, term: 1 });
        log.append(&entries(12..=15, 2, 100)).unwrap();
        log.sync().unwrap();
        drop(log);
        let (log, _) = CommitLog::open(dir.path(), 1024, LogPoint::default()).unwrap();
        assert_eq!(log.last(), LogPoint { index: 15, term: 2 });
        assert_eq!(log.term(11), Some(1));
        assert_eq!(log.entries(12, 16, None).unwrap()[0].1.term, 2);
    }

    #[test]
    fn compaction_deletes_whole_old_segments_and_keeps_the_boundary_term() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = CommitLog::open(dir.path(), 1024, LogPoint::default()).unwrap();
        log.append(&entries(1..=40, 1, 100)).unwrap();
        log.append(&entries(41..=50, 2, 100)).unwrap();
        let point = log.compaction_point(30).unwrap();
        assert!(point.index <= 30);
        assert_eq!(log.compact_to(30).unwrap(), Some(point));
        assert_eq!(log.first_index(), point.index + 1);
        assert_eq!(log.term(point.index), Some(1));
        assert_eq!(log.term(45), Some(2));
        assert!(log.entries(point.index, point.index + 1, None).is_err());
        log.sync().unwrap();
        drop(log);
        let (log, _) = CommitLog::open(dir.path(), 1024, point).unwrap();
        assert_eq!(log.first_index(), point.index + 1);
        assert_eq!(log.last(), LogPoint { index: 50, term: 2 });
        assert_eq!(
            log.entries(point.index + 1, 51, None).unwrap().len() as u64,
            50 - point.index
        );
    }

    #[test]
    fn entries_respect_max_bytes_but_return_at_least_one() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = CommitLog::open(dir.path(), 1 << 20, LogPoint::default()).unwrap();
        log.append(&entries(1..=10, 1, 100)).unwrap();
        assert_eq!(log.entries(1, 11, Some(10)).unwrap().len(), 1);
        assert_eq!(log.entries(1, 11, Some(250)).unwrap().len(), 2);
    }
}
