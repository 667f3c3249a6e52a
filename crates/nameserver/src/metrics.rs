//! Nameserver metrics; the catalogue is in docs/metrics.md.

use ferromq_service::metrics::register;
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use crate::registry::RemovalReason;

#[derive(Clone)]
pub struct NameserverMetrics {
    pub brokers: IntGauge,
    pub registrations: IntCounter,
    pub removals: IntCounterVec,
}

impl NameserverMetrics {
    pub fn new(registry: &Registry) -> NameserverMetrics {
        let metrics = NameserverMetrics {
            brokers: register(
                registry,
                IntGauge::new("mq_nameserver_brokers", "Brokers currently registered")
                    .expect("valid metric"),
            ),
            registrations: register(
                registry,
                IntCounter::new(
                    "mq_nameserver_registrations_total",
                    "Broker registrations and heartbeats received",
                )
                .expect("valid metric"),
            ),
            removals: register(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "mq_nameserver_broker_removals_total",
                        "Brokers dropped from routes, by reason",
                    ),
                    &["reason"],
                )
                .expect("valid metric"),
            ),
        };
        // Every reason starts at 0, so alerts see the series before the first removal.
        for reason in [
            RemovalReason::Expired,
            RemovalReason::ConnectionClosed,
            RemovalReason::Unregistered,
        ] {
            metrics.removals.with_label_values(&[reason.name()]);
        }
        metrics
    }

    pub fn removed(&self, reason: RemovalReason, count: usize) {
        self.removals
            .with_label_values(&[reason.name()])
            .inc_by(count as u64);
    }
}
