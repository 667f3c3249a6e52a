//! Log entry payloads: every change of broker state is one of these commands, proposed through
//! Raft and applied by every replica in the same order.
//!
//! Layout: `tag u8 | body`. Messages are laid out by hand so apply can point consume-queue units
//! straight at each record: `topic: u16 len + utf8 | queue_id u32 | count u32 | count × (u32 len
//! + record)`. Other commands are small and encoded with `ferromq_protocol::codec`.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use ferromq_protocol::{codec, headers::TopicConfig};
use serde::{Deserialize, Serialize};

use crate::error::StoreError;

const TAG_MESSAGES: u8 = 1;
const TAG_COMMIT_OFFSETS: u8 = 2;
const TAG_CREATE_TOPIC: u8 = 3;

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
        topic: String,
        queue_id: u32,
        /// Each record with its offset inside the payload.
        records: Vec<(usize, Bytes)>,
    },
    CommitOffsets(CommitOffsets),
    CreateTopic(TopicConfig),
}

/// Bytes before the first length-prefixed record of a messages payload.
pub fn messages_header_len(topic: &str) -> usize {
    1 + 2 + topic.len() + 4 + 4
}

/// Builds a messages payload from a send body (`count` length-prefixed records), stamping
/// every record with `store_ts_ms`. The body must already be validated.
pub fn encode_messages(
    topic: &str,
    queue_id: u32,
    count: u32,
    body: &[u8],
    store_ts_ms: u64,
) -> Vec<u8> {
    let mut payload = BytesMut::with_capacity(messages_header_len(topic) + body.len());
    payload.put_u8(TAG_MESSAGES);
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

pub fn encode_commit_offsets(commit: &CommitOffsets) -> Vec<u8> {
    let mut payload = vec![TAG_COMMIT_OFFSETS];
    payload.extend_from_slice(&codec::encode(commit));
    payload
}

pub fn encode_create_topic(topic: &TopicConfig) -> Vec<u8> {
    let mut payload = vec![TAG_CREATE_TOPIC];
    payload.extend_from_slice(&codec::encode(topic));
    payload
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
        TAG_MESSAGES => {
            let mut buf = payload.slice(1..);
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
            let mut at = messages_header_len(&topic);
            for _ in 0..count {
                if buf.remaining() < 4 {
                    return Err(bad("truncated record length"));
                }
                let len = buf.get_u32() as usize;
                if buf.remaining() < len {
                    return Err(bad("truncated record"));
                }
                records.push((at + 4, buf.split_to(len)));
                at += 4 + len;
            }
            if buf.has_remaining() {
                return Err(bad("trailing bytes after records"));
            }
            Ok(Command::Messages {
                topic,
                queue_id,
                records,
            })
        }
        TAG_COMMIT_OFFSETS => codec::decode(&payload[1..])
            .map(Command::CommitOffsets)
            .map_err(|err| bad(err.to_string())),
        TAG_CREATE_TOPIC => codec::decode(&payload[1..])
            .map(Command::CreateTopic)
            .map_err(|err| bad(err.to_string())),
        other => Err(bad(format!("unknown command tag {other}"))),
    }
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
    fn other_commands_round_trip() {
        let commit = CommitOffsets {
            group: "g".into(),
            offsets: vec![("T".into(), 1, 42)],
        };
        assert_eq!(
            decode(&Bytes::from(encode_commit_offsets(&commit))).unwrap(),
            Command::CommitOffsets(commit)
        );
        assert_eq!(decode(&Bytes::new()).unwrap(), Command::Noop);
        assert!(decode(&Bytes::from_static(&[99])).is_err());
    }
}
