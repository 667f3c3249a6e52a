//! The peer port: Raft messages from the other members of this broker group, and pieces of
//! large snapshot bases they fetch (see `ferromq_raftlog::ticket`), nothing else. Raft's
//! protobuf is decoded only here, never from the client port.
//!
//! A frame is accepted only if its connection comes from an address the claimed member's
//! `raft_addr` resolves to (members as configured or added through the log), and only the
//! message types members exchange get through (no proposals): a stranger on the network
//! cannot inject entries or crash the Raft loop. Encryption and certificate-based peer authentication (mTLS)
//! are not there yet; keep the peer port on a private network.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use ferromq_protocol::{
    headers::{RaftMessagesHeader, SnapshotChunkRequest, SnapshotChunkResponse},
    RequestCode, Status,
};
use ferromq_raftlog::peer::decode_messages;
use ferromq_raftlog::ticket::SnapshotTicket;
use ferromq_raftlog::RaftMessage;
use ferromq_transport::{Connection, Handler, RejectAll, Reply, Request};
use parking_lot::Mutex;
use raft::prelude::{EntryType, MessageType};
use tracing::{debug, info, warn};

use crate::core::BrokerCore;

/// Bytes per snapshot chunk: well within a peer frame.
const SNAPSHOT_CHUNK_BYTES: u32 = 4 << 20;

pub struct PeerHandler {
    pub core: Arc<BrokerCore>,
    /// Connections already checked, and the member each one belongs to.
    verified: Mutex<HashMap<u64, u64>>,
    /// The snapshot being fetched, by index: one fetch at a time.
    fetching: Arc<Mutex<Option<u64>>>,
}

impl PeerHandler {
    pub fn new(core: Arc<BrokerCore>) -> PeerHandler {
        PeerHandler {
            core,
            verified: Mutex::new(HashMap::new()),
            fetching: Arc::default(),
        }
    }

    /// SNAPSHOT_CHUNK from a member fetching the base our snapshot message named.
    async fn serve_chunk(&self, connection: &Connection, request: &Request) -> Reply {
        let ask: SnapshotChunkRequest = match request.decode_header() {
            Ok(ask) => ask,
            Err(err) => return Reply::bad_header(&err),
        };
        if ask.group != self.core.config.group
            || !self.comes_from_member(connection, ask.from).await
        {
            connection.close();
            return Reply::error(Status::NoPermission, "not a member of this group");
        }
        let store = self.core.store.clone();
        let len = ask.len.min(SNAPSHOT_CHUNK_BYTES) as usize;
        let read =
            tokio::task::spawn_blocking(move || store.snapshot_chunk(ask.index, ask.offset, len))
                .await;
        match read {
            Ok(Ok(Some(chunk))) => Reply::ok_with_body(
                &SnapshotChunkResponse {
                    end: ask.offset + chunk.len() as u64,
                },
                Bytes::from(chunk),
            ),
            Ok(Ok(None)) => Reply::error(
                Status::ParameterError,
                format!(
                    "no snapshot base at index {} (compacted meanwhile?)",
                    ask.index
                ),
            ),
            Ok(Err(err)) => Reply::error(Status::SystemError, err.to_string()),
            Err(err) => Reply::error(Status::SystemError, err.to_string()),
        }
    }

    /// A snapshot message that names its base by ticket: fetch the base from the sender, then
    /// hand the message, with the base in it, to Raft. In the background, so heartbeats from
    /// the same leader keep arriving meanwhile; the leader resends a snapshot it hears nothing
    /// about, and a fetch already under way for that base is not started twice.
    fn fetch_snapshot(&self, message: RaftMessage, ticket: SnapshotTicket) {
        {
            let mut fetching = self.fetching.lock();
            if *fetching == Some(ticket.index) {
                return;
            }
            *fetching = Some(ticket.index);
        }
        let (core, fetching) = (self.core.clone(), self.fetching.clone());
        tokio::spawn(async move {
            let from = message.from;
            match fetch_base(&core, from, ticket).await {
                Ok(data) => {
                    info!(
                        from,
                        index = ticket.index,
                        bytes = data.len(),
                        "fetched a snapshot base"
                    );
                    let mut message = message;
                    message.mut_snapshot().data = data.into();
                    let _ = core.raft.step(message).await;
                }
                Err(err) => {
                    warn!(from, index = ticket.index, %err, "snapshot fetch failed; waiting for the leader to resend")
                }
            }
            *fetching.lock() = None;
        });
    }

    /// Whether `connection` comes from where member `from` lives.
    async fn comes_from_member(&self, connection: &Connection, from: u64) -> bool {
        if let Some(member) = self.verified.lock().get(&connection.id()) {
            return *member == from;
        }
        if from == self.core.config.node_id {
            return false;
        }
        let Some(peer) = self.core.members.get(from) else {
            return false;
        };
        let remote = connection.peer_addr().ip();
        let addresses: Vec<IpAddr> = match tokio::net::lookup_host(&peer.raft_addr).await {
            Ok(addresses) => addresses.map(|a| a.ip()).collect(),
            Err(err) => {
                warn!(peer = from, addr = %peer.raft_addr, %err, "cannot resolve a member's address");
                return false;
            }
        };
        let matches = addresses
            .iter()
            .any(|ip| *ip == remote || (ip.is_loopback() && remote.is_loopback()));
        if matches {
            self.verified.lock().insert(connection.id(), from);
        }
        matches
    }
}

/// The messages members of a group exchange; everything else (proposals, local messages) is
/// dropped.
fn allowed(message: &RaftMessage) -> bool {
    let kind_allowed = matches!(
        message.get_msg_type(),
        MessageType::MsgAppend
            | MessageType::MsgAppendResponse
            | MessageType::MsgRequestVote
            | MessageType::MsgRequestVoteResponse
            | MessageType::MsgRequestPreVote
            | MessageType::MsgRequestPreVoteResponse
            | MessageType::MsgHeartbeat
            | MessageType::MsgHeartbeatResponse
            | MessageType::MsgTimeoutNow
            | MessageType::MsgSnapshot
    );
    // Joint-consensus changes are never proposed; an entry carrying one would stop a member.
    kind_allowed
        && message
            .entries
            .iter()
            .all(|entry| entry.get_entry_type() != EntryType::EntryConfChangeV2)
}

/// Reads the base named by `ticket` from member `from`'s peer port, a chunk at a time.
async fn fetch_base(
    core: &BrokerCore,
    from: u64,
    ticket: SnapshotTicket,
) -> Result<Vec<u8>, String> {
    let transport = core.peer_client.clone().ok_or("no peer transport")?;
    let addr = core
        .members
        .get(from)
        .map(|member| member.raft_addr)
        .ok_or_else(|| format!("no address for member {from}"))?;
    let client_id = format!("snapshot-fetch-{}", core.config.node_id);
    let connection = Connection::connect(&addr, &client_id, transport, Arc::new(RejectAll))
        .await
        .map_err(|err| err.to_string())?;
    let total = usize::try_from(ticket.len).map_err(|_| "base too large")?;
    let mut data = Vec::with_capacity(total);
    while data.len() < total {
        let ask = SnapshotChunkRequest {
            group: core.config.group.clone(),
            from: core.config.node_id,
            index: ticket.index,
            offset: data.len() as u64,
            len: SNAPSHOT_CHUNK_BYTES,
        };
        let (_, chunk): (SnapshotChunkResponse, Bytes) = connection
            .request(RequestCode::SnapshotChunk, &ask, Bytes::new())
            .await
            .and_then(|response| response.decode_with_body())
            .map_err(|err| err.to_string())?;
        if chunk.is_empty() {
            return Err(format!(
                "the base ended after {} of {total} bytes",
                data.len()
            ));
        }
        data.extend_from_slice(&chunk);
    }
    connection.close();
    data.truncate(total);
    Ok(data)
}

impl Handler for PeerHandler {
    async fn handle(&self, connection: &Connection, request: Request) -> Reply {
        if request.code == RequestCode::SnapshotChunk as u16 {
            return self.serve_chunk(connection, &request).await;
        }
        if request.code != RequestCode::RaftMessages as u16 {
            return Reply::error(
                Status::RequestCodeNotSupported,
                "the peer port only takes raft messages",
            );
        }
        let header: RaftMessagesHeader = match request.decode_header() {
            Ok(header) => header,
            Err(err) => return Reply::bad_header(&err),
        };
        let config = &self.core.config;
        if header.group != config.group || !self.comes_from_member(connection, header.from).await {
            warn!(
                peer = %connection.peer_addr(),
                group = %header.group,
                from = header.from,
                "raft messages from a stranger refused"
            );
            connection.close();
            return Reply::error(Status::NoPermission, "not a member of this group");
        }
        let messages = match decode_messages(request.body) {
            Ok(messages) => messages,
            Err(err) => {
                warn!(from = header.from, %err, "malformed raft messages; closing the peer connection");
                connection.close();
                return Reply::error(Status::ParameterError, err.to_string());
            }
        };
        for message in messages {
            if message.to != config.node_id || message.from != header.from || !allowed(&message) {
                debug!(
                    to = message.to,
                    from = message.from,
                    kind = ?message.get_msg_type(),
                    "raft message dropped"
                );
                continue;
            }
            if message.get_msg_type() == MessageType::MsgSnapshot {
                if let Some(ticket) = SnapshotTicket::decode(&message.get_snapshot().data) {
                    self.fetch_snapshot(message, ticket);
                    continue;
                }
            }
            if self.core.raft.step(message).await.is_err() {
                break;
            }
        }
        Reply::ok(&())
    }

    fn on_close(&self, connection: &Connection) {
        self.verified.lock().remove(&connection.id());
    }
}
