//! PRODUCER_HEARTBEAT and END_TRANSACTION: transactional producers say they are alive (so the
//! broker can ask them about undecided transactions) and commit or roll back half messages.

use ferromq_protocol::{
    headers::{EndTransactionRequest, ProducerHeartbeatRequest},
    message::{validate_group, validate_topic},
    Status,
};
use ferromq_raftlog::ProposeError;
use ferromq_transport::{Connection, Reply, Request};

use super::{propose_failed, store_failed};
use crate::core::BrokerCore;
use crate::scheduler::{CancelError, Decision};

pub async fn heartbeat(core: &BrokerCore, connection: &Connection, request: &Request) -> Reply {
    let beat: ProducerHeartbeatRequest = match request.decode_header() {
        Ok(beat) => beat,
        Err(err) => return Reply::bad_header(&err),
    };
    if let Err(message) = validate_group(&beat.group) {
        return Reply::error(Status::ParameterError, message);
    }
    match core.producers.heartbeat(connection, &beat.group) {
        Ok(()) => Reply::ok(&()),
        Err(message) => Reply::error(Status::SystemBusy, message),
    }
}

pub async fn end(core: &BrokerCore, request: &Request) -> Reply {
    let end: EndTransactionRequest = match request.decode_header() {
        Ok(end) => end,
        Err(err) => return Reply::bad_header(&err),
    };
    if let Err(message) = validate_topic(&end.topic) {
        return Reply::error(Status::ParameterError, message);
    }
    let decision = if end.commit {
        Decision::Commit
    } else {
        Decision::Rollback
    };
    let ended = core
        .scheduler
        .end_transaction(core, &end.topic, end.id, decision)
        .await;
    match ended {
        Ok(()) => {
            let result = if end.commit { "commit" } else { "rollback" };
            core.metrics
                .transactions_ended
                .with_label_values(&[result])
                .inc();
            Reply::ok(&())
        }
        Err(err) => decision_failed(core, err, &format!("transaction of message {}", end.id)),
    }
}

/// The reply for a cancel or transaction end that did not happen.
pub(crate) fn decision_failed(core: &BrokerCore, err: CancelError, what: &str) -> Reply {
    match err {
        CancelError::NotLeader(leader_id) => {
            propose_failed(core, ProposeError::NotLeader { leader_id })
        }
        CancelError::NotReady => Reply::error(
            Status::ServiceNotAvailable,
            "a new leader is still applying its predecessors' entries; retry shortly",
        ),
        CancelError::NotFound => Reply::error(
            Status::ParameterError,
            format!("{what} is not pending here (already decided, or never stored)"),
        ),
        CancelError::Delivering => Reply::error(
            Status::ParameterError,
            format!("{what} is being decided right now"),
        ),
        CancelError::Propose(err) => propose_failed(core, err),
        CancelError::Store(err) => store_failed(err),
        CancelError::Rejected(reason) => Reply::error(Status::ParameterError, reason),
    }
}
