//! Moving vdisks between their tails: when the cluster moves one on its own
//! (`failover.rs`, the whole policy and where the rest of it lives).

pub mod failover;
