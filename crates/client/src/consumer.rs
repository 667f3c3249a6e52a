//! The consumer: reads every queue of a topic for its group (one long-polling pull task per
//! queue), hands messages to the application in queue order as a `Stream` or through
//! [`Consumer::run`], and commits consumed offsets to the brokers.
//!
//! At least once: a message counts as consumed when the application asks for the next one from
//! the stream, calls [`Consumer::commit`], or its handler returned `Success`; only consumed
//! offsets are committed, so anything fetched but not consumed before a crash or
//! [`Consumer::shutdown`] is delivered again. Stream adapters that read ahead (`chunks`,
//! `buffered`, `peekable`) ask for the next message early: with them, process each message
//! before taking more, or use [`Consumer::run`].
//!
//! Groups: in clustering mode (the default) the members of a group share the queues. Each
//! consumer heartbeats to every broker of its topic; brokers tell the group's members when one
//! joins or leaves (its connection closes or its heartbeats stop), and every member then
//! computes its share from the sorted member and queue lists. A queue that moves away is
//! released only after its consumed offset is committed, so the next owner starts where this
//! one stopped (at least once: a message in flight during the move can be delivered twice,
//! none is skipped). In broadcast mode every member reads every queue, with offsets kept under
//! its own name.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferromq_protocol::{
    headers::{
        perm, CommitOffsetsRequest, ConsumerHeartbeatRequest, GetGroupMembersRequest,
        GetGroupMembersResponse, GetQueueOffsetsRequest, GetQueueOffsetsResponse, OffsetCommit,
        PullRequest, PullResponse, PullStatus, QueryOffsetRequest, QueryOffsetResponse,
        SearchOffsetRequest, SearchOffsetResponse, SendBackRequest, SendBackResponse, Subscription,
        UnregisterConsumerRequest,
    },
    message::{decode_pulled, validate_group, validate_topic},
    selector::Selector,
    system::{is_reserved_topic, retry_group, retry_topic, PROPERTY_ORIGIN_TOPIC},
    MessageId, RequestCode, Status,
};
use futures::{FutureExt, Stream};
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use crate::client::Client;
use crate::config::{Allocation, ConsumeMode, ConsumerConfig, StartFrom};
use crate::error::ClientError;
use crate::filter::TagFilter;
use crate::producer::MAX_ROUTE_QUEUES;

mod orderly;
use ferromq_transport::TransportError;

/// A message as the application receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMessage {
    pub id: MessageId,
    pub topic: String,
    pub broker_group: String,
    pub queue_id: u32,
    pub queue_offset: u64,
    pub tag: Option<String>,
    pub keys: Vec<String>,
    pub properties: BTreeMap<String, String>,
    pub body: Bytes,
    pub born_ts_ms: u64,
    pub store_ts_ms: u64,
    pub reconsume_times: u32,
}

impl ReceivedMessage {
    /// A decoded record as the application sees it, found at `queue_offset` of a queue.
    pub(crate) fn from_record(
        record: ferromq_protocol::MessageRecord,
        topic: String,
        (broker_group, queue_id, queue_offset): (String, u32, u64),
    ) -> ReceivedMessage {
        ReceivedMessage {
            id: record.id,
            topic,
            broker_group,
            queue_id,
            queue_offset,
            tag: record.tag,
            keys: record.keys,
            properties: record.properties,
            body: record.body,
            born_ts_ms: record.born_ts_ms,
            store_ts_ms: record.store_ts_ms,
            reconsume_times: record.reconsume_times,
        }
    }
}

/// What a handler of [`Consumer::run`] decided about a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsumeStatus {
    Success,
    /// Hand the same message to the handler again after the delay (1 s by default); the
    /// queue does not move on meanwhile, so nothing is skipped.
    RetryLater(Option<Duration>),
}

/// Extra attempts of the commit at shutdown, half a second apart, while no leader answers.
const FINAL_COMMIT_RETRIES: usize = 10;

/// After a failed read from the leader, reads go to a follower for this long.
const FOLLOWER_READ_AFTER_FAILURE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct QueueKey {
    broker_group: String,
    queue_id: u32,
}

/// How far a queue is consumed. Everything below `fetched_to` was either handed to the
/// application or filtered out; `pending` are the offsets handed out but not yet consumed.
#[derive(Debug, Default, Clone)]
struct QueueProgress {
    /// Offset → body bytes of each message handed out but not consumed yet.
    pending: BTreeMap<u64, usize>,
    pending_bytes: usize,
    fetched_to: u64,
    /// What the broker has stored for the group.
    committed: Option<u64>,
}

impl QueueProgress {
    /// Next offset the group has to consume: everything below it is consumed.
    fn consumed(&self) -> u64 {
        self.pending
            .first_key_value()
            .map_or(self.fetched_to, |(offset, _)| *offset)
    }

    /// Records a message about to be handed out. `fetched_to` moves past it at once: the
    /// application may consume the whole batch, emptying `pending`, before the pull that
    /// fetched it ends, and what is consumed must not fall back to where that batch began.
    fn hand_out(&mut self, offset: u64, bytes: usize) {
        if self.pending.insert(offset, bytes).is_none() {
            self.pending_bytes += bytes;
        }
        self.fetched_to = self.fetched_to.max(offset.saturating_add(1));
    }

    /// The application is done with the message at `offset`.
    fn consume(&mut self, offset: u64) {
        if let Some(bytes) = self.pending.remove(&offset) {
            self.pending_bytes -= bytes;
        }
    }
}

/// Builds a [`Consumer`].
pub struct ConsumerBuilder {
    client: Client,
    group: String,
    config: ConsumerConfig,
    subscription: Option<(String, String)>,
    sql: Option<String>,
}

impl ConsumerBuilder {
    pub(crate) fn new(client: Client, group: String, config: ConsumerConfig) -> ConsumerBuilder {
        ConsumerBuilder {
            client,
            group,
            config,
            subscription: None,
            sql: None,
        }
    }

    /// The topic to consume and a tag expression (`"*"`, `"A"`, `"A || B"`).
    pub fn subscribe(
        mut self,
        topic: impl Into<String>,
        tags: impl Into<String>,
    ) -> ConsumerBuilder {
        self.subscription = Some((topic.into(), tags.into()));
        self
    }

    /// The topic to consume, keeping only messages an SQL92 selector over their properties
    /// selects (`"region = 'eu' AND amount > 100"`, see `ferromq_protocol::selector`; the tag
    /// is the property `TAGS`). Filtered on the broker and checked again here; a syntax error
    /// fails [`ConsumerBuilder::build`].
    pub fn subscribe_sql(
        mut self,
        topic: impl Into<String>,
        sql: impl Into<String>,
    ) -> ConsumerBuilder {
        self.subscription = Some((topic.into(), "*".to_string()));
        self.sql = Some(sql.into());
        self
    }

    /// Pull from followers instead of leaders (slave read); see
    /// [`ConsumerConfig::read_from_followers`].
    pub fn read_from_followers(mut self, enabled: bool) -> ConsumerBuilder {
        self.config.read_from_followers = enabled;
        self
    }

    /// Orderly consumption (FIFO per queue); see [`ConsumerConfig::orderly`].
    pub fn orderly(mut self) -> ConsumerBuilder {
        self.config.orderly = true;
        self
    }

    pub fn start_from(mut self, start_from: StartFrom) -> ConsumerBuilder {
        self.config.start_from = start_from;
        self
    }

    pub fn config(mut self, config: ConsumerConfig) -> ConsumerBuilder {
        self.config = config;
        self
    }

    /// Starts pulling (and, in clustering mode with broker retries, reading the group's retry
    /// topic too).
    pub async fn build(self) -> Result<Consumer, ClientError> {
        validate_group(&self.group).map_err(ClientError::InvalidMessage)?;
        if is_reserved_topic(&self.group) {
            return Err(ClientError::InvalidMessage(format!(
                "group {:?} starts with a reserved character",
                self.group
            )));
        }
        let (topic, tags) = self
            .subscription
            .ok_or_else(|| ClientError::InvalidMessage("subscribe to a topic first".into()))?;
        validate_topic(&topic).map_err(ClientError::InvalidMessage)?;
        let config = &self.config;
        if config.max_buffered == 0
            || config.max_buffered_per_queue == 0
            || config.max_buffered_bytes_per_queue == 0
            || config.pull_batch == 0
            || config.heartbeat_interval_ms == 0
            || config.rebalance_interval_ms == 0
            || config.commit_interval_ms == 0
            || config.consume_timeout_ms == 0
        {
            return Err(ClientError::Config(
                "consumer limits and intervals must be positive".into(),
            ));
        }
        if config.orderly && config.mode == ConsumeMode::Broadcast {
            return Err(ClientError::Config(
                "orderly consumption needs clustering mode (broadcast members share no queue)"
                    .into(),
            ));
        }
        let retry = if config.mode == ConsumeMode::Clustering
            && config.broker_retries
            && !config.orderly
            && !is_reserved_topic(&topic)
        {
            let retry_topic = retry_topic(&self.group);
            validate_topic(&retry_topic).map_err(|err| {
                ClientError::InvalidMessage(format!(
                    "group {:?} is too long for its retry topic: {err}",
                    self.group
                ))
            })?;
            let retry_config = ConsumerConfig {
                start_from: StartFrom::First,
                ..self.config.clone()
            };
            Some(Source::start(
                self.client.clone(),
                self.group.clone(),
                (retry_topic, "*".to_string(), None),
                retry_config,
                Some(topic.clone()),
            )?)
        } else {
            None
        };
        let main = Source::start(
            self.client,
            self.group,
            (topic, tags, self.sql),
            self.config,
            None,
        )?;
        Ok(Consumer {
            main,
            retry,
            last_from_retry: false,
        })
    }
}

/// How brokers reach a consumer: a change notice wakes its rebalance, and an offset reset of
/// one of its topics is remembered until the rebalance sees it.
#[derive(Default)]
pub(crate) struct GroupSignal {
    pub(crate) notify: tokio::sync::Notify,
    resets: Mutex<BTreeSet<String>>,
}

impl GroupSignal {
    pub(crate) fn changed(&self, reset_topic: Option<&str>) {
        if let Some(topic) = reset_topic {
            self.resets.lock().insert(topic.to_string());
        }
        self.notify.notify_one();
    }

    fn take_reset(&self, topic: &str) -> bool {
        self.resets.lock().remove(topic)
    }
}

/// This host's name, if it can be found.
fn host_name() -> Option<String> {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
}

/// A random number from the standard library's randomly keyed hasher.
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    );
    hasher.finish()
}

/// Numbers the consumers of this process, for unique member ids.
static NEXT_MEMBER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// The name a broadcast member's offsets are kept under: `<group>%BROADCAST%<name>`, with
/// characters a group name may not hold replaced.
fn broadcast_offsets_group(group: &str, name: &str) -> Result<String, ClientError> {
    let name: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let offsets_group = ferromq_protocol::system::broadcast_offsets_group(group, &name);
    validate_group(&offsets_group).map_err(|err| {
        ClientError::InvalidMessage(format!(
            "broadcast_id {name:?} makes an unusable name: {err}"
        ))
    })?;
    Ok(offsets_group)
}

struct Shared {
    client: Client,
    group: String,
    /// The group name offsets are committed under (the member's own in broadcast mode).
    offsets_group: String,
    /// This consumer's identity in the group, unique per consumer instance.
    member_id: String,
    topic: String,
    /// Another topic whose brokers hear this member's heartbeats too: the subscribed topic,
    /// for the retry topic (whose brokers create it on such a heartbeat).
    heartbeat_via: Option<String>,
    expression: String,
    filter: TagFilter,
    /// The SQL selector, parsed (to check messages again) and as text (for the broker).
    selector: Option<Selector>,
    sql: Option<String>,
    config: ConsumerConfig,
    progress: Mutex<HashMap<QueueKey, QueueProgress>>,
    /// One commit at a time: two in flight (the periodic one and `commit()`) could be applied
    /// in the other order, moving an offset back.
    commit_turn: tokio::sync::Mutex<()>,
    /// Queues this member reads now, each with the epoch its pull task was started in;
    /// buffered messages of other queues or older epochs are dropped.
    owned: Mutex<BTreeMap<QueueKey, u64>>,
    next_epoch: std::sync::atomic::AtomicU64,
    /// Woken by brokers' group change notices (and told about offset resets).
    changed: Arc<GroupSignal>,
    /// Orderly: the queue locks held, each until when (see `orderly`).
    locks: Mutex<HashMap<QueueKey, Instant>>,
    /// Orderly: the queue whose message the handler is working on.
    busy: Mutex<Option<QueueKey>>,
    shutdown: CancellationToken,
}

impl Shared {
    /// Whether a buffered message still belongs to a queue this member reads, in the same
    /// epoch (not from before a release or an offset reset).
    fn owns(&self, (epoch, message): &(u64, ReceivedMessage)) -> bool {
        self.owns_queue(*epoch, &key_of(message))
    }

    /// Whether this member reads the queue in that epoch (and, orderly, holds its lock).
    fn owns_queue(&self, epoch: u64, key: &QueueKey) -> bool {
        self.owned.lock().get(key) == Some(&epoch)
            && (!self.config.orderly || orderly::holds(self, key))
    }
}

/// One topic the consumer reads: the subscribed one, or the group's retry topic.
struct Source {
    shared: Arc<Shared>,
    receiver: mpsc::Receiver<(u64, ReceivedMessage)>,
    tasks: TaskTracker,
    /// The last message handed out; consumed once the next one is asked for.
    last_yielded: Option<(QueueKey, u64)>,
    /// The epoch of the queue the last message came from (see `Shared::owned`).
    last_epoch: u64,
}

impl Source {
    /// Joins the group for `topic` and starts heartbeats, rebalancing and commits.
    fn start(
        client: Client,
        group: String,
        (topic, tags, sql): (String, String, Option<String>),
        config: ConsumerConfig,
        heartbeat_via: Option<String>,
    ) -> Result<Source, ClientError> {
        let filter = TagFilter::parse(&tags)?;
        let selector = match &sql {
            Some(sql) => Some(
                Selector::parse(sql).map_err(|err| ClientError::InvalidMessage(err.to_string()))?,
            ),
            None => None,
        };
        let (sender, receiver) = mpsc::channel(config.max_buffered.max(1));
        // Unique even when processes share a client id (every container's pid is 1).
        let member_id = format!(
            "{}#{}-{:016x}",
            client.config().client_id,
            NEXT_MEMBER.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            random_u64()
        );
        let offsets_group = match config.mode {
            ConsumeMode::Clustering => group.clone(),
            ConsumeMode::Broadcast => {
                // Stable across restarts, and distinct per host by default.
                let name = config.broadcast_id.clone().unwrap_or_else(|| {
                    host_name().unwrap_or_else(|| client.config().client_id.clone())
                });
                broadcast_offsets_group(&group, &name)?
            }
        };
        let changed = Arc::new(GroupSignal::default());
        client.listen_to_group(&group, changed.clone());
        let shared = Arc::new(Shared {
            client,
            group,
            offsets_group,
            member_id,
            topic,
            heartbeat_via,
            expression: tags,
            filter,
            selector,
            sql,
            config,
            progress: Mutex::new(HashMap::new()),
            commit_turn: tokio::sync::Mutex::new(()),
            locks: Mutex::new(HashMap::new()),
            busy: Mutex::new(None),
            owned: Mutex::new(BTreeMap::new()),
            next_epoch: std::sync::atomic::AtomicU64::new(1),
            changed,
            shutdown: CancellationToken::new(),
        });
        let tasks = TaskTracker::new();
        tasks.spawn(heartbeat_loop(shared.clone()));
        tasks.spawn(rebalance_loop(shared.clone(), sender, tasks.clone()));
        tasks.spawn(commit_loop(shared.clone()));
        if shared.config.orderly {
            tasks.spawn(orderly::renewal_loop(shared.clone()));
        }
        Ok(Source {
            shared,
            receiver,
            tasks,
            last_yielded: None,
            last_epoch: 0,
        })
    }

    fn mark_consumed(&mut self) {
        if let Some((key, offset)) = self.last_yielded.take() {
            if let Some(entry) = self.shared.progress.lock().get_mut(&key) {
                entry.consume(offset);
            }
        }
    }

    /// Hands out a buffered message unless its queue moved to another member (which reads it
    /// from the committed offset) or was reset since it was fetched.
    fn accept(&mut self, item: (u64, ReceivedMessage)) -> Option<ReceivedMessage> {
        if !self.shared.owns(&item) {
            return None;
        }
        let (epoch, message) = item;
        self.last_yielded = Some((key_of(&message), message.queue_offset));
        self.last_epoch = epoch;
        Some(message)
    }

    /// The next message (cancel-safe). `None` after shutdown.
    async fn recv(&mut self) -> Option<ReceivedMessage> {
        loop {
            let item = self.receiver.recv().await?;
            if let Some(message) = self.accept(item) {
                return Some(message);
            }
        }
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<ReceivedMessage>> {
        loop {
            match self.receiver.poll_recv(cx) {
                Poll::Ready(Some(item)) => {
                    if let Some(message) = self.accept(item) {
                        return Poll::Ready(Some(message));
                    }
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Whether the queue of the message handed out last is still read by this member, in the
    /// same epoch.
    fn still_owns(&self, message: &ReceivedMessage) -> bool {
        self.shared.owns_queue(self.last_epoch, &key_of(message))
    }

    fn stop(&mut self) {
        self.last_yielded = None;
        self.shared.shutdown.cancel();
        self.receiver.close();
        self.tasks.close();
    }

    /// Waits for the tasks `stop` ended, commits what was consumed and leaves the group.
    async fn finish(&self) -> Result<(), ClientError> {
        self.tasks.wait().await;
        // The last commit outlasts a failover in progress (an election takes a second or two).
        let mut committed = commit_consumed(&self.shared).await;
        for _ in 0..FINAL_COMMIT_RETRIES {
            match &committed {
                Err(err) if err.is_retriable() => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    committed = commit_consumed(&self.shared).await;
                }
                _ => break,
            }
        }
        if self.shared.config.orderly {
            let held: Vec<QueueKey> = self.shared.locks.lock().keys().cloned().collect();
            orderly::release(&self.shared, held).await;
        }
        leave_group(&self.shared).await;
        committed
    }

    /// Asks the broker to deliver the message again later (or dead-letter it).
    async fn send_back(
        &self,
        message: &ReceivedMessage,
        delay: Option<Duration>,
        max_reconsume: u32,
    ) -> Result<SendBackResponse, ClientError> {
        let header = SendBackRequest {
            group: self.shared.group.clone(),
            topic: self.shared.topic.clone(),
            queue_id: message.queue_id,
            offset: message.queue_offset,
            delay_ms: delay.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            max_reconsume,
        };
        let response = self
            .shared
            .client
            .request_group_leader(
                &self.shared.topic,
                &message.broker_group,
                RequestCode::ConsumerSendBack,
                &header,
            )
            .await?;
        Ok(response.decode()?)
    }
}

pub struct Consumer {
    main: Source,
    /// The group's retry topic, read alongside (clustering mode with broker retries).
    retry: Option<Source>,
    /// Whether the message handed out last came from the retry topic.
    last_from_retry: bool,
}

impl Consumer {
    pub fn group(&self) -> &str {
        &self.main.shared.group
    }

    pub fn topic(&self) -> &str {
        &self.main.shared.topic
    }

    fn mark_consumed(&mut self) {
        self.main.mark_consumed();
        if let Some(retry) = &mut self.retry {
            retry.mark_consumed();
        }
    }

    fn last_source(&mut self) -> &mut Source {
        match &mut self.retry {
            Some(retry) if self.last_from_retry => retry,
            _ => &mut self.main,
        }
    }

    /// The next message; the previous one counts as consumed. `None` after shutdown.
    pub async fn recv(&mut self) -> Option<ReceivedMessage> {
        self.mark_consumed();
        let (message, from_retry) = match &mut self.retry {
            None => (self.main.recv().await?, false),
            Some(retry) => tokio::select! {
                message = self.main.recv() => (message?, false),
                message = retry.recv() => (message?, true),
            },
        };
        self.last_from_retry = from_retry;
        Some(message)
    }

    /// Commits consumed offsets now (they are also committed every `commit_interval_ms`).
    pub async fn commit(&mut self) -> Result<(), ClientError> {
        self.mark_consumed();
        if let Some(retry) = &self.retry {
            commit_consumed(&retry.shared).await?;
        }
        commit_consumed(&self.main.shared).await
    }

    /// Hands every message to `handler`, one at a time, until `stop` is cancelled, then shuts
    /// down. A message the handler fails (`RetryLater`, a panic, or running longer than
    /// `consume_timeout_ms`) is handed back to the broker, which delivers it again after a
    /// back-off and dead-letters it after `max_reconsume_times` retries; the queue moves on
    /// meanwhile. In broadcast mode, with `broker_retries` off, or when the broker cannot take
    /// it back, the same message is handed to the handler again after the delay (1 s by
    /// default) and nothing else of its queue is handled meanwhile.
    pub async fn run<F, Fut>(
        mut self,
        mut handler: F,
        stop: CancellationToken,
    ) -> Result<(), ClientError>
    where
        F: FnMut(ReceivedMessage) -> Fut,
        Fut: Future<Output = ConsumeStatus>,
    {
        let config = &self.main.shared.config;
        let consume_timeout = Duration::from_millis(config.consume_timeout_ms.max(1));
        let orderly = config.orderly;
        let broker_retries =
            config.broker_retries && config.mode == ConsumeMode::Clustering && !orderly;
        let (max_reconsume, orderly_dead_letter) =
            (config.max_reconsume_times, config.orderly_dead_letter);
        'messages: loop {
            let message = tokio::select! {
                message = self.recv() => match message {
                    Some(message) => message,
                    None => break,
                },
                _ = stop.cancelled() => break,
            };
            let mut failures = 0u32;
            loop {
                let busy = self.last_source().shared.clone();
                if orderly {
                    // Marked busy before the ownership check: a release that took the queue
                    // away meanwhile either sees this or made the check fail.
                    *busy.busy.lock() = Some(key_of(&message));
                }
                // The queue may have moved to another member (or been reset, or its lock lost)
                // while this message waited for a retry: then it is no longer this member's.
                if !self.last_source().still_owns(&message) {
                    *busy.busy.lock() = None;
                    self.last_source().last_yielded = None;
                    break;
                }
                let handled = AssertUnwindSafe(handler(message.clone())).catch_unwind();
                let outcome = tokio::time::timeout(consume_timeout, handled).await;
                let delay = match outcome {
                    Ok(Ok(ConsumeStatus::Success)) => {
                        self.mark_consumed();
                        *busy.busy.lock() = None;
                        break;
                    }
                    Ok(Ok(ConsumeStatus::RetryLater(delay))) => delay,
                    Ok(Err(_)) => {
                        error!(id = %message.id, "message handler panicked");
                        None
                    }
                    Err(_) => {
                        error!(id = %message.id, ?consume_timeout, "message handler timed out");
                        None
                    }
                };
                failures += 1;
                // Orderly, the message is retried here; past the limit, and only if asked,
                // it goes to the dead-letter topic at once.
                let hand_back = if broker_retries {
                    Some(max_reconsume)
                } else if orderly && orderly_dead_letter && failures > max_reconsume {
                    Some(0)
                } else {
                    None
                };
                if let Some(max_reconsume) = hand_back {
                    match self
                        .last_source()
                        .send_back(&message, delay, max_reconsume)
                        .await
                    {
                        Ok(answer) => {
                            debug!(id = %message.id, ?answer, "message handed back to the broker");
                            self.mark_consumed();
                            *busy.busy.lock() = None;
                            break;
                        }
                        Err(err) => {
                            warn!(id = %message.id, %err, "cannot hand the message back; retrying it here");
                        }
                    }
                }
                *busy.busy.lock() = None;
                tokio::select! {
                    _ = tokio::time::sleep(delay.unwrap_or(Duration::from_secs(1))) => {}
                    _ = stop.cancelled() => {
                        // Not consumed: it will be delivered again.
                        self.last_source().last_yielded = None;
                        break 'messages;
                    }
                }
            }
        }
        self.shutdown().await
    }

    /// Stops pulling and commits what was consumed. The message handed out last is not counted
    /// as consumed (call [`Consumer::commit`] first if it was): it is delivered again.
    pub async fn shutdown(mut self) -> Result<(), ClientError> {
        self.main.stop();
        if let Some(retry) = &mut self.retry {
            retry.stop();
        }
        let retried = match &self.retry {
            Some(retry) => retry.finish().await,
            None => Ok(()),
        };
        let main = self.main.finish().await;
        main.and(retried)
    }
}

impl Drop for Source {
    /// Dropping without [`Consumer::shutdown`] stops pulling but commits nothing more.
    fn drop(&mut self) {
        self.shared.shutdown.cancel();
        self.shared
            .client
            .stop_listening_to_group(&self.shared.group, &self.shared.changed);
    }
}

impl Stream for Consumer {
    type Item = ReceivedMessage;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<ReceivedMessage>> {
        self.mark_consumed();
        let this = &mut *self;
        if let Some(retry) = &mut this.retry {
            if let Poll::Ready(Some(message)) = retry.poll_recv(cx) {
                this.last_from_retry = true;
                return Poll::Ready(Some(message));
            }
        }
        let polled = this.main.poll_recv(cx);
        if let Poll::Ready(Some(_)) = &polled {
            this.last_from_retry = false;
        }
        polled
    }
}

fn key_of(message: &ReceivedMessage) -> QueueKey {
    QueueKey {
        broker_group: message.broker_group.clone(),
        queue_id: message.queue_id,
    }
}

/// Every address of every broker group serving the topic (leaders and followers).
async fn broker_addrs(shared: &Shared) -> Result<Vec<String>, ClientError> {
    let mut addrs: Vec<String> = Vec::new();
    let mut failure = None;
    for topic in std::iter::once(&shared.topic).chain(&shared.heartbeat_via) {
        match shared.client.route(topic).await {
            Ok(route) => addrs.extend(
                route
                    .groups
                    .iter()
                    .flat_map(|g| g.leader.iter().chain(&g.followers).cloned()),
            ),
            Err(err) => failure = Some(err),
        }
    }
    if let (true, Some(err)) = (addrs.is_empty(), failure) {
        return Err(err);
    }
    addrs.sort();
    addrs.dedup();
    Ok(addrs)
}

async fn send_heartbeats(shared: &Shared) {
    let addrs = match broker_addrs(shared).await {
        Ok(addrs) => addrs,
        Err(err) => {
            debug!(topic = %shared.topic, %err, "no route to heartbeat to");
            return;
        }
    };
    let heartbeat = ConsumerHeartbeatRequest {
        member_id: shared.member_id.clone(),
        subscriptions: vec![Subscription {
            group: shared.group.clone(),
            topic: shared.topic.clone(),
            expression: match &shared.sql {
                Some(sql) => format!("SQL {sql}"),
                None => shared.expression.clone(),
            },
            mode: shared.config.mode,
        }],
    };
    // All at once, each bounded by the interval: one unreachable broker must not delay the
    // heartbeats of the others past their expiry.
    let patience = Duration::from_millis(shared.config.heartbeat_interval_ms.max(100));
    let beats = addrs.into_iter().map(|addr| {
        let heartbeat = &heartbeat;
        async move {
            let sent = async {
                let connection = shared.client.connection(&addr).await?;
                connection
                    .request(RequestCode::ConsumerHeartbeat, heartbeat, Bytes::new())
                    .await?
                    .into_result()?;
                Ok::<_, ClientError>(())
            };
            match tokio::time::timeout(patience, sent).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => debug!(%addr, %err, "heartbeat failed"),
                Err(_) => debug!(%addr, "heartbeat timed out"),
            }
        }
    });
    futures::future::join_all(beats).await;
}

/// Tells brokers this member is alive, every `heartbeat_interval_ms`.
async fn heartbeat_loop(shared: Arc<Shared>) {
    let interval = Duration::from_millis(shared.config.heartbeat_interval_ms.max(1));
    loop {
        send_heartbeats(&shared).await;
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shared.shutdown.cancelled() => return,
        }
    }
}

/// Says goodbye to every broker, so the group rebalances without waiting for the expiry.
async fn leave_group(shared: &Shared) {
    shared
        .client
        .stop_listening_to_group(&shared.group, &shared.changed);
    let Ok(addrs) = broker_addrs(shared).await else {
        return;
    };
    let goodbye = UnregisterConsumerRequest {
        member_id: shared.member_id.clone(),
        group: shared.group.clone(),
    };
    for addr in addrs {
        if let Ok(connection) = shared.client.connection(&addr).await {
            let _ = connection
                .request(RequestCode::UnregisterConsumer, &goodbye, Bytes::new())
                .await;
        }
    }
}

/// The group's members as a broker of the topic sees them (the first that answers).
async fn group_members(shared: &Shared) -> Result<Vec<String>, ClientError> {
    let mut last_error = ClientError::NoRoute(shared.topic.clone());
    for addr in broker_addrs(shared).await? {
        let asked = async {
            let connection = shared.client.connection(&addr).await?;
            let members: GetGroupMembersResponse = connection
                .request(
                    RequestCode::GetGroupMembers,
                    &GetGroupMembersRequest {
                        group: shared.group.clone(),
                        topic: shared.topic.clone(),
                    },
                    Bytes::new(),
                )
                .await?
                .decode()?;
            Ok::<_, ClientError>(members.members)
        };
        match asked.await {
            Ok(members) => return Ok(members),
            Err(err) => last_error = err,
        }
    }
    Err(last_error)
}

/// The queues `me` reads among `members` (sorted), out of `queues` (sorted).
fn allocate(
    allocation: Allocation,
    members: &[String],
    me: &str,
    queues: &[QueueKey],
) -> BTreeSet<QueueKey> {
    let Some(index) = members.iter().position(|m| m == me) else {
        return BTreeSet::new();
    };
    match allocation {
        Allocation::Average => {
            let (n, m) = (queues.len(), members.len());
            let remainder = n % m;
            let share = if n <= m {
                1
            } else if index < remainder {
                n / m + 1
            } else {
                n / m
            };
            let start = if index < remainder {
                index * share
            } else {
                index * share + remainder
            };
            queues
                .iter()
                .skip(start)
                .take(share.min(n.saturating_sub(start)))
                .cloned()
                .collect()
        }
        Allocation::ConsistentHash => queues
            .iter()
            .filter(|queue| {
                // A fixed hash (FNV-1a), so members built by different toolchains agree.
                let score = |member: &String| {
                    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
                    let queue_id = queue.queue_id.to_be_bytes();
                    let parts: [&[u8]; 5] = [
                        member.as_bytes(),
                        &[0],
                        queue.broker_group.as_bytes(),
                        &[0],
                        &queue_id,
                    ];
                    for byte in parts.into_iter().flatten() {
                        hash ^= u64::from(*byte);
                        hash = hash.wrapping_mul(0x0100_0000_01b3);
                    }
                    hash
                };
                members.iter().max_by_key(|m| (score(m), (*m).clone())) == Some(&members[index])
            })
            .cloned()
            .collect(),
    }
}

/// A pull task of a queue this member reads, and how to stop it.
struct QueueTask {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// Decides which queues this member reads, at start, on every change notice from a broker, on
/// route changes and every `rebalance_interval_ms`; starts pull tasks for new queues and
/// releases (after committing their consumed offsets) queues now owned by others.
async fn rebalance_loop(
    shared: Arc<Shared>,
    sender: mpsc::Sender<(u64, ReceivedMessage)>,
    tasks: TaskTracker,
) {
    let mut running: BTreeMap<QueueKey, QueueTask> = BTreeMap::new();
    let periodic = Duration::from_millis(shared.config.rebalance_interval_ms.max(1));
    let mut wait = Duration::ZERO;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shared.changed.notify.notified() => {}
            _ = shared.shutdown.cancelled() => return,
        }
        running.retain(|_, queue| !queue.task.is_finished());
        if shared.changed.take_reset(&shared.topic) {
            // An operator moved the group's offsets: forget every position (committing none)
            // and start again from the committed offsets.
            info!(group = %shared.group, topic = %shared.topic, "offsets reset; restarting every queue");
            for (_, queue) in std::mem::take(&mut running) {
                queue.stop.cancel();
                let _ = queue.task.await;
            }
            shared.owned.lock().clear();
            shared.progress.lock().clear();
        }
        let wanted = match wanted_queues(&shared).await {
            Ok(Some(wanted)) => {
                wait = periodic;
                let exists = shared
                    .client
                    .route(&shared.topic)
                    .await
                    .is_ok_and(|r| r.exists);
                if !exists {
                    // A topic not created yet (such as the retry topic before the first
                    // retry): look at a fresh route again soon.
                    shared.client.invalidate_route(&shared.topic);
                    wait = periodic.min(Duration::from_secs(2));
                }
                wanted
            }
            Ok(None) => {
                // Not in the member list yet: heartbeat, then look again soon.
                send_heartbeats(&shared).await;
                wait = Duration::from_millis(200);
                continue;
            }
            Err(err) => {
                debug!(topic = %shared.topic, %err, "cannot rebalance yet");
                wait = Duration::from_secs(1);
                continue;
            }
        };
        let released: Vec<QueueKey> = running
            .keys()
            .filter(|key| !wanted.contains(*key))
            .cloned()
            .collect();
        for key in &released {
            if let Some(queue) = running.remove(key) {
                queue.stop.cancel();
                let _ = queue.task.await;
            }
        }
        if !released.is_empty() {
            shared.owned.lock().retain(|key, _| !released.contains(key));
            if shared.config.orderly {
                // The message in the handler's hands finishes (and counts) first.
                orderly::wait_until_idle(&shared, &released).await;
            }
            // The next owner starts from what was committed here.
            let committed = commit_consumed(&shared).await;
            if let Err(err) = &committed {
                warn!(group = %shared.group, %err, "committing released queues failed");
            }
            {
                let mut progress = shared.progress.lock();
                for key in &released {
                    progress.remove(key);
                }
            }
            // Orderly: unlocked only once committed, so the next owner never handles again what
            // was handled here; otherwise the lock runs out at its lease.
            if shared.config.orderly && committed.is_ok() {
                orderly::release(&shared, released.clone()).await;
            }
            debug!(group = %shared.group, released = released.len(), "queues released");
        }
        for key in &wanted {
            if !running.contains_key(key) {
                let epoch = shared
                    .next_epoch
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                shared.owned.lock().insert(key.clone(), epoch);
                let stop = shared.shutdown.child_token();
                let task = tasks.spawn(pull_queue(
                    shared.clone(),
                    key.clone(),
                    (epoch, sender.clone()),
                    stop.clone(),
                ));
                running.insert(key.clone(), QueueTask { stop, task });
            }
        }
        if shared.config.orderly {
            // Locks of queues no task reads (stopped by a reset, or released with a failed
            // commit) are not renewed forever.
            let stale: Vec<QueueKey> = shared
                .locks
                .lock()
                .keys()
                .filter(|key| !running.contains_key(*key))
                .cloned()
                .collect();
            if !stale.is_empty() {
                orderly::release(&shared, stale).await;
            }
        }
    }
}

/// The queues this member should read now; `None` while brokers do not list it yet.
async fn wanted_queues(shared: &Shared) -> Result<Option<BTreeSet<QueueKey>>, ClientError> {
    let route = shared.client.route(&shared.topic).await?;
    if !route.exists {
        return Ok(Some(BTreeSet::new()));
    }
    let mut queues = readable_queues(&route);
    queues.sort();
    if shared.config.mode == ConsumeMode::Broadcast {
        return Ok(Some(queues.into_iter().collect()));
    }
    let mut members = group_members(shared).await?;
    members.sort();
    if !members.contains(&shared.member_id) {
        return Ok(None);
    }
    Ok(Some(allocate(
        shared.config.allocation,
        &members,
        &shared.member_id,
        &queues,
    )))
}

fn readable_queues(route: &ferromq_protocol::headers::TopicRoute) -> Vec<QueueKey> {
    route
        .groups
        .iter()
        .filter(|g| g.perm & perm::READ != 0 && g.queues <= MAX_ROUTE_QUEUES)
        .flat_map(|g| {
            (0..g.queues).map(|queue_id| QueueKey {
                broker_group: g.group.clone(),
                queue_id,
            })
        })
        .collect()
}

/// Address of the leader of `broker_group` for the topic, from the (cached) route.
async fn leader_of(shared: &Shared, broker_group: &str) -> Result<String, ClientError> {
    let route = shared.client.route(&shared.topic).await?;
    route
        .groups
        .iter()
        .find(|g| g.group == broker_group)
        .and_then(|g| g.leader.clone())
        .ok_or_else(|| ClientError::NoRoute(shared.topic.clone()))
}

/// Where to read a queue of `broker_group`. Followers hold every committed message too, so
/// reads may go to any member: the leader first, or the followers first when the consumer reads
/// from followers or the leader just failed; `rotation` moves past members that failed.
async fn read_addr(
    shared: &Shared,
    broker_group: &str,
    followers_first: bool,
    rotation: usize,
) -> Result<String, ClientError> {
    let route = shared.client.route(&shared.topic).await?;
    let group = route
        .groups
        .iter()
        .find(|g| g.group == broker_group)
        .ok_or_else(|| ClientError::NoRoute(shared.topic.clone()))?;
    let mut candidates: Vec<&String> = Vec::with_capacity(group.followers.len() + 1);
    if !followers_first {
        candidates.extend(&group.leader);
    }
    candidates.extend(&group.followers);
    if followers_first {
        candidates.extend(&group.leader);
    }
    if candidates.is_empty() {
        return Err(ClientError::NoRoute(shared.topic.clone()));
    }
    Ok(candidates[rotation % candidates.len()].clone())
}

/// Where this group resumes a queue: its committed offset, or `start_from`.
async fn start_offset(
    shared: &Shared,
    key: &QueueKey,
    followers_first: bool,
    rotation: usize,
) -> Result<u64, ClientError> {
    // Committed offsets are asked of the leader when it answers: a follower may lag behind.
    let leader = match read_addr(shared, &key.broker_group, false, 0).await {
        Ok(addr) => shared.client.connection(&addr).await.ok(),
        Err(_) => None,
    };
    let connection = match leader {
        Some(connection) => connection,
        None => {
            let addr = read_addr(shared, &key.broker_group, followers_first, rotation).await?;
            shared.client.connection(&addr).await?
        }
    };
    let committed: QueryOffsetResponse = connection
        .request(
            RequestCode::QueryOffset,
            &QueryOffsetRequest {
                group: shared.offsets_group.clone(),
                topic: shared.topic.clone(),
                queue_id: key.queue_id,
            },
            Bytes::new(),
        )
        .await?
        .decode()?;
    let offset = match committed.offset {
        Some(offset) => offset,
        None => {
            let ranges: GetQueueOffsetsResponse = connection
                .request(
                    RequestCode::GetQueueOffsets,
                    &GetQueueOffsetsRequest {
                        topic: shared.topic.clone(),
                    },
                    Bytes::new(),
                )
                .await?
                .decode()?;
            let range = ranges.queues.iter().find(|q| q.queue_id == key.queue_id);
            match (shared.config.start_from, range) {
                (StartFrom::First, Some(range)) => range.min_offset,
                (StartFrom::Last, Some(range)) => range.max_offset,
                (StartFrom::Timestamp(timestamp_ms), Some(_)) => {
                    let found: SearchOffsetResponse = connection
                        .request(
                            RequestCode::SearchOffset,
                            &SearchOffsetRequest {
                                topic: shared.topic.clone(),
                                queue_id: key.queue_id,
                                timestamp_ms,
                            },
                            Bytes::new(),
                        )
                        .await?
                        .decode()?;
                    found.offset
                }
                (_, None) => 0,
            }
        }
    };
    let mut progress = shared.progress.lock();
    let entry = progress.entry(key.clone()).or_default();
    entry.fetched_to = offset;
    entry.committed = committed.offset;
    Ok(offset)
}

/// Reads one queue until `stop` (the queue moved to another member, or shutdown).
async fn pull_queue(
    shared: Arc<Shared>,
    key: QueueKey,
    (epoch, sender): (u64, mpsc::Sender<(u64, ReceivedMessage)>),
    stop: CancellationToken,
) {
    let mut offset = None;
    let mut backoff = Duration::from_millis(100);
    let tag_hashes = shared.filter.hashes();
    let timeout = Duration::from_millis(shared.config.long_poll_ms)
        + shared.client.config().request_timeout();
    // Until when reads go to a follower because the leader failed.
    let mut leader_failed_until: Option<Instant> = None;
    // Counts reads that failed to reach a member, to move on to the next one.
    let mut rotation = 0usize;
    // Orderly: nothing is read before the lock is held, so the start offset read next includes
    // the previous owner's last commit.
    if shared.config.orderly && !orderly::acquire(&shared, &key, &stop).await {
        return;
    }
    while !stop.is_cancelled() {
        if shared.config.orderly && !orderly::holds(&shared, &key) {
            // The lock ran out or went to another member: drop this queue's buffered messages
            // (they are no longer owned) and let the rebalance start it afresh.
            warn!(topic = %shared.topic, queue = key.queue_id, "queue lock lost; restarting the queue");
            shared.owned.lock().remove(&key);
            shared.progress.lock().remove(&key);
            shared.locks.lock().remove(&key);
            shared.changed.notify.notify_one();
            return;
        }
        // Flow control: a queue whose messages wait unconsumed is not pulled further, so a
        // slow handler slows pulling instead of growing memory.
        let waiting = shared
            .progress
            .lock()
            .get(&key)
            .map_or((0, 0), |entry| (entry.pending.len(), entry.pending_bytes));
        let room = shared
            .config
            .max_buffered_per_queue
            .saturating_sub(waiting.0);
        if room == 0 || waiting.1 >= shared.config.max_buffered_bytes_per_queue {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(5)) => {}
                _ = stop.cancelled() => return,
            }
            continue;
        }
        let leader_failed = leader_failed_until.is_some_and(|until| Instant::now() < until);
        if leader_failed_until.is_some() && !leader_failed {
            // Time to try the leader again.
            leader_failed_until = None;
            rotation = 0;
        }
        let followers_first = shared.config.read_from_followers || leader_failed;
        let result = async {
            let from = match offset {
                Some(offset) => offset,
                None => start_offset(&shared, &key, followers_first, rotation).await?,
            };
            offset = Some(from);
            let addr = read_addr(&shared, &key.broker_group, followers_first, rotation).await?;
            let connection = shared.client.connection(&addr).await?;
            let request = PullRequest {
                group: shared.group.clone(),
                topic: shared.topic.clone(),
                queue_id: key.queue_id,
                offset: from,
                max_messages: shared.config.pull_batch.min(room as u32).max(1),
                max_bytes: shared.config.pull_max_bytes,
                max_wait_ms: shared.config.long_poll_ms as u32,
                tag_hashes: tag_hashes.clone(),
                sql: shared.sql.clone(),
            };
            let pulled = tokio::select! {
                pulled = connection.request_with_timeout(RequestCode::Pull, &request, Bytes::new(), timeout) => pulled?,
                _ = stop.cancelled() => return Ok(false),
            };
            let (header, body): (PullResponse, Bytes) = pulled.decode_with_body()?;
            if header.status == PullStatus::OffsetMoved {
                warn!(topic = %shared.topic, queue = key.queue_id, from, to = header.next_offset, "offset out of range; moving");
            }
            let messages =
                decode_pulled(body).map_err(|err| ClientError::InvalidMessage(err.to_string()))?;
            for pulled in messages {
                let record = pulled.record;
                let selected = shared.selector.as_ref().is_none_or(|selector| {
                    selector.matches(&record.properties, record.tag.as_deref())
                });
                if !selected || !shared.filter.matches(record.tag.as_deref()) {
                    continue;
                }
                // A retried copy shows the topic it was sent to.
                let topic = match record.properties.get(PROPERTY_ORIGIN_TOPIC) {
                    Some(origin) if retry_group(&shared.topic).is_some() => origin.clone(),
                    _ => shared.topic.clone(),
                };
                let message = ReceivedMessage::from_record(
                    record,
                    topic,
                    (key.broker_group.clone(), key.queue_id, pulled.queue_offset),
                );
                if let Some(entry) = shared.progress.lock().get_mut(&key) {
                    entry.hand_out(message.queue_offset, message.body.len());
                }
                tokio::select! {
                    sent = sender.send((epoch, message)) => if sent.is_err() { return Ok(false) },
                    _ = stop.cancelled() => return Ok(false),
                }
            }
            if let Some(entry) = shared.progress.lock().get_mut(&key) {
                entry.fetched_to = header.next_offset;
            }
            offset = Some(header.next_offset);
            Ok::<bool, ClientError>(true)
        };
        match result.await {
            Ok(true) => backoff = Duration::from_millis(100),
            Ok(false) => return,
            Err(err) => {
                if err.is_retriable() {
                    shared.client.invalidate_route(&shared.topic);
                }
                // An unreachable member: read from the next one; after the leader failed, from
                // followers for a while instead of waiting for a new leader.
                rotation += 1;
                if err.status().is_none() && !followers_first {
                    leader_failed_until = Some(Instant::now() + FOLLOWER_READ_AFTER_FAILURE);
                }
                if matches!(
                    err.status(),
                    Some(Status::QueueNotExist) | Some(Status::TopicNotExist)
                ) {
                    let still_routed = match shared.client.route(&shared.topic).await {
                        Ok(route) => route.exists && readable_queues(&route).contains(&key),
                        Err(_) => false,
                    };
                    if !still_routed {
                        debug!(topic = %shared.topic, queue = key.queue_id, "queue left the route; stopping its pull task");
                        shared.progress.lock().remove(&key);
                        return;
                    }
                }
                debug!(topic = %shared.topic, queue = key.queue_id, %err, "pull failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.cancelled() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn commit_loop(shared: Arc<Shared>) {
    let interval = Duration::from_millis(shared.config.commit_interval_ms.max(1));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shared.shutdown.cancelled() => return,
        }
        if let Err(err) = commit_consumed(&shared).await {
            debug!(group = %shared.group, %err, "offset commit failed; will retry");
        }
    }
}

/// Sends every queue's consumed offset that the broker does not have yet, one request per
/// broker group.
async fn commit_consumed(shared: &Shared) -> Result<(), ClientError> {
    // Offsets are read inside the turn, so a later commit never sends older ones.
    let _turn = shared.commit_turn.lock().await;
    let mut by_group: BTreeMap<String, Vec<(u32, u64)>> = BTreeMap::new();
    for (key, progress) in shared.progress.lock().iter() {
        let consumed = progress.consumed();
        if progress.committed != Some(consumed) {
            by_group
                .entry(key.broker_group.clone())
                .or_default()
                .push((key.queue_id, consumed));
        }
    }
    let mut first_error = None;
    for (broker_group, offsets) in by_group {
        let request = CommitOffsetsRequest {
            group: shared.offsets_group.clone(),
            offsets: offsets
                .iter()
                .map(|(queue_id, offset)| OffsetCommit {
                    topic: shared.topic.clone(),
                    queue_id: *queue_id,
                    offset: *offset,
                })
                .collect(),
        };
        let result = async {
            let mut target = leader_of(shared, &broker_group).await?;
            // A member that is no longer the leader names the one that is: go there at once.
            for redirects_left in (0..3).rev() {
                let connection = shared.client.connection(&target).await?;
                let answer = connection
                    .request(RequestCode::CommitOffsets, &request, Bytes::new())
                    .await?
                    .into_result();
                match answer {
                    Err(TransportError::Remote {
                        status: Status::NotLeader,
                        leader: Some(leader),
                        ..
                    }) if redirects_left > 0 => target = leader,
                    other => return other.map(|_| ()).map_err(ClientError::from),
                }
            }
            Ok::<_, ClientError>(())
        };
        match result.await {
            Ok(()) => {
                let mut progress = shared.progress.lock();
                for (queue_id, offset) in offsets {
                    let key = QueueKey {
                        broker_group: broker_group.clone(),
                        queue_id,
                    };
                    if let Some(entry) = progress.get_mut(&key) {
                        entry.committed = Some(offset);
                    }
                }
            }
            Err(err) => {
                shared.client.invalidate_route(&shared.topic);
                first_error.get_or_insert(err);
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queues(groups: &[&str], per_group: u32) -> Vec<QueueKey> {
        let mut queues: Vec<QueueKey> = groups
            .iter()
            .flat_map(|g| {
                (0..per_group).map(|queue_id| QueueKey {
                    broker_group: g.to_string(),
                    queue_id,
                })
            })
            .collect();
        queues.sort();
        queues
    }

    fn members(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    /// Every queue goes to exactly one member.
    fn assert_partition(shares: &[BTreeSet<QueueKey>], queues: &[QueueKey]) {
        let mut all = BTreeSet::new();
        for share in shares {
            for queue in share {
                assert!(all.insert(queue.clone()), "{queue:?} given twice");
            }
        }
        assert_eq!(all.len(), queues.len());
    }

    #[test]
    fn average_allocation_gives_even_contiguous_shares() {
        let queues = queues(&["a"], 8);
        let members = members(&["m1", "m2", "m3"]);
        let shares: Vec<BTreeSet<QueueKey>> = members
            .iter()
            .map(|m| allocate(Allocation::Average, &members, m, &queues))
            .collect();
        assert_partition(&shares, &queues);
        let sizes: Vec<usize> = shares.iter().map(BTreeSet::len).collect();
        assert_eq!(sizes, [3, 3, 2]);
        // More members than queues: the extra members get nothing.
        let many = members_of(10);
        let shares: Vec<BTreeSet<QueueKey>> = many
            .iter()
            .map(|m| allocate(Allocation::Average, &many, m, &queues))
            .collect();
        assert_partition(&shares, &queues);
        assert!(allocate(Allocation::Average, &many, "stranger", &queues).is_empty());
    }

    fn members_of(count: usize) -> Vec<String> {
        let mut members: Vec<String> = (0..count).map(|i| format!("m{i:02}")).collect();
        members.sort();
        members
    }

    #[test]
    fn consistent_hash_moves_only_the_leaving_members_queues() {
        let queues = queues(&["a", "b"], 16);
        let before = members_of(4);
        let share =
            |members: &[String], m: &str| allocate(Allocation::ConsistentHash, members, m, &queues);
        let old: Vec<BTreeSet<QueueKey>> = before.iter().map(|m| share(&before, m)).collect();
        assert_partition(&old, &queues);
        let after: Vec<String> = before[..3].to_vec();
        let new: Vec<BTreeSet<QueueKey>> = after.iter().map(|m| share(&after, m)).collect();
        assert_partition(&new, &queues);
        for (i, member) in after.iter().enumerate() {
            assert!(
                old[i].is_subset(&new[i]),
                "{member} lost queues when another member left"
            );
        }
    }

    /// A batch consumed before the pull that fetched it records where it ends counts as
    /// consumed (committing the batch's start offset would hand it out again after a restart).
    #[test]
    fn a_batch_consumed_while_its_pull_is_still_handing_out_counts_as_consumed() {
        let mut progress = QueueProgress {
            fetched_to: 10,
            ..QueueProgress::default()
        };
        // Offset 10 was filtered out; 11 and 12 are handed out and consumed at once.
        for offset in [11, 12] {
            progress.hand_out(offset, 5);
            assert_eq!(progress.consumed(), offset, "handed out, not consumed yet");
            progress.consume(offset);
        }
        assert_eq!(progress.consumed(), 13);
        assert_eq!(progress.pending_bytes, 0);

        // Out of order: the earliest message still pending holds the commit back.
        progress.hand_out(13, 1);
        progress.hand_out(14, 1);
        progress.consume(14);
        assert_eq!(progress.consumed(), 13);
        progress.consume(13);
        assert_eq!(progress.consumed(), 15);
    }
}
