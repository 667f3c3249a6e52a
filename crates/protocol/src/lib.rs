//! FerroMQ's wire protocol: frames, request and status codes, headers, and the message model.
//! No sockets here; `ferromq-transport` drives connections over [`frame::FrameCodec`].

pub mod auth;
pub mod codec;
pub mod codes;
pub mod frame;
pub mod headers;
pub mod message;
pub mod selector;
pub mod system;

pub use codes::{RequestCode, Status};
pub use frame::{Frame, FrameCodec, FrameError, FrameKind, MAGIC, PROTOCOL_VERSION};
pub use message::{Message, MessageId, MessageRecord};
