//! RocksDB state: Raft's hard and conf state (written with the WAL, synced when Raft asks),
//! and the derived state apply maintains: topics, consumer offsets, the key and message-id
//! index, scheduled messages (with their records: they outlive the log segments they came in),
//! and the checkpoint that says how far all derived state is durable.
//!
//! Derived writes skip the WAL: they are rebuilt from the log after a crash, starting at the
//! checkpoint, which is only written after the consume queues are synced and RocksDB's memtables
//! are flushed.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ferromq_protocol::{codec, headers::TopicConfig};
use rocksdb::{
    compaction_filter::Decision, ColumnFamily, ColumnFamilyDescriptor, Direction, IteratorMode,
    Options, WriteBatch, WriteOptions, DB,
};
use serde::{Deserialize, Serialize};

use crate::commit_log::LogPoint;
use crate::error::{Result, StoreError};

const CF_RAFT: &str = "raft";
const CF_META: &str = "meta";
const CF_TOPICS: &str = "topics";
const CF_OFFSETS: &str = "offsets";
const CF_KEYS: &str = "keys";
/// `due_ms u64 | id [16] | topic` → `queue_id u32 | record`, in due order for the timer.
const CF_SCHEDULE: &str = "schedule";
/// `id [16] | topic | 0 | due_ms u64` → nothing, to find scheduled messages by their id (one id
/// may wait more than once for a topic: two retries of a message a group failed twice).
const CF_SCHEDULE_IDS: &str = "schedule_ids";
/// `h | id [16] | topic` → a half message; `c | id | topic` → its check-backs so far.
const CF_HALF: &str = "half";
const DERIVED_CFS: [&str; 6] = [
    CF_TOPICS,
    CF_OFFSETS,
    CF_KEYS,
    CF_SCHEDULE,
    CF_SCHEDULE_IDS,
    CF_HALF,
];
/// Message-id entries share the key index's column family (and its retention by position);
/// they start with a byte no topic name starts with.
const ID_INDEX_PREFIX: u8 = 0;

const KEY_LOG_START: &[u8] = b"log_start";
const KEY_CHECKPOINT: &[u8] = b"checkpoint";

/// How far derived state (consume queues and RocksDB) is known to be durable.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub applied_index: u64,
    pub applied_term: u64,
    /// (topic, queue id, number of units) of every consume queue at `applied_index`.
    pub queues: Vec<(String, u32, u64)>,
    /// The idempotent-producer window at `applied_index`.
    pub recent_sends: Vec<crate::dedup::StoredSend>,
    /// Orderly consumers' queue locks at `applied_index`.
    pub locks: Vec<crate::locks::QueueLock>,
}

/// Where a message with a given key is: its queue and offset, and its record in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyHit {
    pub queue_id: u32,
    pub queue_offset: u64,
    pub position: u64,
    pub size: u32,
}

/// Where a message with a given id is (the original and every copy: retries, dead letter).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdHit {
    pub topic: String,
    pub queue_id: u32,
    pub queue_offset: u64,
    pub position: u64,
    pub size: u32,
}

/// A half message: stored, invisible to consumers until its transaction is committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HalfMessage {
    pub id: [u8; 16],
    pub topic: String,
    pub queue_id: u32,
    /// Producers of this group are asked about it when it stays undecided.
    pub producer_group: String,
    pub stored_ms: u64,
    /// Check-backs so far, and when the last was.
    pub checks: u32,
    pub last_check_ms: u64,
    pub record: Vec<u8>,
}

fn half_key(kind: u8, id: &[u8; 16], topic: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(17 + topic.len());
    key.push(kind);
    key.extend_from_slice(id);
    key.extend_from_slice(topic.as_bytes());
    key
}

/// A message waiting for its delivery time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduledMessage {
    pub due_ms: u64,
    pub id: [u8; 16],
    /// Where it will be delivered.
    pub topic: String,
    pub queue_id: u32,
    pub record: Vec<u8>,
}

fn schedule_key(due_ms: u64, id: &[u8; 16], topic: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(24 + topic.len());
    key.extend_from_slice(&due_ms.to_be_bytes());
    key.extend_from_slice(id);
    key.extend_from_slice(topic.as_bytes());
    key
}

fn schedule_id_prefix(id: &[u8; 16], topic: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(25 + topic.len());
    key.extend_from_slice(id);
    key.extend_from_slice(topic.as_bytes());
    key.push(0);
    key
}

fn schedule_id_key(id: &[u8; 16], topic: &str, due_ms: u64) -> Vec<u8> {
    let mut key = schedule_id_prefix(id, topic);
    key.extend_from_slice(&due_ms.to_be_bytes());
    key
}

fn decode_scheduled(key: &[u8], value: &[u8]) -> Result<ScheduledMessage> {
    if key.len() < 24 || value.len() < 4 {
        return Err(StoreError::Decode {
            what: "scheduled message",
            reason: format!("key of {} bytes, value of {}", key.len(), value.len()),
        });
    }
    let mut id = [0u8; 16];
    id.copy_from_slice(&key[8..24]);
    Ok(ScheduledMessage {
        due_ms: decode_u64(&key[..8], "scheduled message due time")?,
        id,
        topic: String::from_utf8_lossy(&key[24..]).into_owned(),
        queue_id: u32::from_be_bytes([value[0], value[1], value[2], value[3]]),
        record: value[4..].to_vec(),
    })
}

fn id_prefix(id: &[u8; 16]) -> Vec<u8> {
    let mut prefix = Vec::with_capacity(17);
    prefix.push(ID_INDEX_PREFIX);
    prefix.extend_from_slice(id);
    prefix
}

pub struct StateDb {
    db: DB,
    derived_writes: WriteOptions,
}

impl std::fmt::Debug for StateDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateDb").finish_non_exhaustive()
    }
}

fn offset_key(group: &str, topic: &str, queue_id: u32) -> Vec<u8> {
    let mut key = Vec::with_capacity(group.len() + topic.len() + 6);
    key.extend_from_slice(group.as_bytes());
    key.push(0);
    key.extend_from_slice(topic.as_bytes());
    key.push(0);
    key.extend_from_slice(&queue_id.to_be_bytes());
    key
}

fn key_prefix(topic: &str, key: &str) -> Vec<u8> {
    let mut prefix = Vec::with_capacity(topic.len() + key.len() + 2);
    prefix.extend_from_slice(topic.as_bytes());
    prefix.push(0);
    prefix.extend_from_slice(key.as_bytes());
    prefix.push(0);
    prefix
}

fn decode_u64(bytes: &[u8], what: &'static str) -> Result<u64> {
    bytes
        .try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| StoreError::Decode {
            what,
            reason: format!("{} bytes, expected 8", bytes.len()),
        })
}

fn decode_point(bytes: &[u8]) -> Result<LogPoint> {
    if bytes.len() != 16 {
        return Err(StoreError::Decode {
            what: "log start",
            reason: format!("{} bytes, expected 16", bytes.len()),
        });
    }
    Ok(LogPoint {
        index: decode_u64(&bytes[..8], "log start")?,
        term: decode_u64(&bytes[8..], "log start")?,
    })
}

impl StateDb {
    /// Opens (or creates) the database. Key-index entries pointing before `log_start_position`
    /// are dropped as RocksDB compacts, so retention needs no scan of the index.
    pub fn open(path: &Path, log_start_position: Arc<AtomicU64>) -> Result<StateDb> {
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        let mut keys_options = Options::default();
        keys_options.set_compaction_filter(
            "drop_keys_before_log_start",
            move |_level, key: &[u8], _value: &[u8]| {
                let position = key
                    .len()
                    .checked_sub(8)
                    .and_then(|at| key[at..].try_into().ok())
                    .map(u64::from_be_bytes);
                match position {
                    Some(position) if position < log_start_position.load(Ordering::Acquire) => {
                        Decision::Remove
                    }
                    _ => Decision::Keep,
                }
            },
        );
        let descriptors = vec![
            ColumnFamilyDescriptor::new(CF_RAFT, Options::default()),
            ColumnFamilyDescriptor::new(CF_META, Options::default()),
            ColumnFamilyDescriptor::new(CF_TOPICS, Options::default()),
            ColumnFamilyDescriptor::new(CF_OFFSETS, Options::default()),
            ColumnFamilyDescriptor::new(CF_KEYS, keys_options),
            ColumnFamilyDescriptor::new(CF_SCHEDULE, Options::default()),
            ColumnFamilyDescriptor::new(CF_SCHEDULE_IDS, Options::default()),
            ColumnFamilyDescriptor::new(CF_HALF, Options::default()),
        ];
        let db = DB::open_cf_descriptors(&options, path, descriptors)?;
        let mut derived_writes = WriteOptions::default();
        derived_writes.disable_wal(true);
        Ok(StateDb { db, derived_writes })
    }

    fn cf(&self, name: &str) -> &ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("column families are created at open")
    }

    fn put_durable(&self, cf: &str, key: &[u8], value: &[u8], sync: bool) -> Result<()> {
        let mut options = WriteOptions::default();
        options.set_sync(sync);
        self.db.put_cf_opt(self.cf(cf), key, value, &options)?;
        Ok(())
    }

    /// Raft's own state (hard state, conf state), opaque to the store.
    pub fn raft_value(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.db.get_cf(self.cf(CF_RAFT), key)?)
    }

    pub fn save_raft_value(&self, key: &str, value: &[u8], sync: bool) -> Result<()> {
        self.put_durable(CF_RAFT, key.as_bytes(), value, sync)
    }

    pub fn log_start(&self) -> Result<LogPoint> {
        match self.db.get_cf(self.cf(CF_META), KEY_LOG_START)? {
            Some(bytes) => decode_point(&bytes),
            None => Ok(LogPoint::default()),
        }
    }

    pub fn save_log_start(&self, point: LogPoint) -> Result<()> {
        let mut bytes = point.index.to_be_bytes().to_vec();
        bytes.extend_from_slice(&point.term.to_be_bytes());
        self.put_durable(CF_META, KEY_LOG_START, &bytes, true)
    }

    pub fn checkpoint(&self) -> Result<Option<Checkpoint>> {
        match self.db.get_cf(self.cf(CF_META), KEY_CHECKPOINT)? {
            Some(bytes) => codec::decode(&bytes)
                .map(Some)
                .map_err(|err| StoreError::Decode {
                    what: "checkpoint",
                    reason: err.to_string(),
                }),
            None => Ok(None),
        }
    }

    /// Flushes derived state to SST files, then records `checkpoint` durably.
    pub fn save_checkpoint(&self, checkpoint: &Checkpoint) -> Result<()> {
        for cf in DERIVED_CFS {
            self.db.flush_cf(self.cf(cf))?;
        }
        self.put_durable(CF_META, KEY_CHECKPOINT, &codec::encode(checkpoint), true)
    }

    pub fn topics(&self) -> Result<Vec<TopicConfig>> {
        let mut topics = Vec::new();
        for item in self.db.iterator_cf(self.cf(CF_TOPICS), IteratorMode::Start) {
            let (_, value) = item?;
            topics.push(codec::decode(&value).map_err(|err| StoreError::Decode {
                what: "topic",
                reason: err.to_string(),
            })?);
        }
        Ok(topics)
    }

    pub fn consumer_offset(&self, group: &str, topic: &str, queue_id: u32) -> Result<Option<u64>> {
        match self
            .db
            .get_cf(self.cf(CF_OFFSETS), offset_key(group, topic, queue_id))?
        {
            Some(bytes) => Ok(Some(decode_u64(&bytes, "consumer offset")?)),
            None => Ok(None),
        }
    }

    /// Messages stored with `key` in `topic`, oldest first, at most `limit`; entries before
    /// `log_start_position` (already deleted by retention) are skipped.
    pub fn find_by_key(
        &self,
        topic: &str,
        key: &str,
        limit: usize,
        log_start_position: u64,
    ) -> Result<Vec<KeyHit>> {
        let prefix = key_prefix(topic, key);
        let mut hits = Vec::new();
        let iter = self.db.iterator_cf(
            self.cf(CF_KEYS),
            IteratorMode::From(&prefix, Direction::Forward),
        );
        for item in iter {
            let (k, v) = item?;
            if !k.starts_with(&prefix) || hits.len() >= limit {
                break;
            }
            let position = decode_u64(&k[prefix.len()..], "key index position")?;
            if position < log_start_position || v.len() != 16 {
                continue;
            }
            hits.push(KeyHit {
                queue_id: u32::from_be_bytes(v[0..4].try_into().unwrap_or_default()),
                queue_offset: decode_u64(&v[4..12], "key index offset")?,
                size: u32::from_be_bytes(v[12..16].try_into().unwrap_or_default()),
                position,
            });
        }
        Ok(hits)
    }

    /// Every copy of the message with this id (the original, retries, its dead letter), in log
    /// order; entries before `log_start_position` are skipped.
    pub fn find_by_id(&self, id: &[u8; 16], log_start_position: u64) -> Result<Vec<IdHit>> {
        let prefix = id_prefix(id);
        let mut hits = Vec::new();
        let iter = self.db.iterator_cf(
            self.cf(CF_KEYS),
            IteratorMode::From(&prefix, Direction::Forward),
        );
        for item in iter {
            let (k, v) = item?;
            if !k.starts_with(&prefix) || hits.len() >= 1024 {
                break;
            }
            let position = decode_u64(&k[prefix.len()..], "id index position")?;
            if position < log_start_position || v.len() < 16 {
                continue;
            }
            hits.push(IdHit {
                queue_id: u32::from_be_bytes([v[0], v[1], v[2], v[3]]),
                queue_offset: decode_u64(&v[4..12], "id index offset")?,
                size: u32::from_be_bytes([v[12], v[13], v[14], v[15]]),
                topic: String::from_utf8_lossy(&v[16..]).into_owned(),
                position,
            });
        }
        Ok(hits)
    }

    /// Scheduled messages due at or before `due_by_ms`, from `after` (a due time: earlier ones
    /// are skipped), in due order, at most `limit`.
    pub fn scheduled_due(
        &self,
        after_ms: u64,
        due_by_ms: u64,
        limit: usize,
    ) -> Result<Vec<ScheduledMessage>> {
        let mut due = Vec::new();
        let from = after_ms.to_be_bytes();
        let iter = self.db.iterator_cf(
            self.cf(CF_SCHEDULE),
            IteratorMode::From(&from, Direction::Forward),
        );
        for item in iter {
            let (key, value) = item?;
            let message = decode_scheduled(&key, &value)?;
            if message.due_ms > due_by_ms || due.len() >= limit {
                break;
            }
            due.push(message);
        }
        Ok(due)
    }

    /// Every scheduled message (for a snapshot base).
    pub fn all_scheduled(&self) -> Result<Vec<ScheduledMessage>> {
        self.scheduled_due(0, u64::MAX, usize::MAX)
    }

    /// The scheduled message with this id bound for `topic` (the one due first), if one is
    /// still waiting.
    pub fn scheduled_by_id(&self, id: &[u8; 16], topic: &str) -> Result<Option<ScheduledMessage>> {
        let prefix = schedule_id_prefix(id, topic);
        let first = self
            .db
            .iterator_cf(
                self.cf(CF_SCHEDULE_IDS),
                IteratorMode::From(&prefix, Direction::Forward),
            )
            .next()
            .transpose()?;
        let Some((found, _)) = first.filter(|(key, _)| key.starts_with(&prefix)) else {
            return Ok(None);
        };
        let due_ms = decode_u64(&found[prefix.len()..], "scheduled message due time")?;
        let key = schedule_key(due_ms, id, topic);
        match self.db.get_cf(self.cf(CF_SCHEDULE), &key)? {
            Some(value) => Ok(Some(decode_scheduled(&key, &value)?)),
            None => Ok(None),
        }
    }

    /// Scheduled messages with this id, whatever their topic: (due time, topic).
    /// (due time, id) of every scheduled message to `topic` (keys only: no records read).
    pub fn scheduled_for_topic(&self, topic: &str) -> Result<Vec<(u64, [u8; 16])>> {
        let mut found = Vec::new();
        for item in self
            .db
            .iterator_cf(self.cf(CF_SCHEDULE_IDS), IteratorMode::Start)
        {
            let (key, _) = item?;
            if key.len() < 16 + 9 {
                return Err(StoreError::Decode {
                    what: "scheduled message id key",
                    reason: format!("{} bytes", key.len()),
                });
            }
            let topic_end = key.len() - 9;
            if &key[16..topic_end] == topic.as_bytes() {
                let mut id = [0u8; 16];
                id.copy_from_slice(&key[..16]);
                found.push((
                    decode_u64(&key[topic_end + 1..], "scheduled message due time")?,
                    id,
                ));
            }
        }
        Ok(found)
    }

    pub fn scheduled_with_id(&self, id: &[u8; 16]) -> Result<Vec<(u64, String)>> {
        let mut found = Vec::new();
        let iter = self.db.iterator_cf(
            self.cf(CF_SCHEDULE_IDS),
            IteratorMode::From(id, Direction::Forward),
        );
        for item in iter {
            let (key, _) = item?;
            if !key.starts_with(id) {
                break;
            }
            if key.len() < 16 + 9 {
                return Err(StoreError::Decode {
                    what: "scheduled message id key",
                    reason: format!("{} bytes", key.len()),
                });
            }
            let topic_end = key.len() - 9;
            found.push((
                decode_u64(&key[topic_end + 1..], "scheduled message due time")?,
                String::from_utf8_lossy(&key[16..topic_end]).into_owned(),
            ));
        }
        Ok(found)
    }

    /// Every half message, with its check-backs.
    pub fn half_messages(&self) -> Result<Vec<HalfMessage>> {
        self.halves_under(b"h")
    }

    /// The half messages with this id whose transactions are still open (one, normally).
    pub fn halves_with_id(&self, id: &[u8; 16]) -> Result<Vec<HalfMessage>> {
        self.halves_under(&half_key(b'h', id, ""))
    }

    /// The half messages whose keys start with `prefix`, with their check-backs.
    fn halves_under(&self, prefix: &[u8]) -> Result<Vec<HalfMessage>> {
        let mut halves = Vec::new();
        for item in self.db.iterator_cf(
            self.cf(CF_HALF),
            IteratorMode::From(prefix, Direction::Forward),
        ) {
            let (key, value) = item?;
            if !key.starts_with(prefix) {
                break;
            }
            halves.push(self.half_with_checks(&value)?);
        }
        Ok(halves)
    }

    fn half_with_checks(&self, value: &[u8]) -> Result<HalfMessage> {
        let mut half: HalfMessage = codec::decode(value).map_err(|err| StoreError::Decode {
            what: "half message",
            reason: err.to_string(),
        })?;
        if let Some(checks) = self
            .db
            .get_cf(self.cf(CF_HALF), half_key(b'c', &half.id, &half.topic))?
        {
            if checks.len() == 12 {
                half.checks = u32::from_be_bytes([checks[0], checks[1], checks[2], checks[3]]);
                half.last_check_ms = decode_u64(&checks[4..], "half message check")?;
            }
        }
        Ok(half)
    }

    /// The half message with this id in `topic`, if its transaction is still open.
    pub fn half(&self, id: &[u8; 16], topic: &str) -> Result<Option<HalfMessage>> {
        match self
            .db
            .get_cf(self.cf(CF_HALF), half_key(b'h', id, topic))?
        {
            Some(value) => Ok(Some(self.half_with_checks(&value)?)),
            None => Ok(None),
        }
    }

    /// About how many messages are scheduled (RocksDB's estimate).
    pub fn scheduled_estimate(&self) -> u64 {
        self.db
            .property_int_value_cf(self.cf(CF_SCHEDULE_IDS), "rocksdb.estimate-num-keys")
            .ok()
            .flatten()
            .unwrap_or(0)
    }

    /// Every consumer offset: (group, topic, queue id, offset).
    pub fn all_offsets(&self) -> Result<Vec<(String, String, u32, u64)>> {
        let mut offsets = Vec::new();
        for item in self
            .db
            .iterator_cf(self.cf(CF_OFFSETS), IteratorMode::Start)
        {
            let (key, value) = item?;
            let bad = || StoreError::Decode {
                what: "consumer offset key",
                reason: format!("{} bytes", key.len()),
            };
            let group_end = key.iter().position(|b| *b == 0).ok_or_else(bad)?;
            let rest = &key[group_end + 1..];
            if rest.len() < 5 || rest[rest.len() - 5] != 0 {
                return Err(bad());
            }
            let (topic, queue) = rest.split_at(rest.len() - 5);
            offsets.push((
                String::from_utf8_lossy(&key[..group_end]).into_owned(),
                String::from_utf8_lossy(topic).into_owned(),
                u32::from_be_bytes([queue[1], queue[2], queue[3], queue[4]]),
                decode_u64(&value, "consumer offset")?,
            ));
        }
        Ok(offsets)
    }

    /// Replaces all derived state (topics, offsets, key index, schedule) with a snapshot's,
    /// durably.
    pub fn replace_derived(
        &self,
        topics: &[TopicConfig],
        offsets: &[(String, String, u32, u64)],
        scheduled: &[ScheduledMessage],
        halves: &[HalfMessage],
    ) -> Result<()> {
        for cf in DERIVED_CFS {
            // Every key sorts below 17 bytes of 0xff: names never start with 0xff, and due
            // times and ids that do are followed by more bytes or are smaller.
            self.db
                .delete_range_cf(self.cf(cf), &b""[..], &[0xffu8; 32][..])?;
        }
        let mut batch = self.batch();
        for topic in topics {
            batch.put_topic(topic);
        }
        for (group, topic, queue_id, offset) in offsets {
            batch.put_offset(group, topic, *queue_id, *offset);
        }
        for message in scheduled {
            batch.put_scheduled(message);
        }
        for half in halves {
            batch.put_half(half);
        }
        batch.write()?;
        for cf in DERIVED_CFS {
            self.db.flush_cf(self.cf(cf))?;
        }
        Ok(())
    }

    pub fn batch(&self) -> DerivedBatch<'_> {
        DerivedBatch {
            db: self,
            batch: WriteBatch::default(),
        }
    }
}

/// Derived-state changes of one apply call, written at once without the WAL.
pub struct DerivedBatch<'a> {
    db: &'a StateDb,
    batch: WriteBatch,
}

impl DerivedBatch<'_> {
    pub fn put_topic(&mut self, topic: &TopicConfig) {
        self.batch.put_cf(
            self.db.cf(CF_TOPICS),
            topic.name.as_bytes(),
            codec::encode(topic),
        );
    }

    /// Removes a topic's configuration, its key index and the given groups' offsets on it.
    pub fn delete_topic(&mut self, topic: &str, offsets: &[(String, u32)]) {
        self.batch
            .delete_cf(self.db.cf(CF_TOPICS), topic.as_bytes());
        for (group, queue_id) in offsets {
            self.batch
                .delete_cf(self.db.cf(CF_OFFSETS), offset_key(group, topic, *queue_id));
        }
        // Key entries are `topic 0 key 0 position`; topic names hold no NUL, so this range is
        // exactly the topic's (message-id entries start with 0 and sort before it).
        let mut from = topic.as_bytes().to_vec();
        from.push(0);
        let mut to = topic.as_bytes().to_vec();
        to.push(1);
        self.batch.delete_range_cf(self.db.cf(CF_KEYS), from, to);
    }

    pub fn put_offset(&mut self, group: &str, topic: &str, queue_id: u32, offset: u64) {
        self.batch.put_cf(
            self.db.cf(CF_OFFSETS),
            offset_key(group, topic, queue_id),
            offset.to_be_bytes(),
        );
    }

    pub fn put_key(&mut self, topic: &str, key: &str, hit: KeyHit) {
        let mut k = key_prefix(topic, key);
        k.extend_from_slice(&hit.position.to_be_bytes());
        let mut v = Vec::with_capacity(16);
        v.extend_from_slice(&hit.queue_id.to_be_bytes());
        v.extend_from_slice(&hit.queue_offset.to_be_bytes());
        v.extend_from_slice(&hit.size.to_be_bytes());
        self.batch.put_cf(self.db.cf(CF_KEYS), k, v);
    }

    /// Indexes a stored message (or copy) by its id.
    pub fn put_id(&mut self, id: &[u8; 16], topic: &str, hit: KeyHit) {
        let mut k = id_prefix(id);
        k.extend_from_slice(&hit.position.to_be_bytes());
        let mut v = Vec::with_capacity(16 + topic.len());
        v.extend_from_slice(&hit.queue_id.to_be_bytes());
        v.extend_from_slice(&hit.queue_offset.to_be_bytes());
        v.extend_from_slice(&hit.size.to_be_bytes());
        v.extend_from_slice(topic.as_bytes());
        self.batch.put_cf(self.db.cf(CF_KEYS), k, v);
    }

    pub fn put_half(&mut self, half: &HalfMessage) {
        self.batch.put_cf(
            self.db.cf(CF_HALF),
            half_key(b'h', &half.id, &half.topic),
            codec::encode(half),
        );
        if half.checks > 0 {
            self.put_half_checks(&half.id, &half.topic, half.checks, half.last_check_ms);
        }
    }

    /// Records check-backs as absolute values, so replaying the entry changes nothing.
    pub fn put_half_checks(&mut self, id: &[u8; 16], topic: &str, checks: u32, at_ms: u64) {
        let mut value = Vec::with_capacity(12);
        value.extend_from_slice(&checks.to_be_bytes());
        value.extend_from_slice(&at_ms.to_be_bytes());
        self.batch
            .put_cf(self.db.cf(CF_HALF), half_key(b'c', id, topic), value);
    }

    pub fn delete_half(&mut self, id: &[u8; 16], topic: &str) {
        self.batch
            .delete_cf(self.db.cf(CF_HALF), half_key(b'h', id, topic));
        self.batch
            .delete_cf(self.db.cf(CF_HALF), half_key(b'c', id, topic));
    }

    pub fn put_scheduled(&mut self, message: &ScheduledMessage) {
        let mut value = Vec::with_capacity(4 + message.record.len());
        value.extend_from_slice(&message.queue_id.to_be_bytes());
        value.extend_from_slice(&message.record);
        self.batch.put_cf(
            self.db.cf(CF_SCHEDULE),
            schedule_key(message.due_ms, &message.id, &message.topic),
            value,
        );
        self.batch.put_cf(
            self.db.cf(CF_SCHEDULE_IDS),
            schedule_id_key(&message.id, &message.topic, message.due_ms),
            [],
        );
    }

    /// Forgets a scheduled message (delivered or cancelled); nothing if it is not there.
    pub fn delete_scheduled(&mut self, due_ms: u64, id: &[u8; 16], topic: &str) {
        self.batch
            .delete_cf(self.db.cf(CF_SCHEDULE), schedule_key(due_ms, id, topic));
        self.batch.delete_cf(
            self.db.cf(CF_SCHEDULE_IDS),
            schedule_id_key(id, topic, due_ms),
        );
    }

    /// Writes what is staged so far and starts empty: later reads of the database in the same
    /// apply call see it (as if the apply call had ended here).
    pub fn write_now(&mut self) -> Result<()> {
        let staged = std::mem::take(&mut self.batch);
        if !staged.is_empty() {
            self.db.db.write_opt(staged, &self.db.derived_writes)?;
        }
        Ok(())
    }

    pub fn write(self) -> Result<()> {
        if !self.batch.is_empty() {
            self.db.db.write_opt(self.batch, &self.db.derived_writes)?;
        }
        Ok(())
    }
}
