//! The peer port: Raft messages from the other members of this broker group, and nothing else.
//! Raft's protobuf is decoded only here, never from the client port.

use std::sync::Arc;

use ferromq_protocol::{headers::RaftMessagesHeader, RequestCode, Status};
use ferromq_raftlog::peer::decode_messages;
use ferromq_transport::{Connection, Handler, Reply, Request};
use tracing::{debug, warn};

use crate::core::BrokerCore;

pub struct PeerHandler {
    pub core: Arc<BrokerCore>,
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
        let known_peer = config
            .raft
            .peers
            .iter()
            .any(|p| p.id == header.from && p.id != config.node_id);
        if header.group != config.group || !known_peer {
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
            if message.to != config.node_id || message.from != header.from {
                debug!(
                    to = message.to,
                    from = message.from,
                    "raft message for someone else dropped"
                );
                continue;
            }
            if self.core.raft.step(message).await.is_err() {
                break;
            }
        }
        Reply::ok(&())
    }
}
