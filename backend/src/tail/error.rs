use std::io;
use std::path::PathBuf;
use std::time::Instant;

/// Why one request on a tail failed: what the caller's policy decides on
/// (resend elsewhere, wait for a new mapping, fail the request now).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TailError {
    /// The tail ran the request and failed it with this errno.
    #[error("tail I/O error: {}", io::Error::from_raw_os_error(*errno as i32))]
    Io { errno: u32 },
    /// The tail's node serves no tail for this vdisk (to this node).
    #[error("the peer serves no tail for this vdisk")]
    NoSuchTail,
    /// The tail's node serves the vdisk under a newer epoch, `current`:
    /// the mapping moved on.
    #[error("refused as of an older epoch (the peer serves {current})")]
    StaleEpoch { current: u64 },
    /// The tail's node is shutting down, or the request's connection
    /// closed before it started.
    #[error("the peer is shutting down")]
    ShuttingDown,
    /// The tail's node does not count this node as a member.
    #[error("the peer does not count this node as a member")]
    NotAMember,
    /// The tail's node holds no lease from the store's majority and
    /// touches none of its tails.
    #[error("the tail's node is cut off from the store's majority")]
    NoLease,
    /// The answer to a read does not carry the bytes asked for.
    #[error("answered with {got} bytes for {wanted}")]
    WrongLength { got: usize, wanted: usize },
    /// No way to the tail's node was up: the request never left.
    #[error("no link to the peer is up")]
    Unreachable,
    /// The way to the tail's node broke with the request out: it may or
    /// may not have reached the node, which may still start it until
    /// `settles_at` (a node stops taking a closed connection's requests
    /// within [`crate::wire::SILENCE`]), unless fenced sooner.
    #[error("link lost with the request unanswered")]
    Lost { settles_at: Instant },
}

impl TailError {
    /// The error of a request that failed on this node with `error`.
    pub fn io(error: &crate::IoError) -> TailError {
        TailError::Io {
            errno: error.errno().unsigned_abs(),
        }
    }

    /// Until when the request that failed so may still start at the
    /// tail: `None` if it cannot (it never left, or was answered).
    pub fn settles_at(&self) -> Option<Instant> {
        match self {
            TailError::Lost { settles_at } => Some(*settles_at),
            _ => None,
        }
    }

    /// Whether the tail refused the request for what it asks (out of
    /// range, no space, a read-only or discard-less tail) rather than
    /// failed it: a vdisk's tails are one disk, so no other tail, and no
    /// later try, does better.
    pub fn refuses_the_request_itself(&self) -> bool {
        let TailError::Io { errno } = *self else {
            return false;
        };
        [libc::EINVAL, libc::ENOSPC, libc::EROFS, libc::EOPNOTSUPP]
            .iter()
            .any(|&e| e.unsigned_abs() == errno)
    }
}

/// Why a tail cannot be opened or used. Nothing was changed on the tail.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TailOpenError {
    #[error("cannot open tail {path}")]
    Open { path: PathBuf, source: io::Error },
    #[error("tail {path} is neither a regular file nor a block device")]
    NotFileOrBlockDevice { path: PathBuf },
    #[error(
        "tail {path} does not support direct I/O in the vdisk's block size; put it on \
         a filesystem or device that does (ext4, xfs, a block device)"
    )]
    NoDirectIo { path: PathBuf, source: io::Error },
    #[error("tail {path} is in use (mounted, or held by a vdisk or a volume manager)")]
    Busy { path: PathBuf },
    #[error("cannot read the size of tail {path}")]
    Size { path: PathBuf, source: io::Error },
}
