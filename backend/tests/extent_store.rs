//! A cached vdisk's extent store on a real cache file: real io_uring, real
//! `O_DIRECT`.

// Helpers outside #[test] functions panic on purpose: a failed step fails the test.
#![allow(clippy::unwrap_used)]

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use backend::cache::{ExtentStore, Inserted, StoreError, Tag};
use backend::{AlignedBuf, BlockingRing, LocalTail};

const EXTENT: u64 = 64 << 10;

fn tag(version: u64) -> Tag {
    Tag { epoch: 1, version }
}

/// A cache file of `slots` extents, on the target dir's filesystem, which
/// has direct I/O (tmpfs has not).
fn cache_file(dir: &Path, slots: u64) -> PathBuf {
    let path = dir.join("cache");
    File::create(&path)
        .unwrap()
        .set_len(slots * EXTENT)
        .unwrap();
    path
}

fn store(path: &Path) -> ExtentStore<LocalTail<BlockingRing>> {
    let tail = LocalTail::open(path, 4096, false, BlockingRing::new().unwrap()).unwrap();
    let size = tail.geometry().size_bytes;
    ExtentStore::new(tail, size, EXTENT).unwrap()
}

fn extent_of(byte: u8) -> AlignedBuf {
    let mut buf = AlignedBuf::new(EXTENT as usize).unwrap();
    buf.fill(byte);
    buf
}

/// Reads `extent` as `tag`: its bytes, or None on a miss.
fn read(store: &ExtentStore<LocalTail<BlockingRing>>, extent: u64, tag: Tag) -> Option<Vec<u8>> {
    let mut buf = AlignedBuf::new(EXTENT as usize).unwrap();
    smol::block_on(store.read(extent, tag, 0, &mut buf))
        .unwrap()
        .then(|| buf.to_vec())
}

fn insert(
    store: &ExtentStore<LocalTail<BlockingRing>>,
    extent: u64,
    tag: Tag,
    byte: u8,
) -> Inserted {
    smol::block_on(store.insert(extent, tag, &extent_of(byte)))
}

#[test]
fn extents_are_kept_in_the_cache_file_and_read_back_by_tag() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = cache_file(dir.path(), 3);
    let store = store(&path);
    assert_eq!(store.capacity(), 3);
    for (extent, byte) in [(10, 0xa1), (11, 0xb2)] {
        assert_eq!(
            insert(&store, extent, tag(4), byte),
            Inserted {
                stored: true,
                evicted: vec![]
            }
        );
    }
    assert_eq!(
        read(&store, 10, tag(4)).unwrap(),
        vec![0xa1; EXTENT as usize]
    );
    assert_eq!(
        read(&store, 11, tag(4)).unwrap(),
        vec![0xb2; EXTENT as usize]
    );
    assert_eq!(read(&store, 10, tag(5)), None, "another version is a miss");
    assert_eq!(
        read(
            &store,
            10,
            Tag {
                epoch: 2,
                version: 4
            }
        ),
        None,
        "so is another root's"
    );
    assert_eq!(read(&store, 12, tag(4)), None);
    // The bytes are in the file, one extent per slot.
    let mut on_disk = Vec::new();
    File::open(&path)
        .unwrap()
        .read_to_end(&mut on_disk)
        .unwrap();
    let slots: Vec<u8> = on_disk.chunks(EXTENT as usize).map(|c| c[0]).collect();
    assert!(slots.contains(&0xa1) && slots.contains(&0xb2), "{slots:x?}");
}

#[test]
fn the_least_recently_used_extent_is_let_go_and_named() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let store = store(&cache_file(dir.path(), 3));
    for extent in 1..=3 {
        insert(&store, extent, tag(1), extent as u8);
    }
    // A read makes 1 the most recently used: 2 is the oldest now.
    assert!(read(&store, 1, tag(1)).is_some());
    assert_eq!(
        insert(&store, 4, tag(1), 4),
        Inserted {
            stored: true,
            evicted: vec![2]
        }
    );
    assert_eq!(read(&store, 2, tag(1)), None);
    for extent in [1, 3, 4] {
        assert_eq!(read(&store, extent, tag(1)).unwrap()[0], extent as u8);
    }
}

#[test]
fn a_new_version_replaces_the_old_in_place_of_growing() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let store = store(&cache_file(dir.path(), 2));
    insert(&store, 5, tag(1), 1);
    insert(&store, 5, tag(2), 2);
    assert_eq!(store.len(), 1);
    assert_eq!(read(&store, 5, tag(1)), None);
    assert_eq!(read(&store, 5, tag(2)).unwrap()[0], 2);
    // An older version arriving late keeps nothing.
    insert(&store, 5, tag(1), 1);
    assert_eq!(read(&store, 5, tag(2)).unwrap()[0], 2);
    // The old slot was freed: a second extent needs no eviction.
    assert!(insert(&store, 6, tag(1), 6).evicted.is_empty());
    store.remove(5);
    assert_eq!(read(&store, 5, tag(2)), None);
    assert!(
        insert(&store, 7, tag(1), 7).evicted.is_empty(),
        "removal frees the slot"
    );
}

#[test]
fn a_cache_file_that_cannot_hold_extents_is_refused() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("small");
    File::create(&path).unwrap().set_len(EXTENT / 2).unwrap();
    let tail = || LocalTail::open(&path, 4096, false, BlockingRing::new().unwrap()).unwrap();
    assert_eq!(
        ExtentStore::new(tail(), EXTENT / 2, EXTENT).err(),
        Some(StoreError::TooSmall {
            size_bytes: EXTENT / 2,
            extent_bytes: EXTENT
        })
    );
    assert_eq!(
        ExtentStore::new(tail(), EXTENT, 3000).err(),
        Some(StoreError::ExtentSize { extent_bytes: 3000 })
    );
    let mut file = File::open(&path).unwrap();
    assert_eq!(
        file.seek(SeekFrom::End(0)).unwrap(),
        EXTENT / 2,
        "left as it was"
    );
}
