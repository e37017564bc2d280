use std::fs::{self, File, OpenOptions};
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};

use super::header::{self, Header, Slot, BITMAP_OFFSET, SLOT_LEN, SLOT_OFFSETS};
use super::regions::bitmap_bytes;
use super::{
    DirtyGeometry, DirtyMapFileError, DirtyRegions, MapStorage, MarkError, OpenError, RangeError,
};

/// [`DirtyRegions`] kept durable beside a mirror's tail.
///
/// The rule that makes it safe: a region is durable as dirty before the
/// write it covers is acknowledged ([`mark_durable`](Self::mark_durable)),
/// so that after any crash the survivor's map holds at least every region
/// the other side may lack. Clearing may be lazy: a region left dirty on
/// disk costs only a needless copy at the next resync.
#[derive(Debug)]
pub struct DirtyMapFile<S: MapStorage = File> {
    storage: S,
    regions: DirtyRegions,
    generation: u64,
    /// The header slot holding `generation`; the next header goes to the
    /// other one.
    active_slot: usize,
    /// Bitmap bytes holding dirty bits not durable yet: marked since the
    /// last flush, or left by a failed one. They are written again before
    /// any later flush succeeds, as after a failed fsync the kernel may
    /// have dropped them.
    unsynced: Option<Range<usize>>,
    /// Bitmap bytes holding regions cleared in memory only.
    cleared: Option<Range<usize>>,
}

impl DirtyMapFile<File> {
    /// Creates the map at `path`, every region clean, generation 0. Refuses
    /// an existing file. Atomic: the map is built and synced at
    /// `<path>.new`, then linked to `path`, so that a crash leaves either no
    /// file at `path` or a complete one.
    pub fn create(path: &Path, geometry: DirtyGeometry) -> Result<Self, DirtyMapFileError> {
        let err = |source| DirtyMapFileError::Create {
            path: path.to_owned(),
            source,
        };
        let staging = staging_path(path);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&staging)
            .map_err(|e| err(e.into()))?;
        let map = Self::create_on(file, geometry).map_err(err)?;
        // A hard link fails if `path` exists, where a rename would replace
        // a map that still holds regions to resync.
        fs::hard_link(&staging, path).map_err(|e| err(e.into()))?;
        if let Err(e) = fs::remove_file(&staging) {
            tracing::warn!(path = %staging.display(), error = %e, "cannot remove a dirty map's staging name");
        }
        sync_parent(path).map_err(|e| err(e.into()))?;
        Ok(map)
    }

    /// Opens the map at `path`, refusing one of another geometry.
    pub fn open(path: &Path, geometry: DirtyGeometry) -> Result<Self, DirtyMapFileError> {
        let err = |source| DirtyMapFileError::Open {
            path: path.to_owned(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| err(e.into()))?;
        Self::open_on(file, geometry).map_err(err)
    }
}

impl<S: MapStorage> DirtyMapFile<S> {
    /// Lays a clean map over whatever `storage` held, and syncs it.
    pub fn create_on(mut storage: S, geometry: DirtyGeometry) -> Result<Self, OpenError> {
        let header = Header {
            device_size: geometry.device_size(),
            region_size: geometry.region_size(),
            generation: 0,
        };
        // Truncating first zeroes the second slot and the bitmap.
        storage.set_len(0)?;
        storage.set_len(BITMAP_OFFSET + geometry.bitmap_len() as u64)?;
        storage.write_all_at(&header.encode(), SLOT_OFFSETS[0])?;
        storage.sync_data()?;
        Ok(DirtyMapFile {
            storage,
            regions: DirtyRegions::new(geometry),
            generation: 0,
            active_slot: 0,
            unsynced: None,
            cleared: None,
        })
    }

    /// Reads a map from `storage`, refusing one of another geometry.
    pub fn open_on(storage: S, geometry: DirtyGeometry) -> Result<Self, OpenError> {
        let len = storage.size()?;
        if len < BITMAP_OFFSET {
            return Err(OpenError::NotADirtyMap);
        }
        let mut slots = [Slot::Blank; 2];
        for (slot, offset) in slots.iter_mut().zip(SLOT_OFFSETS) {
            let mut b = [0u8; SLOT_LEN];
            storage.read_exact_at(&mut b, offset)?;
            *slot = Header::decode(&b);
        }
        let (active_slot, found) = header::choose(slots)?;
        let found_geometry = DirtyGeometry::new(found.device_size, found.region_size)
            .map_err(OpenError::BadGeometry)?;
        if found_geometry != geometry {
            return Err(OpenError::GeometryMismatch {
                found: found_geometry,
                expected: geometry,
            });
        }
        let expected = BITMAP_OFFSET + geometry.bitmap_len() as u64;
        if len < expected {
            return Err(OpenError::Truncated { len, expected });
        }
        let mut bits = vec![0u8; geometry.bitmap_len()];
        storage.read_exact_at(&mut bits, BITMAP_OFFSET)?;
        let regions = DirtyRegions::from_bitmap(geometry, bits).ok_or(OpenError::CorruptBitmap)?;
        Ok(DirtyMapFile {
            storage,
            regions,
            generation: found.generation,
            active_slot,
            unsynced: None,
            cleared: None,
        })
    }

    /// The regions as this process sees them: at least every region durable
    /// as dirty, plus any whose marking failed, less any cleared since the
    /// last flush.
    pub fn regions(&self) -> &DirtyRegions {
        &self.regions
    }

    pub fn geometry(&self) -> DirtyGeometry {
        self.regions.geometry()
    }

    /// The durable generation counter: 0 at creation, raised only by
    /// [`bump_generation`](Self::bump_generation). The mirror path gives it
    /// a meaning (which outage this map tracks); here it is only stored
    /// crash-safely.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Marks every region the `len` bytes at `offset` touch, and returns
    /// only once they are durable (with whatever [`mark`](Self::mark) and
    /// [`clear`](Self::clear) left for the next flush). Regions already
    /// dirty cost nothing: no write, no sync. Call it before acknowledging
    /// the write it covers; on an error, do not acknowledge.
    pub fn mark_durable(&mut self, offset: u64, len: u64) -> Result<(), MarkError> {
        self.mark(offset, len)?;
        self.flush().map_err(MarkError::Io)
    }

    /// Marks every region the `len` bytes at `offset` touch, in memory
    /// only: the next [`flush`](Self::flush) makes them durable. Several
    /// marks then cost one write and one sync (group commit); none of the
    /// writes they cover may be acknowledged before that flush succeeds.
    pub fn mark(&mut self, offset: u64, len: u64) -> Result<(), RangeError> {
        if let Some(changed) = self.regions.mark(offset, len)? {
            self.unsynced = cover(self.unsynced.take(), Some(bitmap_bytes(changed)));
        }
        Ok(())
    }

    /// Marks `region` clean in memory, once the other side has it again;
    /// [`flush`](Self::flush) makes that durable. Returns whether it was
    /// dirty.
    pub fn clear(&mut self, region: u64) -> bool {
        let was = self.regions.clear(region);
        if was {
            self.cleared = cover(self.cleared.clone(), Some(bitmap_bytes(region..region + 1)));
        }
        was
    }

    /// Makes every mark and clear since the last successful flush durable.
    /// Nothing to write costs nothing.
    pub fn flush(&mut self) -> io::Result<()> {
        let Some(bytes) = cover(self.cleared.clone(), self.unsynced.clone()) else {
            return Ok(());
        };
        self.write_bitmap(bytes)?;
        self.cleared = None;
        self.unsynced = None;
        Ok(())
    }

    /// Raises the generation by one, durably, and returns it. On an error
    /// the generation in memory is unchanged; on disk it is either.
    pub fn bump_generation(&mut self) -> io::Result<u64> {
        let generation = self
            .generation
            .checked_add(1)
            .ok_or_else(|| io::Error::other("dirty map generation counter exhausted"))?;
        let geometry = self.geometry();
        let header = Header {
            device_size: geometry.device_size(),
            region_size: geometry.region_size(),
            generation,
        };
        let slot = 1 - self.active_slot;
        self.storage
            .write_all_at(&header.encode(), SLOT_OFFSETS[slot])?;
        self.storage.sync_data()?;
        self.generation = generation;
        self.active_slot = slot;
        Ok(generation)
    }

    fn write_bitmap(&mut self, bytes: Range<usize>) -> io::Result<()> {
        let Some(buf) = self.regions.bitmap().get(bytes.clone()) else {
            return Err(io::Error::other("dirty map byte range outside the bitmap"));
        };
        self.storage
            .write_all_at(buf, BITMAP_OFFSET + bytes.start as u64)?;
        self.storage.sync_data()
    }
}

/// The smallest range holding both.
fn cover(a: Option<Range<usize>>, b: Option<Range<usize>>) -> Option<Range<usize>> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.start.min(b.start)..a.end.max(b.end)),
        (a, b) => a.or(b),
    }
}

fn staging_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".new");
    PathBuf::from(name)
}

/// Makes the new directory entry durable: syncing the file does not.
fn sync_parent(path: &Path) -> io::Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(parent)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mirror::dirty::sim_disk::{Faults, SimDisk, SimStorage};

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    const R: u64 = 64 * 1024;

    fn geometry() -> Result<DirtyGeometry, crate::mirror::GeometryError> {
        DirtyGeometry::new(100 * R + 512, R)
    }

    fn sim() -> Result<(SimStorage, DirtyMapFile<SimStorage>), Box<dyn std::error::Error>> {
        let storage = SimStorage(SimDisk::new(1));
        let map = DirtyMapFile::create_on(storage.clone(), geometry()?)?;
        Ok((storage, map))
    }

    fn reopen_after_crash(
        storage: &SimStorage,
    ) -> Result<DirtyMapFile<SimStorage>, Box<dyn std::error::Error>> {
        let disk = storage.0.borrow().crash(9);
        Ok(DirtyMapFile::open_on(SimStorage(disk), geometry()?)?)
    }

    #[test]
    fn a_created_map_reopens_with_its_marks_and_generation() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("vd0.dirty");
        let mut map = DirtyMapFile::create(&path, geometry()?)?;
        map.mark_durable(3 * R, 2 * R)?;
        map.mark_durable(100 * R, 512)?;
        assert_eq!(map.bump_generation()?, 1);
        assert_eq!(map.bump_generation()?, 2);
        drop(map);

        let map = DirtyMapFile::open(&path, geometry()?)?;
        assert_eq!(map.regions().iter().collect::<Vec<_>>(), [3, 4, 100]);
        assert_eq!(map.regions().dirty_bytes(), 2 * R + 512);
        assert_eq!(map.generation(), 2);
        assert!(!staging_path(&path).exists());
        Ok(())
    }

    #[test]
    fn create_refuses_an_existing_file() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("vd0.dirty");
        let mut map = DirtyMapFile::create(&path, geometry()?)?;
        map.mark_durable(0, 1)?;
        let again = DirtyMapFile::create(&path, geometry()?);
        assert!(matches!(
            again,
            Err(DirtyMapFileError::Create { source: OpenError::Io(ref e), .. })
                if e.kind() == io::ErrorKind::AlreadyExists
        ));
        // The existing map is untouched.
        assert!(DirtyMapFile::open(&path, geometry()?)?
            .regions()
            .is_dirty(0));
        Ok(())
    }

    #[test]
    fn open_refuses_another_geometry_and_says_why() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("vd0.dirty");
        DirtyMapFile::create(&path, geometry()?)?;
        for other in [
            DirtyGeometry::new(100 * R + 512, 2 * R)?,
            DirtyGeometry::new(200 * R, R)?,
        ] {
            let Err(e) = DirtyMapFile::open(&path, other) else {
                panic!("opened with {other}");
            };
            let DirtyMapFileError::Open { source, .. } = &e else {
                panic!("{e}");
            };
            assert!(
                matches!(source, OpenError::GeometryMismatch { found, expected }
                if *found == geometry()? && *expected == other)
            );
            assert!(source.to_string().contains("another vdisk"), "{source}");
        }
        Ok(())
    }

    #[test]
    fn open_refuses_a_file_that_is_not_a_dirty_map() -> TestResult {
        let dir = tempfile::tempdir()?;
        let short = dir.path().join("short");
        fs::write(&short, b"hello")?;
        let long = dir.path().join("long");
        fs::write(&long, vec![0xa5; 8192])?;
        for path in [short, long] {
            assert!(matches!(
                DirtyMapFile::open(&path, geometry()?),
                Err(DirtyMapFileError::Open {
                    source: OpenError::NotADirtyMap,
                    ..
                })
            ));
        }
        Ok(())
    }

    #[test]
    fn open_refuses_a_truncated_map() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("vd0.dirty");
        DirtyMapFile::create(&path, geometry()?)?;
        OpenOptions::new()
            .write(true)
            .open(&path)?
            .set_len(BITMAP_OFFSET + 3)?;
        assert!(matches!(
            DirtyMapFile::open(&path, geometry()?),
            Err(DirtyMapFileError::Open { source: OpenError::Truncated { len, .. }, .. })
                if len == BITMAP_OFFSET + 3
        ));
        Ok(())
    }

    #[test]
    fn marking_syncs_only_when_a_bit_flips() -> TestResult {
        let (storage, mut map) = sim()?;
        let before = (storage.0.borrow().writes, storage.0.borrow().syncs);
        map.mark_durable(5 * R, 10)?;
        assert_eq!(storage.0.borrow().writes, before.0 + 1);
        assert_eq!(storage.0.borrow().syncs, before.1 + 1);
        map.mark_durable(5 * R + 100, 4096)?;
        map.mark_durable(5 * R, 0)?;
        map.flush()?;
        assert_eq!(storage.0.borrow().writes, before.0 + 1);
        assert_eq!(storage.0.borrow().syncs, before.1 + 1);
        Ok(())
    }

    #[test]
    fn a_mark_writes_only_the_bitmap_bytes_that_changed() -> TestResult {
        let (mut storage, mut map) = sim()?;
        // Scribble over the live bitmap bytes the mark must not rewrite.
        storage.write_all_at(&[0xff; 4], BITMAP_OFFSET)?;
        map.mark_durable(40 * R, 1)?;
        let disk = storage.0.borrow();
        let bitmap = &disk.live()[BITMAP_OFFSET as usize..];
        assert_eq!(bitmap[..4], [0xff; 4]);
        assert_eq!(bitmap[5], 1);
        Ok(())
    }

    #[test]
    fn a_mark_past_the_end_is_refused_without_io() -> TestResult {
        let (storage, mut map) = sim()?;
        let writes = storage.0.borrow().writes;
        assert!(matches!(
            map.mark_durable(100 * R, 513),
            Err(MarkError::Range(_))
        ));
        assert_eq!(storage.0.borrow().writes, writes);
        assert_eq!(map.regions().count(), 0);
        Ok(())
    }

    #[test]
    fn a_clear_is_durable_only_after_a_flush() -> TestResult {
        let (storage, mut map) = sim()?;
        map.mark_durable(7 * R, 1)?;
        assert!(map.clear(7));
        assert!(!map.clear(7));
        assert!(reopen_after_crash(&storage)?.regions().is_dirty(7));
        map.flush()?;
        assert!(!reopen_after_crash(&storage)?.regions().is_dirty(7));
        Ok(())
    }

    #[test]
    fn a_failed_mark_is_written_again_before_a_later_mark_succeeds() -> TestResult {
        let (storage, mut map) = sim()?;
        storage.0.borrow_mut().faults = Faults::HaltAfter(0);
        assert!(matches!(map.mark_durable(9 * R, 1), Err(MarkError::Io(_))));
        // Dirty in memory: the caller may not know what reached the tail.
        assert!(map.regions().is_dirty(9));
        storage.0.borrow_mut().faults = Faults::None;
        // Region 9 is already dirty in memory, yet this mark must not
        // succeed before region 9 is durable.
        map.mark_durable(9 * R + 1, 1)?;
        assert!(reopen_after_crash(&storage)?.regions().is_dirty(9));
        Ok(())
    }

    #[test]
    fn a_failed_flush_is_retried_by_the_next_flush() -> TestResult {
        let (storage, mut map) = sim()?;
        map.mark_durable(0, 1)?;
        map.clear(0);
        storage.0.borrow_mut().faults = Faults::HaltAfter(0);
        assert!(map.flush().is_err());
        storage.0.borrow_mut().faults = Faults::None;
        map.flush()?;
        assert!(!reopen_after_crash(&storage)?.regions().is_dirty(0));
        Ok(())
    }

    #[test]
    fn generations_alternate_between_header_slots() -> TestResult {
        let (storage, mut map) = sim()?;
        for expected in 1..=5 {
            assert_eq!(map.bump_generation()?, expected);
            assert_eq!(map.active_slot, (expected % 2) as usize);
            assert_eq!(reopen_after_crash(&storage)?.generation(), expected);
        }
        Ok(())
    }
}
