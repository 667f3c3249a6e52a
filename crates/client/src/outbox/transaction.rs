//! Broker transactions with the outbox table as their record: the local transaction writes the
//! business rows and an outbox row for the half message ([`Outbox::record_transactional`]), so
//! when a broker checks back, the table answers: a row means the local transaction committed.
//! The row is then tracked, and re-sent if lost, like any other.

use std::future::Future;

use ferromq_protocol::Message;
use futures::future::BoxFuture;
use futures::FutureExt;
use tracing::warn;

use super::database::OutboxDatabase;
use super::{now_ms, Outbox, OUTBOX_KEY_PROPERTY};
use crate::consumer::ReceivedMessage;
use crate::producer::SendReceipt;
use crate::transaction::{TransactionListener, TransactionState};

impl<DB: OutboxDatabase> Outbox<DB> {
    /// How the local transaction of a half message ended, as the table tells: `Commit` if it
    /// holds the message's row, `Rollback` if not and the message is older than
    /// `transaction_grace_ms` (the local transaction would have committed by then), `Unknown`
    /// before that or when the database cannot be read (the broker asks again later).
    pub async fn transaction_state(&self, message: &ReceivedMessage) -> TransactionState {
        let Some(dedup_key) = message.properties.get(OUTBOX_KEY_PROPERTY) else {
            warn!(id = %message.id, "check-back of a message that has no outbox key");
            return TransactionState::Unknown;
        };
        match DB::row_by_dedup_key(&self.pool, dedup_key).await {
            Ok(Some(_)) => TransactionState::Commit,
            Ok(None) => {
                let age_ms = now_ms().saturating_sub(message.store_ts_ms as i64);
                if age_ms > self.config.transaction_grace_ms as i64 {
                    TransactionState::Rollback
                } else {
                    TransactionState::Unknown
                }
            }
            Err(err) => {
                warn!(%err, %dedup_key, "outbox lookup for a check-back failed");
                TransactionState::Unknown
            }
        }
    }

    /// A [`TransactionListener`] that runs `execute` as the local transaction and answers
    /// check-backs from the table. `execute` gets the half message and its receipt, writes the
    /// business rows and [`Outbox::record_transactional`] in one database transaction, and
    /// answers `Commit` once that transaction committed.
    pub fn transaction_listener<E, F>(&self, execute: E) -> OutboxTransactionListener<DB, E>
    where
        E: Fn(Message, SendReceipt) -> F + Send + Sync + 'static,
        F: Future<Output = TransactionState> + Send + 'static,
    {
        OutboxTransactionListener {
            outbox: self.clone(),
            execute,
        }
    }
}

/// Made by [`Outbox::transaction_listener`].
pub struct OutboxTransactionListener<DB: OutboxDatabase, E> {
    outbox: Outbox<DB>,
    execute: E,
}

impl<DB, E, F> TransactionListener for OutboxTransactionListener<DB, E>
where
    DB: OutboxDatabase,
    E: Fn(Message, SendReceipt) -> F + Send + Sync + 'static,
    F: Future<Output = TransactionState> + Send + 'static,
{
    fn execute_local<'a>(
        &'a self,
        message: &'a Message,
        receipt: &'a SendReceipt,
    ) -> BoxFuture<'a, TransactionState> {
        (self.execute)(message.clone(), receipt.clone()).boxed()
    }

    fn check_local<'a>(&'a self, message: &'a ReceivedMessage) -> BoxFuture<'a, TransactionState> {
        self.outbox.transaction_state(message).boxed()
    }
}
