//! ublkvd's configuration store: what vdisks exist and where their data lives.
//!
//! Today one redb file per node; the replicated store of a later issue keeps
//! the same [`Catalog`] interface, so the daemon has one place that knows the
//! mapping.
//!
//! [`raft`] is the first step of that store: openraft over redb, with the
//! Raft log and the state machine each in their own file.

mod catalog;
pub mod raft;
mod vdisk;

pub use catalog::{Catalog, CatalogError};
pub use vdisk::{
    is_safe_name, Placement, TailRef, TailRefError, VdiskName, VdiskNameError, VdiskSpec,
};
