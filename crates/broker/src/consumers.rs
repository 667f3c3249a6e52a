//! Consumer groups: who is in each group right now. Membership is not replicated state: every
//! consumer heartbeats to every member of every broker group serving its topics, so each broker
//! (a new leader included) knows the whole group within one heartbeat. A member leaves when it
//! unregisters, when its connection closes, or when it stops heartbeating for `expiry`; the
//! remaining members are told at once (a one-way `GROUP_CHANGED` on their connections) and
//! rebalance.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferromq_protocol::headers::{ConsumeMode, GroupChangedNotice, Subscription};
use ferromq_protocol::RequestCode;
use ferromq_transport::Connection;
use parking_lot::Mutex;
use serde::Serialize;
use tracing::{debug, info};

/// Most members one group may have, and most groups a broker tracks: heartbeats beyond are
/// refused rather than growing memory without bound.
pub const MAX_MEMBERS_PER_GROUP: usize = 1024;
pub const MAX_GROUPS: usize = 10_000;

struct Member {
    connection: Connection,
    last_seen: Instant,
    subscription: Subscription,
}

/// What the admin API shows of a group.
#[derive(Debug, Clone, Serialize)]
pub struct GroupView {
    pub group: String,
    pub members: Vec<MemberView>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct MemberView {
    pub member_id: String,
    pub client_addr: String,
    pub topic: String,
    pub expression: String,
    #[schema(value_type = String)]
    pub mode: ConsumeMode,
    pub last_heartbeat_ms_ago: u64,
}

pub struct ConsumerRegistry {
    groups: Mutex<HashMap<String, BTreeMap<String, Member>>>,
    expiry: Duration,
}

impl ConsumerRegistry {
    pub fn new(expiry: Duration) -> ConsumerRegistry {
        ConsumerRegistry {
            groups: Mutex::new(HashMap::new()),
            expiry,
        }
    }

    /// Records a heartbeat; returns the groups the member joined (whose other members must
    /// rebalance), or an error when a limit is reached.
    pub fn heartbeat(
        &self,
        connection: &Connection,
        member_id: &str,
        subscriptions: Vec<Subscription>,
    ) -> Result<Vec<String>, String> {
        let now = Instant::now();
        let mut groups = self.groups.lock();
        let mut joined = Vec::new();
        for subscription in subscriptions {
            if !groups.contains_key(&subscription.group) && groups.len() >= MAX_GROUPS {
                return Err(format!(
                    "this broker tracks {MAX_GROUPS} consumer groups already"
                ));
            }
            let group = groups.entry(subscription.group.clone()).or_default();
            match group.get_mut(member_id) {
                Some(member) => {
                    member.last_seen = now;
                    member.connection = connection.clone();
                    member.subscription = subscription;
                }
                None => {
                    if group.len() >= MAX_MEMBERS_PER_GROUP {
                        return Err(format!(
                            "group {:?} has {MAX_MEMBERS_PER_GROUP} members already",
                            subscription.group
                        ));
                    }
                    info!(group = %subscription.group, member = member_id, "consumer joined");
                    joined.push(subscription.group.clone());
                    group.insert(
                        member_id.to_string(),
                        Member {
                            connection: connection.clone(),
                            last_seen: now,
                            subscription,
                        },
                    );
                }
            }
        }
        Ok(joined)
    }

    /// Removes a member that said goodbye; true if it was there.
    pub fn unregister(&self, group: &str, member_id: &str) -> bool {
        let mut groups = self.groups.lock();
        let removed = groups
            .get_mut(group)
            .is_some_and(|members| members.remove(member_id).is_some());
        if removed {
            info!(group, member = member_id, "consumer left");
        }
        groups.retain(|_, members| !members.is_empty());
        removed
    }

    /// Removes every member that used this connection; returns the groups that changed.
    pub fn connection_closed(&self, connection_id: u64) -> Vec<String> {
        self.remove_where(
            |member| member.connection.id() == connection_id,
            "connection closed",
        )
    }

    /// Removes members silent for longer than the expiry; returns the groups that changed.
    pub fn expire(&self, now: Instant) -> Vec<String> {
        let expiry = self.expiry;
        self.remove_where(
            |member| now.duration_since(member.last_seen) > expiry,
            "heartbeats stopped",
        )
    }

    fn remove_where(&self, doomed: impl Fn(&Member) -> bool, why: &str) -> Vec<String> {
        let mut groups = self.groups.lock();
        let mut changed = Vec::new();
        for (group, members) in groups.iter_mut() {
            let before = members.len();
            members.retain(|member_id, member| {
                let remove = doomed(member);
                if remove {
                    info!(%group, member = %member_id, why, "consumer left");
                }
                !remove
            });
            if members.len() != before {
                changed.push(group.clone());
            }
        }
        groups.retain(|_, members| !members.is_empty());
        changed
    }

    /// Ids of the members of a group subscribed to `topic`, sorted.
    pub fn members(&self, group: &str, topic: &str) -> Vec<String> {
        self.groups
            .lock()
            .get(group)
            .map(|members| {
                members
                    .iter()
                    .filter(|(_, member)| member.subscription.topic == topic)
                    .map(|(id, _)| id.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Tells every member of `group` that it changed (one-way frames; a lost one is covered
    /// by the consumers' periodic rebalance).
    pub fn notify(&self, group: &str) {
        self.notify_with(group, None);
    }

    /// Tells every member of `group` that its offsets of `reset_topic` (if any) were reset.
    pub fn notify_with(&self, group: &str, reset_topic: Option<&str>) {
        let connections: Vec<Connection> = self
            .groups
            .lock()
            .get(group)
            .map(|members| members.values().map(|m| m.connection.clone()).collect())
            .unwrap_or_default();
        let notice = GroupChangedNotice {
            group: group.to_string(),
            reset_topic: reset_topic.map(str::to_string),
        };
        for connection in connections {
            let notice = notice.clone();
            tokio::spawn(async move {
                if let Err(err) = connection
                    .one_way(RequestCode::GroupChanged, &notice, Bytes::new())
                    .await
                {
                    debug!(%err, "group change notice not delivered");
                }
            });
        }
    }

    pub fn views(&self) -> Vec<GroupView> {
        let now = Instant::now();
        let mut views: Vec<GroupView> = self
            .groups
            .lock()
            .iter()
            .map(|(group, members)| GroupView {
                group: group.clone(),
                members: members
                    .iter()
                    .map(|(member_id, member)| MemberView {
                        member_id: member_id.clone(),
                        client_addr: member.connection.peer_addr().to_string(),
                        topic: member.subscription.topic.clone(),
                        expression: member.subscription.expression.clone(),
                        mode: member.subscription.mode,
                        last_heartbeat_ms_ago: now.duration_since(member.last_seen).as_millis()
                            as u64,
                    })
                    .collect(),
            })
            .collect();
        views.sort_by(|a, b| a.group.cmp(&b.group));
        views
    }
}
