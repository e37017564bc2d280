use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

use io_uring::{opcode, squeue, types, IoUring};
use slab::Slab;
use tokio::sync::oneshot;

use crate::Ring;

/// Marks the completion of the engine's own eventfd read.
const WAKE: u64 = u64::MAX;

/// An io_uring on a thread of its own, for callers that have no ring: tokio
/// tasks (the peer server) share it through [`EngineRing`] handles, with
/// many entries in flight at once.
///
/// Dropping the engine waits for every entry in flight to complete.
pub struct Engine {
    handle: EngineRing,
    thread: Option<JoinHandle<()>>,
}

/// A handle that submits to an [`Engine`]; cheap to clone, usable from any
/// thread or runtime.
#[derive(Clone)]
pub struct EngineRing {
    inner: Arc<Shared>,
}

struct Shared {
    submissions: mpsc::Sender<Message>,
    wake: OwnedFd,
}

enum Message {
    Submit {
        entry: squeue::Entry,
        done: oneshot::Sender<i32>,
    },
    Stop,
}

impl Engine {
    /// Starts the engine with a ring of `entries` submission slots.
    pub fn start(entries: u32) -> io::Result<Engine> {
        let ring = IoUring::new(entries)?;
        // SAFETY: eventfd returns a new descriptor or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        let wake = unsafe { OwnedFd::from_raw_fd(fd) };
        let wake_fd = wake.as_raw_fd();
        let (submissions, inbox) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("io-engine".into())
            .spawn(move || run(ring, wake_fd, &inbox))?;
        Ok(Engine {
            handle: EngineRing {
                inner: Arc::new(Shared { submissions, wake }),
            },
            thread: Some(thread),
        })
    }

    pub fn ring(&self) -> EngineRing {
        self.handle.clone()
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if self.handle.send(Message::Stop).is_ok() {
            if let Some(thread) = self.thread.take() {
                let _ = thread.join();
            }
        }
    }
}

impl EngineRing {
    fn send(&self, message: Message) -> Result<(), ()> {
        self.inner.submissions.send(message).map_err(drop)?;
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live buffer to our eventfd; a full
        // counter (EAGAIN) still leaves the engine awake.
        unsafe { libc::write(self.inner.wake.as_raw_fd(), one.as_ptr().cast(), 8) };
        Ok(())
    }
}

impl Ring for EngineRing {
    async unsafe fn submit(&self, entry: squeue::Entry) -> i32 {
        let (done, result) = oneshot::channel();
        if self.send(Message::Submit { entry, done }).is_err() {
            return -libc::ESHUTDOWN;
        }
        result.await.unwrap_or(-libc::ESHUTDOWN)
    }
}

/// The engine thread: moves submissions onto the ring, completions back to
/// their submitters, and sleeps in `io_uring_enter` in between.
fn run(ring: IoUring, wake_fd: i32, inbox: &mpsc::Receiver<Message>) {
    let mut wake_buf = [0u8; 8];
    // Declared after `wake_buf`, so dropped (and its pending read cancelled)
    // before the buffer goes away.
    let mut ring = ring;
    let mut in_flight: Slab<oneshot::Sender<i32>> = Slab::new();
    let mut wake_armed = false;
    let mut stopping = false;
    loop {
        if !wake_armed && !stopping {
            let read = opcode::Read::new(types::Fd(wake_fd), wake_buf.as_mut_ptr(), 8)
                .build()
                .user_data(WAKE);
            // SAFETY: `wake_buf` lives as long as this loop, and the ring.
            if push(&mut ring, &read).is_ok() {
                wake_armed = true;
            }
        }
        while let Ok(message) = inbox.try_recv() {
            match message {
                Message::Submit { entry, done } => {
                    let key = in_flight.insert(done);
                    // SAFETY: the submitter upholds `Ring::submit`'s contract.
                    if let Err(e) = push(&mut ring, &entry.user_data(key as u64)) {
                        let _ = in_flight
                            .remove(key)
                            .send(-e.raw_os_error().unwrap_or(libc::EIO));
                    }
                }
                Message::Stop => stopping = true,
            }
        }
        if stopping && in_flight.is_empty() {
            return;
        }
        match ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) => {
                tracing::error!("io engine ring failed: {e}");
                for done in in_flight.drain() {
                    let _ = done.send(-libc::EIO);
                }
                return;
            }
        }
        for cqe in ring.completion() {
            match cqe.user_data() {
                WAKE => wake_armed = false,
                key => {
                    if let Some(done) = in_flight.try_remove(key as usize) {
                        let _ = done.send(cqe.result());
                    }
                }
            }
        }
    }
}

/// Pushes one entry, submitting what is queued first when the ring is full.
///
/// # Safety
/// As [`Ring::submit`], for the buffers `entry` points at.
fn push(ring: &mut IoUring, entry: &squeue::Entry) -> io::Result<()> {
    loop {
        // SAFETY: upheld by the caller.
        if unsafe { ring.submission().push(entry) }.is_ok() {
            return Ok(());
        }
        ring.submit()?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    }

    #[test]
    fn nop_completes_through_the_engine() {
        let engine = Engine::start(8).unwrap();
        let ring = engine.ring();
        let result =
            runtime().block_on(async { unsafe { ring.submit(opcode::Nop::new().build()).await } });
        assert_eq!(result, 0);
    }

    #[test]
    fn entries_from_many_tasks_are_in_flight_together() {
        // 64 timeouts of 200 ms each: one after another they would take
        // 12.8 s; in flight together, a fraction of a second. The ring has
        // 8 slots, so this also covers a full submission queue.
        let engine = Engine::start(8).unwrap();
        let started = Instant::now();
        runtime().block_on(async {
            let tasks: Vec<_> = (0..64)
                .map(|_| {
                    let ring = engine.ring();
                    tokio::spawn(async move {
                        let timeout = Box::new(types::Timespec::new().nsec(200_000_000));
                        let entry = opcode::Timeout::new(&*timeout).build();
                        // SAFETY: `timeout` outlives the awaited completion.
                        unsafe { ring.submit(entry).await }
                    })
                })
                .collect();
            for task in tasks {
                assert_eq!(task.await.unwrap(), -libc::ETIME);
            }
        });
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn submitting_after_the_engine_stopped_fails_cleanly() {
        let ring = Engine::start(8).unwrap().ring();
        let result =
            runtime().block_on(async { unsafe { ring.submit(opcode::Nop::new().build()).await } });
        assert_eq!(result, -libc::ESHUTDOWN);
    }
}
