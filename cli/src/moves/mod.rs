//! Moving vdisks between their tails: how a move runs (`coordinator.rs`:
//! Begin, Ack, End) and when the cluster moves one on its own
//! (`failover.rs`, the whole policy and where the rest of it lives).

pub mod coordinator;
pub mod failover;
