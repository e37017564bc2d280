/// One block request, as any tail takes it. Offsets and lengths are in
/// bytes; a write's data travels beside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockOp {
    Read {
        offset: u64,
        len: u32,
    },
    /// The payload holds the `len` bytes to write.
    Write {
        offset: u64,
        len: u32,
        /// On stable storage when answered (force unit access): the tail
        /// writes it through any volatile cache, and no flush need follow.
        fua: bool,
    },
    Flush,
    Discard {
        offset: u64,
        len: u32,
    },
    WriteZeroes {
        offset: u64,
        len: u32,
    },
}

impl BlockOp {
    /// Whether it changes data: a late copy of it could overwrite newer data.
    pub fn changes_data(self) -> bool {
        matches!(
            self,
            BlockOp::Write { .. } | BlockOp::Discard { .. } | BlockOp::WriteZeroes { .. }
        )
    }

    /// The bytes its successful answer carries: a read's length, else none.
    pub fn answer_len(self) -> usize {
        match self {
            BlockOp::Read { len, .. } => len as usize,
            _ => 0,
        }
    }

    /// The bytes it covers on the tail, for the ops that cover any.
    pub fn range(self) -> Option<(u64, u32)> {
        match self {
            BlockOp::Read { offset, len }
            | BlockOp::Write { offset, len, .. }
            | BlockOp::Discard { offset, len }
            | BlockOp::WriteZeroes { offset, len } => Some((offset, len)),
            BlockOp::Flush => None,
        }
    }
}
