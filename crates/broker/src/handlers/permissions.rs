//! What each request code needs when `[auth]` is enabled: every code a client may send is
//! listed here (default deny for the rest). Headers are decoded once more for the names they
//! carry; a header that does not decode is left to its handler to refuse.

use ferromq_protocol::headers::{
    CancelScheduledRequest, CommitOffsetsRequest, ConsumerHeartbeatRequest, EndTransactionRequest,
    GetConsumerLagRequest, GetGroupMembersRequest, GetQueueOffsetsRequest,
    ProducerHeartbeatRequest, PullRequest, QueryOffsetRequest, QueueLocksRequest, ReplyRequest,
    SearchOffsetRequest, SendBackRequest, SendRequest, UnregisterConsumerRequest,
};
use ferromq_protocol::{RequestCode, Status};
use ferromq_service::auth::Need;
use ferromq_transport::{Connection, Reply, Request};
use serde::de::DeserializeOwned;

use crate::core::BrokerCore;

/// `Ok` if the connection's identity may make `request`; otherwise the refusal.
pub fn authorize(
    core: &BrokerCore,
    connection: &Connection,
    request: &Request,
) -> Result<(), Reply> {
    if !core.access.enabled() {
        return Ok(());
    }
    let check = |needs: &[Need<'_>]| {
        core.access
            .authorize(connection.principal(), needs)
            .map_err(|reason| Reply::error(Status::NoPermission, reason))
    };
    let Some(code) = RequestCode::from_u16(request.code) else {
        return check(&[Need::Nobody]);
    };
    match code {
        RequestCode::Ping => check(&[Need::Connected]),
        RequestCode::Send => with(request, |send: SendRequest| {
            let mut needs = vec![Need::Publish(&send.topic)];
            if let Some(group) = &send.transaction_group {
                needs.push(Need::Group(group));
            }
            check(&needs)
        }),
        RequestCode::CancelScheduled => with(request, |cancel: CancelScheduledRequest| {
            check(&[Need::Publish(&cancel.topic)])
        }),
        RequestCode::EndTransaction => with(request, |end: EndTransactionRequest| {
            check(&[Need::Publish(&end.topic)])
        }),
        RequestCode::ProducerHeartbeat => with(request, |beat: ProducerHeartbeatRequest| {
            check(&[Need::Group(&beat.group)])
        }),
        // A consumer answering a request message it consumed.
        RequestCode::Reply => with(request, |reply: ReplyRequest| {
            check(&[Need::Subscribe(&reply.topic)])
        }),
        RequestCode::Pull => with(request, |pull: PullRequest| {
            check(&[Need::Group(&pull.group), Need::Subscribe(&pull.topic)])
        }),
        RequestCode::CommitOffsets => with(request, |commit: CommitOffsetsRequest| {
            let mut needs = vec![Need::Group(&commit.group)];
            needs.extend(commit.offsets.iter().map(|o| Need::Subscribe(&o.topic)));
            check(&needs)
        }),
        RequestCode::QueryOffset => with(request, |query: QueryOffsetRequest| {
            check(&[Need::Group(&query.group), Need::Subscribe(&query.topic)])
        }),
        RequestCode::GetQueueOffsets => with(request, |query: GetQueueOffsetsRequest| {
            check(&[Need::Subscribe(&query.topic)])
        }),
        RequestCode::SearchOffset => with(request, |search: SearchOffsetRequest| {
            check(&[Need::Subscribe(&search.topic)])
        }),
        RequestCode::ConsumerHeartbeat => with(request, |beat: ConsumerHeartbeatRequest| {
            let needs: Vec<Need<'_>> = beat
                .subscriptions
                .iter()
                .flat_map(|s| [Need::Group(&s.group), Need::Subscribe(&s.topic)])
                .collect();
            check(&needs)
        }),
        RequestCode::GetGroupMembers => with(request, |query: GetGroupMembersRequest| {
            check(&[Need::Group(&query.group), Need::Subscribe(&query.topic)])
        }),
        RequestCode::UnregisterConsumer => with(request, |leave: UnregisterConsumerRequest| {
            check(&[Need::Group(&leave.group)])
        }),
        RequestCode::GetConsumerLag => with(request, |query: GetConsumerLagRequest| {
            check(&[Need::Group(&query.group), Need::Subscribe(&query.topic)])
        }),
        RequestCode::ConsumerSendBack => with(request, |back: SendBackRequest| {
            check(&[Need::Group(&back.group), Need::Subscribe(&back.topic)])
        }),
        RequestCode::LockQueues | RequestCode::UnlockQueues => {
            with(request, |locks: QueueLocksRequest| {
                check(&[Need::Group(&locks.group), Need::Subscribe(&locks.topic)])
            })
        }
        // Traces name every group and topic a message reached: operators only.
        RequestCode::CreateTopic | RequestCode::GetTrace => check(&[Need::Admin]),
        // Nameserver codes, server-to-client codes and the peer port's codes.
        RequestCode::Handshake
        | RequestCode::RegisterBroker
        | RequestCode::UnregisterBroker
        | RequestCode::GetRoute
        | RequestCode::GetCluster
        | RequestCode::GroupChanged
        | RequestCode::CheckTransaction
        | RequestCode::ReplyDelivery
        | RequestCode::RaftMessages
        | RequestCode::SnapshotChunk => check(&[Need::Nobody]),
    }
}

/// Runs `check` on the decoded header; an undecodable header passes here and is refused by
/// its handler with the decoding error.
fn with<T: DeserializeOwned>(
    request: &Request,
    check: impl FnOnce(T) -> Result<(), Reply>,
) -> Result<(), Reply> {
    match request.decode_header::<T>() {
        Ok(header) => check(header),
        Err(_) => Ok(()),
    }
}
