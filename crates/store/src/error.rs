//! Errors of the storage layer.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("i/o error on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A record in the middle of the log (not a torn tail) fails its checks. The node must not
    /// serve, vote or lead until the damage is repaired from a peer.
    #[error("corrupt commit log in {path} at offset {offset}: {reason}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("derived state is inconsistent: {0}")]
    Inconsistent(String),
    #[error("rocksdb: {0}")]
    RocksDb(#[from] rocksdb::Error),
    #[error("log entry {index} is not available (log holds {first}..={last})")]
    Unavailable { index: u64, first: u64, last: u64 },
    #[error("log entries must be contiguous: expected index {expected}, got {got}")]
    NotContiguous { expected: u64, got: u64 },
    /// An earlier apply failed half-way; the store must be reopened (which replays from the
    /// last good checkpoint).
    #[error("the store failed earlier and must be reopened")]
    Failed,
    #[error("cannot decode stored {what}: {reason}")]
    Decode { what: &'static str, reason: String },
}

impl StoreError {
    /// The error a crash point (`fail` crate, tests only) injects: an I/O error, which stops
    /// the node the way a dying disk or process would.
    pub fn injected(point: &str) -> StoreError {
        StoreError::Io {
            path: PathBuf::from(point),
            source: std::io::Error::other("injected fault"),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> StoreError {
        let path = path.into();
        move |source| StoreError::Io { path, source }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;
