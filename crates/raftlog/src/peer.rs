//! Raft messages between the members of a group, over the project's transport on the peer
//! port (10912), never on the client port.
//!
//! The Raft thread hands messages to [`PeerNetwork::send`], which never blocks: each peer has a
//! bounded queue and a task that keeps a connection and writes the queued messages as one-way
//! `RAFT_MESSAGES` frames. A full queue or a broken connection drops messages; Raft resends
//! what matters.
//!
//! Frame body: `count u32 | count × (u32 len + protobuf-encoded raft Message)`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use ferromq_protocol::{headers::RaftMessagesHeader, RequestCode};
use ferromq_transport::{Connection, RejectAll, TransportConfig};
use protobuf::Message as _;
use raft::prelude::Message;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::membership::Members;
use crate::node::PeerSender;

/// Batches of messages waiting per peer.
const PEER_QUEUE_BATCHES: usize = 1024;
/// Most messages in one decoded frame.
pub const MAX_MESSAGES_PER_FRAME: usize = 4096;

#[derive(Debug, thiserror::Error)]
#[error("malformed raft messages: {0}")]
pub struct DecodeError(String);

/// Encodes messages for one frame body.
pub fn encode_messages(messages: &[Message]) -> Bytes {
    let mut body = BytesMut::new();
    body.put_u32(messages.len() as u32);
    let mut encoded = Vec::new();
    for message in messages {
        encoded.clear();
        match message.write_to_vec(&mut encoded) {
            Ok(()) => {
                body.put_u32(encoded.len() as u32);
                body.put_slice(&encoded);
            }
            Err(err) => warn!(%err, "raft message not encodable; dropped"),
        }
    }
    body.freeze()
}

/// Decodes a frame body. Only ever called on the peer port.
pub fn decode_messages(mut body: Bytes) -> Result<Vec<Message>, DecodeError> {
    if body.remaining() < 4 {
        return Err(DecodeError("truncated count".into()));
    }
    let count = body.get_u32() as usize;
    if count > MAX_MESSAGES_PER_FRAME {
        return Err(DecodeError(format!("{count} messages in one frame")));
    }
    let mut messages = Vec::with_capacity(count);
    for _ in 0..count {
        if body.remaining() < 4 {
            return Err(DecodeError("truncated length".into()));
        }
        let len = body.get_u32() as usize;
        if body.remaining() < len {
            return Err(DecodeError("truncated message".into()));
        }
        let bytes = body.split_to(len);
        messages
            .push(Message::parse_from_bytes(&bytes).map_err(|err| DecodeError(err.to_string()))?);
    }
    Ok(messages)
}

/// The real peer transport of a multi-member group: one sending task per member, started the
/// first time Raft sends it something (members can join while the group runs).
pub struct PeerNetwork {
    group: String,
    self_id: u64,
    members: Members,
    transport: Arc<TransportConfig>,
    shutdown: CancellationToken,
    runtime: tokio::runtime::Handle,
    queues: HashMap<u64, mpsc::Sender<Vec<Message>>>,
}

impl PeerNetwork {
    /// Must be called on a Tokio runtime, which the sending tasks then run on.
    pub fn start(
        group: &str,
        self_id: u64,
        members: Members,
        transport: Arc<TransportConfig>,
        shutdown: CancellationToken,
    ) -> PeerNetwork {
        PeerNetwork {
            group: group.to_string(),
            self_id,
            members,
            transport,
            shutdown,
            runtime: tokio::runtime::Handle::current(),
            queues: HashMap::new(),
        }
    }

    fn queue(&mut self, to: u64) -> Option<&mpsc::Sender<Vec<Message>>> {
        if !self.queues.contains_key(&to) {
            let address = self.members.get(to)?;
            let (sender, receiver) = mpsc::channel(PEER_QUEUE_BATCHES);
            self.runtime.spawn(peer_loop(
                self.group.clone(),
                self.self_id,
                (to, address.raft_addr),
                receiver,
                self.transport.clone(),
                self.shutdown.clone(),
            ));
            self.queues.insert(to, sender);
        }
        self.queues.get(&to)
    }
}

impl PeerSender for PeerNetwork {
    fn send(&mut self, messages: Vec<Message>) {
        let mut by_peer: HashMap<u64, Vec<Message>> = HashMap::new();
        for message in messages {
            by_peer.entry(message.to).or_default().push(message);
        }
        for (to, batch) in by_peer {
            match self.queue(to) {
                Some(queue) => {
                    if queue.try_send(batch).is_err() {
                        debug!(to, "peer queue full or closed; raft messages dropped");
                    }
                }
                None => warn!(to, "raft message for a member whose address is unknown"),
            }
        }
    }
}

async fn peer_loop(
    group: String,
    self_id: u64,
    (peer_id, peer_addr): (u64, String),
    mut queue: mpsc::Receiver<Vec<Message>>,
    transport: Arc<TransportConfig>,
    shutdown: CancellationToken,
) {
    let client_id = format!("raft:{group}:{self_id}");
    let mut connection: Option<Connection> = None;
    let mut backoff = Duration::from_millis(50);
    // Frames stay well below the peer port's frame limit, however many messages wait.
    let frame_budget = transport.max_frame_bytes / 2;
    loop {
        let batch = tokio::select! {
            batch = queue.recv() => match batch {
                Some(batch) => batch,
                None => return,
            },
            _ = shutdown.cancelled() => return,
        };
        // Coalesce whatever else is waiting.
        let mut messages = batch;
        while messages.len() < MAX_MESSAGES_PER_FRAME {
            match queue.try_recv() {
                Ok(more) => messages.extend(more),
                Err(_) => break,
            }
        }
        if connection.as_ref().is_none_or(Connection::is_closed) {
            match Connection::connect(
                &peer_addr,
                &client_id,
                transport.clone(),
                Arc::new(RejectAll),
            )
            .await
            {
                Ok(connected) => {
                    connection = Some(connected);
                    backoff = Duration::from_millis(50);
                }
                Err(err) => {
                    debug!(peer = peer_id, addr = %peer_addr, %err, "peer unreachable; raft messages dropped");
                    // Raft resends; do not spin on a dead peer.
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            }
        }
        let Some(open) = &connection else { continue };
        let header = RaftMessagesHeader {
            group: group.clone(),
            from: self_id,
        };
        for frame in frames(&messages, frame_budget) {
            if let Err(err) = open
                .one_way(RequestCode::RaftMessages, &header, frame)
                .await
            {
                debug!(peer = peer_id, %err, "sending raft messages failed");
                open.close();
                connection = None;
                break;
            }
        }
    }
}

/// Splits messages into frame bodies of about `budget` bytes at most (a single larger message
/// gets a frame of its own).
fn frames(messages: &[Message], budget: usize) -> Vec<Bytes> {
    let mut frames = Vec::new();
    let mut start = 0;
    let mut size = 0;
    for (i, message) in messages.iter().enumerate() {
        let message_size = message.compute_size() as usize + 4;
        if i > start && size + message_size > budget {
            frames.push(encode_messages(&messages[start..i]));
            start = i;
            size = 0;
        }
        size += message_size;
    }
    if start < messages.len() {
        frames.push(encode_messages(&messages[start..]));
    }
    frames
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::prelude::{Entry, MessageType};

    #[test]
    fn messages_round_trip() {
        let mut message = Message::default();
        message.set_msg_type(MessageType::MsgAppend);
        message.to = 2;
        message.from = 1;
        message.term = 7;
        message.entries = vec![Entry {
            index: 5,
            term: 7,
            data: Bytes::from_static(b"payload"),
            ..Entry::default()
        }]
        .into();
        let decoded =
            decode_messages(encode_messages(&[message.clone(), message.clone()])).unwrap();
        assert_eq!(decoded, vec![message.clone(), message]);
    }

    #[test]
    fn large_batches_are_split_into_frames_within_the_budget() {
        let mut message = Message::default();
        message.set_msg_type(MessageType::MsgAppend);
        message.entries = vec![Entry {
            data: Bytes::from(vec![7u8; 1000]),
            ..Entry::default()
        }]
        .into();
        let messages = vec![message; 50];
        let split = frames(&messages, 10_000);
        assert!(split.len() >= 5, "{} frames", split.len());
        assert!(split.iter().all(|f| f.len() <= 10_000 + 1100));
        let total: usize = split
            .into_iter()
            .map(|f| decode_messages(f).unwrap().len())
            .sum();
        assert_eq!(total, 50);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(decode_messages(Bytes::from_static(&[0, 0, 0, 1, 0, 0, 0, 9, 1, 2])).is_err());
        assert!(decode_messages(Bytes::from_static(&[0xff, 0xff, 0xff, 0xff])).is_err());
        assert!(decode_messages(Bytes::new()).is_err());
    }
}
