//! The client connections a server holds, for the admin API's `/v1/connections` and the
//! `mq_connections` gauge.

use std::collections::BTreeMap;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use ferromq_transport::Connection;
use parking_lot::Mutex;
use prometheus::{IntGauge, Registry};
use serde::Serialize;

use crate::metrics::register;

/// What the admin API shows of one connection.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ConnectionView {
    pub id: u64,
    pub peer_addr: String,
    /// The identity the client gave in its handshake.
    pub client_id: String,
    /// When it connected, ms since the epoch.
    pub connected_at_ms: u64,
    pub requests: u64,
    pub last_request_ms_ago: Option<u64>,
}

struct Entry {
    view: ConnectionView,
    last_request: Option<Instant>,
}

pub struct ConnectionTable {
    open: Mutex<BTreeMap<u64, Entry>>,
    gauge: IntGauge,
}

impl ConnectionTable {
    pub fn new(registry: &Registry) -> ConnectionTable {
        ConnectionTable {
            open: Mutex::new(BTreeMap::new()),
            gauge: register(
                registry,
                IntGauge::new("mq_connections", "Client connections open").expect("valid metric"),
            ),
        }
    }

    pub fn opened(&self, connection: &Connection) {
        let connected_at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut open = self.open.lock();
        open.insert(
            connection.id(),
            Entry {
                view: ConnectionView {
                    id: connection.id(),
                    peer_addr: connection.peer_addr().to_string(),
                    client_id: connection.peer_id().to_string(),
                    connected_at_ms,
                    requests: 0,
                    last_request_ms_ago: None,
                },
                last_request: None,
            },
        );
        self.gauge.set(open.len() as i64);
    }

    pub fn requested(&self, connection: &Connection) {
        if let Some(entry) = self.open.lock().get_mut(&connection.id()) {
            entry.view.requests += 1;
            entry.last_request = Some(Instant::now());
        }
    }

    pub fn closed(&self, connection: &Connection) {
        let mut open = self.open.lock();
        open.remove(&connection.id());
        self.gauge.set(open.len() as i64);
    }

    /// Open connections in id order (the order they were accepted), after `after`.
    pub fn views(&self, after: Option<u64>, limit: usize) -> Vec<ConnectionView> {
        let lower = after.map_or(0, |a| a.saturating_add(1));
        self.open
            .lock()
            .range(lower..)
            .take(limit)
            .map(|(_, entry)| {
                let mut view = entry.view.clone();
                view.last_request_ms_ago =
                    entry.last_request.map(|at| at.elapsed().as_millis() as u64);
                view
            })
            .collect()
    }

    pub fn len(&self) -> usize {
        self.open.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
