//! Request codes and response status codes: the stable numbers that cross the wire.

use std::fmt;

/// What a request asks for. Unknown numbers are answered with
/// [`Status::RequestCodeNotSupported`] and the connection stays open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum RequestCode {
    /// First frame of every connection: version negotiation.
    Handshake = 1,
    /// Keep-alive; answered with an empty OK.
    Ping = 2,

    // Nameserver.
    RegisterBroker = 100,
    UnregisterBroker = 101,
    GetRoute = 102,
    GetCluster = 103,

    // Broker.
    Send = 200,
    Pull = 201,
    CommitOffsets = 202,
    QueryOffset = 203,
    CreateTopic = 204,
    GetQueueOffsets = 205,
    /// A consumer's periodic sign of life, with its subscriptions.
    ConsumerHeartbeat = 206,
    GetGroupMembers = 207,
    UnregisterConsumer = 208,
    /// Broker → consumer, one-way: the group's membership changed; rebalance now.
    GroupChanged = 209,
    /// The first offset of a queue whose message was stored at or after a time.
    SearchOffset = 210,
    /// How far a consumer group is behind on each queue of a topic.
    GetConsumerLag = 211,
    /// Recall a scheduled message before it is due.
    CancelScheduled = 212,
    /// A consumer failed a message: retry it later or dead-letter it.
    ConsumerSendBack = 213,
    /// What happened to a message: stored, delivered, acknowledged, retried, dead-lettered.
    GetTrace = 214,
    /// An orderly consumer takes or renews the locks of queues it consumes.
    LockQueues = 215,
    /// An orderly consumer gives queue locks back.
    UnlockQueues = 216,
    /// A transactional producer's sign of life: brokers ask it about undecided transactions.
    ProducerHeartbeat = 217,
    /// Commit or roll back a transaction (its half message).
    EndTransaction = 218,
    /// Broker → producer: how did the local transaction of this half message end?
    CheckTransaction = 219,
    /// A consumer answers a request message; the broker forwards the reply to the requester.
    Reply = 220,
    /// Broker → requester, one-way: the reply to one of its requests.
    ReplyDelivery = 221,

    // Between the members of a broker group, on the peer port only.
    RaftMessages = 300,
    /// A piece of a snapshot base, fetched by a member whose snapshot message held a ticket.
    SnapshotChunk = 301,
}

impl RequestCode {
    pub const ALL: [RequestCode; 30] = [
        RequestCode::Handshake,
        RequestCode::Ping,
        RequestCode::RegisterBroker,
        RequestCode::UnregisterBroker,
        RequestCode::GetRoute,
        RequestCode::GetCluster,
        RequestCode::Send,
        RequestCode::Pull,
        RequestCode::CommitOffsets,
        RequestCode::QueryOffset,
        RequestCode::CreateTopic,
        RequestCode::GetQueueOffsets,
        RequestCode::ConsumerHeartbeat,
        RequestCode::GetGroupMembers,
        RequestCode::UnregisterConsumer,
        RequestCode::GroupChanged,
        RequestCode::SearchOffset,
        RequestCode::GetConsumerLag,
        RequestCode::CancelScheduled,
        RequestCode::ConsumerSendBack,
        RequestCode::GetTrace,
        RequestCode::LockQueues,
        RequestCode::UnlockQueues,
        RequestCode::ProducerHeartbeat,
        RequestCode::EndTransaction,
        RequestCode::CheckTransaction,
        RequestCode::Reply,
        RequestCode::ReplyDelivery,
        RequestCode::RaftMessages,
        RequestCode::SnapshotChunk,
    ];

    pub fn from_u16(value: u16) -> Option<RequestCode> {
        RequestCode::ALL
            .into_iter()
            .find(|code| *code as u16 == value)
    }

    /// Stable lowercase name, used as a metric label.
    pub fn name(self) -> &'static str {
        match self {
            RequestCode::Handshake => "handshake",
            RequestCode::Ping => "ping",
            RequestCode::RegisterBroker => "register_broker",
            RequestCode::UnregisterBroker => "unregister_broker",
            RequestCode::GetRoute => "get_route",
            RequestCode::GetCluster => "get_cluster",
            RequestCode::Send => "send",
            RequestCode::Pull => "pull",
            RequestCode::CommitOffsets => "commit_offsets",
            RequestCode::QueryOffset => "query_offset",
            RequestCode::CreateTopic => "create_topic",
            RequestCode::GetQueueOffsets => "get_queue_offsets",
            RequestCode::ConsumerHeartbeat => "consumer_heartbeat",
            RequestCode::GetGroupMembers => "get_group_members",
            RequestCode::UnregisterConsumer => "unregister_consumer",
            RequestCode::GroupChanged => "group_changed",
            RequestCode::SearchOffset => "search_offset",
            RequestCode::GetConsumerLag => "get_consumer_lag",
            RequestCode::CancelScheduled => "cancel_scheduled",
            RequestCode::ConsumerSendBack => "consumer_send_back",
            RequestCode::GetTrace => "get_trace",
            RequestCode::LockQueues => "lock_queues",
            RequestCode::UnlockQueues => "unlock_queues",
            RequestCode::ProducerHeartbeat => "producer_heartbeat",
            RequestCode::EndTransaction => "end_transaction",
            RequestCode::CheckTransaction => "check_transaction",
            RequestCode::Reply => "reply",
            RequestCode::ReplyDelivery => "reply_delivery",
            RequestCode::RaftMessages => "raft_messages",
            RequestCode::SnapshotChunk => "snapshot_chunk",
        }
    }
}

impl fmt::Display for RequestCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Outcome of a request, carried in the `code` field of a response frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Status {
    Ok = 0,
    /// The server failed for a reason of its own; the request may be retried.
    SystemError = 1,
    /// Too many requests in flight; retry later.
    SystemBusy = 2,
    /// The server does not know this request code.
    RequestCodeNotSupported = 3,
    /// The header or body is malformed or a field is invalid; do not retry unchanged.
    ParameterError = 4,
    /// The topic does not exist and is not auto-created here.
    TopicNotExist = 5,
    /// This broker is not its group's leader; the error header names the leader if known.
    NotLeader = 6,
    /// A message or batch is over the size limit.
    MessageTooLarge = 7,
    /// The peer's protocol version is not supported; the connection closes.
    UnsupportedVersion = 8,
    /// The requested queue offset is outside the queue; the error says the valid range.
    OffsetOutOfRange = 9,
    /// The topic's permissions forbid this operation.
    NoPermission = 10,
    /// The server is starting or shutting down.
    ServiceNotAvailable = 11,
    /// The request did not complete in time on the server; its outcome is unknown.
    Timeout = 12,
    /// A handshake was expected first, or sent twice.
    HandshakeRequired = 13,
    /// The topic has no queue with that id: the client's route is stale; refresh and retry.
    QueueNotExist = 14,
    /// The handshake's credentials are missing, unknown, wrong or stale; the connection closes.
    AuthenticationFailed = 15,
}

impl Status {
    pub const ALL: [Status; 16] = [
        Status::Ok,
        Status::SystemError,
        Status::SystemBusy,
        Status::RequestCodeNotSupported,
        Status::ParameterError,
        Status::TopicNotExist,
        Status::NotLeader,
        Status::MessageTooLarge,
        Status::UnsupportedVersion,
        Status::OffsetOutOfRange,
        Status::NoPermission,
        Status::ServiceNotAvailable,
        Status::Timeout,
        Status::HandshakeRequired,
        Status::QueueNotExist,
        Status::AuthenticationFailed,
    ];

    pub fn from_u16(value: u16) -> Option<Status> {
        Status::ALL
            .into_iter()
            .find(|status| *status as u16 == value)
    }

    /// Whether a client may retry the same request, possibly elsewhere.
    pub fn is_retriable(self) -> bool {
        matches!(
            self,
            Status::SystemError
                | Status::SystemBusy
                | Status::NotLeader
                | Status::ServiceNotAvailable
                | Status::Timeout
                | Status::TopicNotExist
                | Status::QueueNotExist
        )
    }

    pub fn name(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::SystemError => "system_error",
            Status::SystemBusy => "system_busy",
            Status::RequestCodeNotSupported => "request_code_not_supported",
            Status::ParameterError => "parameter_error",
            Status::TopicNotExist => "topic_not_exist",
            Status::NotLeader => "not_leader",
            Status::MessageTooLarge => "message_too_large",
            Status::UnsupportedVersion => "unsupported_version",
            Status::OffsetOutOfRange => "offset_out_of_range",
            Status::NoPermission => "no_permission",
            Status::ServiceNotAvailable => "service_not_available",
            Status::Timeout => "timeout",
            Status::HandshakeRequired => "handshake_required",
            Status::QueueNotExist => "queue_not_exist",
            Status::AuthenticationFailed => "authentication_failed",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_through_numbers() {
        for code in RequestCode::ALL {
            assert_eq!(RequestCode::from_u16(code as u16), Some(code));
        }
        for status in Status::ALL {
            assert_eq!(Status::from_u16(status as u16), Some(status));
        }
        assert_eq!(RequestCode::from_u16(65535), None);
    }
}
