//! Cluster membership for ublkvd: SWIM gossip over UDP (foca), the metadata
//! each node announces, and the numbered view the I/O paths follow.

mod agent;
mod envelope;
mod identity;
mod replay;
/// A deterministic simulated cluster, to measure detection times, message
/// rates and false verdicts at scale.
pub mod sim;
mod timing;
mod view;

pub use agent::{Gossip, GossipConfig, GossipCounters, GossipError, MemberState, MemberStatus};
pub use envelope::{
    read_secret, ClusterKey, Nonce, OpenError, Opened, SealError, SecretError, OVERHEAD,
};
pub use identity::{NodeId, NodeMeta};
pub use replay::{ReplayError, ReplayWindow, MAX_SKEW_MS, NONCE_CAPACITY};
pub use timing::{Timing, TimingError};
pub use view::{Change, View};
