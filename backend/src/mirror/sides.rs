//! The mirror's two sides as its shell reaches them: one attempt on a side
//! (with a deadline, and the count of writes that may still land), and the
//! jobs built of attempts: a region copied or compared, both sides
//! flushed, and a former primary's take-back of what it wrote alone.

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use super::{DirtyMapFile, Side};
use crate::tail::{BlockOp, Tail, TailError};
use crate::AlignedBuf;

/// The largest single transfer of a resync or a verify: a region is copied
/// in pieces this size, all at once (a round trip per region, not per
/// piece), so that a foreground request never queues behind a whole 4 MiB
/// transfer.
const COPY_CHUNK: u64 = 256 << 10;

/// Background work on a few regions, one job at a time, with writes to
/// them held meanwhile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Job {
    /// Copy `count` dirty regions from `first` on, from `source` (in sync)
    /// to `target` (stale).
    Copy {
        first: u64,
        count: u64,
        source: Side,
        target: Side,
    },
    /// Compare the region's copies.
    Compare { region: u64 },
}

impl Job {
    /// The regions it works on.
    pub(super) fn regions(self) -> Range<u64> {
        match self {
            Job::Copy { first, count, .. } => first..first + count,
            Job::Compare { region } => region..region + 1,
        }
    }
}

/// One side of the mirror as the shell reaches it.
pub(super) struct SidePath {
    pub(super) path: Arc<dyn Tail>,
    /// Writes sent to the side that may still land there: those neither
    /// answered nor lost with a connection long enough ago that the peer
    /// can no longer start them. A side that was lost is taken back only
    /// once none is left, so that no old write lands after a resync copy.
    unsettled: AtomicUsize,
}

impl SidePath {
    pub(super) fn new(path: Arc<dyn Tail>) -> Arc<SidePath> {
        Arc::new(SidePath {
            path,
            unsettled: AtomicUsize::new(0),
        })
    }

    pub(super) fn name(&self) -> &str {
        self.path.name()
    }

    pub(super) fn is_settled(&self) -> bool {
        self.unsettled.load(Ordering::Acquire) == 0
    }
}

/// Why an attempt on a side failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttemptError {
    #[error(transparent)]
    Tail(#[from] TailError),
    /// The side did not answer in time; the attempt itself goes on.
    #[error("no answer in {} ms", .0.as_millis())]
    NoAnswer(Duration),
    /// The task running the attempt ended without an answer.
    #[error("the attempt's task ended unanswered")]
    Abandoned,
}

/// The configuration epoch the sides are asked under, and how long an
/// attempt on a peer side may take.
pub(super) type Asked = (u64, Duration);

/// One attempt of `op` on `side`, failing after `timeout`. The attempt
/// itself goes on past the timeout, until answered or lost: while it may
/// land, a write counts in the side's unsettled writes.
pub(super) async fn attempt(
    side: &Arc<SidePath>,
    epoch: u64,
    op: BlockOp,
    payload: Option<Arc<AlignedBuf>>,
    timeout: Duration,
) -> Result<Option<AlignedBuf>, AttemptError> {
    if side.path.reachability().is_none() {
        // Never dropped half way: the kernel holds its buffers until the
        // I/O completes. A stalled local disk stalls the mirror.
        return Ok(side.path.execute(epoch, op, payload).await?);
    }
    let tracked = op.changes_data();
    if tracked {
        side.unsettled.fetch_add(1, Ordering::AcqRel);
    }
    let (answer, answered) = oneshot::channel();
    let call_side = side.clone();
    tokio::spawn(async move {
        let result = call_side.path.execute(epoch, op, payload).await;
        let lost_until = result.as_ref().err().and_then(TailError::settles_at);
        let _ = answer.send(result);
        if tracked {
            if let Some(at) = lost_until {
                tokio::time::sleep_until(at.into()).await;
            }
            call_side.unsettled.fetch_sub(1, Ordering::AcqRel);
        }
    });
    match tokio::time::timeout(timeout, answered).await {
        Ok(Ok(result)) => Ok(result?),
        Ok(Err(_)) => Err(AttemptError::Abandoned),
        Err(_) => Err(AttemptError::NoAnswer(timeout)),
    }
}

/// Reads `len` bytes at `offset` from `side`.
async fn read_side(
    sides: &[Arc<SidePath>; 2],
    side: Side,
    (epoch, timeout): Asked,
    offset: u64,
    len: u32,
) -> Result<AlignedBuf, (Side, AttemptError)> {
    let op = BlockOp::Read { offset, len };
    match attempt(&sides[side.index()], epoch, op, None, timeout).await {
        Ok(Some(data)) => Ok(data),
        // A tail answers a read with its data: never so.
        Ok(None) => Err((
            side,
            TailError::WrongLength {
                got: 0,
                wanted: len as usize,
            }
            .into(),
        )),
        Err(why) => Err((side, why)),
    }
}

/// Runs a copy or a compare over `range`, a piece at a time. A compare
/// answers whether the two copies' CRC32C match.
pub(super) async fn run_job(
    sides: &[Arc<SidePath>; 2],
    job: Job,
    range: Range<u64>,
    asked: Asked,
) -> Result<bool, (Side, AttemptError)> {
    match job {
        Job::Copy { source, target, .. } => {
            let mut pieces = tokio::task::JoinSet::new();
            for offset in range.clone().step_by(COPY_CHUNK as usize) {
                // At most COPY_CHUNK: fits a u32.
                let len = (range.end - offset).min(COPY_CHUNK) as u32;
                let sides = sides.clone();
                pieces.spawn(async move {
                    copy_piece(&sides, source, target, asked, offset, len).await
                });
            }
            // Every piece is awaited, failed or not: a local attempt must
            // not be dropped half way.
            let mut outcome = Ok(());
            while let Some(piece) = pieces.join_next().await {
                let piece = piece.unwrap_or(Err((target, AttemptError::Abandoned)));
                outcome = outcome.and(piece);
            }
            outcome?;
            // Durable before the region counts as copied.
            let (epoch, timeout) = asked;
            flush_side(&sides[target.index()], epoch, timeout)
                .await
                .map_err(|why| (target, why))?;
            Ok(true)
        }
        Job::Compare { .. } => {
            let mut crcs = [0u32; 2];
            let mut offset = range.start;
            while offset < range.end {
                let len = (range.end - offset).min(COPY_CHUNK) as u32;
                let (a, b) = tokio::join!(
                    read_side(sides, Side::A, asked, offset, len),
                    read_side(sides, Side::B, asked, offset, len)
                );
                crcs[0] = crc32c::crc32c_append(crcs[0], &a?);
                crcs[1] = crc32c::crc32c_append(crcs[1], &b?);
                offset += u64::from(len);
            }
            Ok(crcs[0] == crcs[1])
        }
    }
}

/// Copies `len` bytes at `offset` from `source` to `target`.
async fn copy_piece(
    sides: &[Arc<SidePath>; 2],
    source: Side,
    target: Side,
    asked: Asked,
    offset: u64,
    len: u32,
) -> Result<(), (Side, AttemptError)> {
    let data = read_side(sides, source, asked, offset, len).await?;
    // A resync copy need not be stable when answered: the dirty map
    // keeps the region until a flush of the target has made it so.
    let op = BlockOp::Write {
        offset,
        len,
        fua: false,
    };
    let (epoch, timeout) = asked;
    attempt(
        &sides[target.index()],
        epoch,
        op,
        Some(Arc::new(data)),
        timeout,
    )
    .await
    .map(drop)
    .map_err(|why| (target, why))
}

/// Flushes one side.
pub(super) async fn flush_side(
    path: &Arc<SidePath>,
    epoch: u64,
    timeout: Duration,
) -> Result<(), AttemptError> {
    attempt(path, epoch, BlockOp::Flush, None, timeout)
        .await
        .map(drop)
}

/// Flushes both sides at once: whether both succeeded.
pub(super) async fn flush_both(sides: &[Arc<SidePath>; 2], epoch: u64, timeout: Duration) -> bool {
    let (a, b) = tokio::join!(
        flush_side(&sides[0], epoch, timeout),
        flush_side(&sides[1], epoch, timeout)
    );
    a.and(b).is_ok()
}

/// Why [`pull_dirty`] stopped.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("cannot copy a dirty region: {0}")]
    Copy(AttemptError),
    #[error("cannot flush the dirty map: {0}")]
    Map(#[from] std::io::Error),
}

/// Copies every region `dirty` records from `source` (the new primary's
/// service of the vdisk, read at `epoch`) to `target` (this node's own
/// tail), clearing each once it has landed, then flushes the tail and the
/// map. How a former primary takes back from the new one the regions it
/// may have written alone before it lost its place: the new primary does
/// not know them. Returns the bytes copied.
pub async fn pull_dirty(
    source: Arc<dyn Tail>,
    target: Arc<dyn Tail>,
    epoch: u64,
    dirty: &mut DirtyMapFile,
    timeout: Duration,
) -> Result<u64, PullError> {
    let geometry = dirty.geometry();
    let sides = [SidePath::new(target), SidePath::new(source)];
    let regions: Vec<u64> = dirty.regions().iter().collect();
    let mut copied = 0;
    for region in regions {
        let start = region * geometry.region_size();
        let range = start..start + geometry.region_len(region);
        let job = Job::Copy {
            first: region,
            count: 1,
            source: Side::B,
            target: Side::A,
        };
        run_job(&sides, job, range.clone(), (epoch, timeout))
            .await
            .map_err(|(_, why)| PullError::Copy(why))?;
        dirty.clear(region);
        copied += range.end - range.start;
    }
    dirty.flush()?;
    Ok(copied)
}
