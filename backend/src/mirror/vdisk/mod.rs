//! A mirrored vdisk: the handle its requests, verifies and resyncs are
//! sent through (this file), and the task that carries them out (`task/`).

use std::sync::Arc;

use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot, watch};

use crate::mirror::setup::{MirrorSetup, MirrorStatus, VerifyError, VerifyReport};
use crate::mirror::Side;
use crate::tail::{BlockOp, Completion, Submission, Tail, TailError, TailFuture};
use crate::{AlignedBuf, IoError};

mod task;

enum Input {
    Submit(Submission),
    Verify(oneshot::Sender<Result<VerifyReport, VerifyError>>),
    /// Copy the whole device to `side` (a replaced disk).
    FullResync {
        side: Side,
        done: oneshot::Sender<Result<(), String>>,
    },
}

/// A vdisk written to two tails at once ([`Replica`] decides, this shell
/// carries out): a write completes once both have it, or, while one side
/// is down, once the survivor has it, its range is durable in the dirty
/// map, and the store has heard that the other side is stale. A side that
/// returns is resynced in the background (dirty regions only) at a rate
/// that yields to foreground requests. Reads go to one in-sync side, the
/// preferred one if it can.
///
/// Dropping it ends its task once the requests in flight are done.
pub struct MirroredVdisk {
    inputs: mpsc::UnboundedSender<Input>,
    status: watch::Receiver<MirrorStatus>,
}

impl MirroredVdisk {
    /// Starts the mirror task on `runtime`.
    pub fn spawn(runtime: &Handle, setup: MirrorSetup) -> MirroredVdisk {
        let (inputs, inbox) = mpsc::unbounded_channel();
        let status = task::start(runtime, setup, inbox);
        MirroredVdisk { inputs, status }
    }

    /// The mirror's state, updated as it changes.
    pub fn status(&self) -> watch::Receiver<MirrorStatus> {
        self.status.clone()
    }

    async fn submit(&self, op: BlockOp, payload: Option<Arc<AlignedBuf>>) -> Completion {
        let (done, completion) = oneshot::channel();
        self.inputs
            .send(Input::Submit(Submission { op, payload, done }))
            .map_err(|_| IoError::ShuttingDown)?;
        completion.await.map_err(|_| IoError::ShuttingDown)?
    }

    /// Compares both copies region by region, online: writes to the region
    /// being compared wait for it. Regions recorded dirty are skipped.
    pub async fn verify(&self) -> Result<VerifyReport, VerifyError> {
        let (done, report) = oneshot::channel();
        self.inputs
            .send(Input::Verify(done))
            .map_err(|_| VerifyError::ShuttingDown)?;
        report.await.map_err(|_| VerifyError::ShuttingDown)?
    }

    /// Marks the whole device dirty for `side` and treats it as lost: the
    /// store is told it is stale, and once it answers it is copied whole.
    /// For a disk replaced under a side, which the mirror cannot tell from
    /// the one it knew.
    pub async fn full_resync(&self, side: Side) -> Result<(), String> {
        let (done, outcome) = oneshot::channel();
        self.inputs
            .send(Input::FullResync { side, done })
            .map_err(|_| "vdisk is shutting down".to_owned())?;
        outcome
            .await
            .map_err(|_| "vdisk is shutting down".to_owned())?
    }
}

/// The mirror as a tail of this node: what a peer's request for the
/// vdisk, or this node's own device, runs on.
impl Tail for MirroredVdisk {
    fn execute(
        &self,
        _epoch: u64,
        op: BlockOp,
        payload: Option<Arc<AlignedBuf>>,
    ) -> TailFuture<'_> {
        Box::pin(async move {
            self.submit(op, payload)
                .await
                .map_err(|e| TailError::io(&e))
        })
    }
}
