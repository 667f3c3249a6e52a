//! The Raft-replicated log of a broker group: tikv `raft` driven over the store's commit-log
//! segments. The leader is the group's master; an entry is acknowledged only after it is
//! committed (persisted by a majority under the flush policy) and applied.

mod logger;
pub mod membership;
pub mod metrics;
mod node;
pub mod peer;
pub mod storage;
pub mod ticket;

pub use membership::{MemberAddress, Members, MembershipChange, MembershipError};
pub use metrics::RaftMetrics;
pub use node::{
    Driver, FlushPolicy, NoPeers, PeerProgress, PeerSender, ProposeError, RaftConfig, RaftError,
    RaftNode, RaftStatus, Role, StateMachine,
};
pub use raft::prelude::Message as RaftMessage;
