//! The peer port: Raft messages from the other members of this broker group, and nothing else.
//! Raft's protobuf is decoded only here, never from the client port.
//!
//! A frame is accepted only if its connection comes from an address the claimed member's
//! `raft_addr` resolves to (members as configured or added through the log), and only the
//! message types members exchange get through (no proposals): a stranger on the network
//! cannot inject entries or crash the Raft loop. Encryption and certificate-based peer authentication (mTLS)
//! are not there yet; keep the peer port on a private network.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use ferromq_protocol::{headers::RaftMessagesHeader, RequestCode, Status};
use ferromq_raftlog::peer::decode_messages;
use ferromq_raftlog::RaftMessage;
use ferromq_transport::{Connection, Handler, Reply, Request};
use parking_lot::Mutex;
use raft::prelude::{EntryType, MessageType};
use tracing::{debug, warn};

use crate::core::BrokerCore;

pub struct PeerHandler {
    pub core: Arc<BrokerCore>,
    /// Connections already checked, and the member each one belongs to.
    verified: Mutex<HashMap<u64, u64>>,
}

impl PeerHandler {
    pub fn new(core: Arc<BrokerCore>) -> PeerHandler {
        PeerHandler {
            core,
            verified: Mutex::new(HashMap::new()),
        }
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

impl Handler for PeerHandler {
    async fn handle(&self, connection: &Connection, request: Request) -> Reply {
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
