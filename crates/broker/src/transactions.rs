//! Check-backs of undecided transactions, on the leader: a half message older than
//! `check_after_ms` whose producer has not committed or rolled it back is asked about, over a
//! live producer's own connection, every `check_interval_ms`; after `max_checks` it is parked in
//! `%TXN_PARKED%` (and counted). Each check is logged before it is sent, so a new leader goes on
//! counting where the old one stopped.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ferromq_protocol::{
    headers::{CheckTransactionRequest, CheckTransactionResponse, TransactionState},
    message::now_millis,
    MessageId, RequestCode,
};
use ferromq_store::{
    command::{encode_half_checked, HalfChecked},
    HalfMessage,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::core::BrokerCore;
use crate::scheduler::Decision;

/// Where half messages go that stayed undecided through every check-back.
pub const PARKED_TOPIC: &str = "%TXN_PARKED%";
/// How long a producer has to answer a check-back.
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

pub async fn check_loop(core: Arc<BrokerCore>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = shutdown.cancelled() => return,
        }
        // Only the leader reads them (and exports the gauge, so a sum counts each once).
        if !core.scheduler.is_ready(&core) {
            core.metrics.half_messages.set(0);
            continue;
        }
        let halves = match core.store.half_messages() {
            Ok(halves) => halves,
            Err(err) => {
                warn!(%err, "cannot read half messages");
                continue;
            }
        };
        core.metrics.half_messages.set(halves.len() as i64);
        let config = &core.config.transactions;
        let now = now_millis();
        for half in halves {
            let old_enough = now.saturating_sub(half.stored_ms) >= config.check_after_ms;
            let checked_lately = half.checks > 0
                && now.saturating_sub(half.last_check_ms) < config.check_interval_ms;
            if !old_enough || checked_lately {
                continue;
            }
            if half.checks >= config.max_checks {
                park(&core, &half).await;
                continue;
            }
            // Counted first: a check-back that is sent is never forgotten by a new leader.
            let checked = HalfChecked {
                id: half.id,
                topic: half.topic.clone(),
                checks: half.checks + 1,
                at_ms: now,
            };
            if let Err(err) = core.propose(encode_half_checked(&checked)).await {
                debug!(%err, "check-back not recorded");
                continue;
            }
            tokio::spawn(check(core.clone(), half));
        }
    }
}

async fn park(core: &BrokerCore, half: &HalfMessage) {
    crate::handlers::retry::ensure_system_topic(core, PARKED_TOPIC).await;
    let id = MessageId(half.id);
    match core
        .scheduler
        .end_transaction(core, &half.topic, id, Decision::Park(PARKED_TOPIC))
        .await
    {
        Ok(()) => {
            warn!(%id, topic = %half.topic, group = %half.producer_group, "transaction undecided after every check-back; parked");
            core.metrics.transactions_parked.inc();
        }
        Err(err) => debug!(%id, ?err, "parking failed; next round"),
    }
}

/// Asks a live producer of the group; commits or rolls back on a definite answer.
async fn check(core: Arc<BrokerCore>, half: HalfMessage) {
    let result = ask(&core, &half).await;
    let label = match result {
        Ok(TransactionState::Commit) => "commit",
        Ok(TransactionState::Rollback) => "rollback",
        Ok(TransactionState::Unknown) => "unknown",
        Err(reason) => reason,
    };
    core.metrics
        .transaction_checks
        .with_label_values(&[label])
        .inc();
    let decision = match result {
        Ok(TransactionState::Commit) => Decision::Commit,
        Ok(TransactionState::Rollback) => Decision::Rollback,
        _ => return,
    };
    let id = MessageId(half.id);
    match core
        .scheduler
        .end_transaction(&core, &half.topic, id, decision)
        .await
    {
        Ok(()) => {
            info!(%id, topic = %half.topic, answer = label, "transaction ended by a check-back");
            core.metrics
                .transactions_ended
                .with_label_values(&[label])
                .inc();
        }
        Err(err) => debug!(%id, ?err, "check-back answer not applied"),
    }
}

async fn ask(core: &BrokerCore, half: &HalfMessage) -> Result<TransactionState, &'static str> {
    let connection = core
        .producers
        .pick(&half.producer_group)
        .ok_or("no_producer")?;
    let request = CheckTransactionRequest {
        group: half.producer_group.clone(),
        topic: half.topic.clone(),
        queue_id: half.queue_id,
    };
    let response = connection
        .request_with_timeout(
            RequestCode::CheckTransaction,
            &request,
            Bytes::from(half.record.clone()),
            CHECK_TIMEOUT,
        )
        .await
        .map_err(|_| "failed")?;
    let answer: CheckTransactionResponse = response.decode().map_err(|_| "failed")?;
    Ok(answer.state)
}
