//! Routing and the pending-request table (seed 003, Fig. 6): which path each
//! request takes, and what happens to it when a path fails. Pure state: the
//! caller feeds events with the current time and carries out the actions.

mod router;

pub use router::{Action, RouteConfig, Router};
