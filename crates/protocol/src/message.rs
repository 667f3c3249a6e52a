//! The message model and its binary record: the same bytes travel in a send, sit in the commit
//! log and go out in a pull, so the broker never re-encodes a message.
//!
//! Record layout (big-endian): `version u8 | flags u8 | id [16] | born_ts_ms u64 |
//! store_ts_ms u64 | reconsume_times u32 | tag: u16 len + utf8 | keys: u16 count × (u16 len +
//! utf8) | properties: u16 count × (u16 len + utf8, u16 len + utf8) | body: u32 len + bytes`.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

pub const RECORD_VERSION: u8 = 1;
/// Offset of `store_ts_ms` inside a record; the broker stamps it in place.
pub const STORE_TS_OFFSET: usize = 2 + 16 + 8;
/// Size of a record without tag, keys, properties or body.
pub const RECORD_FIXED_BYTES: usize = STORE_TS_OFFSET + 8 + 4 + 2 + 2 + 2 + 4;
/// Default limit on a message body (4 MiB, as RocketMQ).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
pub const MAX_TAG_BYTES: usize = 128;
pub const MAX_KEYS: usize = 32;
pub const MAX_KEY_BYTES: usize = 128;
pub const MAX_PROPERTIES: usize = 128;
/// Limit on the sum of property name and value lengths (16 KiB, as RocketMQ's proxy).
pub const MAX_PROPERTIES_BYTES: usize = 16 * 1024;
pub const MAX_TOPIC_CHARS: usize = 127;
pub const MAX_GROUP_CHARS: usize = 120;

/// A message as a producer builds it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Message {
    pub topic: String,
    pub tag: Option<String>,
    pub keys: Vec<String>,
    pub properties: BTreeMap<String, String>,
    pub body: Bytes,
}

impl Message {
    pub fn new(topic: impl Into<String>, body: impl Into<Bytes>) -> Message {
        Message {
            topic: topic.into(),
            body: body.into(),
            ..Message::default()
        }
    }

    pub fn with_tag(mut self, tag: impl Into<String>) -> Message {
        self.tag = Some(tag.into());
        self
    }

    pub fn with_key(mut self, key: impl Into<String>) -> Message {
        self.keys.push(key.into());
        self
    }

    pub fn with_property(mut self, name: impl Into<String>, value: impl Into<String>) -> Message {
        self.properties.insert(name.into(), value.into());
        self
    }

    /// Checks every limit a broker enforces, so a client can fail before sending.
    pub fn validate(&self, max_body_bytes: usize) -> Result<(), RecordError> {
        validate_topic(&self.topic).map_err(RecordError::Invalid)?;
        if self.body.len() > max_body_bytes {
            return Err(RecordError::BodyTooLarge {
                len: self.body.len(),
                max: max_body_bytes,
            });
        }
        check_fields(self.tag.as_deref(), &self.keys, &self.properties)
    }
}

/// 16-byte message id: 6 bytes of milliseconds since the epoch, 6 random bytes chosen once per
/// process, and a 4-byte counter. Unique without coordination, roughly sortable by time.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MessageId(pub [u8; 16]);

impl MessageId {
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode_upper(self.0))
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({self})")
    }
}

impl FromStr for MessageId {
    type Err = String;

    fn from_str(s: &str) -> Result<MessageId, String> {
        let bytes = hex::decode(s).map_err(|err| format!("message id {s:?}: {err}"))?;
        let array: [u8; 16] = bytes
            .try_into()
            .map_err(|_| format!("message id {s:?} is not 32 hex digits"))?;
        Ok(MessageId(array))
    }
}

/// 16 bytes on the wire; 32 hex digits in human-readable formats (JSON).
impl Serialize for MessageId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.serialize_str(&self.to_string())
        } else {
            self.0.serialize(serializer)
        }
    }
}

impl<'de> Deserialize<'de> for MessageId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            let text = String::deserialize(deserializer)?;
            text.parse().map_err(serde::de::Error::custom)
        } else {
            <[u8; 16]>::deserialize(deserializer).map(MessageId)
        }
    }
}

/// Makes [`MessageId`]s for one process.
#[derive(Debug)]
pub struct MessageIdGenerator {
    nonce: [u8; 6],
    counter: AtomicU32,
}

impl Default for MessageIdGenerator {
    fn default() -> Self {
        MessageIdGenerator {
            nonce: rand::random(),
            counter: AtomicU32::new(rand::random()),
        }
    }
}

impl MessageIdGenerator {
    pub fn next_id(&self) -> MessageId {
        let millis = now_millis().to_be_bytes();
        let counter = self.counter.fetch_add(1, Ordering::Relaxed).to_be_bytes();
        let mut id = [0u8; 16];
        id[..6].copy_from_slice(&millis[2..]);
        id[6..12].copy_from_slice(&self.nonce);
        id[12..].copy_from_slice(&counter);
        MessageId(id)
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Stable 64-bit FNV-1a hash of a tag, stored in consume-queue units for broker-side filtering.
/// 0 means "no tag".
pub fn tag_hash(tag: Option<&str>) -> u64 {
    let Some(tag) = tag else { return 0 };
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in tag.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash.max(1)
}

/// A decoded record; `body` shares the buffer it was decoded from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageRecord {
    pub id: MessageId,
    pub born_ts_ms: u64,
    pub store_ts_ms: u64,
    pub reconsume_times: u32,
    pub tag: Option<String>,
    pub keys: Vec<String>,
    pub properties: BTreeMap<String, String>,
    pub body: Bytes,
}

/// Why bytes are not a valid record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("record truncated: {0}")]
    Truncated(&'static str),
    #[error("unsupported record version {0}")]
    Version(u8),
    #[error("{0} is not valid UTF-8")]
    Utf8(&'static str),
    #[error("{0} trailing bytes after the record")]
    Trailing(usize),
    #[error("message body of {len} bytes exceeds the limit of {max} bytes")]
    BodyTooLarge { len: usize, max: usize },
    #[error("{0}")]
    Invalid(String),
}

fn check_fields(
    tag: Option<&str>,
    keys: &[String],
    properties: &BTreeMap<String, String>,
) -> Result<(), RecordError> {
    if let Some(tag) = tag {
        if tag.is_empty() || tag.len() > MAX_TAG_BYTES || tag.contains("||") {
            return Err(RecordError::Invalid(format!(
                "tag must be 1..={MAX_TAG_BYTES} bytes without \"||\""
            )));
        }
    }
    if keys.len() > MAX_KEYS || keys.iter().any(|k| k.is_empty() || k.len() > MAX_KEY_BYTES) {
        return Err(RecordError::Invalid(format!(
            "at most {MAX_KEYS} keys of 1..={MAX_KEY_BYTES} bytes each"
        )));
    }
    let property_bytes: usize = properties.iter().map(|(k, v)| k.len() + v.len()).sum();
    if properties.len() > MAX_PROPERTIES
        || property_bytes > MAX_PROPERTIES_BYTES
        || properties.keys().any(|k| k.is_empty())
    {
        return Err(RecordError::Invalid(format!(
            "at most {MAX_PROPERTIES} properties with non-empty names, {MAX_PROPERTIES_BYTES} bytes in total"
        )));
    }
    Ok(())
}

/// Encoded size of `message` as a record.
pub fn record_len(message: &Message) -> usize {
    RECORD_FIXED_BYTES
        + message.tag.as_ref().map_or(0, String::len)
        + message.keys.iter().map(|k| 2 + k.len()).sum::<usize>()
        + message
            .properties
            .iter()
            .map(|(k, v)| 4 + k.len() + v.len())
            .sum::<usize>()
        + message.body.len()
}

/// Appends `message` as a record. The caller validated it; lengths are within the u16/u32 range.
pub fn encode_record(id: MessageId, born_ts_ms: u64, message: &Message, dst: &mut BytesMut) {
    dst.reserve(record_len(message));
    dst.put_u8(RECORD_VERSION);
    dst.put_u8(0);
    dst.put_slice(&id.0);
    dst.put_u64(born_ts_ms);
    dst.put_u64(0); // store_ts_ms: stamped by the broker
    dst.put_u32(0); // reconsume_times
    let tag = message.tag.as_deref().unwrap_or("");
    dst.put_u16(tag.len() as u16);
    dst.put_slice(tag.as_bytes());
    dst.put_u16(message.keys.len() as u16);
    for key in &message.keys {
        dst.put_u16(key.len() as u16);
        dst.put_slice(key.as_bytes());
    }
    dst.put_u16(message.properties.len() as u16);
    for (name, value) in &message.properties {
        dst.put_u16(name.len() as u16);
        dst.put_slice(name.as_bytes());
        dst.put_u16(value.len() as u16);
        dst.put_slice(value.as_bytes());
    }
    dst.put_u32(message.body.len() as u32);
    dst.put_slice(&message.body);
}

impl MessageRecord {
    /// Encodes the record again (for the broker's copies: retries, dead letters), keeping its
    /// id, born time and reconsume count; the store time is stamped when it is stored.
    pub fn encode(&self, dst: &mut BytesMut) {
        let message = Message {
            topic: String::new(),
            tag: self.tag.clone(),
            keys: self.keys.clone(),
            properties: self.properties.clone(),
            body: self.body.clone(),
        };
        let start = dst.len();
        encode_record(self.id, self.born_ts_ms, &message, dst);
        let reconsume_at = start + STORE_TS_OFFSET + 8;
        dst[reconsume_at..reconsume_at + 4].copy_from_slice(&self.reconsume_times.to_be_bytes());
    }
}

fn take_str(buf: &mut Bytes, what: &'static str) -> Result<String, RecordError> {
    if buf.remaining() < 2 {
        return Err(RecordError::Truncated(what));
    }
    let len = buf.get_u16() as usize;
    if buf.remaining() < len {
        return Err(RecordError::Truncated(what));
    }
    let raw = buf.split_to(len);
    String::from_utf8(raw.to_vec()).map_err(|_| RecordError::Utf8(what))
}

fn take_count(buf: &mut Bytes, what: &'static str) -> Result<usize, RecordError> {
    if buf.remaining() < 2 {
        return Err(RecordError::Truncated(what));
    }
    Ok(buf.get_u16() as usize)
}

/// Decodes one record that fills `bytes` exactly and checks its field limits.
pub fn decode_record(mut bytes: Bytes) -> Result<MessageRecord, RecordError> {
    if bytes.remaining() < STORE_TS_OFFSET + 12 {
        return Err(RecordError::Truncated("fixed fields"));
    }
    let version = bytes.get_u8();
    if version != RECORD_VERSION {
        return Err(RecordError::Version(version));
    }
    let _flags = bytes.get_u8();
    let mut id = [0u8; 16];
    bytes.copy_to_slice(&mut id);
    let born_ts_ms = bytes.get_u64();
    let store_ts_ms = bytes.get_u64();
    let reconsume_times = bytes.get_u32();
    let tag = take_str(&mut bytes, "tag")?;
    let tag = (!tag.is_empty()).then_some(tag);
    let key_count = take_count(&mut bytes, "keys")?;
    if key_count > MAX_KEYS {
        return Err(RecordError::Invalid(format!(
            "{key_count} keys, limit {MAX_KEYS}"
        )));
    }
    let mut keys = Vec::with_capacity(key_count);
    for _ in 0..key_count {
        keys.push(take_str(&mut bytes, "key")?);
    }
    let property_count = take_count(&mut bytes, "properties")?;
    if property_count > MAX_PROPERTIES {
        return Err(RecordError::Invalid(format!(
            "{property_count} properties, limit {MAX_PROPERTIES}"
        )));
    }
    let mut properties = BTreeMap::new();
    for _ in 0..property_count {
        let name = take_str(&mut bytes, "property name")?;
        let value = take_str(&mut bytes, "property value")?;
        properties.insert(name, value);
    }
    if bytes.remaining() < 4 {
        return Err(RecordError::Truncated("body length"));
    }
    let body_len = bytes.get_u32() as usize;
    if bytes.remaining() < body_len {
        return Err(RecordError::Truncated("body"));
    }
    let body = bytes.split_to(body_len);
    if !bytes.is_empty() {
        return Err(RecordError::Trailing(bytes.len()));
    }
    check_fields(tag.as_deref(), &keys, &properties)?;
    Ok(MessageRecord {
        id: MessageId(id),
        born_ts_ms,
        store_ts_ms,
        reconsume_times,
        tag,
        keys,
        properties,
        body,
    })
}

/// The fields apply needs (tag for the consume queue, keys for the key index), read without
/// allocating the body or properties. The record was validated when it was received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordPeek<'a> {
    pub tag: Option<&'a str>,
    pub keys: Vec<&'a str>,
    pub store_ts_ms: u64,
}

pub fn peek_record(bytes: &[u8]) -> Result<RecordPeek<'_>, RecordError> {
    fn take<'a>(
        bytes: &'a [u8],
        at: &mut usize,
        what: &'static str,
    ) -> Result<&'a str, RecordError> {
        let len_bytes = bytes
            .get(*at..*at + 2)
            .ok_or(RecordError::Truncated(what))?;
        let len = u16::from_be_bytes([len_bytes[0], len_bytes[1]]) as usize;
        let raw = bytes
            .get(*at + 2..*at + 2 + len)
            .ok_or(RecordError::Truncated(what))?;
        *at += 2 + len;
        std::str::from_utf8(raw).map_err(|_| RecordError::Utf8(what))
    }
    if bytes.len() < STORE_TS_OFFSET + 12 || bytes[0] != RECORD_VERSION {
        return Err(RecordError::Truncated("fixed fields"));
    }
    let store_ts_ms = u64::from_be_bytes(
        bytes[STORE_TS_OFFSET..STORE_TS_OFFSET + 8]
            .try_into()
            .map_err(|_| RecordError::Truncated("store timestamp"))?,
    );
    let mut at = STORE_TS_OFFSET + 12;
    let tag = take(bytes, &mut at, "tag")?;
    let count_bytes = bytes
        .get(at..at + 2)
        .ok_or(RecordError::Truncated("keys"))?;
    let count = u16::from_be_bytes([count_bytes[0], count_bytes[1]]) as usize;
    at += 2;
    let mut keys = Vec::with_capacity(count.min(MAX_KEYS));
    for _ in 0..count {
        keys.push(take(bytes, &mut at, "key")?);
    }
    Ok(RecordPeek {
        tag: (!tag.is_empty()).then_some(tag),
        keys,
        store_ts_ms,
    })
}

/// Writes the broker's store timestamp into an encoded record; a record too short to hold one
/// is left alone (it fails validation anyway).
pub fn stamp_store_ts(record: &mut [u8], store_ts_ms: u64) {
    if let Some(field) = record.get_mut(STORE_TS_OFFSET..STORE_TS_OFFSET + 8) {
        field.copy_from_slice(&store_ts_ms.to_be_bytes());
    }
}

/// Bytes `message` adds to a send body: its record and the record's length prefix.
pub fn send_body_len(message: &Message) -> usize {
    4 + record_len(message)
}

/// Appends `record` with a u32 length prefix: the framing of records in a send body.
pub fn put_length_prefixed(dst: &mut BytesMut, record: &[u8]) {
    dst.reserve(4 + record.len());
    dst.put_u32(record.len() as u32);
    dst.put_slice(record);
}

/// Splits a send body into its length-prefixed records without copying.
pub fn split_length_prefixed(mut body: Bytes) -> Result<Vec<Bytes>, RecordError> {
    let mut records = Vec::new();
    while body.has_remaining() {
        if body.remaining() < 4 {
            return Err(RecordError::Truncated("record length"));
        }
        let len = body.get_u32() as usize;
        if body.remaining() < len {
            return Err(RecordError::Truncated("record"));
        }
        records.push(body.split_to(len));
    }
    Ok(records)
}

/// A message as a consumer sees it: where it is stored, and its record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PulledMessage {
    pub queue_offset: u64,
    pub record: MessageRecord,
}

/// Appends one message of a pull response: `queue_offset u64 | len u32 | record`.
pub fn encode_pulled(dst: &mut BytesMut, queue_offset: u64, record: &[u8]) {
    dst.reserve(12 + record.len());
    dst.put_u64(queue_offset);
    dst.put_u32(record.len() as u32);
    dst.put_slice(record);
}

/// Decodes a pull response body.
pub fn decode_pulled(mut body: Bytes) -> Result<Vec<PulledMessage>, RecordError> {
    let mut messages = Vec::new();
    while body.has_remaining() {
        if body.remaining() < 12 {
            return Err(RecordError::Truncated("pulled message prefix"));
        }
        let queue_offset = body.get_u64();
        let len = body.get_u32() as usize;
        if body.remaining() < len {
            return Err(RecordError::Truncated("pulled record"));
        }
        let record = decode_record(body.split_to(len))?;
        messages.push(PulledMessage {
            queue_offset,
            record,
        });
    }
    Ok(messages)
}

fn validate_name(kind: &str, name: &str, max_chars: usize) -> Result<(), String> {
    if name.is_empty() || name.len() > max_chars {
        return Err(format!(
            "{kind} name must be 1..={max_chars} characters, got {}",
            name.len()
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '%' | '|' | '_' | '-')))
    {
        return Err(format!(
            "{kind} name {name:?} contains {bad:?}; allowed are letters, digits and % | _ -"
        ));
    }
    Ok(())
}

/// Topic names: 1..=127 characters from `[%|a-zA-Z0-9_-]`, as RocketMQ.
pub fn validate_topic(topic: &str) -> Result<(), String> {
    validate_name("topic", topic, MAX_TOPIC_CHARS)
}

/// Consumer and producer group names: 1..=120 characters from `[%|a-zA-Z0-9_-]`.
pub fn validate_group(group: &str) -> Result<(), String> {
    validate_name("group", group, MAX_GROUP_CHARS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn message_strategy() -> impl Strategy<Value = Message> {
        (
            proptest::option::of("[a-zA-Z0-9]{1,20}"),
            proptest::collection::vec("[a-z0-9]{1,10}", 0..4),
            proptest::collection::btree_map("[a-z]{1,8}", ".{0,16}", 0..4),
            proptest::collection::vec(any::<u8>(), 0..2048),
        )
            .prop_map(|(tag, keys, properties, body)| Message {
                topic: "T".into(),
                tag,
                keys,
                properties,
                body: Bytes::from(body),
            })
    }

    proptest! {
        #[test]
        fn records_round_trip(message in message_strategy(), born: u64) {
            let id = MessageIdGenerator::default().next_id();
            let mut buf = BytesMut::new();
            encode_record(id, born, &message, &mut buf);
            prop_assert_eq!(buf.len(), record_len(&message));
            let mut send_body = BytesMut::new();
            put_length_prefixed(&mut send_body, &buf);
            prop_assert_eq!(send_body.len(), send_body_len(&message));
            let buf_copy = buf.clone().freeze();
            let record = decode_record(buf.freeze()).unwrap();
            prop_assert_eq!(record.id, id);
            prop_assert_eq!(record.born_ts_ms, born);
            prop_assert_eq!(&record.tag, &message.tag);
            prop_assert_eq!(&record.keys, &message.keys);
            prop_assert_eq!(record.properties, message.properties);
            prop_assert_eq!(record.body, message.body);
            let mut bytes = buf_copy.to_vec();
            stamp_store_ts(&mut bytes, 77);
            let peek = peek_record(&bytes).unwrap();
            prop_assert_eq!(peek.store_ts_ms, 77);
            prop_assert_eq!(peek.tag, message.tag.as_deref());
            prop_assert_eq!(peek.keys, message.keys.iter().map(String::as_str).collect::<Vec<_>>());
        }

        #[test]
        fn record_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_record(Bytes::from(bytes.clone()));
            let _ = decode_pulled(Bytes::from(bytes.clone()));
            let _ = peek_record(&bytes);
            let _ = split_length_prefixed(Bytes::from(bytes));
        }
    }

    #[test]
    fn message_ids_are_unique_and_print_as_32_hex_digits() {
        let generator = MessageIdGenerator::default();
        let a = generator.next_id();
        let b = generator.next_id();
        assert_ne!(a, b);
        assert_eq!(a.to_string().len(), 32);
        assert_eq!(a.to_string().parse::<MessageId>().unwrap(), a);
    }

    #[test]
    fn topic_names_follow_rocketmq_rules() {
        assert!(validate_topic("Orders_v2-eu").is_ok());
        assert!(validate_topic("%RETRY%group").is_ok());
        assert!(validate_topic("").is_err());
        assert!(validate_topic("has space").is_err());
        assert!(validate_topic(&"x".repeat(128)).is_err());
    }

    #[test]
    fn oversized_body_is_rejected_by_validate() {
        let message = Message::new("T", vec![0u8; 11]);
        assert!(matches!(
            message.validate(10),
            Err(RecordError::BodyTooLarge { len: 11, max: 10 })
        ));
    }

    #[test]
    fn tag_hash_is_stable_and_nonzero() {
        assert_eq!(tag_hash(None), 0);
        assert_eq!(tag_hash(Some("TagA")), tag_hash(Some("TagA")));
        assert_ne!(tag_hash(Some("TagA")), tag_hash(Some("TagB")));
        assert_ne!(tag_hash(Some("")), 0);
    }
}
