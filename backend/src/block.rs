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
    /// Writes all of `buf` at `offset`.
    fn write(&self, offset: u64, buf: &[u8]) -> impl Future<Output = Result<(), IoError>>;
    /// Returns once every completed write is on stable storage.
    fn flush(&self) -> impl Future<Output = Result<(), IoError>>;
    /// Forgets the range; later reads of it return zeroes.
    fn discard(&self, offset: u64, len: u64) -> impl Future<Output = Result<(), IoError>>;
    /// Makes the range read back as zeroes without transferring a buffer.
    fn write_zeroes(&self, offset: u64, len: u64) -> impl Future<Output = Result<(), IoError>>;
}

/// A shared backend serves as well: the frontend owns one handle, and
/// whoever reconfigures it (suspend, resume) holds another.
impl<B: BlockBackend> BlockBackend for std::sync::Arc<B> {
    fn read(&self, offset: u64, buf: &mut [u8]) -> impl Future<Output = Result<(), IoError>> {
        (**self).read(offset, buf)
    }
    fn write(&self, offset: u64, buf: &[u8]) -> impl Future<Output = Result<(), IoError>> {
        (**self).write(offset, buf)
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
