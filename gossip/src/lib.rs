//! Cluster membership for ublkvd: SWIM gossip over UDP (foca), the metadata
//! each node announces, and the numbered view the I/O paths follow.

mod agent;
mod envelope;
mod identity;
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
pub use timing::{Timing, TimingError};
pub use view::{Change, View};
