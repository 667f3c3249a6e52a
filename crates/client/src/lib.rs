//! The FerroMQ client SDK. Build one [`Client`] per process from nameserver addresses; it
//! finds brokers through routes and keeps one connection per broker. From it come
//! [`Producer`]s (sync, async, one-way and batch sends) and [`Consumer`]s (a `Stream` of
//! messages, or [`Consumer::run`] with a handler), which commit their offsets to the brokers.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use ferromq_client::{Client, Message};
//! use futures::StreamExt;
//!
//! let client = Client::builder().name_servers(["127.0.0.1:9876"]).connect().await?;
//! let receipt = client.producer().send(Message::new("orders", "hello").with_tag("created")).await?;
//! println!("stored at queue {} offset {}", receipt.queue_id, receipt.queue_offset);
//!
//! let mut consumer = client.consumer("billing").subscribe("orders", "*").build().await?;
//! if let Some(message) = consumer.next().await {
//!     println!("{:?}", message.body);
//! }
//! consumer.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! Behind the features `outbox-postgres` and `outbox-sqlite`, [`outbox`] keeps messages in a
//! table of the application's own database, written in its own transactions, and relays send
//! them (the "local transaction message table").
//!
//! This crate depends on neither RocksDB nor raft.

mod client;
mod config;
mod consumer;
mod error;
mod filter;
pub mod idempotent;
#[cfg(feature = "outbox")]
pub mod outbox;
mod producer;
mod request;
pub mod transaction;

pub use client::{Client, ClientBuilder, QueueLag};
pub use config::{
    Allocation, ClientConfig, ClientTls, ConsumeMode, ConsumerConfig, Credentials, ProducerConfig,
    StartFrom,
};
pub use consumer::{ConsumeStatus, Consumer, ConsumerBuilder, ReceivedMessage};
pub use error::{BatchSendError, ClientError, SendError};
pub use filter::TagFilter;
pub use idempotent::{Idempotent, KeyStore, MemoryKeyStore};
pub use producer::{MessageQueue, Producer, QueueSelector, SendHandle, SendReceipt};
pub use transaction::{Transaction, TransactionListener, TransactionProducer, TransactionState};

pub use ferromq_protocol::headers::{
    BrokerRole, DeliveryAttempt, DeliveryState, GroupTrace, MessageTrace, SendBackResponse,
    StoredCopy,
};
pub use ferromq_protocol::{Message, MessageId, RequestCode};
