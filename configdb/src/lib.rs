//! ublkvd's configuration store: what vdisks exist and where their data lives.
//!
//! Today one redb file per node; the replicated store of a later issue keeps
//! the same [`Catalog`] interface, so the daemon has one place that knows the
//! mapping.

mod catalog;
mod vdisk;

pub use catalog::{Catalog, CatalogError};
pub use vdisk::{
    is_safe_name, Placement, TailRef, TailRefError, VdiskName, VdiskNameError, VdiskSpec,
};
