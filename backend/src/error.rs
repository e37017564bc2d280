use std::io;

/// Why one block request failed. The frontend turns it into the errno of the
/// request's completion with [`IoError::errno`], its only translation point.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IoError {
    /// The operating system refused the operation on the tail.
    #[error("tail I/O failed: {0}")]
    Os(#[from] io::Error),
    /// The tail returned no bytes before the request was complete: it shrank
    /// under us.
    #[error("tail ended at byte {offset}, inside the request")]
    ShortTransfer { offset: u64 },
    /// No path to any of the vdisk's tails answered for the whole I/O
    /// timeout.
    #[error("no path to the vdisk's tails for {seconds} s")]
    Unreachable { seconds: u64 },
    /// The request cannot be expressed to a tail (too long for one frame).
    #[error("request of {len} bytes is too long")]
    TooLong { len: u64 },
    /// No copy of a mirrored vdisk known to be current could take the
    /// request, or its write could not be recorded for the other copy.
    #[error("no current copy of the mirrored vdisk could take the request")]
    NoCurrentCopy,
    /// The vdisk is being removed and takes no more requests.
    #[error("vdisk is shutting down")]
    ShuttingDown,
}

impl IoError {
    /// The negative errno that completes the block request.
    pub fn errno(&self) -> i32 {
        match self {
            IoError::Os(e) => -e.raw_os_error().unwrap_or(libc::EIO),
            IoError::ShortTransfer { .. }
            | IoError::Unreachable { .. }
            | IoError::NoCurrentCopy => -libc::EIO,
            IoError::TooLong { .. } => -libc::EINVAL,
            IoError::ShuttingDown => -libc::ESHUTDOWN,
        }
    }
}
