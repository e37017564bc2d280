//! The replicated configuration store: openraft drives the protocol, redb
//! keeps the Raft log and the state machine on disk.

// openraft's traits return its `StorageError` (over 200 bytes) by value;
// the helpers here return the same type so that `?` reaches the trait
// methods unchanged. Boxing it would only add conversions at every boundary.
#![allow(clippy::result_large_err)]

mod log_store;
pub mod network;
pub mod server;
mod state_machine;
mod types;

pub use log_store::{LogReader, LogStore};
pub use network::{RaftRpc, StoreTls, TcpConnection, TcpNetwork, MAX_FRAME};
pub use server::serve;
pub use state_machine::{SnapshotBuilder, StateMachine};
pub use types::{Raft, TypeConfig};
