use std::sync::Arc;

use tokio::sync::watch;

use super::{LinkError, PeerLinks, Reply};
use crate::tail::{BlockOp, Tail, TailError, TailFuture};
use crate::wire::Status;
use crate::AlignedBuf;

/// A tail on a peer: the one it serves under `vdisk` (a vdisk's id, or a
/// mirror copy's), reached over the peer's links.
pub struct RemoteTail {
    links: Arc<PeerLinks>,
    vdisk: u64,
    /// Whether the peer is reachable ([`PeerLinks::watch`]).
    up: watch::Receiver<bool>,
}

impl RemoteTail {
    pub fn new(links: Arc<PeerLinks>, vdisk: u64) -> RemoteTail {
        let up = links.watch();
        RemoteTail { links, vdisk, up }
    }
}

impl Tail for RemoteTail {
    fn name(&self) -> &str {
        self.links.name()
    }

    fn reachability(&self) -> Option<&watch::Receiver<bool>> {
        Some(&self.up)
    }

    fn execute(&self, epoch: u64, op: BlockOp, payload: Option<Arc<AlignedBuf>>) -> TailFuture<'_> {
        Box::pin(async move {
            match self.links.call(self.vdisk, epoch, op.into(), payload).await {
                Ok(Reply {
                    status: Status::Ok,
                    data,
                }) => {
                    let (got, wanted) = (data.as_ref().map_or(0, |d| d.len()), op.answer_len());
                    match got == wanted {
                        true => Ok(data),
                        false => Err(TailError::WrongLength { got, wanted }),
                    }
                }
                Ok(Reply {
                    status: Status::Nack(nack),
                    ..
                }) => Err(nack.into()),
                Err(LinkError::Lost { settles_at }) => Err(TailError::Lost { settles_at }),
                Err(LinkError::Down | LinkError::Closed) => Err(TailError::Unreachable),
            }
        })
    }
}
