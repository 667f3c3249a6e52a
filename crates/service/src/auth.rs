//! Client authentication and permissions for a server's wire protocol (`[auth]` in the
//! configuration). When enabled, a connection must prove an access key in its handshake (see
//! `ferromq_protocol::auth`), and every request is checked against what that key may do:
//! publish to topics, subscribe to topics, use consumer or producer groups, administer.
//! Anything not granted is refused (default deny).

use std::collections::{HashMap, HashSet, VecDeque};

use ferromq_protocol::auth::{verify, AuthProof, MAX_CLOCK_SKEW_MS};
use ferromq_protocol::headers::HandshakeRequest;
use ferromq_protocol::system::{dlq_group, group_of_offsets_group, retry_group};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// `[auth]`: off by default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Require credentials from every client connection.
    pub enabled: bool,
    pub users: Vec<UserConfig>,
}

/// One access key and what it may do. Names are exact, or end in `*` to match every name with
/// that prefix (`"*"` matches all).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct UserConfig {
    pub access_key: String,
    #[serde(serialize_with = "crate::config::redact")]
    pub secret_key: String,
    /// Topics it may send to.
    pub publish: Vec<String>,
    /// Topics it may consume.
    pub subscribe: Vec<String>,
    /// Consumer and producer groups it may act as (a group's retry and dead-letter topics
    /// come with it).
    pub groups: Vec<String>,
    /// Everything, including creating topics over the wire and registering brokers.
    pub admin: bool,
}

impl AuthConfig {
    pub fn validate(&self) -> Result<(), String> {
        let mut seen = std::collections::HashSet::new();
        for user in &self.users {
            if user.access_key.is_empty() || user.secret_key.len() < 16 {
                return Err(format!(
                    "auth.users: access_key must be set and secret_key at least 16 characters \
                     (user {:?})",
                    user.access_key
                ));
            }
            if !seen.insert(&user.access_key) {
                return Err(format!("auth.users: {:?} appears twice", user.access_key));
            }
        }
        if self.enabled && self.users.is_empty() {
            return Err("auth.enabled is set but auth.users is empty: nobody could connect".into());
        }
        Ok(())
    }
}

/// What a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need<'a> {
    /// Anyone who connected (pings).
    Connected,
    Publish(&'a str),
    Subscribe(&'a str),
    Group(&'a str),
    Admin,
    /// Nobody on this port (codes only peers or the server itself send).
    Nobody,
}

fn matches(patterns: &[String], name: &str) -> bool {
    patterns
        .iter()
        .any(|pattern| match pattern.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => pattern == name,
        })
}

impl UserConfig {
    fn allows(&self, need: Need<'_>) -> bool {
        if self.admin {
            return !matches!(need, Need::Nobody);
        }
        match need {
            Need::Connected => true,
            Need::Publish(topic) => matches(&self.publish, topic),
            Need::Subscribe(topic) => {
                matches(&self.subscribe, topic)
                    || system_topic_group(topic).is_some_and(|g| matches(&self.groups, g))
            }
            // A broadcast member's own offsets group belongs to its group.
            Need::Group(group) => matches(&self.groups, group_of_offsets_group(group)),
            Need::Admin | Need::Nobody => false,
        }
    }
}

/// The group a retry or dead-letter topic belongs to.
fn system_topic_group(topic: &str) -> Option<&str> {
    retry_group(topic).or_else(|| dlq_group(topic))
}

/// Checks handshakes and requests against `[auth]`.
pub struct Access {
    enabled: bool,
    users: HashMap<String, UserConfig>,
    /// Nonces of accepted proofs for the clock-skew window: a captured handshake cannot be
    /// replayed.
    seen: Mutex<SeenNonces>,
}

/// At most this many handshakes per access key in the replay window (10 minutes); a key over
/// it is refused until the window moves on. Per key, so one key cannot lock out the others.
const MAX_HANDSHAKES_PER_KEY: usize = 100_000;

#[derive(Default)]
struct SeenNonces {
    /// (accepted at, nonce, access key), oldest first.
    order: VecDeque<(u64, [u8; 16], String)>,
    nonces: HashSet<[u8; 16]>,
    per_key: HashMap<String, usize>,
}

impl SeenNonces {
    fn forget_before(&mut self, oldest_ms: u64) {
        while self.order.front().is_some_and(|(at, _, _)| *at < oldest_ms) {
            if let Some((_, nonce, key)) = self.order.pop_front() {
                self.nonces.remove(&nonce);
                if let Some(count) = self.per_key.get_mut(&key) {
                    *count -= 1;
                    if *count == 0 {
                        self.per_key.remove(&key);
                    }
                }
            }
        }
    }
}

impl Access {
    pub fn new(config: &AuthConfig) -> Access {
        Access {
            enabled: config.enabled,
            users: config
                .users
                .iter()
                .map(|u| (u.access_key.clone(), u.clone()))
                .collect(),
            seen: Mutex::new(SeenNonces::default()),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// For `Handler::authenticate`: the access key a handshake proved, or why not.
    pub fn authenticate(
        &self,
        handshake: &HandshakeRequest,
        now_ms: u64,
    ) -> Result<Option<String>, String> {
        if !self.enabled {
            return Ok(None);
        }
        let proof: &AuthProof = handshake
            .auth
            .as_ref()
            .ok_or("no credentials in the handshake")?;
        let user = self
            .users
            .get(&proof.access_key)
            .ok_or_else(|| format!("unknown access key {:?}", proof.access_key))?;
        verify(proof, &handshake.client_id, &user.secret_key, now_ms)
            .map_err(|err| format!("access key {:?}: {err}", proof.access_key))?;
        let mut seen = self.seen.lock();
        seen.forget_before(now_ms.saturating_sub(2 * MAX_CLOCK_SKEW_MS));
        if seen.nonces.contains(&proof.nonce) {
            return Err(format!(
                "access key {:?}: a replayed handshake",
                proof.access_key
            ));
        }
        if seen.per_key.get(&proof.access_key).copied().unwrap_or(0) >= MAX_HANDSHAKES_PER_KEY {
            return Err(format!(
                "access key {:?}: too many handshakes in the last 10 minutes",
                proof.access_key
            ));
        }
        seen.nonces.insert(proof.nonce);
        *seen.per_key.entry(proof.access_key.clone()).or_insert(0) += 1;
        seen.order
            .push_back((now_ms, proof.nonce, proof.access_key.clone()));
        Ok(Some(proof.access_key.clone()))
    }

    /// Whether the connection authenticated as `principal` may do what `needs` lists (all of
    /// it). `Err` names what is missing.
    pub fn authorize(&self, principal: Option<&str>, needs: &[Need<'_>]) -> Result<(), String> {
        if !self.enabled {
            return Ok(());
        }
        let user = principal
            .and_then(|p| self.users.get(p))
            .ok_or("not authenticated")?;
        match needs.iter().find(|need| !user.allows(**need)) {
            None => Ok(()),
            Some(need) => Err(format!(
                "access key {:?} may not {}",
                user.access_key,
                describe(*need)
            )),
        }
    }
}

fn describe(need: Need<'_>) -> String {
    match need {
        Need::Connected => "connect".into(),
        Need::Publish(topic) => format!("publish to topic {topic:?}"),
        Need::Subscribe(topic) => format!("subscribe to topic {topic:?}"),
        Need::Group(group) => format!("act as group {group:?}"),
        Need::Admin => "administer (admin = true)".into(),
        Need::Nobody => "send this request on this port".into(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use ferromq_protocol::auth::Credentials;

    fn config() -> AuthConfig {
        AuthConfig {
            enabled: true,
            users: vec![UserConfig {
                access_key: "orders-app".into(),
                secret_key: "0123456789abcdef".into(),
                publish: vec!["orders".into(), "audit-*".into()],
                subscribe: vec!["payments".into()],
                groups: vec!["billing".into()],
                admin: false,
            }],
        }
    }

    fn handshake(secret: &str, now: u64) -> HandshakeRequest {
        HandshakeRequest {
            min_version: 3,
            max_version: 3,
            client_id: "app".into(),
            auth: Some(
                Credentials {
                    access_key: "orders-app".into(),
                    secret_key: secret.into(),
                }
                .prove("app", now),
            ),
        }
    }

    #[test]
    fn handshakes_need_a_fresh_valid_proof_of_a_known_key() {
        let access = Access::new(&config());
        let good = handshake("0123456789abcdef", 10_000);
        assert_eq!(
            access.authenticate(&good, 10_000),
            Ok(Some("orders-app".into()))
        );
        assert!(access
            .authenticate(&good, 10_001)
            .unwrap_err()
            .contains("replayed"));
        assert!(access
            .authenticate(&handshake("wrong-secret-000", 10_000), 10_000)
            .is_err());
        let mut anonymous = good.clone();
        anonymous.auth = None;
        assert!(access.authenticate(&anonymous, 10_000).is_err());
        let disabled = Access::new(&AuthConfig::default());
        assert_eq!(disabled.authenticate(&anonymous, 0), Ok(None));
    }

    #[test]
    fn permissions_are_granted_by_name_or_prefix_and_denied_otherwise() {
        let access = Access::new(&config());
        let user = Some("orders-app");
        assert!(access.authorize(user, &[Need::Publish("orders")]).is_ok());
        assert!(access.authorize(user, &[Need::Publish("audit-eu")]).is_ok());
        assert!(access
            .authorize(user, &[Need::Publish("payments")])
            .is_err());
        assert!(access
            .authorize(user, &[Need::Group("billing"), Need::Subscribe("payments")])
            .is_ok());
        // The group's own retry and dead-letter topics come with the group.
        assert!(access
            .authorize(user, &[Need::Subscribe("%RETRY%billing")])
            .is_ok());
        assert!(access
            .authorize(user, &[Need::Subscribe("%RETRY%other")])
            .is_err());
        assert!(access
            .authorize(user, &[Need::Subscribe("orders")])
            .is_err());
        assert!(access.authorize(user, &[Need::Admin]).is_err());
        // A broadcast member's offsets group is its group's.
        assert!(access
            .authorize(user, &[Need::Group("billing%BROADCAST%host-1")])
            .is_ok());
        assert!(access
            .authorize(user, &[Need::Group("other%BROADCAST%billing")])
            .is_err());
        assert!(access.authorize(None, &[Need::Connected]).is_err());
        assert!(access.authorize(Some("ghost"), &[Need::Connected]).is_err());
    }
}
