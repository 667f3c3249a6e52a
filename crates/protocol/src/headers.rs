//! Request and response headers, one struct per request code, encoded with [`crate::codec`].
//! Adding or changing a field changes the wire format: bump [`crate::PROTOCOL_VERSION`].

use serde::{Deserialize, Serialize};

/// Topic permission bits (RocketMQ's values).
pub mod perm {
    pub const WRITE: u8 = 2;
    pub const READ: u8 = 4;
    pub const READ_WRITE: u8 = READ | WRITE;

    pub fn is_valid(perm: u8) -> bool {
        perm & !READ_WRITE == 0
    }
}

/// Header of every response whose status is not OK.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ErrorHeader {
    pub message: String,
    /// For `NOT_LEADER`: the client address of the group's leader, if known.
    pub leader: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandshakeRequest {
    pub min_version: u8,
    pub max_version: u8,
    /// Free-form identity of the caller, for logs and connection listings.
    pub client_id: String,
    /// Credentials, for servers that require them (see [`crate::auth`]).
    pub auth: Option<crate::auth::AuthProof>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandshakeResponse {
    /// The version both sides use from now on.
    pub version: u8,
    pub server_id: String,
}

/// A broker's role in its group: the Raft leader is the master.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BrokerRole {
    Leader,
    Follower,
}

/// A topic as a broker announces it to nameservers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicConfig {
    pub name: String,
    pub queues: u32,
    pub perm: u8,
}

/// Body: the broker's topics, a `Vec<TopicConfig>` encoded with [`crate::codec`] (in the body
/// because it grows with the topic count, beyond what a header may hold).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterBrokerRequest {
    pub cluster: String,
    pub group: String,
    pub node_id: u64,
    /// Address clients connect to.
    pub client_addr: String,
    /// Address of the admin HTTP endpoint.
    pub admin_addr: String,
    pub role: BrokerRole,
    /// Raft term in which `role` was observed; a registration with an older term never
    /// overrides a newer one.
    pub term: u64,
    pub auto_create_topics: bool,
    pub default_queues: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterBrokerResponse {
    /// The broker is dropped from routes if it is silent this long.
    pub expiry_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnregisterBrokerRequest {
    pub group: String,
    pub node_id: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetRouteRequest {
    pub topic: String,
}

/// One broker group's part of a topic's route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRoute {
    pub group: String,
    /// Client address of the leader (master), if the group has one.
    pub leader: Option<String>,
    pub followers: Vec<String>,
    pub queues: u32,
    pub perm: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicRoute {
    pub topic: String,
    /// False when no broker has the topic yet and `groups` are the groups that will create it
    /// on the first send.
    pub exists: bool,
    pub groups: Vec<GroupRoute>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerInfo {
    pub cluster: String,
    pub group: String,
    pub node_id: u64,
    pub client_addr: String,
    pub admin_addr: String,
    pub role: BrokerRole,
    pub term: u64,
    pub topics: u32,
    pub last_heartbeat_ms_ago: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetClusterResponse {
    pub brokers: Vec<BrokerInfo>,
}

/// Body: `count` length-prefixed message records, all for one queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendRequest {
    pub topic: String,
    pub queue_id: u32,
    pub count: u32,
    /// Deliver later instead of now.
    pub schedule: Option<Schedule>,
    /// Store as half messages of a transaction of this producer group: invisible until
    /// committed (`END_TRANSACTION`), asked about (`CHECK_TRANSACTION`) while undecided.
    pub transaction_group: Option<String>,
    /// A request message: replies to it reach this requester over this connection.
    pub reply_to: Option<String>,
}

/// When a scheduled send becomes visible in its queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Schedule {
    /// This many milliseconds after the broker stores it.
    DelayMs(u64),
    /// At this time (milliseconds since the epoch, the broker's clock).
    DeliverAtMs(u64),
    /// After the broker's delay for this level (1-based; RocketMQ's 18 levels by default).
    Level(u8),
}

/// The batch's messages have queue offsets `first_offset .. first_offset + count`, or, for
/// a scheduled send, are due at `due_ms` (and get their offsets then).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendResponse {
    pub queue_id: u32,
    pub first_offset: u64,
    pub store_ts_ms: u64,
    pub due_ms: Option<u64>,
}

/// A reply to a request message. Body: the reply's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyRequest {
    pub reply_to: String,
    pub correlation_id: String,
    /// The topic the request was sent to.
    pub topic: String,
}

/// Broker → requester, one-way. Body: the reply's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyDelivery {
    pub correlation_id: String,
    /// The topic the request was sent to.
    pub topic: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerHeartbeatRequest {
    pub group: String,
}

/// How a local transaction ended, as its producer tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransactionState {
    Commit,
    Rollback,
    /// Not known yet: the broker asks again later.
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndTransactionRequest {
    pub topic: String,
    pub id: crate::MessageId,
    pub commit: bool,
}

/// Broker → producer. Body: the half message's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckTransactionRequest {
    pub group: String,
    pub topic: String,
    pub queue_id: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckTransactionResponse {
    pub state: TransactionState,
}

/// Recalls a scheduled message that is not due yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelScheduledRequest {
    pub topic: String,
    pub id: crate::MessageId,
}

/// A consumer could not process a message: the broker schedules it again on the group's retry
/// topic, or moves it to the group's dead-letter topic once it was retried `max_reconsume`
/// times.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendBackRequest {
    pub group: String,
    /// Where the failed message is stored (the group's retry topic for a retried one).
    pub topic: String,
    pub queue_id: u32,
    pub offset: u64,
    /// The handler's own delay; `None` uses the back-off for the reconsume count.
    pub delay_ms: Option<u64>,
    pub max_reconsume: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SendBackResponse {
    /// Delivered again (as reconsume number `reconsume_times`) at `due_ms`.
    Retrying { due_ms: u64, reconsume_times: u32 },
    /// Moved to the dead-letter topic.
    DeadLettered { topic: String },
}

/// Take (or renew) the locks of queues an orderly consumer reads, or give them back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueLocksRequest {
    pub group: String,
    pub member_id: String,
    pub topic: String,
    pub queue_ids: Vec<u32>,
    /// How long a lock lasts unless renewed (the broker keeps it within 1 s ..= 10 min).
    pub lease_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueLocksResponse {
    /// The requested queues this member holds now (none after an unlock).
    pub locked: Vec<u32>,
    /// The lease granted, from when the broker logged the request.
    pub lease_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetTraceRequest {
    pub id: crate::MessageId,
}

/// The first protocol version whose [`MessageTrace`] has `transaction`; an older peer gets a
/// [`MessageTraceV3`].
pub const TRACE_TRANSACTION_VERSION: u8 = 4;

/// Everything the broker knows of a message: where it was stored and what each consumer group
/// did with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageTrace {
    pub id: crate::MessageId,
    /// `None` if no copy is stored (never sent to this broker group, or deleted by retention).
    pub stored: Option<StoredCopy>,
    /// Not delivered yet: (topic, due time) of each scheduled copy.
    pub scheduled: Vec<(String, u64)>,
    /// A half message whose transaction is still open: neither committed nor rolled back, and
    /// not parked yet.
    pub transaction: Option<OpenTransaction>,
    pub groups: Vec<GroupTrace>,
}

impl MessageTrace {
    /// Whether the broker group has the message at all: stored, scheduled, or a half message.
    pub fn found(&self) -> bool {
        self.stored.is_some() || !self.scheduled.is_empty() || self.transaction.is_some()
    }
}

/// [`MessageTrace`] as protocol version 3 encodes it: without `transaction`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageTraceV3 {
    pub id: crate::MessageId,
    pub stored: Option<StoredCopy>,
    pub scheduled: Vec<(String, u64)>,
    pub groups: Vec<GroupTrace>,
}

impl From<MessageTrace> for MessageTraceV3 {
    fn from(trace: MessageTrace) -> Self {
        MessageTraceV3 {
            id: trace.id,
            stored: trace.stored,
            scheduled: trace.scheduled,
            groups: trace.groups,
        }
    }
}

impl From<MessageTraceV3> for MessageTrace {
    fn from(trace: MessageTraceV3) -> Self {
        MessageTrace {
            id: trace.id,
            stored: trace.stored,
            scheduled: trace.scheduled,
            transaction: None,
            groups: trace.groups,
        }
    }
}

/// A half message waiting for its producer's decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenTransaction {
    /// Where the message goes once committed.
    pub topic: String,
    /// The producers asked about it.
    pub producer_group: String,
    pub stored_ms: u64,
    /// Check-backs so far (the broker parks it after its last one).
    pub checks: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredCopy {
    pub topic: String,
    pub queue_id: u32,
    pub queue_offset: u64,
    pub store_ts_ms: u64,
}

/// What one consumer group did with a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupTrace {
    pub group: String,
    pub state: DeliveryState,
    /// Deliveries so far (the first plus retries delivered).
    pub deliveries: u32,
    /// One entry per delivery: when the copy became visible to the group (ms since the epoch)
    /// and whether the group acknowledged it.
    pub attempts: Vec<DeliveryAttempt>,
    /// When the next retry is due, if one is waiting.
    pub retry_due_ms: Option<u64>,
    /// When it was moved to the dead-letter topic.
    pub dead_lettered_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryAttempt {
    pub topic: String,
    pub queue_id: u32,
    pub queue_offset: u64,
    pub visible_ms: u64,
    pub acknowledged: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Stored, not acknowledged by the group yet.
    Pending,
    /// Failed and waiting for its next delivery.
    Retrying,
    /// The group acknowledged it.
    Consumed,
    /// Retried until the limit; now in the group's dead-letter topic.
    DeadLettered,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullRequest {
    pub group: String,
    pub topic: String,
    pub queue_id: u32,
    pub offset: u64,
    pub max_messages: u32,
    pub max_bytes: u32,
    /// How long the broker may hold the request when there is nothing new (long polling).
    pub max_wait_ms: u32,
    /// Only messages whose tag hash is listed; empty means every message.
    pub tag_hashes: Vec<u64>,
    /// Only messages this SQL92 selector over their properties selects (see
    /// `ferromq_protocol::selector`).
    pub sql: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PullStatus {
    /// The body holds at least one message.
    Found,
    /// Nothing at or after the offset yet (after waiting up to `max_wait_ms`).
    NoNewMessages,
    /// The offset was outside `[min_offset, max_offset]`; continue from `next_offset`.
    OffsetMoved,
}

/// Body: messages as written by [`crate::message::encode_pulled`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullResponse {
    pub status: PullStatus,
    /// Where the next pull starts (past messages the filter skipped, too).
    pub next_offset: u64,
    pub min_offset: u64,
    pub max_offset: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffsetCommit {
    pub topic: String,
    pub queue_id: u32,
    /// The next offset the group will consume.
    pub offset: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitOffsetsRequest {
    pub group: String,
    pub offsets: Vec<OffsetCommit>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueryOffsetRequest {
    pub group: String,
    pub topic: String,
    pub queue_id: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueryOffsetResponse {
    /// None when the group never committed an offset for this queue.
    pub offset: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateTopicRequest {
    pub topic: String,
    pub queues: u32,
    pub perm: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetQueueOffsetsRequest {
    pub topic: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueOffsets {
    pub queue_id: u32,
    /// Oldest offset still stored.
    pub min_offset: u64,
    /// Offset the next message will get.
    pub max_offset: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetQueueOffsetsResponse {
    pub queues: Vec<QueueOffsets>,
}

/// How a consumer group shares a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ConsumeMode {
    /// Each queue is read by one member of the group (the default).
    #[default]
    Clustering,
    /// Every member reads every queue, with offsets of its own.
    Broadcast,
}

/// What one consumer of a group reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscription {
    pub group: String,
    pub topic: String,
    /// The tag expression (`*`, `A || B`).
    pub expression: String,
    pub mode: ConsumeMode,
}

/// Sent every few seconds by each consumer to every broker of its topics. Brokers forget a
/// member that stops sending (and one whose connection closes) and tell the rest of its group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumerHeartbeatRequest {
    /// Unique per consumer instance (client id plus a counter).
    pub member_id: String,
    pub subscriptions: Vec<Subscription>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetGroupMembersRequest {
    pub group: String,
    /// Only members subscribed to this topic (a group may consume several topics, each
    /// shared among its own subscribers).
    pub topic: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetGroupMembersResponse {
    /// Member ids, sorted.
    pub members: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnregisterConsumerRequest {
    pub member_id: String,
    pub group: String,
}

/// Broker → consumer, one-way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupChangedNotice {
    pub group: String,
    /// Set when an operator reset the group's offsets of this topic: members drop their
    /// positions and start again from the committed offsets.
    pub reset_topic: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SearchOffsetRequest {
    pub topic: String,
    pub queue_id: u32,
    /// Milliseconds since the epoch.
    pub timestamp_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SearchOffsetResponse {
    /// The first offset whose message was stored at or after the time (the queue's end if
    /// none was).
    pub offset: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetConsumerLagRequest {
    pub group: String,
    pub topic: String,
}

/// How far a group is behind on one queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueLagInfo {
    pub queue_id: u32,
    /// What the group committed; `None` if it never did.
    pub committed: Option<u64>,
    pub min_offset: u64,
    pub max_offset: u64,
    /// Messages stored but not consumed by the group yet.
    pub lag: u64,
    /// Store time of the oldest unconsumed message (ms since the epoch), if any.
    pub oldest_unconsumed_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetConsumerLagResponse {
    pub queues: Vec<QueueLagInfo>,
}

/// Peer port only: up to `len` bytes of the snapshot base at `index`, from `offset`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotChunkRequest {
    pub group: String,
    pub from: u64,
    pub index: u64,
    pub offset: u64,
    pub len: u32,
}

/// The chunk is the body; empty at the end of the base.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotChunkResponse {
    /// The offset just past this chunk.
    pub end: u64,
}

/// One-way frame between members of a broker group. Body: the Raft messages (see
/// `ferromq_raftlog::peer`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftMessagesHeader {
    pub group: String,
    pub from: u64,
}
