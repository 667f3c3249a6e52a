//! Metrics every service exports: build info and the latency of every RPC it answers.

use std::sync::Arc;
use std::time::Instant;

use crate::connections::ConnectionTable;

use ferromq_protocol::{RequestCode, Status};
use ferromq_transport::{Connection, Handler, Reply, Request};
use prometheus::{HistogramOpts, HistogramVec, IntGaugeVec, Opts, Registry};

/// Latency buckets in seconds, from 50 µs to 20 s (long polls sit at the top).
pub const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 20.0,
];

/// A registry with `mq_build_info{version}` already in it.
pub fn new_registry(service: &str) -> Registry {
    let registry = Registry::new();
    let build = IntGaugeVec::new(
        Opts::new("mq_build_info", "FerroMQ build information (always 1)"),
        &["service", "version"],
    )
    .expect("valid metric");
    build
        .with_label_values(&[service, env!("CARGO_PKG_VERSION")])
        .set(1);
    registry.register(Box::new(build)).expect("registered once");
    registry
}

/// Registers a metric that this code defines; names are constants, so failure is a bug.
pub fn register<M: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    metric: M,
) -> M {
    registry
        .register(Box::new(metric.clone()))
        .expect("metric names are unique per registry");
    metric
}

/// Wraps a handler and records `mq_rpc_duration_seconds{request_code,status}`.
pub struct Instrumented<H> {
    inner: H,
    duration: HistogramVec,
    in_flight: prometheus::IntGauge,
    connections: Arc<ConnectionTable>,
}

impl<H> Instrumented<H> {
    /// Wraps `inner`, timing its answers and keeping `connections` up to date.
    pub fn new(
        inner: H,
        registry: &Registry,
        connections: Arc<ConnectionTable>,
    ) -> Instrumented<H> {
        let duration = register(
            registry,
            HistogramVec::new(
                HistogramOpts::new(
                    "mq_rpc_duration_seconds",
                    "Time to answer a request, by request code and status",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["request_code", "status"],
            )
            .expect("valid metric"),
        );
        let in_flight = register(
            registry,
            prometheus::IntGauge::new("mq_requests_in_flight", "Requests being answered now")
                .expect("valid metric"),
        );
        Instrumented {
            inner,
            duration,
            in_flight,
            connections,
        }
    }

    pub fn inner(&self) -> &H {
        &self.inner
    }
}

impl<H: Handler> Handler for Instrumented<H> {
    async fn handle(&self, connection: &Connection, request: Request) -> Reply {
        let started = Instant::now();
        self.connections.requested(connection);
        let code = RequestCode::from_u16(request.code).map_or("unknown", RequestCode::name);
        self.in_flight.inc();
        // Decremented even if the handler's future is dropped (the connection closed).
        let _in_flight = scopeguard(&self.in_flight);
        let reply = self.inner.handle(connection, request).await;
        let status: &str = if reply.status == Status::Ok {
            "ok"
        } else {
            reply.status.name()
        };
        self.duration
            .with_label_values(&[code, status])
            .observe(started.elapsed().as_secs_f64());
        reply
    }

    fn authenticate(
        &self,
        handshake: &ferromq_protocol::headers::HandshakeRequest,
    ) -> Result<Option<String>, String> {
        self.inner.authenticate(handshake)
    }

    fn on_open(&self, connection: &Connection) {
        self.connections.opened(connection);
        self.inner.on_open(connection)
    }

    fn on_close(&self, connection: &Connection) {
        self.connections.closed(connection);
        self.inner.on_close(connection)
    }
}

/// Decrements `gauge` when dropped.
struct InFlight<'a>(&'a prometheus::IntGauge);

fn scopeguard(gauge: &prometheus::IntGauge) -> InFlight<'_> {
    InFlight(gauge)
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}
