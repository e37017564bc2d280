//! Serving this node's tails to peers over the wire protocol (seed 003's
//! "netdisk master").

mod exports;
mod server;
mod sessions;

pub use exports::{CacheEndpoint, Clients, Exports};
pub use server::serve;
