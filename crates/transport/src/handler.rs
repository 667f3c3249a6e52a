//! The server-side (and client-side) hook that answers incoming requests.

use std::future::Future;

use ferromq_protocol::{headers::HandshakeRequest, Status};

use crate::{Connection, Reply, Request};

/// Answers requests arriving on a connection. Both sides of a connection may have one: a broker
/// answers clients, and a client answers the broker's own requests (transaction check-back).
pub trait Handler: Send + Sync + 'static {
    fn handle(
        &self,
        connection: &Connection,
        request: Request,
    ) -> impl Future<Output = Reply> + Send;

    /// Decides whether a peer's handshake may open a connection: `Ok(principal)` accepts it as
    /// that authenticated identity (`None`: anonymous), `Err(reason)` refuses it (the reason is
    /// logged here, the peer is only told authentication failed, after a delay). Accepts
    /// everyone by default.
    fn authenticate(&self, _handshake: &HandshakeRequest) -> Result<Option<String>, String> {
        Ok(None)
    }

    /// Called once when the connection is established (after the handshake), before any request.
    fn on_open(&self, _connection: &Connection) {}

    /// Called once when the connection has closed, for whatever reason.
    fn on_close(&self, _connection: &Connection) {}
}

/// A handler that knows no request codes: for clients that serve nothing yet.
#[derive(Debug, Default, Clone, Copy)]
pub struct RejectAll;

impl Handler for RejectAll {
    async fn handle(&self, _connection: &Connection, request: Request) -> Reply {
        Reply::error(
            Status::RequestCodeNotSupported,
            format!("request code {} is not supported here", request.code),
        )
    }
}
