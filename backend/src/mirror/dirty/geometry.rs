use std::fmt;
use std::ops::Range;

use super::GeometryError;

/// The smallest region: below this the bitmap flips (and syncs) on nearly
/// every scattered write.
pub const MIN_REGION_SIZE: u64 = 64 * 1024;
/// The largest region: above this a single 4 KiB write costs a resync of
/// more than 4 MiB.
pub const MAX_REGION_SIZE: u64 = 4 * 1024 * 1024;

/// A device cut into equal regions (the last one may be shorter), one
/// bit each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirtyGeometry {
    device_size: u64,
    region_shift: u32,
}

impl DirtyGeometry {
    /// `region_size` must be a power of two in
    /// [`MIN_REGION_SIZE`]..=[`MAX_REGION_SIZE`]; `device_size` need not be
    /// a multiple of it.
    pub fn new(device_size: u64, region_size: u64) -> Result<Self, GeometryError> {
        if !region_size.is_power_of_two()
            || !(MIN_REGION_SIZE..=MAX_REGION_SIZE).contains(&region_size)
        {
            return Err(GeometryError::RegionSize { region_size });
        }
        if device_size == 0 {
            return Err(GeometryError::EmptyDevice);
        }
        let bitmap_len = device_size.div_ceil(region_size).div_ceil(8);
        if usize::try_from(bitmap_len).is_err() {
            return Err(GeometryError::TooLarge {
                device_size,
                region_size,
            });
        }
        Ok(DirtyGeometry {
            device_size,
            region_shift: region_size.trailing_zeros(),
        })
    }

    pub fn device_size(&self) -> u64 {
        self.device_size
    }

    pub fn region_size(&self) -> u64 {
        1 << self.region_shift
    }

    /// Regions in the device, the last one possibly partial.
    pub fn region_count(&self) -> u64 {
        self.device_size.div_ceil(self.region_size())
    }

    /// The region holding byte `offset`.
    pub fn region_of(&self, offset: u64) -> u64 {
        offset >> self.region_shift
    }

    /// The regions the `len` bytes at `offset` touch: none for 0 bytes.
    pub fn regions_of(&self, offset: u64, len: u64) -> Range<u64> {
        match len {
            0 => 0..0,
            _ => self.region_of(offset)..self.region_of(offset.saturating_add(len - 1)) + 1,
        }
    }

    /// Bytes of the device in `region`: the region size, less for the last
    /// region of a device that is not a multiple of it, 0 past the end.
    pub fn region_len(&self, region: u64) -> u64 {
        let start = region.saturating_mul(self.region_size());
        self.device_size
            .saturating_sub(start)
            .min(self.region_size())
    }

    /// Bytes of the bitmap: one bit per region, rounded up to a byte.
    pub fn bitmap_len(&self) -> usize {
        // Cannot truncate: `new` checked that it fits.
        self.region_count().div_ceil(8) as usize
    }
}

impl fmt::Display for DirtyGeometry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} bytes in regions of {} bytes",
            self.device_size,
            self.region_size()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIB: u64 = 1024;
    const MIB: u64 = 1024 * KIB;

    #[test]
    fn region_sizes_are_powers_of_two_from_64_kib_to_4_mib() {
        for ok in [64 * KIB, 128 * KIB, MIB, 4 * MIB] {
            assert!(DirtyGeometry::new(MIB, ok).is_ok(), "{ok}");
        }
        for bad in [0, 1, 32 * KIB, 96 * KIB, 8 * MIB, u64::MAX] {
            assert_eq!(
                DirtyGeometry::new(MIB, bad),
                Err(GeometryError::RegionSize { region_size: bad }),
            );
        }
    }

    #[test]
    fn an_empty_device_is_refused() {
        assert_eq!(
            DirtyGeometry::new(0, 64 * KIB),
            Err(GeometryError::EmptyDevice)
        );
    }

    #[test]
    fn the_last_region_of_an_uneven_device_is_partial() -> Result<(), GeometryError> {
        let g = DirtyGeometry::new(3 * 64 * KIB + 512, 64 * KIB)?;
        assert_eq!(g.region_count(), 4);
        assert_eq!(g.region_len(2), 64 * KIB);
        assert_eq!(g.region_len(3), 512);
        assert_eq!(g.region_len(4), 0);
        assert_eq!(g.bitmap_len(), 1);
        Ok(())
    }

    #[test]
    fn a_range_touches_every_region_it_has_a_byte_in() -> Result<(), GeometryError> {
        let g = DirtyGeometry::new(MIB, 64 * KIB)?;
        assert_eq!(g.regions_of(0, 0), 0..0, "no bytes, no region");
        assert_eq!(g.regions_of(64 * KIB - 1, 1), 0..1);
        assert_eq!(g.regions_of(64 * KIB - 1, 2), 0..2);
        assert_eq!(g.regions_of(2 * 64 * KIB, 3 * 64 * KIB), 2..5);
        Ok(())
    }

    #[test]
    fn the_bitmap_rounds_up_to_whole_bytes() -> Result<(), GeometryError> {
        assert_eq!(DirtyGeometry::new(8 * 64 * KIB, 64 * KIB)?.bitmap_len(), 1);
        assert_eq!(DirtyGeometry::new(9 * 64 * KIB, 64 * KIB)?.bitmap_len(), 2);
        Ok(())
    }
}
