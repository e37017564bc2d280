//! The dirty map: which regions of a mirrored vdisk the copies may differ
//! in, kept durably on the primary.
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
//!
//! # Layout
//!
//! [`DirtyRegions`] is the pure core (geometry, bits, iteration);
//! [`DirtyMapFile`] keeps it in a file (header format in `header.rs`)
//! through the small [`MapStorage`] seam, which the crash tests replace
//! with an in-memory twin that can lose unsynced writes; `async_map.rs` is
//! the writer thread the mirror marks and clears through.

pub(super) mod async_map;
mod bitmap_file;
mod error;
mod geometry;
mod header;
mod regions;
mod storage;

#[cfg(test)]
mod crash_tests;
#[cfg(test)]
pub(super) mod sim_disk;

pub use bitmap_file::DirtyMapFile;
pub use error::{DirtyMapFileError, GeometryError, MarkError, OpenError, RangeError};
pub use geometry::{DirtyGeometry, MAX_REGION_SIZE, MIN_REGION_SIZE};
pub use regions::DirtyRegions;
pub use storage::MapStorage;
