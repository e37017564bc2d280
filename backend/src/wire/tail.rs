//! Where the wire meets the tails: block requests become frames' ops and
//! back, a tail's error a `Nack` and back. The only translation between
//! them, for the link's side and the peer server's alike.

use super::{Nack, Op};
use crate::tail::{BlockOp, TailError};

impl From<BlockOp> for Op {
    fn from(op: BlockOp) -> Op {
        match op {
            BlockOp::Read { offset, len } => Op::Read { offset, len },
            BlockOp::Write { offset, len, fua } => Op::Write { offset, len, fua },
            BlockOp::Flush => Op::Flush,
            BlockOp::Discard { offset, len } => Op::Discard { offset, len },
            BlockOp::WriteZeroes { offset, len } => Op::WriteZeroes { offset, len },
        }
    }
}

impl Op {
    /// The block request it carries: `None` for the link's own ops.
    pub fn block(self) -> Option<BlockOp> {
        match self {
            Op::Read { offset, len } => Some(BlockOp::Read { offset, len }),
            Op::Write { offset, len, fua } => Some(BlockOp::Write { offset, len, fua }),
            Op::Flush => Some(BlockOp::Flush),
            Op::Discard { offset, len } => Some(BlockOp::Discard { offset, len }),
            Op::WriteZeroes { offset, len } => Some(BlockOp::WriteZeroes { offset, len }),
            Op::Heartbeat | Op::Fence => None,
        }
    }
}

impl From<Nack> for TailError {
    fn from(nack: Nack) -> TailError {
        match nack {
            Nack::NoSuchTail => TailError::NoSuchTail,
            Nack::Io { errno } => TailError::Io { errno },
            Nack::StaleEpoch { current } => TailError::StaleEpoch { current },
            Nack::ShuttingDown => TailError::ShuttingDown,
            Nack::NotAMember => TailError::NotAMember,
            Nack::NoLease => TailError::NoLease,
        }
    }
}

impl From<TailError> for Nack {
    /// A served tail that failed on its own way further (a mirror's side
    /// lost, say) failed the request with an I/O error, to the sender.
    fn from(error: TailError) -> Nack {
        match error {
            TailError::Io { errno } => Nack::Io { errno },
            TailError::NoSuchTail => Nack::NoSuchTail,
            TailError::StaleEpoch { current } => Nack::StaleEpoch { current },
            TailError::ShuttingDown => Nack::ShuttingDown,
            TailError::NotAMember => Nack::NotAMember,
            TailError::NoLease => Nack::NoLease,
            TailError::WrongLength { .. } | TailError::Unreachable | TailError::Lost { .. } => {
                Nack::Io {
                    errno: libc::EIO.unsigned_abs(),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_nack_comes_back_from_the_tail_error_it_becomes() {
        let nacks = [
            Nack::NoSuchTail,
            Nack::Io { errno: 28 },
            Nack::StaleEpoch { current: 7 },
            Nack::ShuttingDown,
            Nack::NotAMember,
            Nack::NoLease,
        ];
        for nack in nacks {
            assert_eq!(Nack::from(TailError::from(nack)), nack);
        }
    }

    #[test]
    fn every_block_op_comes_back_from_the_wire_op_it_becomes() {
        let ops = [
            BlockOp::Read {
                offset: 4096,
                len: 512,
            },
            BlockOp::Write {
                offset: 0,
                len: 4096,
                fua: false,
            },
            BlockOp::Write {
                offset: 4096,
                len: 4096,
                fua: true,
            },
            BlockOp::Flush,
            BlockOp::Discard {
                offset: 8192,
                len: 1 << 20,
            },
            BlockOp::WriteZeroes { offset: 1, len: 2 },
        ];
        for op in ops {
            assert_eq!(Op::from(op).block(), Some(op));
        }
        assert_eq!(Op::Heartbeat.block(), None);
        assert_eq!(Op::Fence.block(), None);
    }
}
