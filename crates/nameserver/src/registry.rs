//! The route registry: which broker (group, node) is alive, what role it has, which topics it
//! serves. Pure state with time passed in, so expiry is tested without waiting.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use ferromq_protocol::headers::{
    perm, BrokerInfo, BrokerRole, GroupRoute, RegisterBrokerRequest, TopicConfig, TopicRoute,
};

/// Identifies one broker process: its group and its node id within the group.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BrokerKey {
    pub group: String,
    pub node_id: u64,
}

#[derive(Debug, Clone)]
struct BrokerEntry {
    registration: RegisterBrokerRequest,
    topics: Vec<TopicConfig>,
    last_heartbeat: Instant,
    connection_id: u64,
}

/// Why a broker left the routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemovalReason {
    Expired,
    ConnectionClosed,
    Unregistered,
}

impl RemovalReason {
    pub fn name(self) -> &'static str {
        match self {
            RemovalReason::Expired => "expired",
            RemovalReason::ConnectionClosed => "connection_closed",
            RemovalReason::Unregistered => "unregistered",
        }
    }
}

#[derive(Debug)]
pub struct RouteRegistry {
    brokers: HashMap<BrokerKey, BrokerEntry>,
    expiry: Duration,
}

impl RouteRegistry {
    pub fn new(expiry: Duration) -> RouteRegistry {
        RouteRegistry {
            brokers: HashMap::new(),
            expiry,
        }
    }

    pub fn expiry(&self) -> Duration {
        self.expiry
    }

    pub fn broker_count(&self) -> usize {
        self.brokers.len()
    }

    /// Records a registration or heartbeat. Returns true if the broker was not known before.
    pub fn register(
        &mut self,
        registration: RegisterBrokerRequest,
        topics: Vec<TopicConfig>,
        connection_id: u64,
        now: Instant,
    ) -> bool {
        let key = BrokerKey {
            group: registration.group.clone(),
            node_id: registration.node_id,
        };
        let entry = BrokerEntry {
            registration,
            topics,
            last_heartbeat: now,
            connection_id,
        };
        self.brokers.insert(key, entry).is_none()
    }

    pub fn unregister(&mut self, group: &str, node_id: u64) -> bool {
        let key = BrokerKey {
            group: group.to_string(),
            node_id,
        };
        self.brokers.remove(&key).is_some()
    }

    /// Drops every broker registered over the closed connection.
    pub fn connection_closed(&mut self, connection_id: u64) -> Vec<BrokerKey> {
        self.remove_where(|entry| entry.connection_id == connection_id)
    }

    /// Drops brokers silent for longer than the expiry.
    pub fn expire(&mut self, now: Instant) -> Vec<BrokerKey> {
        let expiry = self.expiry;
        self.remove_where(|entry| now.saturating_duration_since(entry.last_heartbeat) > expiry)
    }

    fn remove_where(&mut self, predicate: impl Fn(&BrokerEntry) -> bool) -> Vec<BrokerKey> {
        let doomed: Vec<BrokerKey> = self
            .brokers
            .iter()
            .filter(|(_, entry)| predicate(entry))
            .map(|(key, _)| key.clone())
            .collect();
        for key in &doomed {
            self.brokers.remove(key);
        }
        doomed
    }

    /// Members of every group, ordered by group name and node id.
    fn groups(&self) -> BTreeMap<&str, Vec<&BrokerEntry>> {
        let mut groups: BTreeMap<&str, Vec<&BrokerEntry>> = BTreeMap::new();
        for (key, entry) in &self.brokers {
            groups.entry(key.group.as_str()).or_default().push(entry);
        }
        for members in groups.values_mut() {
            members.sort_by_key(|entry| entry.registration.node_id);
        }
        groups
    }

    /// The group's current leader: the member claiming leadership in the highest term, unless a
    /// member has seen a newer term (then the claim is stale and the group has no known leader).
    fn leader<'a>(members: &[&'a BrokerEntry]) -> Option<&'a BrokerEntry> {
        let newest_term = members.iter().map(|m| m.registration.term).max()?;
        members
            .iter()
            .filter(|m| m.registration.role == BrokerRole::Leader)
            .max_by_key(|m| m.registration.term)
            .filter(|m| m.registration.term == newest_term)
            .copied()
    }

    /// The route of `topic`, or of the groups that would auto-create it; `None` if neither.
    pub fn route(&self, topic: &str) -> Option<TopicRoute> {
        let groups = self.groups();
        let mut serving = Vec::new();
        let mut creating = Vec::new();
        for (group, members) in &groups {
            let leader = RouteRegistry::leader(members);
            let followers: Vec<String> = members
                .iter()
                .filter(|m| leader.is_none_or(|l| l.registration.node_id != m.registration.node_id))
                .map(|m| m.registration.client_addr.clone())
                .collect();
            let authority = leader.or_else(|| members.first().copied());
            let Some(authority) = authority else { continue };
            let route = |queues: u32, perm: u8| GroupRoute {
                group: group.to_string(),
                leader: leader.map(|l| l.registration.client_addr.clone()),
                followers: followers.clone(),
                queues,
                perm,
            };
            // Prefer the leader's view of the topic; a follower's view serves reads meanwhile.
            let topic_config = std::iter::once(authority)
                .chain(members.iter().copied())
                .find_map(|m| m.topics.iter().find(|t| t.name == topic));
            if let Some(config) = topic_config {
                serving.push(route(config.queues, config.perm));
            } else if authority.registration.auto_create_topics {
                creating.push(route(
                    authority.registration.default_queues,
                    perm::READ_WRITE,
                ));
            }
        }
        if !serving.is_empty() {
            return Some(TopicRoute {
                topic: topic.to_string(),
                exists: true,
                groups: serving,
            });
        }
        (!creating.is_empty()).then(|| TopicRoute {
            topic: topic.to_string(),
            exists: false,
            groups: creating,
        })
    }

    /// Every registered broker, for `/v1/cluster` and `GET_CLUSTER`.
    pub fn brokers(&self, now: Instant) -> Vec<BrokerInfo> {
        let mut brokers: Vec<BrokerInfo> = self
            .brokers
            .values()
            .map(|entry| {
                let r = &entry.registration;
                BrokerInfo {
                    cluster: r.cluster.clone(),
                    group: r.group.clone(),
                    node_id: r.node_id,
                    client_addr: r.client_addr.clone(),
                    admin_addr: r.admin_addr.clone(),
                    role: r.role,
                    term: r.term,
                    topics: entry.topics.len() as u32,
                    last_heartbeat_ms_ago: now
                        .saturating_duration_since(entry.last_heartbeat)
                        .as_millis() as u64,
                }
            })
            .collect();
        brokers.sort_by(|a, b| (&a.group, a.node_id).cmp(&(&b.group, b.node_id)));
        brokers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registration(
        group: &str,
        node_id: u64,
        role: BrokerRole,
        term: u64,
        topics: &[&str],
    ) -> (RegisterBrokerRequest, Vec<TopicConfig>) {
        let request = RegisterBrokerRequest {
            cluster: "c".into(),
            group: group.into(),
            node_id,
            client_addr: format!("{group}-{node_id}:10911"),
            admin_addr: format!("{group}-{node_id}:10913"),
            role,
            term,
            auto_create_topics: true,
            default_queues: 4,
        };
        let topics = topics
            .iter()
            .map(|name| TopicConfig {
                name: name.to_string(),
                queues: 8,
                perm: perm::READ_WRITE,
            })
            .collect();
        (request, topics)
    }

    fn register(
        registry: &mut RouteRegistry,
        (request, topics): (RegisterBrokerRequest, Vec<TopicConfig>),
        connection_id: u64,
        now: Instant,
    ) -> bool {
        registry.register(request, topics, connection_id, now)
    }

    #[test]
    fn route_lists_leader_and_followers_of_each_group() {
        let now = Instant::now();
        let mut registry = RouteRegistry::new(Duration::from_secs(120));
        register(
            &mut registry,
            registration("a", 1, BrokerRole::Leader, 3, &["T"]),
            1,
            now,
        );
        register(
            &mut registry,
            registration("a", 2, BrokerRole::Follower, 3, &["T"]),
            2,
            now,
        );
        register(
            &mut registry,
            registration("b", 1, BrokerRole::Leader, 1, &["Other"]),
            3,
            now,
        );
        let route = registry.route("T").unwrap();
        assert!(route.exists);
        assert_eq!(route.groups.len(), 1);
        assert_eq!(route.groups[0].leader.as_deref(), Some("a-1:10911"));
        assert_eq!(route.groups[0].followers, vec!["a-2:10911".to_string()]);
        assert_eq!(route.groups[0].queues, 8);
    }

    #[test]
    fn a_stale_leader_claim_is_not_routed_to() {
        let now = Instant::now();
        let mut registry = RouteRegistry::new(Duration::from_secs(120));
        register(
            &mut registry,
            registration("a", 1, BrokerRole::Leader, 3, &["T"]),
            1,
            now,
        );
        register(
            &mut registry,
            registration("a", 2, BrokerRole::Leader, 4, &["T"]),
            2,
            now,
        );
        assert_eq!(
            registry.route("T").unwrap().groups[0].leader.as_deref(),
            Some("a-2:10911")
        );
        register(
            &mut registry,
            registration("a", 3, BrokerRole::Follower, 5, &["T"]),
            3,
            now,
        );
        assert_eq!(registry.route("T").unwrap().groups[0].leader, None);
    }

    #[test]
    fn unknown_topic_routes_to_groups_that_auto_create() {
        let now = Instant::now();
        let mut registry = RouteRegistry::new(Duration::from_secs(120));
        assert!(registry.route("New").is_none());
        register(
            &mut registry,
            registration("a", 1, BrokerRole::Leader, 1, &[]),
            1,
            now,
        );
        let route = registry.route("New").unwrap();
        assert!(!route.exists);
        assert_eq!(route.groups[0].queues, 4);
    }

    #[test]
    fn silent_brokers_expire_and_come_back_on_their_next_heartbeat() {
        let start = Instant::now();
        let mut registry = RouteRegistry::new(Duration::from_secs(120));
        register(
            &mut registry,
            registration("a", 1, BrokerRole::Leader, 1, &["T"]),
            1,
            start,
        );
        assert!(registry.expire(start + Duration::from_secs(119)).is_empty());
        assert_eq!(registry.expire(start + Duration::from_secs(121)).len(), 1);
        assert!(registry.route("T").is_none());
        assert!(register(
            &mut registry,
            registration("a", 1, BrokerRole::Leader, 1, &["T"]),
            1,
            start + Duration::from_secs(122)
        ));
        assert!(registry.route("T").is_some());
    }

    #[test]
    fn closing_a_connection_drops_the_brokers_registered_over_it() {
        let now = Instant::now();
        let mut registry = RouteRegistry::new(Duration::from_secs(120));
        register(
            &mut registry,
            registration("a", 1, BrokerRole::Leader, 1, &["T"]),
            7,
            now,
        );
        register(
            &mut registry,
            registration("b", 1, BrokerRole::Leader, 1, &["T"]),
            8,
            now,
        );
        assert_eq!(registry.connection_closed(7).len(), 1);
        assert_eq!(registry.route("T").unwrap().groups.len(), 1);
        assert!(registry.unregister("b", 1));
        assert!(registry.route("T").is_none());
    }
}
