//! Background upkeep: checkpoints (which bound replay after a crash), retention, and the
//! expiry of silent consumers.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use crate::core::BrokerCore;

pub async fn checkpoint_loop(core: Arc<BrokerCore>, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(Duration::from_millis(
        core.config.storage.checkpoint_interval_ms,
    ));
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let store = core.store.clone();
        match tokio::task::spawn_blocking(move || store.checkpoint()).await {
            Ok(Ok(_)) => {}
            Ok(Err(err)) => error!(%err, "checkpoint failed"),
            Err(err) => error!(%err, "checkpoint task failed"),
        }
        core.metrics
            .commitlog_bytes
            .set(core.store.log_bytes() as i64);
    }
}

/// Removes consumers whose heartbeats stopped and tells their groups.
pub async fn consumer_expiry_loop(core: Arc<BrokerCore>, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        for group in core.consumers.expire(std::time::Instant::now()) {
            core.consumers.notify(&group);
        }
    }
}

pub async fn retention_loop(core: Arc<BrokerCore>, shutdown: CancellationToken) {
    let interval = Duration::from_millis(core.config.storage.retention_check_interval_ms.max(1));
    let mut ticker = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let store = core.store.clone();
        match tokio::task::spawn_blocking(move || store.enforce_retention(SystemTime::now())).await
        {
            Ok(Ok(_)) => {}
            Ok(Err(err)) => warn!(%err, "retention failed"),
            Err(err) => error!(%err, "retention task failed"),
        }
        core.metrics
            .commitlog_bytes
            .set(core.store.log_bytes() as i64);
    }
}
