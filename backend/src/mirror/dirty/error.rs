use std::io;
use std::path::PathBuf;

use super::DirtyGeometry;

/// Why a device size and region size cannot describe a dirty map.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GeometryError {
    #[error(
        "region size {region_size} is not a power of two between 64 KiB and 4 MiB \
         (smaller regions flip bits too often, larger ones resync too much)"
    )]
    RegionSize { region_size: u64 },
    #[error("a device of 0 bytes has no regions to track")]
    EmptyDevice,
    #[error("a device of {device_size} bytes in regions of {region_size} needs a bitmap larger than memory can address")]
    TooLarge { device_size: u64, region_size: u64 },
}

/// A byte range that does not lie inside the device. Nothing was marked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("byte range at {offset} of {len} bytes ends past the device's {device_size} bytes")]
pub struct RangeError {
    pub offset: u64,
    pub len: u64,
    pub device_size: u64,
}

/// Why a dirty map cannot be created on, or read from, its storage.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    #[error("I/O on the dirty map failed")]
    Io(#[from] io::Error),
    /// Neither header copy has the magic: the file was never a dirty map, or
    /// it was cut short before its creation completed.
    #[error("not a dirty map (no header)")]
    NotADirtyMap,
    /// Both header copies have the magic and a wrong checksum. A crash
    /// cannot do this (one copy is always left alone); the file was
    /// damaged or overwritten.
    #[error("both header copies of the dirty map are damaged")]
    Corrupt,
    #[error("dirty map format version {version} is not supported (this build reads version 1)")]
    UnsupportedVersion { version: u32 },
    /// The header's checksum holds but its geometry is invalid.
    #[error("the dirty map's header holds an invalid geometry")]
    BadGeometry(#[source] GeometryError),
    #[error(
        "the dirty map tracks {found}, the vdisk is {expected}: it belongs to another \
         vdisk, or the vdisk was resized"
    )]
    GeometryMismatch {
        found: DirtyGeometry,
        expected: DirtyGeometry,
    },
    #[error("the dirty map is {len} bytes, its geometry needs {expected}")]
    Truncated { len: u64, expected: u64 },
    /// The bitmap has bits set past the last region: no version of this
    /// code writes them.
    #[error("the dirty map's bitmap marks regions past the end of the device")]
    CorruptBitmap,
}

/// Why a dirty map file could not be created or opened, with its path.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DirtyMapFileError {
    #[error("cannot create dirty map {path}")]
    Create { path: PathBuf, source: OpenError },
    #[error("cannot open dirty map {path}")]
    Open { path: PathBuf, source: OpenError },
}

/// Why [`mark_durable`](super::DirtyMapFile::mark_durable) failed. Either
/// way the write it covers must not be acknowledged.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MarkError {
    /// Nothing was marked.
    #[error(transparent)]
    Range(#[from] RangeError),
    /// The regions are dirty in memory but perhaps not on disk; the next
    /// `mark_durable` or `flush` writes them again before it succeeds.
    #[error("cannot make the dirty map durable")]
    Io(#[source] io::Error),
}
