//! Routing and the pending-request table (seed 003, Fig. 6): which path each
//! request takes, and what happens to it when a path fails. Pure state: the
//! caller feeds events with the current time and carries out the actions.
//! [`RoutedVdisk`] is that caller: a tokio task around one router per vdisk,
//! running each attempt on a [`Tail`](crate::Tail): this node's, a peer's or a
//! mirror. A [`Gate`] in front of
//! the router holds requests while the vdisk's mapping changes.

mod counters;
mod gate;
mod router;
mod vdisk;

pub use counters::{PathCounters, PathsCounters, VdiskCounters};
pub use gate::Gate;
pub use router::{Action, RouteConfig, Router};
pub use vdisk::RoutedVdisk;
