//! Errors of a connection or of one request on it.

use ferromq_protocol::{codec::DecodeError, FrameError, Status};

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("connection closed")]
    Closed,
    /// No response in time. The request may or may not have taken effect.
    #[error("no response within {0:?}")]
    Timeout(std::time::Duration),
    #[error("handshake failed: {0}")]
    Handshake(String),
    #[error("bad frame: {0}")]
    Frame(#[from] FrameError),
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The peer answered with an error status.
    #[error("{status}: {message}")]
    Remote {
        status: Status,
        message: String,
        leader: Option<String>,
    },
    #[error("unknown status code {0} in response")]
    UnknownStatus(u16),
}

impl TransportError {
    /// Whether the same request may be sent again (here or elsewhere).
    pub fn is_retriable(&self) -> bool {
        match self {
            TransportError::Connect { .. }
            | TransportError::Io(_)
            | TransportError::Closed
            | TransportError::Timeout(_) => true,
            TransportError::Remote { status, .. } => status.is_retriable(),
            _ => false,
        }
    }

    /// The error status the peer answered with, if it answered.
    pub fn status(&self) -> Option<Status> {
        match self {
            TransportError::Remote { status, .. } => Some(*status),
            _ => None,
        }
    }
}
