//! ublkvd's I/O engine.
//!
//! The frontend (or, later, the peer server) hands every block request to a
//! [`BlockBackend`]; this crate knows nothing of ublk. A [`LocalTail`] serves
//! requests from a file or block device on this node through io_uring, on
//! whatever [`Ring`] the calling thread owns. [`mirror`] writes a vdisk to two tails and tracks, durably,
//! which regions a mirrored vdisk's surviving side changed while the other
//! was away.

mod block;
mod buf;
pub mod cache;
pub mod cached;
mod counts;
mod engine;
mod error;
mod lease;
pub mod link;
mod metered;
pub mod mirror;
pub mod peer;
mod ring;
pub mod route;
pub mod tail;
pub mod wire;
#[cfg(test)]
mod xorshift;

pub use block::{BlockBackend, RegisteredBuf, RegisteredIo};
pub use buf::AlignedBuf;
pub use counts::{Counted, OpenCounts};
pub use engine::{Engine, EngineRing};
pub use error::IoError;
pub use lease::{Lease, LEASE, LEASE_RUN_OUT};
pub use metered::{IoMetrics, Metered};
pub use ring::{BlockingRing, Ring};
pub use tail::{BlockOp, LocalTail, Tail, TailError, TailGeometry, TailOpenError};
