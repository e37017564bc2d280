//! Waking a ublk queue thread from elsewhere.
//!
//! A queue thread sleeps in `io_uring_enter` until its ring has a
//! completion. A request whose backend finishes on another thread (a
//! routed vdisk's reply arrives on a tokio thread) wakes its tag task, but
//! that alone does not end the sleep: the task would wait for some other
//! completion, or the idle timeout. So every tag task is polled with a
//! waker that, when called from another thread, also writes an eventfd the
//! ring is polling (libublk's advice for targets that complete I/O off the
//! queue's ring).

use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::ThreadId;

use io_uring::{opcode, types};
use libublk::uring_async::ublk_submit_sqe_async;
use libublk::UblkUringData;

/// The eventfd of one queue thread.
pub(crate) struct Kick {
    fd: OwnedFd,
    queue_thread: ThreadId,
}

impl Kick {
    /// A kick for the calling thread, which must be the queue's.
    pub(crate) fn new() -> io::Result<Arc<Kick>> {
        // SAFETY: eventfd returns a new descriptor or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Arc::new(Kick {
            // SAFETY: `fd` is a fresh descriptor that nothing else owns.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            queue_thread: std::thread::current().id(),
        }))
    }

    fn kick(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live buffer to our eventfd; a full
        // counter (EAGAIN) still leaves the poll below ready.
        unsafe { libc::write(self.fd.as_raw_fd(), one.as_ptr().cast(), 8) };
    }

    /// Runs on the queue's executor for as long as the queue: each time the
    /// eventfd is written, the ring wakes, the executor runs the tasks that
    /// were woken, and the eventfd is drained and polled again. A poll, not
    /// a read, so that no buffer is left for the kernel if the queue ends
    /// with it pending.
    pub(crate) async fn serve(self: Arc<Self>) {
        loop {
            let poll =
                opcode::PollAdd::new(types::Fd(self.fd.as_raw_fd()), libc::POLLIN as u32).build();
            match ublk_submit_sqe_async(poll, UblkUringData::Target as u64).await {
                Ok(result) if result >= 0 => {}
                _ => return,
            }
            let mut count = [0u8; 8];
            // SAFETY: reads at most 8 bytes into a live buffer; the eventfd
            // is non-blocking.
            unsafe { libc::read(self.fd.as_raw_fd(), count.as_mut_ptr().cast(), 8) };
        }
    }
}

struct KickingWaker {
    inner: Waker,
    kick: Arc<Kick>,
}

impl Wake for KickingWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.inner.wake_by_ref();
        if std::thread::current().id() != self.kick.queue_thread {
            self.kick.kick();
        }
    }
}

/// A future polled with a [`KickingWaker`] around its executor's waker.
pub(crate) struct KickOnRemoteWake<F> {
    future: Pin<Box<F>>,
    kick: Arc<Kick>,
    /// The executor's waker and our wrapper of it, kept while the executor
    /// hands us the same one, so that a poll allocates nothing.
    waker: Option<(Waker, Waker)>,
}

impl<F: Future> KickOnRemoteWake<F> {
    pub(crate) fn new(future: F, kick: Arc<Kick>) -> Self {
        KickOnRemoteWake {
            future: Box::pin(future),
            kick,
            waker: None,
        }
    }
}

impl<F: Future> Future for KickOnRemoteWake<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        let current = cx.waker();
        let wrapper = match &this.waker {
            Some((inner, wrapper)) if inner.will_wake(current) => wrapper.clone(),
            _ => {
                let wrapper = Waker::from(Arc::new(KickingWaker {
                    inner: current.clone(),
                    kick: this.kick.clone(),
                }));
                this.waker = Some((current.clone(), wrapper.clone()));
                wrapper
            }
        };
        this.future
            .as_mut()
            .poll(&mut Context::from_waker(&wrapper))
    }
}
