//! ublkvd's kernel side: one `/dev/ublkbN` per vdisk, built with libublk.
//!
//! Each device runs its queues on threads of its own; every request the
//! kernel hands a queue is decoded by [`BlockRequest::decode`] and passed to
//! a [`backend::BlockBackend`], whose result completes it. The backend's
//! io_uring entries go on the queue's own ring through [`QueueRing`], so one
//! `io_uring_enter` both reaps tail completions and commits ublk results.

mod device;
mod error;
mod kick;
mod queue;
mod request;

pub use device::{fail_unclaimed, Device, DeviceOptions};
pub use error::FrontendError;
pub use queue::QueueRing;
pub use request::BlockRequest;
