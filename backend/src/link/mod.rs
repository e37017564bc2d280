//! Links to peers (seed 003's CTI/CCM): one TCP connection per configured
//! network, kept alive with heartbeats, declared down when they go silent;
//! a peer is reachable while any of its links is up.

mod connection;
mod frames;
mod health;
mod peer;
mod remote;

pub use connection::{Link, LinkCounters, LinkError, Reply, PEER_CLOSED_SETTLE, STRAGGLE};
pub use health::{Health, HealthConfig, Transition};
pub use peer::PeerLinks;
pub use remote::RemoteTail;
