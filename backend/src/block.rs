use std::future::Future;

use crate::IoError;

/// A byte-addressed block device: what the frontend needs from any tail.
///
/// Offsets and lengths are in bytes and already validated by the caller
/// against the device size and its logical block size. The futures are not
/// `Send`: each is polled to completion on the thread that created it, which
/// is what lets a tail submit to that thread's io_uring.
///
/// A future that owns an in-flight io_uring entry must be driven to
/// completion, not dropped: the kernel still holds the buffer's address.
pub trait BlockBackend {
    /// Fills `buf` from `offset`.
    fn read(&self, offset: u64, buf: &mut [u8]) -> impl Future<Output = Result<(), IoError>>;
    /// Writes all of `buf` at `offset`; with `fua` (force unit access), it
    /// is on stable storage when this returns.
    fn write(
        &self,
        offset: u64,
        buf: &[u8],
        fua: bool,
    ) -> impl Future<Output = Result<(), IoError>>;
    /// Returns once every completed write is on stable storage.
    fn flush(&self) -> impl Future<Output = Result<(), IoError>>;
    /// Forgets the range; later reads of it return zeroes.
    fn discard(&self, offset: u64, len: u64) -> impl Future<Output = Result<(), IoError>>;
    /// Makes the range read back as zeroes without transferring a buffer.
    fn write_zeroes(&self, offset: u64, len: u64) -> impl Future<Output = Result<(), IoError>>;
}

/// A backend that moves a request's data straight between its tail and a
/// buffer in the registered-buffer table of the io_uring it submits on
/// (`READ_FIXED`/`WRITE_FIXED`), so that the data never passes through this
/// process's memory: how a block device's pages, registered in that table
/// by the kernel (ublk's automatic buffer registration), reach a tail on
/// this node with no copy.
pub trait RegisteredIo: BlockBackend {
    /// Fills the first `len` bytes of `buf` from `offset`.
    fn read_registered(
        &self,
        offset: u64,
        len: u32,
        buf: RegisteredBuf,
    ) -> impl Future<Output = Result<(), IoError>>;
    /// Writes the first `len` bytes of `buf` at `offset`; `fua` as for
    /// [`BlockBackend::write`].
    fn write_registered(
        &self,
        offset: u64,
        len: u32,
        buf: RegisteredBuf,
        fua: bool,
    ) -> impl Future<Output = Result<(), IoError>>;
}

/// A buffer in the registered-buffer table of the ring a backend submits on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegisteredBuf {
    pub index: u16,
    /// The address at which the table places the buffer's first byte: 0
    /// for pages the kernel registered (a ublk request's), the user address
    /// for memory a process registered.
    pub base: u64,
}

impl RegisteredBuf {
    /// A ublk request's pages, registered by the kernel at `index`.
    pub fn kernel(index: u16) -> RegisteredBuf {
        RegisteredBuf { index, base: 0 }
    }
}

/// A shared backend serves as well: the frontend owns one handle, and
/// whoever reconfigures it (suspend, resume) holds another.
impl<B: BlockBackend> BlockBackend for std::sync::Arc<B> {
    fn read(&self, offset: u64, buf: &mut [u8]) -> impl Future<Output = Result<(), IoError>> {
        (**self).read(offset, buf)
    }
    fn write(
        &self,
        offset: u64,
        buf: &[u8],
        fua: bool,
    ) -> impl Future<Output = Result<(), IoError>> {
        (**self).write(offset, buf, fua)
    }
    fn flush(&self) -> impl Future<Output = Result<(), IoError>> {
        (**self).flush()
    }
    fn discard(&self, offset: u64, len: u64) -> impl Future<Output = Result<(), IoError>> {
        (**self).discard(offset, len)
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> impl Future<Output = Result<(), IoError>> {
        (**self).write_zeroes(offset, len)
    }
}
