//! Connections over the FerroMQ frame codec: handshake and version negotiation, many requests in
//! flight per connection (matched by request id), one-way frames, requests in both directions,
//! limits and timeouts, and a server accept loop with graceful shutdown.

mod config;
mod connection;
mod error;
mod handler;
mod outbox;
mod request;
mod server;
mod socket;
pub mod tls;

pub use config::TransportConfig;
pub use connection::Connection;
pub use error::TransportError;
pub use handler::{Handler, RejectAll};
pub use request::{Reply, Request, Response};
pub use server::serve;
pub use socket::{host_of, TlsClient};
