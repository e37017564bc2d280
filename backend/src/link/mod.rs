//! Links to peers (seed 003's CTI/CCM): one TCP connection per configured
//! network, kept alive with heartbeats, declared down when they go silent.

mod connection;
mod health;

pub use connection::{Link, LinkCounters, LinkError, Reply};
pub use health::{Health, HealthConfig, Transition};
