//! Raft metrics (see docs/metrics.md): term, commit and applied index, leader changes,
//! proposals and the fsync latency of the commit log.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge, Registry};

use crate::node::{RaftStatus, Role};

/// fsync latency buckets in seconds, 50 µs to 2.5 s.
const FSYNC_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5,
];

#[derive(Clone)]
pub struct RaftMetrics {
    pub term: IntGauge,
    pub commit_index: IntGauge,
    pub applied_index: IntGauge,
    pub is_leader: IntGauge,
    pub leader_changes: IntCounter,
    pub proposals: IntCounter,
    pub fsync_seconds: Histogram,
    pub snapshots_sent: IntCounter,
    pub snapshots_installed: IntCounter,
    last_leader: IntGauge,
}

fn add<M: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: M) -> M {
    registry
        .register(Box::new(metric.clone()))
        .expect("raft metrics are registered once per registry");
    metric
}

impl RaftMetrics {
    pub fn new(registry: &Registry) -> RaftMetrics {
        RaftMetrics {
            term: add(
                registry,
                IntGauge::new("mq_raft_term", "Current Raft term").expect("valid"),
            ),
            commit_index: add(
                registry,
                IntGauge::new("mq_raft_commit_index", "Highest log index known committed")
                    .expect("valid"),
            ),
            applied_index: add(
                registry,
                IntGauge::new(
                    "mq_raft_applied_index",
                    "Highest log index applied to the store",
                )
                .expect("valid"),
            ),
            is_leader: add(
                registry,
                IntGauge::new(
                    "mq_raft_is_leader",
                    "1 if this broker is its group's leader (master)",
                )
                .expect("valid"),
            ),
            leader_changes: add(
                registry,
                IntCounter::new(
                    "mq_raft_leader_changes_total",
                    "Times the known leader changed",
                )
                .expect("valid"),
            ),
            proposals: add(
                registry,
                IntCounter::new(
                    "mq_raft_proposals_total",
                    "Entries proposed by this node as leader",
                )
                .expect("valid"),
            ),
            fsync_seconds: add(
                registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "mq_commitlog_flush_duration_seconds",
                        "Time to fsync the commit log after an append",
                    )
                    .buckets(FSYNC_BUCKETS.to_vec()),
                )
                .expect("valid"),
            ),
            snapshots_sent: add(
                registry,
                IntCounter::new(
                    "mq_raft_snapshots_sent_total",
                    "Snapshots sent to members that needed entries retention had deleted",
                )
                .expect("valid"),
            ),
            snapshots_installed: add(
                registry,
                IntCounter::new(
                    "mq_raft_snapshots_installed_total",
                    "Snapshots from the leader this node installed",
                )
                .expect("valid"),
            ),
            last_leader: IntGauge::new("mq_raft_last_leader", "internal").expect("valid"),
        }
    }

    pub(crate) fn observe(&self, status: &RaftStatus) {
        self.term.set(status.term as i64);
        self.commit_index.set(status.commit_index as i64);
        self.applied_index.set(status.applied_index as i64);
        self.is_leader.set(i64::from(status.role == Role::Leader));
        if self.last_leader.get() != status.leader_id as i64 {
            if status.leader_id != 0 {
                self.leader_changes.inc();
            }
            self.last_leader.set(status.leader_id as i64);
        }
    }
}
