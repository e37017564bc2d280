use std::cell::RefCell;
use std::future::{ready, Future};
use std::io;

use io_uring::{squeue, IoUring};

/// Where a tail submits its io_uring entries: the ring of the thread that
/// serves the request (a ublk queue's ring, or a [`BlockingRing`]).
pub trait Ring {
    /// Submits `entry` and resolves to its completion's result: a byte count,
    /// or a negative errno.
    ///
    /// # Safety
    /// Every buffer `entry` points at must stay valid, and not be otherwise
    /// accessed, until the returned future has completed.
    unsafe fn submit(&self, entry: squeue::Entry) -> impl Future<Output = i32>;
}

/// A private ring that submits one entry and waits for its completion before
/// returning: one request in flight at a time. For tools and tests that need
/// a tail outside a ublk queue thread.
pub struct BlockingRing {
    ring: RefCell<IoUring>,
}

impl BlockingRing {
    pub fn new() -> io::Result<Self> {
        Ok(BlockingRing {
            ring: RefCell::new(IoUring::new(4)?),
        })
    }

    /// Registers `buffers` as the ring's fixed buffers, the i-th at index
    /// i, for registered-buffer I/O ([`crate::RegisteredIo`]) outside a
    /// ublk queue, where the kernel registers the request's pages itself.
    ///
    /// # Safety
    /// Each buffer must stay valid for as long as the ring lives.
    pub unsafe fn register_buffers(&self, buffers: &[libc::iovec]) -> io::Result<()> {
        // SAFETY: the caller's.
        unsafe { self.ring.borrow().submitter().register_buffers(buffers) }
    }

    fn submit_and_wait(&self, entry: &squeue::Entry) -> io::Result<i32> {
        let mut ring = self.ring.borrow_mut();
        // SAFETY: upheld by the caller of `Ring::submit`; the ring is empty
        // here because every call waits for its own completion.
        unsafe { ring.submission().push(entry) }
            .map_err(|_| io::Error::other("io_uring submission queue full"))?;
        loop {
            match ring.submit_and_wait(1) {
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        let completion = ring.completion().next();
        completion
            .map(|cqe| cqe.result())
            .ok_or_else(|| io::Error::other("io_uring returned no completion"))
    }
}

impl Ring for BlockingRing {
    unsafe fn submit(&self, entry: squeue::Entry) -> impl Future<Output = i32> {
        let result = self
            .submit_and_wait(&entry)
            .unwrap_or_else(|e| -e.raw_os_error().unwrap_or(libc::EIO));
        ready(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use io_uring::opcode;

    #[test]
    fn nop_completes_with_zero() {
        let ring = BlockingRing::new().unwrap();
        let result = smol::block_on(unsafe { ring.submit(opcode::Nop::new().build()) });
        assert_eq!(result, 0);
    }
}
