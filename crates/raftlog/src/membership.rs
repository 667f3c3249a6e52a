//! Group membership: who the voters and learners are (Raft's conf state, changed only by
//! committed conf-change entries) and where each member is reached (the address book).
//!
//! The founding members' addresses come from configuration; a member added later brings its
//! addresses in its conf-change entry, so every replica (and every later snapshot) learns them
//! from the log. Only simple one-at-a-time changes are made: add a learner, promote a learner
//! to voter, remove a member.

use std::collections::BTreeMap;
use std::sync::Arc;

use ferromq_protocol::codec;
use ferromq_store::state::StateDb;
use ferromq_store::StoreError;
use parking_lot::RwLock;
use raft::prelude::{ConfChange, ConfChangeType, ConfState};
use serde::{Deserialize, Serialize};

/// Raft-layer key of the address book; a replicated value (travels in snapshots).
pub(crate) const KEY_MEMBERS: &str = "members";

/// Where a member is reached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberAddress {
    /// Peer port, for Raft messages.
    pub raft_addr: String,
    /// Client port, advertised in routes.
    pub client_addr: String,
}

/// A membership change an operator asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MembershipChange {
    /// Adds a non-voting member that receives the log; the leader promotes it to voter once
    /// it has caught up.
    AddLearner { id: u64, address: MemberAddress },
    /// Removes a voter or learner (never the leader itself: transfer leadership first).
    Remove { id: u64 },
}

/// Why a membership change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MembershipError {
    #[error("not the leader (leader: {leader_id:?})")]
    NotLeader { leader_id: Option<u64> },
    #[error("another membership change is in progress; retry when it has been applied")]
    InProgress,
    #[error("{0}")]
    Invalid(String),
    /// Leadership changed before the change was applied; it may or may not have happened.
    #[error("membership change dropped by a leadership change; outcome unknown")]
    Dropped,
    #[error("raft node stopped")]
    Stopped,
}

/// The address book, shared by the Raft thread (which updates it as conf changes apply) and
/// the peer network and handlers (which read it).
#[derive(Debug, Clone, Default)]
pub struct Members {
    addresses: Arc<RwLock<BTreeMap<u64, MemberAddress>>>,
}

impl Members {
    /// Addresses recorded by applied conf changes, completed by the configured ones.
    pub fn load(
        state: &StateDb,
        configured: impl IntoIterator<Item = (u64, MemberAddress)>,
    ) -> Result<Members, StoreError> {
        let members = Members::default();
        members.reload(state)?;
        {
            let mut addresses = members.addresses.write();
            for (id, address) in configured {
                addresses.entry(id).or_insert(address);
            }
        }
        Ok(members)
    }

    /// Re-reads the stored address book (after a snapshot replaced it), keeping configured
    /// addresses of members it does not mention.
    pub fn reload(&self, state: &StateDb) -> Result<(), StoreError> {
        if let Some(bytes) = state.raft_value(KEY_MEMBERS)? {
            let stored: BTreeMap<u64, MemberAddress> =
                codec::decode(&bytes).map_err(|err| StoreError::Decode {
                    what: "members",
                    reason: err.to_string(),
                })?;
            self.addresses.write().extend(stored);
        }
        Ok(())
    }

    pub fn get(&self, id: u64) -> Option<MemberAddress> {
        self.addresses.read().get(&id).cloned()
    }

    pub fn all(&self) -> BTreeMap<u64, MemberAddress> {
        self.addresses.read().clone()
    }

    /// Records what an applied conf change says about addresses, durably.
    pub(crate) fn apply(&self, change: &ConfChange, state: &StateDb) -> Result<(), StoreError> {
        let changed = {
            let mut addresses = self.addresses.write();
            match change.get_change_type() {
                ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                    match codec::decode::<MemberAddress>(&change.context) {
                        Ok(address) => addresses.insert(change.node_id, address).is_none(),
                        // Founding members' entries carry no address: configuration has it.
                        Err(_) => false,
                    }
                }
                ConfChangeType::RemoveNode => addresses.remove(&change.node_id).is_some(),
            }
        };
        if changed {
            let encoded = codec::encode(&*self.addresses.read());
            state.save_raft_value(KEY_MEMBERS, &encoded, true)?;
        }
        Ok(())
    }
}

/// The conf change an operator's request becomes.
pub(crate) fn conf_change(change: &MembershipChange) -> ConfChange {
    let mut conf_change = ConfChange::default();
    match change {
        MembershipChange::AddLearner { id, address } => {
            conf_change.set_change_type(ConfChangeType::AddLearnerNode);
            conf_change.node_id = *id;
            conf_change.context = codec::encode(address).into();
        }
        MembershipChange::Remove { id } => {
            conf_change.set_change_type(ConfChangeType::RemoveNode);
            conf_change.node_id = *id;
        }
    }
    conf_change
}

/// The conf change that promotes a caught-up learner.
pub(crate) fn promotion(id: u64) -> ConfChange {
    let mut conf_change = ConfChange::default();
    conf_change.set_change_type(ConfChangeType::AddNode);
    conf_change.node_id = id;
    conf_change
}

/// Applies a simple conf change to a conf state the way raft-rs does, for replaying committed
/// entries before the Raft node exists.
pub(crate) fn apply_to(conf_state: &mut ConfState, change: &ConfChange) {
    let id = change.node_id;
    conf_state.voters.retain(|v| *v != id);
    conf_state.learners.retain(|l| *l != id);
    match change.get_change_type() {
        ConfChangeType::AddNode => conf_state.voters.push(id),
        ConfChangeType::AddLearnerNode => conf_state.learners.push(id),
        ConfChangeType::RemoveNode => {}
    }
}

/// Checks a requested change against the current membership.
pub(crate) fn validate(
    change: &MembershipChange,
    conf_state: &ConfState,
    leader_id: u64,
) -> Result<(), MembershipError> {
    let is_member = |id: &u64| conf_state.voters.contains(id) || conf_state.learners.contains(id);
    match change {
        MembershipChange::AddLearner { id, address } => {
            if *id == 0 {
                return Err(MembershipError::Invalid("member ids are positive".into()));
            }
            if is_member(id) {
                return Err(MembershipError::Invalid(format!(
                    "node {id} is already a member"
                )));
            }
            if address.raft_addr.is_empty() || address.client_addr.is_empty() {
                return Err(MembershipError::Invalid(
                    "a new member needs raft_addr and client_addr".into(),
                ));
            }
        }
        MembershipChange::Remove { id } => {
            if !is_member(id) {
                return Err(MembershipError::Invalid(format!(
                    "node {id} is not a member"
                )));
            }
            if *id == leader_id {
                return Err(MembershipError::Invalid(format!(
                    "node {id} is the leader; transfer leadership first"
                )));
            }
            if conf_state.voters == [*id] {
                return Err(MembershipError::Invalid(
                    "cannot remove the last voter".into(),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replayed_changes_match_what_raft_does() {
        let mut conf_state = ConfState::default();
        for id in [1, 2, 3] {
            apply_to(&mut conf_state, &promotion(id));
        }
        let address = MemberAddress {
            raft_addr: "a:1".into(),
            client_addr: "a:2".into(),
        };
        apply_to(
            &mut conf_state,
            &conf_change(&MembershipChange::AddLearner { id: 4, address }),
        );
        assert_eq!(
            (conf_state.voters.clone(), conf_state.learners.clone()),
            (vec![1, 2, 3], vec![4])
        );
        apply_to(&mut conf_state, &promotion(4));
        apply_to(
            &mut conf_state,
            &conf_change(&MembershipChange::Remove { id: 2 }),
        );
        assert_eq!(conf_state.voters, vec![1, 3, 4]);
        assert!(conf_state.learners.is_empty());
    }

    #[test]
    fn impossible_changes_are_refused() {
        let conf_state = ConfState {
            voters: vec![1, 2, 3],
            ..ConfState::default()
        };
        let address = MemberAddress {
            raft_addr: "a:1".into(),
            client_addr: "a:2".into(),
        };
        let add = |id| MembershipChange::AddLearner {
            id,
            address: address.clone(),
        };
        assert!(validate(&add(4), &conf_state, 1).is_ok());
        assert!(validate(&add(2), &conf_state, 1).is_err());
        assert!(validate(&add(0), &conf_state, 1).is_err());
        assert!(validate(&MembershipChange::Remove { id: 3 }, &conf_state, 1).is_ok());
        assert!(validate(&MembershipChange::Remove { id: 1 }, &conf_state, 1).is_err());
        assert!(validate(&MembershipChange::Remove { id: 9 }, &conf_state, 1).is_err());
    }
}
