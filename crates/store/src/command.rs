//! Log entry payloads: every change of broker state is one of these commands, proposed through
//! Raft and applied by every replica in the same order.
//!
//! Layout: `tag u8 | body`. Messages are laid out by hand so apply can point consume-queue units
//! straight at each record: `[prefix] | topic: u16 len + utf8 | queue_id u32 | count u32 |
//! count × (u32 len + record)`, where the prefix depends on the kind (see [`MessagesKind`]).
//! Other commands are small and encoded with `ferromq_protocol::codec`.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use ferromq_protocol::{codec, headers::TopicConfig};
use serde::{Deserialize, Serialize};

use crate::error::StoreError;
use crate::locks::QueueLockChange;
use crate::state::ScheduledMessage;

const TAG_MESSAGES: u8 = 1;
const TAG_COMMIT_OFFSETS: u8 = 2;
const TAG_CREATE_TOPIC: u8 = 3;
const TAG_INTERNAL_MESSAGES: u8 = 4;
const TAG_SCHEDULE: u8 = 5;
const TAG_DELIVER: u8 = 6;
const TAG_CANCEL_SCHEDULED: u8 = 7;
const TAG_QUEUE_LOCKS: u8 = 8;
const TAG_HALF: u8 = 9;
const TAG_COMMIT_HALF: u8 = 10;
const TAG_END_HALF: u8 = 11;
const TAG_HALF_CHECKED: u8 = 12;
const TAG_UPDATE_TOPIC: u8 = 13;
const TAG_DELETE_TOPIC: u8 = 14;

/// What a messages entry does with its records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessagesKind {
    /// A producer's send: appended to the queue; a retried send is recognised by its first
    /// message id and not stored twice.
    Send,
    /// Copies the broker makes (dead letters, re-sends): appended, never deduplicated (they
    /// keep the original's message id on purpose).
    Internal,
    /// Held back until `due_ms`, then delivered by the leader's timer (prefix `dedup u8 |
    /// due_ms u64`). `dedup` for producers' sends, not for the broker's retries.
    Schedule { due_ms: u64, dedup: bool },
    /// Scheduled records that fell due: appended, and removed from the schedule (prefix
    /// `count u32 | count × due_ms u64`, one due time per record).
    Deliver { due_ms: Vec<u64> },
    /// Half messages of a transaction: held invisible until committed or rolled back (prefix
    /// `u16 len + producer group`); deduplicated like a send.
    Half { producer_group: String },
    /// Committed half messages: appended, and removed from the half messages of `half_topic`
    /// (prefix `u16 len + topic`; the records go to the entry's topic, which differs only when
    /// an undecided one is parked).
    Commit { half_topic: String },
}

/// A transaction rolled back (or a half message dropped): forget it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndHalf {
    pub id: [u8; 16],
    pub topic: String,
}

/// The leader asked a producer about a half message: `checks` so far, the last at `at_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HalfChecked {
    pub id: [u8; 16],
    pub topic: String,
    pub checks: u32,
    pub at_ms: u64,
}

/// Removes a topic: its configuration, consume queues, key index and the offsets groups
/// committed on it. Its messages stay in the commit log until retention removes them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteTopic {
    pub name: String,
}

/// Recalls a scheduled message before it is due.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelScheduled {
    pub due_ms: u64,
    pub id: [u8; 16],
    /// The topic it was to be delivered to.
    pub topic: String,
}

/// A consumer group's progress on some queues.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitOffsets {
    pub group: String,
    /// (topic, queue id, next offset to consume)
    pub offsets: Vec<(String, u32, u64)>,
}

/// A decoded command. Message records are slices of the entry payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// An empty entry: what a new Raft leader appends first.
    Noop,
    Messages {
        kind: MessagesKind,
        topic: String,
        queue_id: u32,
        /// Each record with its offset inside the payload.
        records: Vec<(usize, Bytes)>,
    },
    CommitOffsets(CommitOffsets),
    CreateTopic(TopicConfig),
    /// New permissions or more queues for an existing topic (queues never shrink: messages in
    /// the removed queues would become unreachable).
    UpdateTopic(TopicConfig),
    DeleteTopic(DeleteTopic),
    CancelScheduled(CancelScheduled),
    QueueLocks(QueueLockChange),
    EndHalf(EndHalf),
    HalfChecked(HalfChecked),
}

fn prefix_len(kind: &MessagesKind) -> usize {
    match kind {
        MessagesKind::Send | MessagesKind::Internal => 0,
        MessagesKind::Schedule { .. } => 1 + 8,
        MessagesKind::Deliver { due_ms } => 4 + 8 * due_ms.len(),
        MessagesKind::Half {
            producer_group: name,
        }
        | MessagesKind::Commit { half_topic: name } => 2 + name.len(),
    }
}

/// Builds a producer's send payload from a send body (`count` length-prefixed records),
/// stamping every record with `store_ts_ms`. The body must already be validated.
pub fn encode_messages(
    topic: &str,
    queue_id: u32,
    count: u32,
    body: &[u8],
    store_ts_ms: u64,
) -> Vec<u8> {
    encode_messages_of(
        &MessagesKind::Send,
        topic,
        queue_id,
        count,
        body,
        store_ts_ms,
    )
}

/// Builds a messages payload of any kind; see [`encode_messages`].
pub fn encode_messages_of(
    kind: &MessagesKind,
    topic: &str,
    queue_id: u32,
    count: u32,
    body: &[u8],
    store_ts_ms: u64,
) -> Vec<u8> {
    let mut payload =
        BytesMut::with_capacity(1 + prefix_len(kind) + 2 + topic.len() + 8 + body.len());
    match kind {
        MessagesKind::Send => payload.put_u8(TAG_MESSAGES),
        MessagesKind::Internal => payload.put_u8(TAG_INTERNAL_MESSAGES),
        MessagesKind::Schedule { due_ms, dedup } => {
            payload.put_u8(TAG_SCHEDULE);
            payload.put_u8(u8::from(*dedup));
            payload.put_u64(*due_ms);
        }
        MessagesKind::Deliver { due_ms } => {
            payload.put_u8(TAG_DELIVER);
            payload.put_u32(due_ms.len() as u32);
            for due in due_ms {
                payload.put_u64(*due);
            }
        }
        MessagesKind::Half { producer_group } => {
            payload.put_u8(TAG_HALF);
            payload.put_u16(producer_group.len() as u16);
            payload.put_slice(producer_group.as_bytes());
        }
        MessagesKind::Commit { half_topic } => {
            payload.put_u8(TAG_COMMIT_HALF);
            payload.put_u16(half_topic.len() as u16);
            payload.put_slice(half_topic.as_bytes());
        }
    }
    payload.put_u16(topic.len() as u16);
    payload.put_slice(topic.as_bytes());
    payload.put_u32(queue_id);
    payload.put_u32(count);
    let records_at = payload.len();
    payload.put_slice(body);
    let mut at = records_at;
    while at + 4 <= payload.len() {
        let len = u32::from_be_bytes([
            payload[at],
            payload[at + 1],
            payload[at + 2],
            payload[at + 3],
        ]) as usize;
        let record = at + 4;
        if record + len > payload.len() {
            break;
        }
        ferromq_protocol::message::stamp_store_ts(&mut payload[record..record + len], store_ts_ms);
        at = record + len;
    }
    payload.to_vec()
}

/// A deliver entry for due scheduled messages, all bound for the same queue (the caller
/// groups them), stamped with the delivery time.
pub fn encode_deliver(due: &[ScheduledMessage], store_ts_ms: u64) -> Vec<u8> {
    let Some(first) = due.first() else {
        return Vec::new();
    };
    let mut body = BytesMut::new();
    for message in due {
        ferromq_protocol::message::put_length_prefixed(&mut body, &message.record);
    }
    let kind = MessagesKind::Deliver {
        due_ms: due.iter().map(|m| m.due_ms).collect(),
    };
    encode_messages_of(
        &kind,
        &first.topic,
        first.queue_id,
        due.len() as u32,
        &body,
        store_ts_ms,
    )
}

/// `tag | codec(value)`: the layout of every command other than messages.
fn tagged<T: Serialize>(tag: u8, value: &T) -> Vec<u8> {
    let mut payload = vec![tag];
    payload.extend_from_slice(&codec::encode(value));
    payload
}

fn decode_tagged<T: serde::de::DeserializeOwned>(payload: &Bytes) -> Result<T, StoreError> {
    codec::decode(&payload[1..]).map_err(|err| bad(err.to_string()))
}

pub fn encode_commit_offsets(commit: &CommitOffsets) -> Vec<u8> {
    tagged(TAG_COMMIT_OFFSETS, commit)
}

pub fn encode_create_topic(topic: &TopicConfig) -> Vec<u8> {
    tagged(TAG_CREATE_TOPIC, topic)
}

pub fn encode_update_topic(topic: &TopicConfig) -> Vec<u8> {
    tagged(TAG_UPDATE_TOPIC, topic)
}

pub fn encode_delete_topic(delete: &DeleteTopic) -> Vec<u8> {
    tagged(TAG_DELETE_TOPIC, delete)
}

pub fn encode_end_half(end: &EndHalf) -> Vec<u8> {
    tagged(TAG_END_HALF, end)
}

pub fn encode_half_checked(checked: &HalfChecked) -> Vec<u8> {
    tagged(TAG_HALF_CHECKED, checked)
}

/// A commit entry for one half message: its record appended to `to_topic`/`queue_id`.
pub fn encode_commit_half(
    half: &crate::state::HalfMessage,
    to_topic: &str,
    queue_id: u32,
    store_ts_ms: u64,
) -> Vec<u8> {
    let mut body = BytesMut::new();
    ferromq_protocol::message::put_length_prefixed(&mut body, &half.record);
    let kind = MessagesKind::Commit {
        half_topic: half.topic.clone(),
    };
    encode_messages_of(&kind, to_topic, queue_id, 1, &body, store_ts_ms)
}

pub fn encode_queue_locks(change: &QueueLockChange) -> Vec<u8> {
    tagged(TAG_QUEUE_LOCKS, change)
}

pub fn encode_cancel_scheduled(cancel: &CancelScheduled) -> Vec<u8> {
    tagged(TAG_CANCEL_SCHEDULED, cancel)
}

fn bad(reason: impl Into<String>) -> StoreError {
    StoreError::Decode {
        what: "command",
        reason: reason.into(),
    }
}

pub fn decode(payload: &Bytes) -> Result<Command, StoreError> {
    let Some(&tag) = payload.first() else {
        return Ok(Command::Noop);
    };
    match tag {
        TAG_MESSAGES => decode_messages(payload, 1, MessagesKind::Send),
        TAG_INTERNAL_MESSAGES => decode_messages(payload, 1, MessagesKind::Internal),
        TAG_SCHEDULE => {
            let mut prefix = payload.slice(1..);
            if prefix.remaining() < 9 {
                return Err(bad("truncated schedule prefix"));
            }
            let dedup = prefix.get_u8() != 0;
            let due_ms = prefix.get_u64();
            decode_messages(payload, 10, MessagesKind::Schedule { due_ms, dedup })
        }
        TAG_DELIVER => {
            let mut prefix = payload.slice(1..);
            if prefix.remaining() < 4 {
                return Err(bad("truncated deliver prefix"));
            }
            let count = prefix.get_u32() as usize;
            if prefix.remaining() < count.saturating_mul(8) {
                return Err(bad("truncated deliver due times"));
            }
            let due_ms: Vec<u64> = (0..count).map(|_| prefix.get_u64()).collect();
            let command =
                decode_messages(payload, 5 + 8 * count, MessagesKind::Deliver { due_ms })?;
            if let Command::Messages {
                kind: MessagesKind::Deliver { due_ms },
                records,
                ..
            } = &command
            {
                if due_ms.len() != records.len() {
                    return Err(bad("deliver entry: one due time per record expected"));
                }
            }
            Ok(command)
        }
        TAG_CANCEL_SCHEDULED => decode_tagged(payload).map(Command::CancelScheduled),
        TAG_HALF | TAG_COMMIT_HALF => {
            let mut prefix = payload.slice(1..);
            if prefix.remaining() < 2 {
                return Err(bad("truncated name prefix"));
            }
            let len = prefix.get_u16() as usize;
            if prefix.remaining() < len {
                return Err(bad("truncated name prefix"));
            }
            let name = String::from_utf8(prefix.split_to(len).to_vec())
                .map_err(|_| bad("name is not UTF-8"))?;
            let kind = if tag == TAG_HALF {
                MessagesKind::Half {
                    producer_group: name,
                }
            } else {
                MessagesKind::Commit { half_topic: name }
            };
            decode_messages(payload, 3 + len, kind)
        }
        TAG_END_HALF => decode_tagged(payload).map(Command::EndHalf),
        TAG_HALF_CHECKED => decode_tagged(payload).map(Command::HalfChecked),
        TAG_QUEUE_LOCKS => decode_tagged(payload).map(Command::QueueLocks),
        TAG_COMMIT_OFFSETS => decode_tagged(payload).map(Command::CommitOffsets),
        TAG_CREATE_TOPIC => decode_tagged(payload).map(Command::CreateTopic),
        TAG_UPDATE_TOPIC => decode_tagged(payload).map(Command::UpdateTopic),
        TAG_DELETE_TOPIC => decode_tagged(payload).map(Command::DeleteTopic),
        other => Err(bad(format!("unknown command tag {other}"))),
    }
}

/// Decodes the messages layout starting at `at` (after the tag and the kind's prefix).
fn decode_messages(payload: &Bytes, at: usize, kind: MessagesKind) -> Result<Command, StoreError> {
    let mut buf = payload.slice(at..);
    if buf.remaining() < 2 {
        return Err(bad("truncated topic"));
    }
    let topic_len = buf.get_u16() as usize;
    if buf.remaining() < topic_len + 8 {
        return Err(bad("truncated messages header"));
    }
    let topic = String::from_utf8(buf.split_to(topic_len).to_vec())
        .map_err(|_| bad("topic is not UTF-8"))?;
    let queue_id = buf.get_u32();
    let count = buf.get_u32() as usize;
    let mut records = Vec::with_capacity(count.min(1 << 16));
    let mut offset = at + 2 + topic_len + 8;
    for _ in 0..count {
        if buf.remaining() < 4 {
            return Err(bad("truncated record length"));
        }
        let len = buf.get_u32() as usize;
        if buf.remaining() < len {
            return Err(bad("truncated record"));
        }
        records.push((offset + 4, buf.split_to(len)));
        offset += 4 + len;
    }
    if buf.has_remaining() {
        return Err(bad("trailing bytes after records"));
    }
    Ok(Command::Messages {
        kind,
        topic,
        queue_id,
        records,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferromq_protocol::message::{
        encode_record, peek_record, put_length_prefixed, Message, MessageIdGenerator,
    };

    #[test]
    fn messages_round_trip_with_record_offsets_and_stamped_time() {
        let ids = MessageIdGenerator::default();
        let mut body = BytesMut::new();
        for i in 0..3 {
            let mut record = BytesMut::new();
            encode_record(
                ids.next_id(),
                1,
                &Message::new("T", vec![i; 10]).with_tag("A"),
                &mut record,
            );
            put_length_prefixed(&mut body, &record);
        }
        let payload = Bytes::from(encode_messages("T", 2, 3, &body, 1234));
        let Command::Messages {
            topic,
            queue_id,
            records,
            ..
        } = decode(&payload).unwrap()
        else {
            panic!("not messages");
        };
        assert_eq!((topic.as_str(), queue_id, records.len()), ("T", 2, 3));
        for (offset, record) in records {
            assert_eq!(&payload[offset..offset + record.len()], &record[..]);
            let peek = peek_record(&record).unwrap();
            assert_eq!(peek.store_ts_ms, 1234);
            assert_eq!(peek.tag, Some("A"));
        }
    }

    #[test]
    fn every_messages_kind_round_trips_with_record_offsets() {
        let ids = MessageIdGenerator::default();
        let mut body = BytesMut::new();
        for i in 0..2 {
            let mut record = BytesMut::new();
            encode_record(
                ids.next_id(),
                1,
                &Message::new("T", vec![i; 5]),
                &mut record,
            );
            put_length_prefixed(&mut body, &record);
        }
        let kinds = [
            MessagesKind::Half {
                producer_group: "pg".into(),
            },
            MessagesKind::Commit {
                half_topic: "T".into(),
            },
            MessagesKind::Internal,
            MessagesKind::Schedule {
                due_ms: 99,
                dedup: true,
            },
            MessagesKind::Deliver { due_ms: vec![7, 8] },
        ];
        for kind in kinds {
            let payload = Bytes::from(encode_messages_of(&kind, "T", 1, 2, &body, 5));
            let Command::Messages {
                kind: decoded,
                records,
                ..
            } = decode(&payload).unwrap()
            else {
                panic!("not messages");
            };
            assert_eq!(decoded, kind);
            for (offset, record) in records {
                assert_eq!(&payload[offset..offset + record.len()], &record[..]);
                assert_eq!(peek_record(&record).unwrap().store_ts_ms, 5);
            }
        }
        let one_due_for_two_records = Bytes::from(encode_messages_of(
            &MessagesKind::Deliver { due_ms: vec![7] },
            "T",
            1,
            2,
            &body,
            5,
        ));
        assert!(decode(&one_due_for_two_records).is_err());
    }

    #[test]
    fn other_commands_round_trip() {
        let commit = CommitOffsets {
            group: "g".into(),
            offsets: vec![("T".into(), 1, 42)],
        };
        assert_eq!(
            decode(&Bytes::from(encode_commit_offsets(&commit))).unwrap(),
            Command::CommitOffsets(commit)
        );
        let cancel = CancelScheduled {
            due_ms: 5,
            id: [3; 16],
            topic: "T".into(),
        };
        assert_eq!(
            decode(&Bytes::from(encode_cancel_scheduled(&cancel))).unwrap(),
            Command::CancelScheduled(cancel)
        );
        assert_eq!(decode(&Bytes::new()).unwrap(), Command::Noop);
        assert!(decode(&Bytes::from_static(&[99])).is_err());
    }
}
