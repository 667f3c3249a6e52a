//! Errors the SDK returns.

use ferromq_protocol::{Message, Status};
use ferromq_transport::TransportError;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("no nameserver reachable ({0})")]
    NoNameserver(String),
    #[error("no broker serves topic {0:?}")]
    NoRoute(String),
    #[error("invalid message: {0}")]
    InvalidMessage(String),
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("the client was shut down")]
    Shutdown,
}

impl ClientError {
    /// Whether trying again (maybe on another broker) can succeed.
    pub fn is_retriable(&self) -> bool {
        match self {
            ClientError::Transport(err) => err.is_retriable(),
            ClientError::NoNameserver(_) | ClientError::NoRoute(_) => true,
            _ => false,
        }
    }

    /// The status a broker or nameserver answered with, if it answered with an error.
    pub fn status(&self) -> Option<Status> {
        match self {
            ClientError::Transport(err) => err.status(),
            _ => None,
        }
    }

    /// True when the request may have taken effect even though it failed (a timeout).
    pub fn outcome_unknown(&self) -> bool {
        matches!(
            self,
            ClientError::Transport(TransportError::Timeout(_))
                | ClientError::Transport(TransportError::Closed)
                | ClientError::Transport(TransportError::Remote {
                    status: Status::Timeout,
                    ..
                })
        )
    }
}

/// A failed send gives the message back, so the caller can retry without having kept a copy.
#[derive(Debug, thiserror::Error)]
#[error("send to {topic:?} failed: {error}", topic = message.topic)]
pub struct SendError {
    pub message: Message,
    #[source]
    pub error: ClientError,
}

/// A failed batch send gives the messages back.
#[derive(Debug, thiserror::Error)]
#[error("batch send of {count} messages failed: {error}", count = messages.len())]
pub struct BatchSendError {
    pub messages: Vec<Message>,
    #[source]
    pub error: ClientError,
}
