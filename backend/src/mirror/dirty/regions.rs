use std::ops::Range;

use super::{DirtyGeometry, RangeError};

/// Which regions of a device changed since the other side of the mirror
/// last had them. Pure: no I/O; [`DirtyMapFile`](super::DirtyMapFile)
/// persists it.
///
/// The bitmap is one bit per region, region `r` in byte `r / 8` at bit
/// `r % 8` (least significant first); bits past the last region are 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirtyRegions {
    geometry: DirtyGeometry,
    bits: Vec<u8>,
    /// Set bits, kept so that `count` does not scan.
    count: u64,
}

impl DirtyRegions {
    /// Every region clean.
    pub fn new(geometry: DirtyGeometry) -> Self {
        DirtyRegions {
            geometry,
            bits: vec![0; geometry.bitmap_len()],
            count: 0,
        }
    }

    /// Rebuilds the regions from a bitmap as [`bitmap`](Self::bitmap)
    /// returned it; `None` if its length does not fit the geometry or it
    /// marks regions past the end.
    pub fn from_bitmap(geometry: DirtyGeometry, bits: Vec<u8>) -> Option<Self> {
        if bits.len() != geometry.bitmap_len() {
            return None;
        }
        let tail_bits = geometry.region_count() % 8;
        if tail_bits != 0 {
            let last = bits.last().copied().unwrap_or(0);
            if last >> tail_bits != 0 {
                return None;
            }
        }
        let count = bits.iter().map(|b| u64::from(b.count_ones())).sum();
        Some(DirtyRegions {
            geometry,
            bits,
            count,
        })
    }

    pub fn geometry(&self) -> DirtyGeometry {
        self.geometry
    }

    /// The bitmap, laid out as the type's documentation says.
    pub fn bitmap(&self) -> &[u8] {
        &self.bits
    }

    /// Marks every region the `len` bytes at `offset` touch. A range of 0
    /// bytes marks nothing (it is still refused if it starts past the end).
    ///
    /// Returns the smallest range of regions holding every region that was
    /// clean before, or `None` if all of them were already dirty: the
    /// caller persists only what changed.
    pub fn mark(&mut self, offset: u64, len: u64) -> Result<Option<Range<u64>>, RangeError> {
        let device_size = self.geometry.device_size();
        let end = offset
            .checked_add(len)
            .filter(|&end| end <= device_size)
            .ok_or(RangeError {
                offset,
                len,
                device_size,
            })?;
        if len == 0 {
            return Ok(None);
        }
        let first = self.geometry.region_of(offset);
        let last = self.geometry.region_of(end - 1);
        let mut changed: Option<Range<u64>> = None;
        // Byte by byte rather than bit by bit: a discard of a whole large
        // device touches millions of regions.
        for byte in first / 8..=last / 8 {
            let lo = if byte == first / 8 { first % 8 } else { 0 };
            let hi = if byte == last / 8 { last % 8 } else { 7 };
            let mask = (0xffu8 >> (7 - hi)) & (0xffu8 << lo);
            let Some(slot) = self.bits.get_mut(byte as usize) else {
                break;
            };
            let newly = mask & !*slot;
            if newly == 0 {
                continue;
            }
            *slot |= newly;
            self.count += u64::from(newly.count_ones());
            let start = byte * 8 + u64::from(newly.trailing_zeros());
            let stop = byte * 8 + 8 - u64::from(newly.leading_zeros());
            changed = Some(match changed {
                Some(r) => r.start..stop,
                None => start..stop,
            });
        }
        Ok(changed)
    }

    /// Whether `region` is dirty; `false` past the last region.
    pub fn is_dirty(&self, region: u64) -> bool {
        self.bits
            .get((region / 8) as usize)
            .is_some_and(|b| b & (1 << (region % 8)) != 0)
    }

    /// Marks `region` clean, once the other side has it again. Returns
    /// whether it was dirty (never past the last region).
    pub fn clear(&mut self, region: u64) -> bool {
        let Some(slot) = self.bits.get_mut((region / 8) as usize) else {
            return false;
        };
        let bit = 1u8 << (region % 8);
        let was = *slot & bit != 0;
        *slot &= !bit;
        if was {
            self.count -= 1;
        }
        was
    }

    /// Dirty regions.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Bytes a resync of every dirty region copies: the last region counts
    /// only the bytes the device has.
    pub fn dirty_bytes(&self) -> u64 {
        let last = self.geometry.region_count() - 1;
        let shortfall = if self.is_dirty(last) {
            self.geometry.region_size() - self.geometry.region_len(last)
        } else {
            0
        };
        self.count * self.geometry.region_size() - shortfall
    }

    /// The first dirty region at or after `from`.
    pub fn next_dirty(&self, from: u64) -> Option<u64> {
        let start = usize::try_from(from / 8).ok()?;
        let first = self.bits.get(start)? & (0xffu8 << (from % 8));
        if first != 0 {
            return Some(from / 8 * 8 + u64::from(first.trailing_zeros()));
        }
        let rest = self.bits.get(start + 1..)?;
        let (i, b) = rest.iter().enumerate().find(|(_, b)| **b != 0)?;
        Some((start + 1 + i) as u64 * 8 + u64::from(b.trailing_zeros()))
    }

    /// Dirty regions in increasing order.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        let mut from = 0;
        std::iter::from_fn(move || {
            let region = self.next_dirty(from)?;
            from = region + 1;
            Some(region)
        })
    }
}

/// The bytes of the bitmap that hold `regions`.
pub(super) fn bitmap_bytes(regions: Range<u64>) -> Range<usize> {
    if regions.is_empty() {
        return 0..0;
    }
    (regions.start / 8) as usize..((regions.end - 1) / 8 + 1) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mirror::GeometryError;

    const R: u64 = 64 * 1024;

    fn regions(device_size: u64) -> Result<DirtyRegions, GeometryError> {
        Ok(DirtyRegions::new(DirtyGeometry::new(device_size, R)?))
    }

    fn dirty(d: &DirtyRegions) -> Vec<u64> {
        d.iter().collect()
    }

    #[test]
    fn a_range_marks_every_region_it_touches() -> Result<(), Box<dyn std::error::Error>> {
        let mut d = regions(10 * R)?;
        assert_eq!(d.mark(R - 1, 2)?, Some(0..2));
        assert_eq!(dirty(&d), [0, 1]);
        assert_eq!(d.count(), 2);
        Ok(())
    }

    #[test]
    fn a_range_ending_on_a_region_boundary_does_not_touch_the_next(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let mut d = regions(10 * R)?;
        assert_eq!(d.mark(R, R)?, Some(1..2));
        assert_eq!(dirty(&d), [1]);
        assert_eq!(d.mark(3 * R, 2 * R)?, Some(3..5));
        assert_eq!(dirty(&d), [1, 3, 4]);
        Ok(())
    }

    #[test]
    fn a_zero_length_range_marks_nothing() -> Result<(), Box<dyn std::error::Error>> {
        let mut d = regions(10 * R)?;
        assert_eq!(d.mark(5 * R, 0)?, None);
        assert_eq!(d.mark(10 * R, 0)?, None);
        assert_eq!(d.count(), 0);
        Ok(())
    }

    #[test]
    fn ranges_past_the_end_are_refused_and_mark_nothing() -> Result<(), Box<dyn std::error::Error>>
    {
        let mut d = regions(10 * R)?;
        let past = RangeError {
            offset: 10 * R - 1,
            len: 2,
            device_size: 10 * R,
        };
        assert_eq!(d.mark(10 * R - 1, 2), Err(past));
        assert!(d.mark(10 * R + 1, 0).is_err());
        assert!(d.mark(u64::MAX, 2).is_err());
        assert_eq!(d.count(), 0);
        Ok(())
    }

    #[test]
    fn marking_a_dirty_region_again_changes_nothing() -> Result<(), Box<dyn std::error::Error>> {
        let mut d = regions(10 * R)?;
        d.mark(2 * R, 1)?;
        assert_eq!(d.mark(2 * R + 100, 5)?, None);
        // Only the clean regions of a partly dirty range are reported.
        assert_eq!(d.mark(R, 3 * R)?, Some(1..4));
        assert_eq!(d.mark(0, 3 * R)?, Some(0..1));
        assert_eq!(d.count(), 4);
        Ok(())
    }

    #[test]
    fn a_range_across_many_bytes_sets_them_all() -> Result<(), Box<dyn std::error::Error>> {
        let mut d = regions(100 * R)?;
        assert_eq!(d.mark(5 * R, 50 * R)?, Some(5..55));
        assert_eq!(dirty(&d), (5..55).collect::<Vec<_>>());
        assert_eq!(d.count(), 50);
        Ok(())
    }

    #[test]
    fn the_last_partial_region_is_marked_and_counts_only_its_bytes(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let size = 9 * R + 4096;
        let mut d = regions(size)?;
        assert_eq!(d.mark(size - 1, 1)?, Some(9..10));
        assert_eq!(dirty(&d), [9]);
        assert_eq!(d.dirty_bytes(), 4096);
        d.mark(0, 1)?;
        assert_eq!(d.dirty_bytes(), R + 4096);
        assert!(d.mark(size, 1).is_err());
        Ok(())
    }

    #[test]
    fn clear_reports_whether_the_region_was_dirty() -> Result<(), Box<dyn std::error::Error>> {
        let mut d = regions(10 * R)?;
        d.mark(0, 3 * R)?;
        assert!(d.clear(1));
        assert!(!d.clear(1));
        assert!(!d.clear(1000));
        assert_eq!(dirty(&d), [0, 2]);
        assert_eq!(d.count(), 2);
        assert_eq!(d.dirty_bytes(), 2 * R);
        Ok(())
    }

    #[test]
    fn next_dirty_finds_the_first_at_or_after() -> Result<(), Box<dyn std::error::Error>> {
        let mut d = regions(100 * R)?;
        for r in [3, 8, 9, 63, 99] {
            d.mark(r * R, 1)?;
        }
        assert_eq!(d.next_dirty(0), Some(3));
        assert_eq!(d.next_dirty(3), Some(3));
        assert_eq!(d.next_dirty(4), Some(8));
        assert_eq!(d.next_dirty(10), Some(63));
        assert_eq!(d.next_dirty(64), Some(99));
        assert_eq!(d.next_dirty(100), None);
        assert_eq!(d.next_dirty(u64::MAX), None);
        assert!(!d.is_dirty(100));
        Ok(())
    }

    #[test]
    fn a_bitmap_round_trips_and_rejects_bits_past_the_end() -> Result<(), Box<dyn std::error::Error>>
    {
        let mut d = regions(10 * R)?;
        d.mark(R, 8 * R)?;
        let g = d.geometry();
        assert_eq!(
            DirtyRegions::from_bitmap(g, d.bitmap().to_vec()),
            Some(d.clone())
        );
        assert_eq!(DirtyRegions::from_bitmap(g, vec![0, 0b0000_0100]), None);
        assert_eq!(DirtyRegions::from_bitmap(g, vec![0]), None);
        Ok(())
    }

    #[test]
    fn bitmap_bytes_cover_the_regions() {
        assert_eq!(bitmap_bytes(0..1), 0..1);
        assert_eq!(bitmap_bytes(7..9), 0..2);
        assert_eq!(bitmap_bytes(8..16), 1..2);
        assert_eq!(bitmap_bytes(3..3), 0..0);
    }
}
