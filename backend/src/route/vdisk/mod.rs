//! A routed vdisk: the handle requests are submitted through (this file)
//! and the routing task that carries them out on tails (`task.rs`).

mod task;

use task::RoutingTask;

use std::sync::Arc;

use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot, watch};

use super::{RouteConfig, VdiskCounters};
use crate::tail::{BlockOp, Completion, Submission, Tail};
use crate::{AlignedBuf, BlockBackend, IoError, Lease};

/// What the routing task is asked, in the order it was asked: a request
/// submitted after a suspension began is held by it.
enum Input {
    Submit(Submission),
    /// Hold new requests; answer once none is in flight.
    Suspend(oneshot::Sender<()>),
    /// Release the held requests, under a new epoch and paths if given.
    Resume(Option<(u64, Vec<Arc<dyn Tail>>)>),
}

/// A vdisk whose requests go to whichever of its tails can take them: the
/// routing task owns a [`Gate`] (a [`Router`](super::Router), the pending-request table,
/// behind a gate for reconfigurations) and carries out its actions on
/// [`Tail`]s. Requests come from any thread or executor, a ublk
/// queue's among them.
///
/// Dropping it ends the routing task once the requests in flight are done.
pub struct RoutedVdisk {
    inputs: mpsc::UnboundedSender<Input>,
    counters: Arc<VdiskCounters>,
    stale: watch::Receiver<u64>,
}

impl RoutedVdisk {
    /// Starts the routing task of vdisk `vdisk` on `runtime`, sending under
    /// `epoch`. `paths` are in order of preference: the local tail first if
    /// this node has one, then the primary, then the secondary. This node's
    /// own tails (a local or mirror path) take requests only while it holds
    /// `lease`; peers check theirs.
    pub fn spawn(
        runtime: &Handle,
        vdisk: u64,
        epoch: u64,
        paths: Vec<Arc<dyn Tail>>,
        config: RouteConfig,
        lease: Lease,
    ) -> RoutedVdisk {
        let counters = Arc::new(VdiskCounters::new(&paths));
        let (inputs, inbox) = mpsc::unbounded_channel();
        let (learned, stale) = watch::channel(epoch);
        let (task, events) = RoutingTask::new(
            vdisk,
            epoch,
            paths,
            config,
            lease,
            counters.clone(),
            learned,
        );
        runtime.spawn(task.run(inbox, events));
        RoutedVdisk {
            inputs,
            counters,
            stale,
        }
    }

    /// The vdisk's counters, for as long as it lives.
    pub fn counters(&self) -> &Arc<VdiskCounters> {
        &self.counters
    }

    /// Holds new requests from now on (they wait, unsent, for
    /// [`RoutedVdisk::resume`]) and resolves once none is in flight: every
    /// request sent has completed or failed, or been held too. Suspensions
    /// may overlap; one resume ends them all, and resolves any still
    /// waiting for the drain.
    pub async fn suspend(&self) {
        let (drained, done) = oneshot::channel();
        // A routing task that is gone has nothing in flight.
        if self.inputs.send(Input::Suspend(drained)).is_ok() {
            let _ = done.await;
        }
    }

    /// Sends the held requests, and new ones from now on. With a `mapping`,
    /// under its epoch on its paths (in order of preference, as for
    /// [`RoutedVdisk::spawn`]); any request still in flight on the old
    /// paths is sent again on the new ones. Requests a tail refused as of
    /// a stale epoch are held until this is called.
    pub fn resume(&self, mapping: Option<(u64, Vec<Arc<dyn Tail>>)>) {
        // A routing task that is gone holds nothing to release.
        let _ = self.inputs.send(Input::Resume(mapping));
    }

    /// The highest epoch known to the vdisk: its own until a tail refuses a
    /// request as of an older epoch than the tail's. Once it exceeds the
    /// epoch the vdisk sends under, the vdisk holds every request until
    /// [`RoutedVdisk::resume`] gives it the new mapping, or the I/O timeout
    /// fails them.
    pub fn stale(&self) -> watch::Receiver<u64> {
        self.stale.clone()
    }

    async fn submit(&self, op: BlockOp, payload: Option<Arc<AlignedBuf>>) -> Completion {
        let (done, completion) = oneshot::channel();
        let submission = Submission { op, payload, done };
        self.inputs
            .send(Input::Submit(submission))
            .map_err(|_| IoError::ShuttingDown)?;
        completion.await.map_err(|_| IoError::ShuttingDown)?
    }

    async fn submit_range(
        &self,
        offset: u64,
        len: u64,
        op: fn(u64, u32) -> BlockOp,
    ) -> Result<(), IoError> {
        self.submit(op(offset, wire_len(len)?), None)
            .await
            .map(drop)
    }
}

/// A request's length as a frame carries it.
fn wire_len(len: u64) -> Result<u32, IoError> {
    u32::try_from(len).map_err(|_| IoError::TooLong { len })
}

impl BlockBackend for RoutedVdisk {
    async fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), IoError> {
        let len = wire_len(buf.len() as u64)?;
        let data = self
            .submit(BlockOp::Read { offset, len }, None)
            .await?
            .ok_or(IoError::ShortTransfer { offset })?;
        // The routing task has checked the length of every read's data.
        buf.copy_from_slice(&data[..buf.len()]);
        Ok(())
    }

    async fn write(&self, offset: u64, buf: &[u8], fua: bool) -> Result<(), IoError> {
        let len = wire_len(buf.len() as u64)?;
        // The data is copied out of the caller's buffer once, and kept until
        // the request completes, so that any path can be sent it again.
        let mut data = AlignedBuf::new(buf.len())?;
        data.copy_from_slice(buf);
        let op = BlockOp::Write { offset, len, fua };
        self.submit(op, Some(Arc::new(data))).await.map(drop)
    }

    async fn flush(&self) -> Result<(), IoError> {
        self.submit(BlockOp::Flush, None).await.map(drop)
    }

    async fn discard(&self, offset: u64, len: u64) -> Result<(), IoError> {
        self.submit_range(offset, len, |offset, len| BlockOp::Discard { offset, len })
            .await
    }

    async fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), IoError> {
        self.submit_range(offset, len, |offset, len| BlockOp::WriteZeroes {
            offset,
            len,
        })
        .await
    }
}
