//! The data of a cached vdisk on this node: whole extents in the slots of
//! a cache file or block device, the least recently used let go first.
//! The coherence core says which copies are valid; the store keeps their
//! bytes. Each extent's data carries the [`Tag`] the core knows it by, and
//! a read asks for a tag: data of another one is a miss, so the store
//! never answers for a copy it does not hold, whatever the order its
//! writes end in. A slot being read or written is pinned: it is not given
//! to another extent before that I/O ends.

use std::sync::{Mutex, MutexGuard, PoisonError};

use lru::LruCache;

use super::{Extent, Version};
use crate::{BlockBackend, IoError};

/// Which data of an extent: its version at the root of `epoch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Tag {
    pub epoch: u64,
    pub version: Version,
}

/// What [`ExtentStore::insert`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Inserted {
    /// False when every slot was pinned or the cache file failed: the
    /// data was not kept, and the core must be told, as of an eviction.
    pub stored: bool,
    /// Extents let go to make room: the core must be told of each
    /// (`Relay::evict`).
    pub evicted: Vec<Extent>,
}

/// Why a cache file cannot hold extents.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    #[error("cache extent of {extent_bytes} bytes: it must be a power of two of 4 KiB or more")]
    ExtentSize { extent_bytes: u64 },
    #[error("cache of {size_bytes} bytes holds no extent of {extent_bytes} bytes")]
    TooSmall { size_bytes: u64, extent_bytes: u64 },
}

/// A cache file's extents, in slots of `extent_bytes` each.
pub struct ExtentStore<B> {
    backend: B,
    extent_bytes: u64,
    slots: Mutex<Slots>,
}

struct Slots {
    /// The extents stored, most recently used first, and their slots.
    lru: LruCache<Extent, usize>,
    slots: Vec<Slot>,
    free: Vec<usize>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Slot {
    tag: Option<Tag>,
    /// Reads and writes of its bytes under way.
    pins: u32,
    /// Let go while pinned: free once the last pin goes.
    retired: bool,
}

impl<B: BlockBackend> ExtentStore<B> {
    /// A store of as many extents as `size_bytes` of `backend` hold, all
    /// free: a node that restarts trusts nothing it cached before.
    pub fn new(backend: B, size_bytes: u64, extent_bytes: u64) -> Result<Self, StoreError> {
        if !extent_bytes.is_power_of_two() || extent_bytes < 4096 {
            return Err(StoreError::ExtentSize { extent_bytes });
        }
        let count = usize::try_from(size_bytes / extent_bytes).unwrap_or(usize::MAX);
        if count == 0 {
            return Err(StoreError::TooSmall {
                size_bytes,
                extent_bytes,
            });
        }
        Ok(ExtentStore {
            backend,
            extent_bytes,
            slots: Mutex::new(Slots {
                lru: LruCache::unbounded(),
                slots: vec![Slot::default(); count],
                free: (0..count).rev().collect(),
            }),
        })
    }

    /// How many extents the store holds at most.
    pub fn capacity(&self) -> usize {
        self.lock().slots.len()
    }

    /// How many extents it holds now.
    pub fn len(&self) -> usize {
        self.lock().lru.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the store holds `extent`'s data as `tag`.
    pub fn holds(&self, extent: Extent, tag: Tag) -> bool {
        let slots = self.lock();
        slots
            .lru
            .peek(&extent)
            .is_some_and(|&slot| slots.slots[slot].tag == Some(tag))
    }

    /// Fills `buf` with `extent`'s data from byte `at` of it, if the store
    /// holds it as `tag`; false if it does not.
    pub async fn read(
        &self,
        extent: Extent,
        tag: Tag,
        at: u64,
        buf: &mut [u8],
    ) -> Result<bool, IoError> {
        let slot = {
            let mut slots = self.lock();
            let Some(&slot) = slots.lru.get(&extent) else {
                return Ok(false);
            };
            if slots.slots[slot].tag != Some(tag) {
                return Ok(false);
            }
            slots.slots[slot].pins += 1;
            slot
        };
        let pin = Pinned { store: self, slot };
        self.backend.read(self.offset(slot) + at, buf).await?;
        drop(pin);
        Ok(true)
    }

    /// Keeps `data` (one extent) as `extent`'s, tagged `tag`, in a free
    /// slot or the least recently used one not pinned. Data of an older
    /// tag of the extent is replaced once the new data is written; data
    /// of a newer tag stays.
    pub async fn insert(&self, extent: Extent, tag: Tag, data: &[u8]) -> Inserted {
        let mut inserted = Inserted::default();
        let slot = {
            let mut slots = self.lock();
            if slots.newer_or_same(extent, tag) {
                inserted.stored = true;
                return inserted;
            }
            let Some(slot) = slots.take_slot(extent, &mut inserted.evicted) else {
                return inserted;
            };
            // Retired until published: freed once the write ends, if it
            // failed. An insert abandoned before its write ended leaves
            // the slot pinned for good, since the kernel may still be
            // writing it.
            slots.slots[slot] = Slot {
                tag: None,
                pins: 1,
                retired: true,
            };
            slot
        };
        let written = self.backend.write(self.offset(slot), data, false).await;
        {
            let mut slots = self.lock();
            // Unless a newer copy was kept while this one was written.
            if written.is_ok() && !slots.newer_or_same(extent, tag) {
                if let Some(old) = slots.lru.pop(&extent) {
                    slots.retire(old);
                }
                slots.lru.put(extent, slot);
                slots.slots[slot].tag = Some(tag);
                slots.slots[slot].retired = false;
            }
            slots.unpin(slot);
        }
        match written {
            Ok(()) => inserted.stored = true,
            // A cache is best effort: the data came from above and goes
            // to the reader all the same; only the copy is not kept.
            Err(error) => tracing::warn!(extent, %error, "cache file write failed"),
        }
        inserted
    }

    /// Lets `extent` go (its copy was recalled or ran out with the lease).
    pub fn remove(&self, extent: Extent) {
        let mut slots = self.lock();
        if let Some(slot) = slots.lru.pop(&extent) {
            slots.retire(slot);
        }
    }

    fn offset(&self, slot: usize) -> u64 {
        slot as u64 * self.extent_bytes
    }

    fn lock(&self) -> MutexGuard<'_, Slots> {
        // The bookkeeping is consistent after every statement that can
        // panic, so a poisoned lock's state is still good.
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Slots {
    fn newer_or_same(&self, extent: Extent, tag: Tag) -> bool {
        self.lru
            .peek(&extent)
            .and_then(|&slot| self.slots[slot].tag)
            .is_some_and(|held| held >= tag)
    }

    /// A free slot, or the least recently used one that is not pinned and
    /// not `extent`'s own (replaced only once the new data is written).
    fn take_slot(&mut self, extent: Extent, evicted: &mut Vec<Extent>) -> Option<usize> {
        if let Some(slot) = self.free.pop() {
            return Some(slot);
        }
        let (&victim, &slot) = self
            .lru
            .iter()
            .rev()
            .find(|(&e, &slot)| e != extent && self.slots[slot].pins == 0)?;
        self.lru.pop(&victim);
        self.slots[slot].tag = None;
        evicted.push(victim);
        Some(slot)
    }

    /// Frees `slot` now, or when its last pin goes.
    fn retire(&mut self, slot: usize) {
        let s = &mut self.slots[slot];
        s.tag = None;
        if s.pins == 0 {
            s.retired = false;
            self.free.push(slot);
        } else {
            s.retired = true;
        }
    }

    fn unpin(&mut self, slot: usize) {
        let s = &mut self.slots[slot];
        s.pins -= 1;
        if s.pins == 0 && s.retired {
            s.retired = false;
            self.free.push(slot);
        }
    }
}

/// A read's pin on a slot, let go however the read ends: a read changes
/// nothing in the slot, so the slot may be reused even if it was
/// abandoned.
struct Pinned<'a, B> {
    store: &'a ExtentStore<B>,
    slot: usize,
}

impl<B> Drop for Pinned<'_, B> {
    fn drop(&mut self) {
        let mut slots = self
            .store
            .slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        slots.unpin(self.slot);
    }
}

#[cfg(test)]
mod tests {
    use std::pin::pin;

    use smol::channel::{Receiver, Sender};
    use smol::future::{block_on, poll_once};

    use super::*;

    const EXTENT: usize = 4096;
    const TAG: Tag = Tag {
        epoch: 1,
        version: 1,
    };

    /// Memory whose every read and write waits for a go from the test, so
    /// that a test can hold one under way.
    struct Gated {
        bytes: Mutex<Vec<u8>>,
        go: Receiver<()>,
    }

    impl BlockBackend for Gated {
        async fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), IoError> {
            let _ = self.go.recv().await;
            let bytes = self.bytes.lock().unwrap();
            buf.copy_from_slice(&bytes[offset as usize..][..buf.len()]);
            Ok(())
        }
        async fn write(&self, offset: u64, buf: &[u8], _fua: bool) -> Result<(), IoError> {
            let _ = self.go.recv().await;
            let mut bytes = self.bytes.lock().unwrap();
            bytes[offset as usize..][..buf.len()].copy_from_slice(buf);
            Ok(())
        }
        async fn flush(&self) -> Result<(), IoError> {
            Ok(())
        }
        async fn discard(&self, _offset: u64, _len: u64) -> Result<(), IoError> {
            Ok(())
        }
        async fn write_zeroes(&self, _offset: u64, _len: u64) -> Result<(), IoError> {
            Ok(())
        }
    }

    /// A store of one slot over gated memory, and the gate's key.
    fn one_slot() -> (ExtentStore<Gated>, Sender<()>) {
        let (go, gate) = smol::channel::unbounded();
        let backend = Gated {
            bytes: Mutex::new(vec![0; EXTENT]),
            go: gate,
        };
        let store = ExtentStore::new(backend, EXTENT as u64, EXTENT as u64).unwrap();
        (store, go)
    }

    #[test]
    fn a_slot_being_read_is_not_given_to_another_extent() {
        let (store, go) = one_slot();
        go.try_send(()).unwrap();
        assert!(block_on(store.insert(1, TAG, &[1; EXTENT])).stored);
        let mut buf = vec![0; EXTENT];
        {
            let mut read = pin!(store.read(1, TAG, 0, &mut buf));
            assert!(block_on(poll_once(&mut read)).is_none(), "the read waits");
            let refused = block_on(store.insert(2, TAG, &[2; EXTENT]));
            assert_eq!(refused, Inserted::default(), "the only slot is pinned");
            go.try_send(()).unwrap();
            assert!(block_on(read).unwrap());
        }
        assert_eq!(buf, [1; EXTENT]);
        go.try_send(()).unwrap();
        let inserted = block_on(store.insert(2, TAG, &[2; EXTENT]));
        assert_eq!(
            inserted,
            Inserted {
                stored: true,
                evicted: vec![1],
            }
        );
    }

    #[test]
    fn a_slot_whose_write_was_abandoned_is_never_reused() {
        let (store, go) = one_slot();
        {
            let mut insert = pin!(store.insert(1, TAG, &[1; EXTENT]));
            assert!(block_on(poll_once(&mut insert)).is_none());
        }
        go.try_send(()).unwrap();
        let inserted = block_on(store.insert(2, TAG, &[2; EXTENT]));
        assert!(!inserted.stored, "the kernel may still be writing the slot");
        assert!(store.is_empty());
    }

    #[test]
    fn a_copy_written_late_does_not_replace_a_newer_one() {
        let (go, gate) = smol::channel::unbounded();
        let backend = Gated {
            bytes: Mutex::new(vec![0; 2 * EXTENT]),
            go: gate,
        };
        let store = ExtentStore::new(backend, 2 * EXTENT as u64, EXTENT as u64).unwrap();
        let newer = Tag { version: 2, ..TAG };
        {
            let mut older = pin!(store.insert(7, TAG, &[1; EXTENT]));
            assert!(block_on(poll_once(&mut older)).is_none());
            go.try_send(()).unwrap();
            assert!(block_on(store.insert(7, newer, &[2; EXTENT])).stored);
            go.try_send(()).unwrap();
            assert!(block_on(older).stored);
        }
        let mut buf = vec![0; EXTENT];
        go.try_send(()).unwrap();
        assert!(block_on(store.read(7, newer, 0, &mut buf)).unwrap());
        assert_eq!(buf, [2; EXTENT]);
        assert!(!block_on(store.read(7, TAG, 0, &mut buf)).unwrap());
        assert_eq!(store.len(), 1, "the older copy's slot went back");
    }
}
