//! Mirrored vdisks: the write path and its dirty-region tracking.
//!
//! A mirrored vdisk writes every block to two tails on different nodes and
//! acknowledges once both have it. While one side is unreachable the
//! survivor goes on alone and records, per region of the device, that the
//! region changed; when the other side returns only those regions are
//! copied to it (delta resync) instead of the whole device.
//!
//! The record must survive a crash of the survivor, or the restarted
//! survivor would not know what the other side lacks. Hence
//! [`DirtyMapFile::mark_durable`]: a region is durable as dirty before the
//! write it covers is acknowledged. A region already dirty costs nothing,
//! so the cost is one small write and one fdatasync each time writes land
//! in clean regions; the mirror's map has a writer thread of its own, so
//! that the writes waiting meanwhile share the next sync (group commit) and
//! nothing else waits. Clearing after the copy may be lazy: a region
//! wrongly left dirty costs a needless copy, never lost data.
//!
//! The same map is the mirror's activity log (DRBD's name): every write
//! marks its regions before either side has it, even in sync, so that a
//! crash of the primary with writes half done (on one side, not the other)
//! leaves those regions to resync. In sync, regions no write touched for
//! a sweep interval are cleared again; a busy region stays marked and
//! costs nothing more. The map thus says where the copies *may* differ.
//!
//! # Choosing the region size
//!
//! One bit covers one region, 64 KiB to 4 MiB. Smaller regions resync less
//! (a 4 KiB write costs a copy of one region) but make scattered writes
//! find clean regions more often, each such write paying a sync of the map
//! before it can be acknowledged. Larger regions turn a random-write
//! workload into few syncs, at the price of copying up to 4 MiB per
//! scattered write at resync. The bitmap itself stays small either way:
//! 1 TiB in 64 KiB regions is 2 MiB of bitmap.
//!
//! # Layout
//!
//! [`Replica`] is the pure core of the mirrored write path: where each
//! request goes, when it may complete, when a write's range must be marked
//! dirty first; [`MirroredVdisk`] is its tokio shell over two
//! [`Tail`](crate::Tail)s, and a tail itself, with the map behind a writer
//! thread (`async_map.rs`). [`DirtyRegions`] is the pure
//! core of the map (geometry, bits, iteration); [`DirtyMapFile`] keeps it in a file (header format in `header.rs`)
//! through the small [`MapStorage`] seam, which the crash tests replace
//! with an in-memory twin that can lose unsynced writes.

/// The id a mirror's copy is served under on its tail's node: the vdisk's
/// id with its top bit flipped. The vdisk's own id is its primary's
/// service, which mirrors every write; the copy's id lets the primary write
/// the mirror's tail itself. Vdisk ids are hashes of names, so a copy's id
/// colliding with another vdisk's is as unlikely as two names colliding.
pub fn copy_id(vdisk: u64) -> u64 {
    vdisk ^ (1 << 63)
}

mod async_map;
mod bitmap_file;
mod dirty;
mod error;
mod geometry;
mod header;
mod pacer;
mod replica;
mod storage;
mod vdisk;

#[cfg(test)]
mod crash_tests;
#[cfg(test)]
mod replica_sim;
#[cfg(test)]
mod sim_disk;

pub use bitmap_file::DirtyMapFile;
pub use dirty::DirtyRegions;
pub use error::{DirtyMapFileError, GeometryError, MarkError, OpenError, RangeError};
pub use geometry::{DirtyGeometry, MAX_REGION_SIZE, MIN_REGION_SIZE};
pub use pacer::{PacerConfig, ResyncPacer};
pub use replica::{Action, Recorded, Replica, ReplicaConfig, Request, Side, SideState};
pub use storage::MapStorage;
pub use vdisk::{
    pull_dirty, AttemptError, CopyRecorder, MirrorConfig, MirrorSetup, MirrorStatus, MirroredVdisk,
    PullError, RecordFuture, VerifyError, VerifyReport,
};
