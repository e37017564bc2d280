//! Serving this node's tails to peers over the wire protocol (seed 003's
//! "netdisk master").

mod exports;
mod server;
mod sessions;

pub use exports::{Clients, Exports, Served};
pub(crate) use server::run_on_tail;
pub use server::serve;
