//! FerroMQ storage: the commit log (which is also the Raft log), consume queues, the key index
//! and RocksDB state, with recovery and retention. Knows nothing of the network or of Raft.
//!
//! Invariants:
//! - the commit log is the only source of truth; consume queues, topics, offsets and the key
//!   index are derived from it by [`Store::apply`] and rebuilt from the last checkpoint;
//! - apply is deterministic and happens in log order;
//! - consumers only see units published after their entry was committed and applied.

pub mod command;
pub mod commit_log;
pub mod consume_queue;
pub mod dedup;
mod deleted_queues;
mod durable;
pub mod error;
pub mod locks;
pub mod snapshot;
pub mod state;
mod store;

pub use commit_log::{CommitLog, LogEntry, LogPoint};
pub use error::{Result, StoreError};
pub use snapshot::{SnapshotBase, REPLICATED_RAFT_KEYS};
pub use state::{HalfMessage, IdHit, ScheduledMessage};
pub use store::{
    default_topic, ApplyOutcome, CommittedEntry, FoundMessage, QueueLag, QueueRead, ReadStatus,
    Store, StoreConfig, ENTRY_NORMAL,
};
