//! Broker metrics; the catalogue is docs/metrics.md. Labels stay bounded: topic and group
//! names, never message ids or keys.

use ferromq_service::metrics::register;
use prometheus::{
    GaugeVec, Histogram, HistogramOpts, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// Message sizes from 64 B to 4 MiB.
const SIZE_BUCKETS: &[f64] = &[
    64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0,
];

#[derive(Clone)]
pub struct BrokerMetrics {
    pub messages_in: IntCounterVec,
    pub bytes_in: IntCounterVec,
    pub messages_deduplicated: IntCounterVec,
    pub messages_out: IntCounterVec,
    pub bytes_out: IntCounterVec,
    pub message_size: Histogram,
    pub commitlog_bytes: IntGauge,
    pub topics: IntGauge,
    pub consumer_lag_messages: IntGaugeVec,
    pub consumer_lag_seconds: GaugeVec,
    pub follower_lag_entries: IntGaugeVec,
    pub disk_free_bytes: IntGauge,
    pub disk_total_bytes: IntGauge,
    pub scheduled_messages: IntGauge,
    pub scheduled_delivered: prometheus::IntCounter,
    pub timer_lateness: Histogram,
    pub consumer_retries: IntCounterVec,
    pub dlq_messages: IntCounterVec,
    pub half_messages: IntGauge,
    pub transaction_checks: IntCounterVec,
    pub transactions_ended: IntCounterVec,
    pub transactions_parked: prometheus::IntCounter,
    pub produce_duration: Histogram,
    pub consumer_inflight: IntGaugeVec,
    pub oldest_message_age: prometheus::Gauge,
    /// Always 1; its labels say which cluster, group and member this broker is, for joins.
    pub info: IntGaugeVec,
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(
        registry,
        IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
    )
}

impl BrokerMetrics {
    pub fn new(registry: &Registry) -> BrokerMetrics {
        let metrics = BrokerMetrics {
            consumer_lag_messages: register(
                registry,
                IntGaugeVec::new(
                    Opts::new(
                        "mq_consumer_lag_messages",
                        "Messages stored but not consumed by a group (this broker group's queues; exported by the leader)",
                    ),
                    &["topic", "group"],
                )
                .expect("valid metric"),
            ),
            info: register(
                registry,
                IntGaugeVec::new(
                    Opts::new(
                        "mq_broker_info",
                        "Which cluster, broker group and member this broker is (always 1)",
                    ),
                    &["cluster", "group", "node_id"],
                )
                .expect("valid metric"),
            ),
            follower_lag_entries: register(
                registry,
                IntGaugeVec::new(
                    Opts::new(
                        "mq_raft_follower_lag_entries",
                        "Entries a member is behind the leader's log (exported by the leader)",
                    ),
                    &["peer"],
                )
                .expect("valid metric"),
            ),
            disk_free_bytes: register(
                registry,
                IntGauge::new(
                    "mq_storage_disk_free_bytes",
                    "Free bytes on the file system of the data directory",
                )
                .expect("valid metric"),
            ),
            disk_total_bytes: register(
                registry,
                IntGauge::new(
                    "mq_storage_disk_total_bytes",
                    "Size of the file system of the data directory",
                )
                .expect("valid metric"),
            ),
            consumer_lag_seconds: register(
                registry,
                GaugeVec::new(
                    Opts::new(
                        "mq_consumer_lag_seconds",
                        "Age of the oldest message a group has not consumed (exported by the leader)",
                    ),
                    &["topic", "group"],
                )
                .expect("valid metric"),
            ),
            scheduled_messages: register(
                registry,
                IntGauge::new(
                    "mq_scheduled_messages",
                    "Delayed, scheduled and retried messages waiting for their time (estimate)",
                )
                .expect("valid metric"),
            ),
            scheduled_delivered: register(
                registry,
                prometheus::IntCounter::new(
                    "mq_scheduled_delivered_total",
                    "Scheduled messages delivered to their queue by this leader's timer",
                )
                .expect("valid metric"),
            ),
            timer_lateness: register(
                registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "mq_timer_delivery_lateness_seconds",
                        "How long after its due time a scheduled message became visible",
                    )
                    .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
                )
                .expect("valid metric"),
            ),
            consumer_retries: counter(
                registry,
                "mq_consumer_retries_total",
                "Messages a consumer group failed and the broker scheduled for another delivery",
                &["group"],
            ),
            half_messages: register(
                registry,
                IntGauge::new(
                    "mq_transaction_half_messages",
                    "Half messages of transactions not committed or rolled back yet",
                )
                .expect("valid metric"),
            ),
            transaction_checks: counter(
                registry,
                "mq_transaction_checks_total",
                "Check-backs of undecided transactions, by answer (commit, rollback, unknown, no_producer, failed)",
                &["result"],
            ),
            transactions_ended: counter(
                registry,
                "mq_transactions_ended_total",
                "Transactions committed or rolled back (by the producer or a check-back)",
                &["result"],
            ),
            transactions_parked: register(
                registry,
                prometheus::IntCounter::new(
                    "mq_transactions_parked_total",
                    "Half messages undecided after every check-back, moved to %TXN_PARKED%",
                )
                .expect("valid metric"),
            ),
            dlq_messages: counter(
                registry,
                "mq_dlq_messages_total",
                "Messages moved to a group's dead-letter topic after their last retry",
                &["group"],
            ),
            messages_in: counter(
                registry,
                "mq_messages_in_total",
                "Messages stored (acknowledged sends)",
                &["topic"],
            ),
            bytes_in: counter(
                registry,
                "mq_messages_in_bytes_total",
                "Bytes of message records stored",
                &["topic"],
            ),
            messages_deduplicated: counter(
                registry,
                "mq_messages_deduplicated_total",
                "Messages of retried sends recognised as already stored (not stored again)",
                &["topic"],
            ),
            messages_out: counter(
                registry,
                "mq_messages_out_total",
                "Messages delivered to consumers by pulls",
                &["topic", "group"],
            ),
            bytes_out: counter(
                registry,
                "mq_messages_out_bytes_total",
                "Bytes of message records delivered by pulls",
                &["topic", "group"],
            ),
            message_size: register(
                registry,
                Histogram::with_opts(
                    HistogramOpts::new("mq_message_size_bytes", "Size of stored message records")
                        .buckets(SIZE_BUCKETS.to_vec()),
                )
                .expect("valid metric"),
            ),
            commitlog_bytes: register(
                registry,
                IntGauge::new("mq_commitlog_bytes", "Bytes of commit log on disk")
                    .expect("valid metric"),
            ),
            topics: register(
                registry,
                IntGauge::new("mq_topics", "Topics on this broker").expect("valid metric"),
            ),
            produce_duration: register(
                registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "mq_produce_duration_seconds",
                        "Time from a send's arrival to its acknowledgement (replicated, applied)",
                    )
                    .buckets(ferromq_service::metrics::LATENCY_BUCKETS.to_vec()),
                )
                .expect("valid metric"),
            ),
            consumer_inflight: register(
                registry,
                IntGaugeVec::new(
                    Opts::new(
                        "mq_consumer_inflight_messages",
                        "Messages this broker delivered to a group that it has not committed yet",
                    ),
                    &["topic", "group"],
                )
                .expect("valid metric"),
            ),
            oldest_message_age: register(
                registry,
                prometheus::Gauge::new(
                    "mq_storage_oldest_message_age_seconds",
                    "Age of the oldest message still in the commit log (how far back retention reaches)",
                )
                .expect("valid metric"),
            ),
        };
        // Bounded label values start at 0, so rate() and alerts see them before the first event.
        for result in ["commit", "rollback", "unknown", "no_producer", "failed"] {
            metrics.transaction_checks.with_label_values(&[result]);
        }
        for result in ["commit", "rollback"] {
            metrics.transactions_ended.with_label_values(&[result]);
        }
        metrics
    }

    /// Starts a group's retry and dead-letter series at 0 (when a member joins), so an alert
    /// on their increase works from the first event.
    pub fn group_seen(&self, group: &str) {
        self.consumer_retries.with_label_values(&[group]);
        self.dlq_messages.with_label_values(&[group]);
    }

    /// Starts the per-topic produce series at 0 (called when a topic first takes messages).
    pub fn topic_seen(&self, topic: &str) {
        self.messages_deduplicated.with_label_values(&[topic]);
    }
}
