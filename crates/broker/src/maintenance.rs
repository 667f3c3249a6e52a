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
        match core.store.disk_space() {
            Ok((free, total)) => {
                core.metrics.disk_free_bytes.set(free as i64);
                core.metrics.disk_total_bytes.set(total as i64);
            }
            Err(err) => warn!(%err, "cannot read the data directory's free space"),
        }
    }
}

/// At most this many (topic, group) series of lag metrics.
const MAX_LAG_SERIES: usize = 1000;

/// Keeps the lag gauges current (also the followers' replication lag): on the leader, for every
/// group with committed offsets (the first `MAX_LAG_SERIES`); elsewhere none, so sums over a
/// cluster count each queue once. On every member: messages it delivered and the groups have
/// not committed, and the age of the oldest message in its log.
pub async fn consumer_lag_loop(core: Arc<BrokerCore>, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(Duration::from_secs(10));
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let status = core.raft.status();
        let leader = status.role == ferromq_raftlog::Role::Leader;
        core.metrics.follower_lag_entries.reset();
        if leader {
            for peer in core.raft.peer_progress().await.unwrap_or_default() {
                if peer.id != core.config.node_id {
                    core.metrics
                        .follower_lag_entries
                        .with_label_values(&[&peer.id.to_string()])
                        .set(status.last_index.saturating_sub(peer.match_index) as i64);
                }
            }
        }
        let store = core.store.clone();
        let work = core.clone();
        let broadcast: std::collections::HashSet<String> = core
            .consumers
            .views()
            .into_iter()
            .filter(|g| {
                g.members
                    .iter()
                    .any(|m| m.mode == ferromq_protocol::headers::ConsumeMode::Broadcast)
            })
            .map(|g| g.group)
            .collect();
        let lags = tokio::task::spawn_blocking(move || {
            let in_flight = work.deliveries.in_flight(&store, &broadcast)?;
            let oldest = store.oldest_message_store_ms()?;
            if !leader {
                return Ok((Vec::new(), in_flight, oldest));
            }
            let mut lags = Vec::new();
            for (group, topic) in store.consumer_groups()?.into_iter().take(MAX_LAG_SERIES) {
                if let Some(queues) = store.group_lag(&group, &topic)? {
                    lags.push((group, topic, queues));
                }
            }
            Ok::<_, ferromq_store::StoreError>((lags, in_flight, oldest))
        })
        .await;
        let (lags, in_flight, oldest_ms) = match lags {
            Ok(Ok(found)) => found,
            Ok(Err(err)) => {
                warn!(%err, "consumer lag not computed");
                continue;
            }
            Err(err) => {
                error!(%err, "consumer lag task failed");
                continue;
            }
        };
        core.metrics.consumer_lag_messages.reset();
        core.metrics.consumer_lag_seconds.reset();
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        core.metrics.consumer_inflight.reset();
        for (group, topic, _) in &lags {
            // Every group the leader knows has a series, 0 when nothing is in flight here.
            core.metrics
                .consumer_inflight
                .with_label_values(&[topic, group]);
        }
        for (topic, group, pending) in in_flight.into_iter().take(MAX_LAG_SERIES) {
            core.metrics
                .consumer_inflight
                .with_label_values(&[&topic, &group])
                .add(pending as i64);
        }
        core.metrics
            .oldest_message_age
            .set(oldest_ms.map_or(0.0, |t| now_ms.saturating_sub(t) as f64 / 1000.0));
        for (group, topic, queues) in lags {
            let total: u64 = queues.iter().map(|q| q.lag).sum();
            let oldest = queues.iter().filter_map(|q| q.oldest_unconsumed_ms).min();
            let labels = [topic.as_str(), group.as_str()];
            core.metrics
                .consumer_lag_messages
                .with_label_values(&labels)
                .set(total as i64);
            core.metrics
                .consumer_lag_seconds
                .with_label_values(&labels)
                .set(oldest.map_or(0.0, |t| now_ms.saturating_sub(t) as f64 / 1000.0));
        }
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
