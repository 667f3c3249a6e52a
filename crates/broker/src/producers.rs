//! Transactional producers that are alive: the connections a broker can ask about an undecided
//! transaction. Like consumer membership, live state that every member of a broker group learns
//! from heartbeats, not log state.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ferromq_transport::Connection;
use parking_lot::Mutex;

/// Most producer groups (and connections per group) one broker tracks.
const MAX_GROUPS: usize = 10_000;
const MAX_PER_GROUP: usize = 1024;

/// connection id → (connection, last heartbeat)
type Producers = BTreeMap<u64, (Connection, Instant)>;

pub struct ProducerRegistry {
    groups: Mutex<HashMap<String, Producers>>,
    expiry: Duration,
    next: AtomicUsize,
}

impl ProducerRegistry {
    pub fn new(expiry: Duration) -> ProducerRegistry {
        ProducerRegistry {
            groups: Mutex::new(HashMap::new()),
            expiry,
            next: AtomicUsize::new(0),
        }
    }

    pub fn heartbeat(&self, connection: &Connection, group: &str) -> Result<(), String> {
        let mut groups = self.groups.lock();
        if !groups.contains_key(group) && groups.len() >= MAX_GROUPS {
            return Err(format!(
                "this broker tracks {MAX_GROUPS} producer groups already"
            ));
        }
        let members = groups.entry(group.to_string()).or_default();
        if !members.contains_key(&connection.id()) && members.len() >= MAX_PER_GROUP {
            return Err(format!(
                "producer group {group:?} has {MAX_PER_GROUP} connections already"
            ));
        }
        members.insert(connection.id(), (connection.clone(), Instant::now()));
        Ok(())
    }

    pub fn connection_closed(&self, connection_id: u64) {
        let mut groups = self.groups.lock();
        for members in groups.values_mut() {
            members.remove(&connection_id);
        }
        groups.retain(|_, members| !members.is_empty());
    }

    /// A live producer of `group` to ask, taking turns among them.
    pub fn pick(&self, group: &str) -> Option<Connection> {
        let mut groups = self.groups.lock();
        let members = groups.get_mut(group)?;
        members.retain(|_, (_, seen)| seen.elapsed() < self.expiry);
        let live: Vec<&Connection> = members.values().map(|(c, _)| c).collect();
        if live.is_empty() {
            return None;
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed) % live.len();
        Some(live[turn].clone())
    }
}
