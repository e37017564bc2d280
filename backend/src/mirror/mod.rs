//! Mirrored vdisks: the write path and its dirty-region tracking.
//!
//! A mirrored vdisk writes every block to two tails on different nodes and
//! acknowledges once both have it. While one side is unreachable the
//! survivor goes on alone and records, per region of the device, that the
//! region changed; when the other side returns only those regions are
//! copied to it (delta resync) instead of the whole device.
//!
//! Which regions the survivor changed is the dirty map ([`dirty`]'s doc says
//! how it is kept, and how to size its regions).
//!
//! # Layout
//!
//! [`Replica`] is the pure core of the mirrored write path: where each
//! request goes, when it may complete, when a write's range must be marked
//! dirty first; [`MirroredVdisk`] is its tokio shell over two
//! [`Tail`](crate::Tail)s, and a tail itself, with the map behind a writer
//! thread. [`dirty`] holds the map.

/// The id a mirror's copy is served under on its tail's node: the vdisk's
/// id with its top bit flipped. The vdisk's own id is its primary's
/// service, which mirrors every write; the copy's id lets the primary write
/// the mirror's tail itself. Vdisk ids are hashes of names, so a copy's id
/// colliding with another vdisk's is as unlikely as two names colliding.
pub fn copy_id(vdisk: u64) -> u64 {
    vdisk ^ (1 << 63)
}

pub mod dirty;
mod pacer;
mod replica;
mod resync;
mod setup;
mod sides;
mod vdisk;

#[cfg(test)]
mod replica_sim;

pub use dirty::{
    DirtyGeometry, DirtyMapFile, DirtyMapFileError, DirtyRegions, GeometryError, MapStorage,
    MarkError, OpenError, RangeError, MAX_REGION_SIZE, MIN_REGION_SIZE,
};
pub use pacer::{PacerConfig, ResyncPacer};
pub use replica::{Action, Recorded, Replica, ReplicaConfig, Request, Side, SideState};
pub use setup::{
    CopyRecorder, MirrorConfig, MirrorSetup, MirrorStatus, RecordFuture, VerifyError, VerifyReport,
};
pub use sides::{pull_dirty, AttemptError, PullError};
pub use vdisk::MirroredVdisk;
