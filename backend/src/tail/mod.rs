//! Tails: whatever runs a vdisk's block requests. A [`LocalTail`] is a file
//! or block device of this node; the link's remote tail is one on a peer;
//! a mirrored vdisk is two tails that answer as one. Routing, mirroring and
//! the peer server each take any of them as an `Arc<dyn Tail>`, so none of
//! them knows the others, and wire types stay at the wire.

mod error;
mod local;
mod op;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::watch;

pub use error::{TailError, TailOpenError};
pub use local::{LocalTail, TailGeometry};
pub use op::BlockOp;

use crate::AlignedBuf;

/// What one request on a tail yields: a read's data, nothing for the rest.
pub type Outcome = Result<Option<AlignedBuf>, TailError>;

/// A future a tail runs a request in, on any thread of the runtime.
pub type TailFuture<'a> = Pin<Box<dyn Future<Output = Outcome> + Send + 'a>>;

/// What a vdisk's task (routing, mirror) completes a request with.
pub(crate) type Completion = Result<Option<AlignedBuf>, crate::IoError>;

/// A block request handed to a vdisk's task, with the channel it
/// completes on.
pub(crate) struct Submission {
    pub op: BlockOp,
    pub payload: Option<Arc<AlignedBuf>>,
    pub done: tokio::sync::oneshot::Sender<Completion>,
}

/// A way to a vdisk's data.
pub trait Tail: Send + Sync {
    /// How logs and counters name the tail: "local" for one of this node,
    /// else its node's name.
    fn name(&self) -> &str {
        "local"
    }

    /// Whether the tail is reachable, as it changes: `None` for a tail of
    /// this node, which is reached without a network and runs under this
    /// node's lease. Asked on every attempt, so it costs no more than a
    /// look.
    fn reachability(&self) -> Option<&watch::Receiver<bool>> {
        None
    }

    /// Runs `op` under the configuration `epoch` the caller routes by. A
    /// write's data is `payload`. The future owns whatever buffer the
    /// kernel may still write into: drive it to completion, do not drop it.
    fn execute(&self, epoch: u64, op: BlockOp, payload: Option<Arc<AlignedBuf>>) -> TailFuture<'_>;
}

/// Which of a tail's reachability states [`follow_reachability`] reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reported {
    /// The state at the call, then every change.
    CurrentAndChanges,
    /// Only the changes after the call.
    Changes,
}

/// Hands whether `tail` is reachable to `report`, from a task of its own
/// on the current tokio runtime: the states `reported` asks for, until
/// `report` fails, `stop` resolves or the tail is gone. Nothing for a tail
/// of this node, which is always reachable.
pub fn follow_reachability<E>(
    tail: &dyn Tail,
    reported: Reported,
    stop: impl Future<Output = ()> + Send + 'static,
    mut report: impl FnMut(bool) -> Result<(), E> + Send + 'static,
) {
    let Some(mut state) = tail.reachability().cloned() else {
        return;
    };
    // The state now as a change, or only the changes from now on (as a
    // fresh subscription sees them).
    match reported {
        Reported::CurrentAndChanges => state.mark_changed(),
        Reported::Changes => state.mark_unchanged(),
    }
    tokio::spawn(async move {
        tokio::pin!(stop);
        loop {
            tokio::select! {
                () = &mut stop => return,
                changed = state.changed() => if changed.is_err() { return },
            }
            if report(*state.borrow_and_update()).is_err() {
                return;
            }
        }
    });
}
