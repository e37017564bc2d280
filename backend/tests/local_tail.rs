//! A `LocalTail` against real files: real io_uring, real `O_DIRECT`.

// Helpers outside #[test] functions panic on purpose: a failed step fails the test.
#![allow(clippy::unwrap_used)]

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use backend::{
    AlignedBuf, BlockBackend, BlockingRing, LocalTail, RegisteredBuf, RegisteredIo, TailOpenError,
};

const MIB: u64 = 1 << 20;

/// Tests need a directory on a filesystem with direct I/O (not tmpfs): the
/// target dir sits on the same filesystem as the source tree.
fn scratch_dir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

fn tail_file(dir: &Path, len: u64) -> std::path::PathBuf {
    let path = dir.join("tail");
    File::create(&path).unwrap().set_len(len).unwrap();
    path
}

fn open(path: &Path) -> LocalTail<BlockingRing> {
    LocalTail::open(path, 4096, false, BlockingRing::new().unwrap()).unwrap()
}

fn pattern(len: usize, seed: u8) -> AlignedBuf {
    let mut buf = AlignedBuf::new(len).unwrap();
    for (i, b) in buf.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(31).wrapping_add(seed);
    }
    buf
}

fn file_bytes(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    let mut file = File::open(path).unwrap();
    file.seek(SeekFrom::Start(offset)).unwrap();
    let mut out = vec![0; len];
    file.read_exact(&mut out).unwrap();
    out
}

#[test]
fn geometry_reports_file_size() {
    let dir = scratch_dir();
    let tail = open(&tail_file(dir.path(), 3 * MIB));
    assert_eq!(tail.geometry().size_bytes, 3 * MIB);
    assert!(!tail.geometry().is_block_device);
}

#[test]
fn written_bytes_land_at_the_same_offset_in_the_file_and_read_back() {
    let dir = scratch_dir();
    let path = tail_file(dir.path(), 4 * MIB);
    let tail = open(&path);
    let data = pattern(128 * 1024, 7);
    smol::block_on(tail.write(MIB + 4096, &data, false)).unwrap();

    assert_eq!(file_bytes(&path, MIB + 4096, data.len()), &data[..]);
    let mut back = AlignedBuf::new(data.len()).unwrap();
    smol::block_on(tail.read(MIB + 4096, &mut back)).unwrap();
    assert_eq!(&back[..], &data[..]);
}

#[test]
fn flush_succeeds_after_writes() {
    let dir = scratch_dir();
    let tail = open(&tail_file(dir.path(), MIB));
    smol::block_on(tail.write(0, &pattern(4096, 1), false)).unwrap();
    smol::block_on(tail.flush()).unwrap();
}

#[test]
fn discard_punches_a_hole_that_reads_as_zeroes() {
    let dir = scratch_dir();
    let path = tail_file(dir.path(), 4 * MIB);
    let tail = open(&path);
    smol::block_on(tail.write(0, &pattern(2 * MIB as usize, 3), false)).unwrap();
    let allocated_before = blocks_allocated(&path);

    smol::block_on(tail.discard(MIB, MIB)).unwrap();

    assert!(file_bytes(&path, MIB, MIB as usize).iter().all(|&b| b == 0));
    assert_ne!(file_bytes(&path, 0, 4096), vec![0; 4096]);
    assert!(blocks_allocated(&path) < allocated_before);
}

#[test]
fn write_zeroes_zeroes_only_its_range() {
    let dir = scratch_dir();
    let path = tail_file(dir.path(), 4 * MIB);
    let tail = open(&path);
    let data = pattern(3 * 4096, 9);
    smol::block_on(tail.write(0, &data, false)).unwrap();

    smol::block_on(tail.write_zeroes(4096, 4096)).unwrap();

    let bytes = file_bytes(&path, 0, 3 * 4096);
    assert_eq!(&bytes[..4096], &data[..4096]);
    assert!(bytes[4096..8192].iter().all(|&b| b == 0));
    assert_eq!(&bytes[8192..], &data[8192..]);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 4 * MIB);
}

#[test]
fn read_past_the_end_of_the_file_is_an_error_not_garbage() {
    let dir = scratch_dir();
    let tail = open(&tail_file(dir.path(), MIB));
    let mut buf = AlignedBuf::new(8192).unwrap();
    let err = smol::block_on(tail.read(MIB - 4096, &mut buf)).unwrap_err();
    assert_eq!(err.errno(), -libc::EIO);
}

#[test]
fn misaligned_write_is_refused_with_einval() {
    let dir = scratch_dir();
    let tail = open(&tail_file(dir.path(), MIB));
    let data = pattern(8192, 1);
    let err = smol::block_on(tail.write(0, &data[1..4097], false)).unwrap_err();
    assert_eq!(err.errno(), -libc::EINVAL);
}

#[test]
fn read_only_tail_refuses_writes() {
    let dir = scratch_dir();
    let path = tail_file(dir.path(), MIB);
    let tail = LocalTail::open(&path, 4096, true, BlockingRing::new().unwrap()).unwrap();
    let err = smol::block_on(tail.write(0, &pattern(4096, 1), false)).unwrap_err();
    assert_eq!(err.errno(), -libc::EBADF);
}

#[test]
fn missing_tail_is_refused_with_its_path() {
    let dir = scratch_dir();
    let path = dir.path().join("absent");
    let Err(err) = LocalTail::open(&path, 4096, false, BlockingRing::new().unwrap()) else {
        panic!("opened a missing tail");
    };
    assert!(matches!(err, TailOpenError::Open { .. }), "{err:?}");
    assert!(err.to_string().contains("absent"), "{err}");
}

#[test]
fn directory_is_refused_as_a_tail() {
    let dir = scratch_dir();
    let Err(err) = LocalTail::open(dir.path(), 4096, false, BlockingRing::new().unwrap()) else {
        panic!("opened a directory as a tail");
    };
    assert!(
        matches!(
            err,
            TailOpenError::NotFileOrBlockDevice { .. } | TailOpenError::Open { .. }
        ),
        "{err:?}"
    );
}

#[test]
fn tail_without_direct_io_is_refused_clearly() {
    // /proc files take neither O_DIRECT nor aligned reads.
    let Err(err) = LocalTail::open(
        Path::new("/proc/self/status"),
        4096,
        true,
        BlockingRing::new().unwrap(),
    ) else {
        panic!("opened a /proc file for direct I/O");
    };
    assert!(
        matches!(
            err,
            TailOpenError::NoDirectIo { .. } | TailOpenError::NotFileOrBlockDevice { .. }
        ),
        "{err:?}"
    );
}

fn blocks_allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut f = File::options().append(true).open(path).unwrap();
    f.flush().unwrap();
    std::fs::metadata(path).unwrap().blocks()
}

/// Registered-buffer I/O, as a ublk device with zero copy does it: the data
/// goes between the file and a buffer in the ring's table, by index.
#[test]
fn registered_buffers_are_read_and_written_by_index() {
    let dir = scratch_dir();
    let path = tail_file(dir.path(), 4 * MIB);
    let ring = BlockingRing::new().unwrap();
    let mut table = [pattern(64 * 1024, 3), AlignedBuf::new(64 * 1024).unwrap()];
    let iovecs: Vec<libc::iovec> = table
        .iter_mut()
        .map(|buf| libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        })
        .collect();
    // SAFETY: `table` outlives the ring and the tail, declared after it.
    unsafe { ring.register_buffers(&iovecs) }.unwrap();
    let tail = LocalTail::open(&path, 4096, false, ring).unwrap();
    let at = |index: u16| RegisteredBuf {
        index,
        base: table[usize::from(index)].as_ptr() as u64,
    };

    smol::block_on(tail.write_registered(MIB, 64 * 1024, at(0), true)).unwrap();
    assert_eq!(
        file_bytes(&path, MIB, 64 * 1024),
        &pattern(64 * 1024, 3)[..]
    );
    smol::block_on(tail.read_registered(MIB + 4096, 32 * 1024, at(1))).unwrap();
    drop(tail);
    assert_eq!(
        &table[1][..32 * 1024],
        &pattern(64 * 1024, 3)[4096..36 * 1024]
    );
    assert!(
        table[1][32 * 1024..].iter().all(|&b| b == 0),
        "only len bytes are read"
    );
}
