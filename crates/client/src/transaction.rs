//! Transactional messages: a half message is stored but invisible to consumers; the producer
//! runs its local transaction and then commits the message (it becomes visible) or rolls it
//! back (it is dropped). When a producer dies or cannot tell in time, the broker asks a live
//! producer of the same group over that producer's own connection (`check_local`), every 30 s
//! after the first 6 s, up to 15 times; then the message is parked in `%TXN_PARKED%`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ferromq_protocol::{
    headers::{
        BrokerRole, CheckTransactionRequest, CheckTransactionResponse, ProducerHeartbeatRequest,
    },
    message::{decode_record, validate_group},
    Message, RequestCode, Status,
};
use ferromq_transport::{Reply, Request};
use futures::future::BoxFuture;
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::debug;

pub use ferromq_protocol::headers::TransactionState;

use crate::client::Client;
use crate::consumer::ReceivedMessage;
use crate::error::{ClientError, SendError};
use crate::producer::{Producer, SendReceipt};

/// How often a transactional producer tells every broker it is alive.
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);

/// The application's side of a transaction.
pub trait TransactionListener: Send + Sync + 'static {
    /// Runs the local transaction once the half message is stored; its answer commits or rolls
    /// back the message (`Unknown` leaves it to a check-back).
    fn execute_local<'a>(
        &'a self,
        message: &'a Message,
        receipt: &'a SendReceipt,
    ) -> BoxFuture<'a, TransactionState>;

    /// Tells a broker how the local transaction of an undecided half message ended. Any live
    /// producer of the group may be asked, not only the one that sent it.
    fn check_local<'a>(&'a self, message: &'a ReceivedMessage) -> BoxFuture<'a, TransactionState>;
}

/// The listeners of this client's transactional producers, by producer group, for check-backs.
#[derive(Default)]
pub(crate) struct TransactionCheckers {
    by_group: Mutex<HashMap<String, Arc<dyn TransactionListener>>>,
}

impl TransactionCheckers {
    /// Answers a broker's CHECK_TRANSACTION.
    pub(crate) async fn answer(&self, request: Request) -> Reply {
        let check: CheckTransactionRequest = match request.decode_header() {
            Ok(check) => check,
            Err(err) => return Reply::bad_header(&err),
        };
        let Some(listener) = self.by_group.lock().get(&check.group).cloned() else {
            return Reply::error(
                Status::ParameterError,
                format!("no transactional producer of group {:?} here", check.group),
            );
        };
        let record = match decode_record(request.body.clone()) {
            Ok(record) => record,
            Err(err) => {
                return Reply::error(Status::ParameterError, format!("malformed record: {err}"))
            }
        };
        let message =
            ReceivedMessage::from_record(record, check.topic, (String::new(), check.queue_id, 0));
        let state = listener.check_local(&message).await;
        Reply::ok(&CheckTransactionResponse { state })
    }
}

/// Sends messages inside local transactions; made by [`Client::transaction_producer`].
pub struct TransactionProducer {
    producer: Producer,
    group: String,
    listener: Arc<dyn TransactionListener>,
    client: Client,
    stop: CancellationToken,
}

impl Client {
    /// A producer of transactional messages for `group`; `listener` runs local transactions and
    /// answers check-backs. Brokers are told at once that the group has a live producer here.
    pub async fn transaction_producer(
        &self,
        group: impl Into<String>,
        listener: impl TransactionListener,
    ) -> Result<TransactionProducer, ClientError> {
        let group = group.into();
        validate_group(&group).map_err(ClientError::InvalidMessage)?;
        let listener: Arc<dyn TransactionListener> = Arc::new(listener);
        self.inner
            .transaction_checkers
            .by_group
            .lock()
            .insert(group.clone(), listener.clone());
        let stop = self.inner.shutdown.child_token();
        heartbeat(self, &group).await;
        let (client, beat_group, beat_stop) = (self.clone(), group.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(HEARTBEAT_INTERVAL) => {}
                    _ = beat_stop.cancelled() => return,
                }
                heartbeat(&client, &beat_group).await;
            }
        });
        Ok(TransactionProducer {
            producer: self.producer(),
            group,
            listener,
            client: self.clone(),
            stop,
        })
    }
}

/// Tells every broker (followers too: one of them may lead next) that `group` lives here.
async fn heartbeat(client: &Client, group: &str) {
    let brokers = match client.cluster().await {
        Ok(cluster) => cluster.brokers,
        Err(err) => {
            debug!(%err, "no cluster view for producer heartbeats");
            return;
        }
    };
    let request = ProducerHeartbeatRequest {
        group: group.to_string(),
    };
    for broker in brokers {
        let beat = async {
            let connection = client.connection(&broker.client_addr).await?;
            connection
                .request(RequestCode::ProducerHeartbeat, &request, Bytes::new())
                .await?
                .into_result()?;
            Ok::<_, ClientError>(())
        };
        if let Err(err) = beat.await {
            let role = if broker.role == BrokerRole::Leader {
                "leader"
            } else {
                "member"
            };
            debug!(addr = %broker.client_addr, role, %err, "producer heartbeat failed");
        }
    }
}

/// An open transaction: its half message is stored; end it with `commit` or `rollback`.
#[must_use = "a transaction left open is decided by check-backs"]
pub struct Transaction {
    producer: Producer,
    receipt: SendReceipt,
}

impl Transaction {
    pub fn receipt(&self) -> &SendReceipt {
        &self.receipt
    }

    /// Makes the message visible to consumers. May be retried after a failure (a leader
    /// change); once the transaction has ended, the broker refuses a second end.
    pub async fn commit(&self) -> Result<(), ClientError> {
        self.producer.end_transaction(&self.receipt, true).await
    }

    /// Drops the message.
    pub async fn rollback(&self) -> Result<(), ClientError> {
        self.producer.end_transaction(&self.receipt, false).await
    }
}

impl TransactionProducer {
    pub fn group(&self) -> &str {
        &self.group
    }

    /// The open transaction of a half message sent earlier (say, by a process that restarted
    /// and kept the receipt).
    pub fn resume(&self, receipt: SendReceipt) -> Transaction {
        Transaction {
            producer: self.producer.clone(),
            receipt,
        }
    }

    /// Stores `message` as a half message and returns the open transaction.
    pub async fn begin(&self, message: Message) -> Result<Transaction, SendError> {
        match self.producer.send_half(&message, &self.group).await {
            Ok(receipt) => Ok(Transaction {
                producer: self.producer.clone(),
                receipt,
            }),
            Err(error) => Err(SendError { message, error }),
        }
    }

    /// Stores `message` as a half message, runs the listener's local transaction, and commits
    /// or rolls back as it answers (`Unknown`: left to a check-back). Returns the receipt and
    /// the answer.
    pub async fn send_in_transaction(
        &self,
        message: Message,
    ) -> Result<(SendReceipt, TransactionState), SendError> {
        let transaction = self.begin(message.clone()).await?;
        let state = self
            .listener
            .execute_local(&message, transaction.receipt())
            .await;
        let receipt = transaction.receipt.clone();
        let ended = match state {
            TransactionState::Commit => transaction.commit().await,
            TransactionState::Rollback => transaction.rollback().await,
            TransactionState::Unknown => Ok(()),
        };
        match ended {
            Ok(()) => Ok((receipt, state)),
            // The broker will ask again; the caller learns the end did not go through.
            Err(error) => Err(SendError { message, error }),
        }
    }

    /// Stops heartbeats and check-back answers for this group.
    pub fn shutdown(self) {
        self.stop.cancel();
        self.client
            .inner
            .transaction_checkers
            .by_group
            .lock()
            .remove(&self.group);
    }
}
