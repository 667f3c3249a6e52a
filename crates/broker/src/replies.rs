//! Requesters waiting for replies: a request message names its requester (`reply_to`), and the
//! broker that stored it remembers the connection it came over, so a reply reaches the
//! requester directly. Live state, like consumer membership; gone with the connection.

use std::collections::HashMap;

use ferromq_transport::Connection;
use parking_lot::Mutex;

/// Most requesters one broker remembers; beyond, new ones are not (their replies fail).
const MAX_REQUESTERS: usize = 100_000;

#[derive(Default)]
pub struct ReplyRegistry {
    by_requester: Mutex<HashMap<String, Connection>>,
}

impl ReplyRegistry {
    /// Remembers `connection` for `requester`'s replies. A requester name held by an open
    /// connection of another authenticated identity is not taken over (`Err`): that would
    /// divert its replies. The same identity may (a reconnect).
    pub fn register(&self, requester: &str, connection: &Connection) -> Result<(), String> {
        let mut by_requester = self.by_requester.lock();
        if let Some(holder) = by_requester.get(requester) {
            if !holder.is_closed() && holder.principal() != connection.principal() {
                return Err(format!(
                    "reply_to {requester:?} belongs to another client's connection"
                ));
            }
        }
        if by_requester.len() < MAX_REQUESTERS || by_requester.contains_key(requester) {
            by_requester.insert(requester.to_string(), connection.clone());
        }
        Ok(())
    }

    pub fn connection(&self, requester: &str) -> Option<Connection> {
        self.by_requester.lock().get(requester).cloned()
    }

    pub fn connection_closed(&self, connection_id: u64) {
        self.by_requester
            .lock()
            .retain(|_, connection| connection.id() != connection_id);
    }
}
