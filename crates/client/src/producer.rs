//! The producer: sync, async (handle or callback), one-way and batch sends. Queues are chosen
//! round-robin over every writable queue of every broker group serving the topic; a retriable
//! failure is retried on another group when there is one, within the send timeout.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use ferromq_protocol::{
    frame::{DEFAULT_MAX_HEADER_BYTES, FIXED_PART_BYTES},
    headers::{
        perm, CancelScheduledRequest, EndTransactionRequest, Schedule, SendRequest, SendResponse,
        TopicRoute,
    },
    message::{encode_record, now_millis, put_length_prefixed, send_body_len},
    Message, MessageId, RequestCode, Status,
};
use ferromq_transport::TransportError;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::client::Client;
use crate::config::ProducerConfig;
use crate::error::{BatchSendError, ClientError, SendError};

/// Where an acknowledged message was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendReceipt {
    pub message_id: MessageId,
    pub topic: String,
    /// The broker group that stored it.
    pub broker_group: String,
    pub queue_id: u32,
    pub queue_offset: u64,
    pub store_ts_ms: u64,
    /// For a scheduled send: when it becomes visible (ms since the epoch); `queue_offset` is
    /// then only known once it is delivered.
    pub due_ms: Option<u64>,
}

/// How a send is stored: now, later, or as a half message of a transaction.
#[derive(Debug, Clone, Default)]
struct SendOptions {
    schedule: Option<Schedule>,
    transaction_group: Option<String>,
    reply_to: Option<String>,
}

/// A writable queue of a topic, as a [`QueueSelector`] sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageQueue {
    pub broker_group: String,
    pub queue_id: u32,
}

/// Picks the queue of a message: an index into `queues` (taken modulo their number). Closures
/// `Fn(&[MessageQueue], &Message) -> usize` are selectors.
pub trait QueueSelector: Send + Sync {
    fn select(&self, queues: &[MessageQueue], message: &Message) -> usize;
}

impl<F> QueueSelector for F
where
    F: Fn(&[MessageQueue], &Message) -> usize + Send + Sync,
{
    fn select(&self, queues: &[MessageQueue], message: &Message) -> usize {
        self(queues, message)
    }
}

/// The hash of a sharding key: the same in every process and version. FNV-1a, whose low bits
/// depend only on the low bits of each byte (keys like `A-1`, `B-2` would share a queue), mixed
/// by MurmurHash3's finalizer.
pub fn sharding_hash(key: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    hash ^ (hash >> 33)
}

/// The selector of [`Producer::send_ordered`]: the key's hash modulo the number of queues.
fn key_selector(sharding_key: &str) -> impl QueueSelector {
    let hash = sharding_hash(sharding_key);
    move |queues: &[MessageQueue], _: &Message| (hash % queues.len().max(1) as u64) as usize
}

/// A queue a message can be sent to.
#[derive(Debug, Clone)]
struct Target {
    group: String,
    leader: String,
    queue_id: u32,
}

/// A route claiming more queues per group is refused as corrupt (brokers allow 1024 by
/// default); expanding it would allocate without bound.
pub(crate) const MAX_ROUTE_QUEUES: u32 = 65_536;
/// Extra time the outer limit of an attempt allows beyond the attempt's own deadline.
const OUTER_GRACE: Duration = Duration::from_millis(50);
/// Pause before the n-th retry is n times this (NOT_LEADER with a known leader retries at once).
const RETRY_PAUSE: Duration = Duration::from_millis(50);

fn targets(route: &TopicRoute) -> Vec<Target> {
    let mut targets = Vec::new();
    for group in &route.groups {
        let Some(leader) = &group.leader else {
            continue;
        };
        if group.perm & perm::WRITE == 0 || group.queues > MAX_ROUTE_QUEUES {
            continue;
        }
        for queue_id in 0..group.queues {
            targets.push(Target {
                group: group.group.clone(),
                leader: leader.clone(),
                queue_id,
            });
        }
    }
    targets
}

#[derive(Clone)]
pub struct Producer {
    client: Client,
    config: Arc<ProducerConfig>,
    next_queue: Arc<AtomicUsize>,
    in_flight: Arc<Semaphore>,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("config", &self.config)
            .finish()
    }
}

/// The pending result of [`Producer::send_async`]; await it for the receipt.
pub struct SendHandle {
    task: JoinHandle<Result<SendReceipt, SendError>>,
}

impl Future for SendHandle {
    /// The receipt, or the error with the message given back.
    type Output = Result<SendReceipt, SendError>;

    // The error carries the message back by value, on purpose.
    #[allow(clippy::result_large_err)]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.task)
            .poll(cx)
            .map(|joined| match joined {
                Ok(result) => result,
                // The runtime is shutting down (or the send task panicked): the message is gone
                // with the task.
                Err(_) => Err(SendError {
                    message: Message::default(),
                    error: ClientError::Shutdown,
                }),
            })
    }
}

impl Producer {
    pub(crate) fn new(client: Client, config: ProducerConfig) -> Producer {
        Producer {
            client,
            in_flight: Arc::new(Semaphore::new(config.max_in_flight.max(1))),
            config: Arc::new(config),
            next_queue: Arc::new(AtomicUsize::new(rand_start())),
        }
    }

    /// Sends and waits for the broker's receipt (the message is committed and applied).
    pub async fn send(&self, message: Message) -> Result<SendReceipt, SendError> {
        self.send_one(message, None).await
    }

    async fn send_one(
        &self,
        message: Message,
        schedule: Option<Schedule>,
    ) -> Result<SendReceipt, SendError> {
        let options = SendOptions {
            schedule,
            ..SendOptions::default()
        };
        self.send_single(message, &options, None).await
    }

    /// One message: `send_records` returns one receipt per message.
    async fn send_single(
        &self,
        message: Message,
        options: &SendOptions,
        pin: Option<Target>,
    ) -> Result<SendReceipt, SendError> {
        match self
            .send_records(std::slice::from_ref(&message), options, pin)
            .await
        {
            Ok(mut receipts) => Ok(receipts.remove(0)),
            Err(error) => Err(SendError { message, error }),
        }
    }

    /// Starts a send without waiting for its receipt. Waits only while `max_in_flight` sends
    /// are already under way. The send runs on its own task: it finishes (or fails) even if the
    /// handle is dropped, so await the handle to learn its outcome.
    pub async fn send_async(&self, message: Message) -> SendHandle {
        let permit = self.in_flight.clone().acquire_owned().await;
        let producer = self.clone();
        SendHandle {
            task: tokio::spawn(async move {
                let _permit = permit;
                producer.send(message).await
            }),
        }
    }

    /// Starts a send and calls `callback` with its outcome.
    pub async fn send_with_callback<F>(&self, message: Message, callback: F)
    where
        F: FnOnce(Result<SendReceipt, SendError>) + Send + 'static,
    {
        let permit = self.in_flight.clone().acquire_owned().await;
        let producer = self.clone();
        tokio::spawn(async move {
            let _permit = permit;
            callback(producer.send(message).await);
        });
    }

    /// Sends without waiting for any answer: no receipt, no retry.
    pub async fn send_oneway(&self, message: Message) -> Result<(), SendError> {
        let result = async {
            let (body, _ids) = self.encode(std::slice::from_ref(&message))?;
            let route = self.client.route(&message.topic).await?;
            let targets = targets(&route);
            if targets.is_empty() {
                return Err(ClientError::NoRoute(message.topic.clone()));
            }
            let target = &targets[self.next_queue.fetch_add(1, Ordering::Relaxed) % targets.len()];
            let header = SendRequest {
                topic: message.topic.clone(),
                queue_id: target.queue_id,
                count: 1,
                schedule: None,
                transaction_group: None,
                reply_to: None,
            };
            let connection = self.client.connection(&target.leader).await?;
            connection.one_way(RequestCode::Send, &header, body).await?;
            Ok(())
        };
        result.await.map_err(|error| SendError { message, error })
    }

    /// Sends messages of one topic as one request to one queue; they get consecutive offsets.
    /// Their bodies together stay within the brokers' message size limit (4 MiB by default),
    /// and their encoding within [`Producer::max_batch_bytes`].
    pub async fn send_batch(
        &self,
        messages: Vec<Message>,
    ) -> Result<Vec<SendReceipt>, BatchSendError> {
        match self
            .send_records(&messages, &SendOptions::default(), None)
            .await
        {
            Ok(receipts) => Ok(receipts),
            Err(error) => Err(BatchSendError { messages, error }),
        }
    }

    /// Sends a message that consumers see only after `delay` (milliseconds precision, up to
    /// the broker's maximum, 7 days by default). It is stored at once, durably.
    pub async fn send_delayed(
        &self,
        message: Message,
        delay: Duration,
    ) -> Result<SendReceipt, SendError> {
        let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.send_one(message, Some(Schedule::DelayMs(delay_ms)))
            .await
    }

    /// Sends a message that consumers see only from `at` (the broker's clock) on.
    pub async fn send_at(
        &self,
        message: Message,
        at: SystemTime,
    ) -> Result<SendReceipt, SendError> {
        let at_ms = at
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self.send_one(message, Some(Schedule::DeliverAtMs(at_ms)))
            .await
    }

    /// Sends a message delayed by one of the broker's delay levels (1-based; by default
    /// RocketMQ's `1s 5s 10s 30s 1m 2m 3m 4m 5m 6m 7m 8m 9m 10m 20m 30m 1h 2h`).
    pub async fn send_with_delay_level(
        &self,
        message: Message,
        level: u8,
    ) -> Result<SendReceipt, SendError> {
        self.send_one(message, Some(Schedule::Level(level))).await
    }

    /// Sends to the queue `sharding_key` hashes to, so messages with the same key keep their
    /// order (while the topic's queue count stays the same). The send is retried only on that
    /// queue: when its broker group has no leader, it fails rather than going elsewhere.
    pub async fn send_ordered(
        &self,
        message: Message,
        sharding_key: &str,
    ) -> Result<SendReceipt, SendError> {
        self.send_with_selector(message, &key_selector(sharding_key))
            .await
    }

    /// Sends messages of one topic that share `sharding_key` as one request to the queue the
    /// key hashes to: they are stored in this order, with consecutive offsets, or not at all.
    pub async fn send_batch_ordered(
        &self,
        messages: Vec<Message>,
        sharding_key: &str,
    ) -> Result<Vec<SendReceipt>, BatchSendError> {
        let Some(first) = messages.first() else {
            return Err(BatchSendError {
                messages,
                error: ClientError::InvalidMessage("a batch needs at least one message".into()),
            });
        };
        let target = match self
            .selected_target(first, &key_selector(sharding_key))
            .await
        {
            Ok(target) => target,
            Err(error) => return Err(BatchSendError { messages, error }),
        };
        match self
            .send_records(&messages, &SendOptions::default(), Some(target))
            .await
        {
            Ok(receipts) => Ok(receipts),
            Err(error) => Err(BatchSendError { messages, error }),
        }
    }

    /// Sends to the queue `selector` picks from the topic's writable queues (sorted by broker
    /// group and queue id); retried only on that queue, like [`Producer::send_ordered`].
    pub async fn send_with_selector(
        &self,
        message: Message,
        selector: &dyn QueueSelector,
    ) -> Result<SendReceipt, SendError> {
        let target = match self.selected_target(&message, selector).await {
            Ok(target) => target,
            Err(error) => return Err(SendError { message, error }),
        };
        self.send_single(message, &SendOptions::default(), Some(target))
            .await
    }

    /// The queue `selector` picks for `message`, to pin its sends to.
    async fn selected_target(
        &self,
        message: &Message,
        selector: &dyn QueueSelector,
    ) -> Result<Target, ClientError> {
        let route = self.client.route(&message.topic).await?;
        // Every writable queue, led or not: a group in the middle of an election must not
        // shift every key to another queue.
        let mut queues: Vec<MessageQueue> = route
            .groups
            .iter()
            .filter(|g| g.perm & perm::WRITE != 0 && g.queues <= MAX_ROUTE_QUEUES)
            .flat_map(|g| {
                (0..g.queues).map(|queue_id| MessageQueue {
                    broker_group: g.group.clone(),
                    queue_id,
                })
            })
            .collect();
        queues.sort_by(|a, b| (&a.broker_group, a.queue_id).cmp(&(&b.broker_group, b.queue_id)));
        if queues.is_empty() {
            return Err(ClientError::NoRoute(message.topic.clone()));
        }
        let index = selector.select(&queues, message) % queues.len();
        let queue = queues.swap_remove(index);
        // The leader is looked up by each attempt; none right now means wait, not move.
        Ok(Target {
            group: queue.broker_group,
            leader: String::new(),
            queue_id: queue.queue_id,
        })
    }

    /// Recalls a scheduled message before it is due. Fails (`PARAMETER_ERROR`) when it was
    /// delivered or cancelled already.
    pub async fn cancel_scheduled(&self, receipt: &SendReceipt) -> Result<(), ClientError> {
        let header = CancelScheduledRequest {
            topic: receipt.topic.clone(),
            id: receipt.message_id,
        };
        self.client
            .request_group_leader(
                &receipt.topic,
                &receipt.broker_group,
                RequestCode::CancelScheduled,
                &header,
            )
            .await?;
        Ok(())
    }

    /// The most bytes of encoded messages (each one's body, tag, keys and properties, and about
    /// 50 bytes of framing) one send carries: what a frame of the client's `max_frame_bytes` (the
    /// brokers' `limits.max_frame_bytes`, 16 MiB by default) leaves after its fixed part and
    /// the largest header. A larger batch is refused before anything is sent; split it.
    pub fn max_batch_bytes(&self) -> usize {
        self.client
            .inner
            .config
            .max_frame_bytes
            .saturating_sub(FIXED_PART_BYTES + DEFAULT_MAX_HEADER_BYTES)
    }

    fn encode(&self, messages: &[Message]) -> Result<(Bytes, Vec<MessageId>), ClientError> {
        for message in messages {
            message
                .validate(self.config.max_message_bytes)
                .map_err(|err| ClientError::InvalidMessage(err.to_string()))?;
        }
        // Checked here, not by the transport: its refusal of a frame reads like a network
        // failure, and a caller retrying it would fail the same way forever.
        let size: usize = messages.iter().map(send_body_len).sum();
        let limit = self.max_batch_bytes();
        if size > limit {
            return Err(ClientError::InvalidMessage(format!(
                "{} messages encode to {size} bytes; one send carries at most {limit}: \
                 send them in smaller batches",
                messages.len()
            )));
        }
        let born = now_millis();
        let mut body = BytesMut::with_capacity(size);
        let mut ids = Vec::with_capacity(messages.len());
        let mut record = BytesMut::new();
        for message in messages {
            let id = self.client.inner.ids.next_id();
            record.clear();
            encode_record(id, born, message, &mut record);
            put_length_prefixed(&mut body, &record);
            ids.push(id);
        }
        Ok((body.freeze(), ids))
    }

    /// Sends a half message of a transaction of `group`: stored, invisible to consumers until
    /// [`Producer::end_transaction`] commits it (or a check-back does).
    pub(crate) async fn send_half(
        &self,
        message: &Message,
        group: &str,
    ) -> Result<SendReceipt, ClientError> {
        let options = SendOptions {
            transaction_group: Some(group.to_string()),
            ..SendOptions::default()
        };
        self.send_single(message.clone(), &options, None)
            .await
            .map_err(|err| err.error)
    }

    /// Sends a request message whose replies come back to `requester` over this connection.
    pub(crate) async fn send_request(
        &self,
        message: Message,
        requester: String,
    ) -> Result<SendReceipt, SendError> {
        let options = SendOptions {
            reply_to: Some(requester),
            ..SendOptions::default()
        };
        self.send_single(message, &options, None).await
    }

    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    /// Commits or rolls back the transaction of a half message.
    pub(crate) async fn end_transaction(
        &self,
        receipt: &SendReceipt,
        commit: bool,
    ) -> Result<(), ClientError> {
        let header = EndTransactionRequest {
            topic: receipt.topic.clone(),
            id: receipt.message_id,
            commit,
        };
        self.client
            .request_group_leader(
                &receipt.topic,
                &receipt.broker_group,
                RequestCode::EndTransaction,
                &header,
            )
            .await?;
        Ok(())
    }

    async fn send_records(
        &self,
        messages: &[Message],
        options: &SendOptions,
        pin: Option<Target>,
    ) -> Result<Vec<SendReceipt>, ClientError> {
        let Some(first) = messages.first() else {
            return Err(ClientError::InvalidMessage(
                "a batch needs at least one message".into(),
            ));
        };
        let topic = first.topic.clone();
        if messages.iter().any(|m| m.topic != topic) {
            return Err(ClientError::InvalidMessage(
                "all messages of a batch need the same topic".into(),
            ));
        }
        let (body, ids) = self.encode(messages)?;
        let deadline = Instant::now() + Duration::from_millis(self.config.send_timeout_ms);
        let pinned = pin.is_some();
        let mut prefer = pin.map_or(Prefer::Any, Prefer::Pinned);
        let mut maybe_stored: Option<Target> = None;
        let mut attempt = 0;
        loop {
            // An attempt that may be retried gets half of the time left, so a broker that stopped
            // answering (paused, partitioned) leaves time to retry at the new leader; the last
            // attempt gets all of it. Route lookup and connecting count against it too.
            let now = Instant::now();
            let attempt_deadline = if attempt < self.config.retries {
                now + deadline.saturating_duration_since(now) / 2
            } else {
                deadline
            };
            // The attempt's own request times out first and names the queue it tried (so a
            // retry goes to the same one); this outer limit catches a hung route lookup.
            let result = tokio::time::timeout_at(
                (attempt_deadline + OUTER_GRACE).into(),
                self.attempt(
                    &topic,
                    (messages.len() as u32, options),
                    &body,
                    attempt_deadline,
                    &prefer,
                ),
            )
            .await
            .unwrap_or_else(|_| {
                let timeout = attempt_deadline.saturating_duration_since(now);
                Err((
                    None,
                    ClientError::Transport(TransportError::Timeout(timeout)),
                ))
            });
            let (tried, error) = match result {
                Ok((target, response)) => {
                    return Ok(receipts(&topic, &target.group, &ids, &response))
                }
                Err(failure) => failure,
            };
            attempt += 1;
            let time_left = deadline.saturating_duration_since(Instant::now());
            if !error.is_retriable() || attempt > self.config.retries || time_left.is_zero() {
                if error.is_retriable() {
                    // The next send should not trust this route either.
                    self.client.invalidate_route(&topic);
                }
                return Err(error);
            }
            let leader_hint = match &error {
                ClientError::Transport(TransportError::Remote {
                    status: Status::NotLeader,
                    leader,
                    ..
                }) => Some(leader.clone()),
                _ => None,
            };
            // Once a send may have been stored somewhere, every later attempt stays with that
            // group: only there can the broker recognise the retry.
            if error.outcome_unknown() && maybe_stored.is_none() {
                maybe_stored = tried.clone();
            }
            prefer = match (tried, leader_hint, &maybe_stored) {
                // An ordered send never moves to another queue.
                _ if pinned => prefer,
                // Not stored there; go straight to the leader the follower named.
                (Some(target), Some(leader), _) => Prefer::Same { target, leader },
                (_, _, Some(stored)) => Prefer::Same {
                    target: stored.clone(),
                    leader: None,
                },
                (Some(target), None, None) => Prefer::OtherGroup(target.group),
                (None, _, None) => prefer,
            };
            if !matches!(
                prefer,
                Prefer::Same {
                    leader: Some(_),
                    ..
                }
            ) {
                // Give a restarting broker or an election a moment, within the deadline.
                let pause = RETRY_PAUSE * attempt;
                tokio::time::sleep(pause.min(time_left / 2)).await;
            }
            self.client.invalidate_route(&topic);
        }
    }

    /// One try: pick a queue as `prefer` says, send, decode the answer. Errors carry the
    /// queue that was tried.
    async fn attempt(
        &self,
        topic: &str,
        (count, options): (u32, &SendOptions),
        body: &Bytes,
        deadline: Instant,
        prefer: &Prefer,
    ) -> Result<(Target, SendResponse), (Option<Target>, ClientError)> {
        let route = self.client.route(topic).await.map_err(|err| (None, err))?;
        let mut targets = targets(&route);
        if targets.is_empty() {
            return Err((None, ClientError::NoRoute(topic.to_string())));
        }
        if let Prefer::Same {
            target,
            leader: Some(leader),
        } = prefer
        {
            for candidate in targets.iter_mut().filter(|t| t.group == target.group) {
                candidate.leader = leader.clone();
            }
        }
        let start = self.next_queue.fetch_add(1, Ordering::Relaxed);
        let round_robin =
            (0..targets.len()).map(|i| &targets[start.wrapping_add(i) % targets.len()]);
        let chosen = match prefer {
            Prefer::Pinned(pinned) => {
                let Some(target) = targets
                    .iter()
                    .find(|t| t.group == pinned.group && t.queue_id == pinned.queue_id)
                else {
                    // Its group has no leader right now: wait for one rather than reorder.
                    return Err((None, ClientError::NoRoute(topic.to_string())));
                };
                Some(target)
            }
            Prefer::Any => None,
            Prefer::OtherGroup(avoid) => round_robin.clone().find(|t| &t.group != avoid),
            Prefer::Same { target, .. } => round_robin
                .clone()
                .find(|t| t.group == target.group && t.queue_id == target.queue_id),
        };
        let target = chosen
            .or_else(|| round_robin.clone().next())
            .expect("targets is not empty")
            .clone();
        let header = SendRequest {
            topic: topic.to_string(),
            queue_id: target.queue_id,
            count,
            schedule: options.schedule,
            transaction_group: options.transaction_group.clone(),
            reply_to: options.reply_to.clone(),
        };
        let sent = async {
            let connection = self.client.connection(&target.leader).await?;
            // Measured after connecting, so the request's own timeout ends the attempt.
            let timeout = deadline.saturating_duration_since(Instant::now());
            if timeout.is_zero() {
                return Err(ClientError::Transport(TransportError::Timeout(
                    Duration::ZERO,
                )));
            }
            let response = connection
                .request_with_timeout(RequestCode::Send, &header, body.clone(), timeout)
                .await?;
            Ok::<_, ClientError>(response.decode::<SendResponse>()?)
        };
        match sent.await {
            Ok(response) => {
                if !route.exists {
                    // The topic was just auto-created; fetch its real route next time.
                    self.client.invalidate_route(topic);
                }
                Ok((target, response))
            }
            Err(err) => Err((Some(target), err)),
        }
    }
}

/// Where a send (or its retry) should go.
enum Prefer {
    Any,
    /// Exactly this queue, whatever fails (ordered sends).
    Pinned(Target),
    /// Another broker group than the one that failed.
    OtherGroup(String),
    /// The same group and queue: after an unknown outcome, so the broker can recognise the
    /// retry (it answers with the original offsets); or after `NOT_LEADER`, at the leader it
    /// named.
    Same {
        target: Target,
        leader: Option<String>,
    },
}

fn receipts(
    topic: &str,
    group: &str,
    ids: &[MessageId],
    response: &SendResponse,
) -> Vec<SendReceipt> {
    ids.iter()
        .enumerate()
        .map(|(i, id)| SendReceipt {
            message_id: *id,
            topic: topic.to_string(),
            broker_group: group.to_string(),
            queue_id: response.queue_id,
            queue_offset: response.first_offset.saturating_add(i as u64),
            store_ts_ms: response.store_ts_ms,
            due_ms: response.due_ms,
        })
        .collect()
}

/// Producers in different processes should not all start on queue 0.
fn rand_start() -> usize {
    (now_millis() as usize).wrapping_mul(2_654_435_761) ^ std::process::id() as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sharding_keys_spread_over_few_queues() {
        let mut per_queue = [0u32; 4];
        for i in 0..400 {
            per_queue[(sharding_hash(&format!("order-{i}")) % 4) as usize] += 1;
        }
        assert!(
            per_queue.iter().all(|n| (70..=130).contains(n)),
            "{per_queue:?}"
        );
        let short: std::collections::BTreeSet<u64> = ["A-1", "B-2", "C-3", "D-4"]
            .iter()
            .map(|k| sharding_hash(k) % 4)
            .collect();
        assert!(short.len() > 1);
        // Stable across versions: the same key always lands on the same queue.
        assert_eq!(sharding_hash("order-42"), sharding_hash("order-42"));
    }
}
