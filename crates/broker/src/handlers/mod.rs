//! Request handlers, one module per request family. Each decodes and validates the header,
//! acts (through Raft for anything that changes state), and encodes the reply.

mod groups;
mod locks;
mod offsets;
mod permissions;
mod pull;
mod reply;
pub(crate) mod retry;
mod send;
mod topics;
mod transactions;

use std::sync::Arc;

use ferromq_protocol::{headers::ErrorHeader, RequestCode, Status};
use ferromq_raftlog::ProposeError;
use ferromq_store::StoreError;
use ferromq_transport::{Connection, Handler, Reply, Request};
use tracing::error;

use crate::core::BrokerCore;

pub struct BrokerHandler {
    pub core: Arc<BrokerCore>,
}

impl Handler for BrokerHandler {
    fn authenticate(
        &self,
        handshake: &ferromq_protocol::headers::HandshakeRequest,
    ) -> Result<Option<String>, String> {
        self.core
            .access
            .authenticate(handshake, ferromq_protocol::message::now_millis())
    }

    async fn handle(&self, connection: &Connection, request: Request) -> Reply {
        let core = &self.core;
        if let Err(refused) = permissions::authorize(core, connection, &request) {
            return refused;
        }
        match RequestCode::from_u16(request.code) {
            Some(RequestCode::ConsumerHeartbeat) => {
                groups::heartbeat(core, connection, &request).await
            }
            Some(RequestCode::GetGroupMembers) => groups::members(core, &request).await,
            Some(RequestCode::UnregisterConsumer) => groups::unregister(core, &request).await,
            Some(RequestCode::SearchOffset) => groups::search_offset(core, &request).await,
            Some(RequestCode::GetConsumerLag) => offsets::lag(core, &request).await,
            Some(RequestCode::Send) => send::handle(core, connection, &request).await,
            Some(RequestCode::Reply) => reply::handle(core, &request).await,
            Some(RequestCode::Pull) => pull::handle(core, &request).await,
            Some(RequestCode::CommitOffsets) => offsets::commit(core, &request).await,
            Some(RequestCode::QueryOffset) => offsets::query(core, &request).await,
            Some(RequestCode::GetQueueOffsets) => offsets::queue_offsets(core, &request).await,
            Some(RequestCode::CreateTopic) => topics::create(core, &request).await,
            Some(RequestCode::ConsumerSendBack) => retry::send_back(core, &request).await,
            Some(RequestCode::CancelScheduled) => retry::cancel(core, &request).await,
            Some(RequestCode::GetTrace) => retry::trace(core, &request).await,
            Some(RequestCode::LockQueues) => locks::lock(core, &request).await,
            Some(RequestCode::UnlockQueues) => locks::unlock(core, &request).await,
            Some(RequestCode::ProducerHeartbeat) => {
                transactions::heartbeat(core, connection, &request).await
            }
            Some(RequestCode::EndTransaction) => transactions::end(core, &request).await,
            _ => Reply::error(
                Status::RequestCodeNotSupported,
                format!("request code {} is not served by a broker", request.code),
            ),
        }
    }

    fn on_close(&self, connection: &Connection) {
        self.core.producers.connection_closed(connection.id());
        self.core.replies.connection_closed(connection.id());
        for group in self.core.consumers.connection_closed(connection.id()) {
            self.core.consumers.notify(&group);
        }
    }
}

/// The reply for a proposal that did not go through.
pub(crate) fn propose_failed(core: &BrokerCore, err: ProposeError) -> Reply {
    match err {
        ProposeError::NotLeader { leader_id } => Reply::error_header(
            Status::NotLeader,
            ErrorHeader {
                message: format!(
                    "broker {} of group {} is not the leader",
                    core.config.node_id, core.config.group
                ),
                leader: leader_id.and_then(|id| core.member_addr(id)),
            },
        ),
        ProposeError::Dropped => Reply::error(
            Status::Timeout,
            "leadership changed while the request was in flight; its outcome is unknown",
        ),
        ProposeError::Stopped => Reply::error(
            Status::ServiceNotAvailable,
            "broker is shutting down or failed",
        ),
    }
}

pub(crate) fn store_failed(err: StoreError) -> Reply {
    error!(%err, "storage error while serving a request");
    Reply::error(Status::SystemError, format!("storage error: {err}"))
}

/// Runs blocking store work off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, Reply> {
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(err)) => Err(store_failed(err)),
        Err(err) => Err(Reply::error(
            Status::SystemError,
            format!("storage task failed: {err}"),
        )),
    }
}
