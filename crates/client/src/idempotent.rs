//! Idempotent consumption. FerroMQ delivers at least once: a message can arrive again after a
//! consumer crashed before committing, after a rebalance moved its queue, after an offset
//! reset, or when a producer's retry was stored twice outside the broker's dedup window. A
//! handler wrapped in [`Idempotent`] processes each business key once: it claims the key
//! before running the handler, marks it done only after the handler succeeded, and drops a
//! message whose key is already done. A claim is a lease: if the process dies mid-handler, the
//! key becomes claimable again when the lease runs out, so the message is processed on retry.
//!
//! The key is the message's first key by default (`Message::with_key`), its id when it has
//! none, or whatever [`Idempotent::key_with`] computes.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tracing::debug;

use crate::consumer::{ConsumeStatus, ReceivedMessage};

/// What claiming a key found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Ours to process now.
    Claimed,
    /// Processed before: drop the message.
    Done,
    /// Another attempt holds it; its lease ends in this long.
    Busy(Duration),
}

/// Where processed keys are remembered.
pub trait KeyStore: Send + Sync + 'static {
    /// Claims `key` for `lease` unless it is done or claimed by someone else.
    fn claim(&self, key: &str, lease: Duration) -> Result<Claim, String>;
    /// The handler succeeded: the key is done for good.
    fn done(&self, key: &str) -> Result<(), String>;
    /// The handler failed: the key may be claimed again at once.
    fn release(&self, key: &str) -> Result<(), String>;
}

/// An in-memory store: the most recent `capacity` done keys, and current claims. Lost with
/// the process; use a persistent store when duplicates across restarts matter.
pub struct MemoryKeyStore {
    state: Mutex<MemoryState>,
    capacity: usize,
}

#[derive(Default)]
struct MemoryState {
    done: HashMap<String, ()>,
    order: VecDeque<String>,
    claims: HashMap<String, Instant>,
}

impl MemoryKeyStore {
    pub fn new(capacity: usize) -> MemoryKeyStore {
        MemoryKeyStore {
            state: Mutex::new(MemoryState::default()),
            capacity: capacity.max(1),
        }
    }
}

impl KeyStore for MemoryKeyStore {
    fn claim(&self, key: &str, lease: Duration) -> Result<Claim, String> {
        let mut state = self.state.lock();
        if state.done.contains_key(key) {
            return Ok(Claim::Done);
        }
        let now = Instant::now();
        if let Some(until) = state.claims.get(key) {
            if *until > now {
                return Ok(Claim::Busy(*until - now));
            }
        }
        state.claims.insert(key.to_string(), now + lease);
        Ok(Claim::Claimed)
    }

    fn done(&self, key: &str) -> Result<(), String> {
        let mut state = self.state.lock();
        state.claims.remove(key);
        if state.done.insert(key.to_string(), ()).is_none() {
            state.order.push_back(key.to_string());
        }
        while state.order.len() > self.capacity {
            if let Some(oldest) = state.order.pop_front() {
                state.done.remove(&oldest);
            }
        }
        Ok(())
    }

    fn release(&self, key: &str) -> Result<(), String> {
        self.state.lock().claims.remove(key);
        Ok(())
    }
}

/// A handler that processes each business key once (see the module documentation). Cheap to
/// clone; use it as `consumer.run(move |m| idempotent.handle(m), stop)`.
pub struct Idempotent<S, H> {
    store: Arc<S>,
    handler: Arc<tokio::sync::Mutex<H>>,
    key_of: Arc<dyn Fn(&ReceivedMessage) -> String + Send + Sync>,
    lease: Duration,
}

/// Releases a claim when dropped while still armed.
struct ClaimGuard<S: KeyStore> {
    store: Arc<S>,
    key: Option<String>,
}

impl<S: KeyStore> Drop for ClaimGuard<S> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            if let Err(err) = self.store.release(&key) {
                tracing::warn!(%key, %err, "claim of an interrupted handler not released");
            }
        }
    }
}

impl<S, H> Clone for Idempotent<S, H> {
    fn clone(&self) -> Self {
        Idempotent {
            store: self.store.clone(),
            handler: self.handler.clone(),
            key_of: self.key_of.clone(),
            lease: self.lease,
        }
    }
}

/// The default business key: the first message key, or the message id.
fn default_key(message: &ReceivedMessage) -> String {
    message
        .keys
        .first()
        .cloned()
        .unwrap_or_else(|| message.id.to_string())
}

impl<S, H, Fut> Idempotent<S, H>
where
    S: KeyStore,
    H: FnMut(ReceivedMessage) -> Fut + Send + 'static,
    Fut: Future<Output = ConsumeStatus> + Send,
{
    /// Wraps `handler`; a claim lasts `lease` (set it above the handler's longest run).
    pub fn new(store: S, handler: H, lease: Duration) -> Idempotent<S, H> {
        Idempotent {
            store: Arc::new(store),
            handler: Arc::new(tokio::sync::Mutex::new(handler)),
            key_of: Arc::new(default_key),
            lease,
        }
    }

    /// Computes the business key from the message instead.
    pub fn key_with(
        mut self,
        key_of: impl Fn(&ReceivedMessage) -> String + Send + Sync + 'static,
    ) -> Idempotent<S, H> {
        self.key_of = Arc::new(key_of);
        self
    }

    /// Handles one message: drops it if its key is done, waits if another attempt holds the
    /// key, otherwise runs the handler and records the outcome.
    pub fn handle(
        &self,
        message: ReceivedMessage,
    ) -> impl Future<Output = ConsumeStatus> + Send + 'static {
        let this = self.clone();
        async move {
            let key = (this.key_of)(&message);
            let store = this.store.clone();
            let (claim_key, lease) = (key.clone(), this.lease);
            let claim = tokio::task::spawn_blocking(move || store.claim(&claim_key, lease)).await;
            match claim {
                Ok(Ok(Claim::Claimed)) => {}
                Ok(Ok(Claim::Done)) => {
                    debug!(%key, id = %message.id, "duplicate of a processed message dropped");
                    return ConsumeStatus::Success;
                }
                Ok(Ok(Claim::Busy(left))) => return ConsumeStatus::RetryLater(Some(left)),
                Ok(Err(err)) => {
                    tracing::warn!(%key, %err, "idempotency store failed; retrying later");
                    return ConsumeStatus::RetryLater(None);
                }
                Err(err) => {
                    tracing::warn!(%key, %err, "idempotency store task failed; retrying later");
                    return ConsumeStatus::RetryLater(None);
                }
            }
            // If the handler panics or is cancelled (a consume timeout), the guard releases the
            // claim, so the retry does not wait out the lease.
            let mut guard = ClaimGuard {
                store: this.store.clone(),
                key: Some(key.clone()),
            };
            let status = {
                let mut handler = this.handler.lock().await;
                (handler)(message).await
            };
            guard.key = None;
            let store = this.store.clone();
            let recorded = tokio::task::spawn_blocking(move || match status {
                ConsumeStatus::Success => store.done(&key),
                ConsumeStatus::RetryLater(_) => store.release(&key),
            })
            .await;
            match recorded {
                Ok(Ok(())) => {}
                // Not recorded: the claim's lease runs out and a retry processes it again.
                Ok(Err(err)) => tracing::warn!(%err, "idempotency store failed after the handler"),
                Err(err) => {
                    tracing::warn!(%err, "idempotency store task failed after the handler")
                }
            }
            status
        }
    }
}

#[cfg(feature = "idempotent-sqlite")]
pub use sqlite::SqliteKeyStore;

#[cfg(feature = "idempotent-sqlite")]
mod sqlite {
    //! A persistent store in a SQLite file: survives restarts, shared by the processes that
    //! open the same file.

    use std::path::Path;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use parking_lot::Mutex;
    use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

    use super::{Claim, KeyStore};

    pub struct SqliteKeyStore {
        connection: Mutex<Connection>,
    }

    fn now_ms() -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64)
    }

    impl SqliteKeyStore {
        /// Opens (or creates) the store at `path`.
        pub fn open(path: &Path) -> Result<SqliteKeyStore, String> {
            let connection = Connection::open(path).map_err(|e| e.to_string())?;
            connection
                .execute_batch(
                    "PRAGMA journal_mode = WAL;
                     PRAGMA busy_timeout = 5000;
                     CREATE TABLE IF NOT EXISTS ferromq_processed (
                         key TEXT PRIMARY KEY,
                         done INTEGER NOT NULL,
                         lease_until_ms INTEGER NOT NULL
                     );",
                )
                .map_err(|e| e.to_string())?;
            Ok(SqliteKeyStore {
                connection: Mutex::new(connection),
            })
        }

        /// Forgets done keys older than `age` (call it now and then to bound the table).
        pub fn forget_older_than(&self, age: Duration) -> Result<usize, String> {
            let cutoff = now_ms() - age.as_millis() as i64;
            self.connection
                .lock()
                .execute(
                    "DELETE FROM ferromq_processed WHERE done = 1 AND lease_until_ms < ?1",
                    params![cutoff],
                )
                .map_err(|e| e.to_string())
        }
    }

    impl KeyStore for SqliteKeyStore {
        fn claim(&self, key: &str, lease: Duration) -> Result<Claim, String> {
            let mut connection = self.connection.lock();
            let transaction = connection
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|e| e.to_string())?;
            let now = now_ms();
            let row: Option<(i64, i64)> = transaction
                .query_row(
                    "SELECT done, lease_until_ms FROM ferromq_processed WHERE key = ?1",
                    params![key],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .optional()
                .map_err(|e| e.to_string())?;
            let claim = match row {
                Some((1, _)) => Claim::Done,
                Some((_, until)) if until > now => {
                    Claim::Busy(Duration::from_millis((until - now) as u64))
                }
                _ => {
                    transaction
                        .execute(
                            "INSERT INTO ferromq_processed (key, done, lease_until_ms)
                             VALUES (?1, 0, ?2)
                             ON CONFLICT(key) DO UPDATE SET done = 0, lease_until_ms = ?2",
                            params![key, now + lease.as_millis() as i64],
                        )
                        .map_err(|e| e.to_string())?;
                    Claim::Claimed
                }
            };
            transaction.commit().map_err(|e| e.to_string())?;
            Ok(claim)
        }

        fn done(&self, key: &str) -> Result<(), String> {
            self.connection
                .lock()
                .execute(
                    "UPDATE ferromq_processed SET done = 1, lease_until_ms = ?2 WHERE key = ?1",
                    params![key, now_ms()],
                )
                .map(|_| ())
                .map_err(|e| e.to_string())
        }

        fn release(&self, key: &str) -> Result<(), String> {
            self.connection
                .lock()
                .execute(
                    "DELETE FROM ferromq_processed WHERE key = ?1 AND done = 0",
                    params![key],
                )
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_store_claims_once_and_remembers_done_keys() {
        let store = MemoryKeyStore::new(2);
        let lease = Duration::from_secs(60);
        assert_eq!(store.claim("a", lease), Ok(Claim::Claimed));
        assert!(matches!(store.claim("a", lease), Ok(Claim::Busy(_))));
        store.release("a").unwrap();
        assert_eq!(store.claim("a", lease), Ok(Claim::Claimed));
        store.done("a").unwrap();
        assert_eq!(store.claim("a", lease), Ok(Claim::Done));
        // An expired claim (a crashed attempt) can be taken over.
        assert_eq!(store.claim("b", Duration::ZERO), Ok(Claim::Claimed));
        assert_eq!(store.claim("b", lease), Ok(Claim::Claimed));
        // Capacity bounds the remembered keys.
        store.done("b").unwrap();
        store.done("c").unwrap();
        assert_eq!(
            store.claim("a", lease),
            Ok(Claim::Claimed),
            "a was forgotten"
        );
    }
}
