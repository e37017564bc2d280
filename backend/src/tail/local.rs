use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;

use io_uring::{opcode, types};

use super::{BlockOp, Tail, TailError, TailFuture, TailOpenError};
use crate::{AlignedBuf, BlockBackend, EngineRing, IoError, RegisteredBuf, RegisteredIo, Ring};

/// What a tail offers, read when it is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TailGeometry {
    /// Bytes addressable on the tail.
    pub size_bytes: u64,
    /// True for a block device, false for a regular file.
    pub is_block_device: bool,
}

/// A file or block device on this node, read and written with `O_DIRECT`
/// through the io_uring of the thread that serves each request.
pub struct LocalTail<R> {
    file: File,
    geometry: TailGeometry,
    ring: R,
}

impl<R: Ring> LocalTail<R> {
    /// Opens `path` for direct I/O in units of `block_size` bytes and checks
    /// that such I/O works there, by reading one block.
    pub fn open(
        path: &Path,
        block_size: u32,
        read_only: bool,
        ring: R,
    ) -> Result<Self, TailOpenError> {
        let open_error = |source| TailOpenError::Open {
            path: path.to_owned(),
            source,
        };
        let file_type = std::fs::metadata(path).map_err(open_error)?.file_type();
        if !file_type.is_file() && !file_type.is_block_device() {
            return Err(TailOpenError::NotFileOrBlockDevice {
                path: path.to_owned(),
            });
        }
        // A block device is claimed exclusively, as a mount would: two users
        // writing one device unawares is how data gets lost.
        let exclusive = if file_type.is_block_device() {
            libc::O_EXCL
        } else {
            0
        };
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .custom_flags(libc::O_DIRECT | exclusive)
            .open(path)
            .map_err(|source| match source.raw_os_error() {
                Some(libc::EINVAL) => TailOpenError::NoDirectIo {
                    path: path.to_owned(),
                    source,
                },
                Some(libc::EBUSY) => TailOpenError::Busy {
                    path: path.to_owned(),
                },
                _ => open_error(source),
            })?;
        // Seeking to the end measures files and block devices alike.
        let size_bytes = (&file)
            .seek(SeekFrom::End(0))
            .map_err(|source| TailOpenError::Size {
                path: path.to_owned(),
                source,
            })?;
        probe_direct_io(&file, block_size, size_bytes).map_err(|source| {
            TailOpenError::NoDirectIo {
                path: path.to_owned(),
                source,
            }
        })?;
        Ok(LocalTail {
            file,
            geometry: TailGeometry {
                size_bytes,
                is_block_device: file_type.is_block_device(),
            },
            ring,
        })
    }

    pub fn geometry(&self) -> TailGeometry {
        self.geometry
    }

    fn fd(&self) -> types::Fd {
        types::Fd(self.file.as_raw_fd())
    }

    /// Submits one entry and maps a negative result to an error.
    ///
    /// # Safety
    /// As [`Ring::submit`].
    async unsafe fn submit(&self, entry: io_uring::squeue::Entry) -> Result<u32, IoError> {
        let result = unsafe { self.ring.submit(entry) }.await;
        u32::try_from(result).map_err(|_| IoError::Os(io::Error::from_raw_os_error(-result)))
    }

    /// Moves `len` bytes at `offset` with the entries `entry(done, len,
    /// at)` makes for the part not moved yet (`done` bytes in, `len` of
    /// them at file offset `at`): a short transfer goes on where it
    /// stopped, and one that moves nothing is an error.
    ///
    /// # Safety
    /// As [`LocalTail::submit`], for every entry `entry` makes.
    async unsafe fn transfer(
        &self,
        offset: u64,
        len: usize,
        entry: impl Fn(usize, u32, u64) -> io_uring::squeue::Entry,
    ) -> Result<(), IoError> {
        let mut done = 0;
        while done < len {
            let part = u32::try_from(len - done).unwrap_or(u32::MAX);
            let at = offset + done as u64;
            // SAFETY: the caller's.
            match unsafe { self.submit(entry(done, part, at)) }.await? {
                0 => return Err(IoError::ShortTransfer { offset: at }),
                n => done += n as usize,
            }
        }
        Ok(())
    }

    async fn fallocate(&self, offset: u64, len: u64, mode: i32) -> Result<(), IoError> {
        let entry = opcode::Fallocate::new(self.fd(), len)
            .offset(offset)
            .mode(mode)
            .build();
        // SAFETY: fallocate points at no buffer.
        unsafe { self.submit(entry) }.await.map(drop)
    }
}

impl<R: Ring> BlockBackend for LocalTail<R> {
    async fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), IoError> {
        // An address, not a pointer, so that the future stays Send.
        let base = buf.as_mut_ptr() as usize;
        let entry = |done: usize, len, at| {
            opcode::Read::new(self.fd(), (base + done) as *mut u8, len)
                .offset(at)
                .build()
        };
        // SAFETY: `buf` is borrowed mutably until this future completes.
        unsafe { self.transfer(offset, buf.len(), entry) }.await
    }

    async fn write(&self, offset: u64, buf: &[u8], fua: bool) -> Result<(), IoError> {
        let base = buf.as_ptr() as usize;
        let entry = |done: usize, len, at| {
            opcode::Write::new(self.fd(), (base + done) as *const u8, len)
                .offset(at)
                .rw_flags(write_flags(fua))
                .build()
        };
        // SAFETY: `buf` is borrowed until this future completes.
        unsafe { self.transfer(offset, buf.len(), entry) }.await
    }

    async fn flush(&self) -> Result<(), IoError> {
        let entry = opcode::Fsync::new(self.fd())
            .flags(types::FsyncFlags::DATASYNC)
            .build();
        // SAFETY: fsync points at no buffer.
        unsafe { self.submit(entry) }.await.map(drop)
    }

    async fn discard(&self, offset: u64, len: u64) -> Result<(), IoError> {
        // A punched hole reads back as zeroes, on files and block devices.
        self.fallocate(
            offset,
            len,
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
        )
        .await
    }

    async fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), IoError> {
        self.fallocate(
            offset,
            len,
            libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
        )
        .await
    }
}

impl<R: Ring> RegisteredIo for LocalTail<R> {
    async fn read_registered(
        &self,
        offset: u64,
        len: u32,
        buf: RegisteredBuf,
    ) -> Result<(), IoError> {
        let entry = |done: usize, len, at| {
            opcode::ReadFixed::new(
                self.fd(),
                (buf.base + done as u64) as *mut u8,
                len,
                buf.index,
            )
            .offset(at)
            .build()
        };
        // SAFETY: the registered buffer is the caller's to fill until this
        // future completes (a ublk request's pages stay registered until
        // its result is committed, which waits for this).
        unsafe { self.transfer(offset, len as usize, entry) }.await
    }

    async fn write_registered(
        &self,
        offset: u64,
        len: u32,
        buf: RegisteredBuf,
        fua: bool,
    ) -> Result<(), IoError> {
        let entry = |done: usize, len, at| {
            opcode::WriteFixed::new(
                self.fd(),
                (buf.base + done as u64) as *const u8,
                len,
                buf.index,
            )
            .offset(at)
            .rw_flags(write_flags(fua))
            .build()
        };
        // SAFETY: as in `read_registered`.
        unsafe { self.transfer(offset, len as usize, entry) }.await
    }
}

/// The one place where a request becomes I/O on a tail of this node, for
/// peers' requests and this node's own alike.
impl Tail for LocalTail<EngineRing> {
    fn execute(
        &self,
        _epoch: u64,
        op: BlockOp,
        payload: Option<Arc<AlignedBuf>>,
    ) -> TailFuture<'_> {
        Box::pin(async move {
            // A regular file would silently grow from a write past its end.
            let size = self.geometry.size_bytes;
            if let Some((offset, len)) = op.range() {
                if offset.saturating_add(u64::from(len)) > size {
                    return Err(TailError::Io {
                        errno: libc::EINVAL.unsigned_abs(),
                    });
                }
            }
            let data = payload.as_deref().map_or(&[][..], |p| &p[..]);
            let done = match op {
                BlockOp::Read { offset, len } => {
                    let mut read = AlignedBuf::new(len as usize).map_err(|_| TailError::Io {
                        errno: libc::ENOMEM.unsigned_abs(),
                    })?;
                    self.read(offset, &mut read).await.map(|()| Some(read))
                }
                BlockOp::Write { offset, fua, .. } => {
                    self.write(offset, data, fua).await.map(|()| None)
                }
                BlockOp::Flush => self.flush().await.map(|()| None),
                BlockOp::Discard { offset, len } => {
                    self.discard(offset, u64::from(len)).await.map(|()| None)
                }
                BlockOp::WriteZeroes { offset, len } => self
                    .write_zeroes(offset, u64::from(len))
                    .await
                    .map(|()| None),
            };
            done.map_err(|e| TailError::io(&e))
        })
    }
}

/// The flags of a write: a FUA write is a `RWF_DSYNC` one, on stable
/// storage (data, and the metadata to find it) when it completes, as if
/// the file were open with `O_DSYNC`, for this write alone.
fn write_flags(fua: bool) -> i32 {
    if fua {
        libc::RWF_DSYNC
    } else {
        0
    }
}

/// Reads one block with `O_DIRECT`: the kernel refuses misaligned or
/// unsupported direct I/O with `EINVAL` here rather than on the first request.
fn probe_direct_io(file: &File, block_size: u32, size_bytes: u64) -> io::Result<()> {
    if size_bytes < u64::from(block_size) {
        // Nothing to read; the size checks of the caller refuse such a tail.
        return Ok(());
    }
    let mut buf = AlignedBuf::new(block_size as usize)?;
    file.read_at(&mut buf, 0).map(drop)
}
