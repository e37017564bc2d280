use libublk::sys;

/// One block request as the backend sees it: byte offsets and lengths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockRequest {
    Read {
        offset: u64,
        len: u32,
    },
    /// `fua`: on stable storage when completed (the kernel sends no flush
    /// after it).
    Write {
        offset: u64,
        len: u32,
        fua: bool,
    },
    Flush,
    Discard {
        offset: u64,
        len: u64,
    },
    WriteZeroes {
        offset: u64,
        len: u64,
    },
}

impl BlockRequest {
    /// Decodes a ublk I/O descriptor's fields. The kernel counts in 512-byte
    /// sectors whatever the logical block size. An operation ublkvd does not
    /// advertise is refused with `-EOPNOTSUPP`.
    pub fn decode(op_flags: u32, start_sector: u64, nr_sectors: u32) -> Result<Self, i32> {
        let offset = start_sector << 9;
        let bytes = u64::from(nr_sectors) << 9;
        let len = || u32::try_from(bytes).map_err(|_| -libc::EINVAL);
        match op_flags & 0xff {
            sys::UBLK_IO_OP_READ => Ok(BlockRequest::Read {
                offset,
                len: len()?,
            }),
            sys::UBLK_IO_OP_WRITE => Ok(BlockRequest::Write {
                offset,
                len: len()?,
                fua: op_flags & sys::UBLK_IO_F_FUA != 0,
            }),
            sys::UBLK_IO_OP_FLUSH => Ok(BlockRequest::Flush),
            sys::UBLK_IO_OP_DISCARD => Ok(BlockRequest::Discard { offset, len: bytes }),
            sys::UBLK_IO_OP_WRITE_ZEROES => Ok(BlockRequest::WriteZeroes { offset, len: bytes }),
            _ => Err(-libc::EOPNOTSUPP),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sectors_become_byte_offsets_and_lengths() {
        assert_eq!(
            BlockRequest::decode(sys::UBLK_IO_OP_READ, 8, 16),
            Ok(BlockRequest::Read {
                offset: 4096,
                len: 8192
            })
        );
        assert_eq!(
            BlockRequest::decode(sys::UBLK_IO_OP_WRITE, 1, 1),
            Ok(BlockRequest::Write {
                offset: 512,
                len: 512,
                fua: false
            })
        );
    }

    #[test]
    fn a_write_keeps_its_fua_flag_and_other_flags_are_ignored() {
        assert_eq!(
            BlockRequest::decode(sys::UBLK_IO_OP_WRITE | sys::UBLK_IO_F_FUA, 0, 8),
            Ok(BlockRequest::Write {
                offset: 0,
                len: 4096,
                fua: true
            })
        );
        let failfast = sys::UBLK_IO_F_FAILFAST_DEV | sys::UBLK_IO_F_META;
        assert_eq!(
            BlockRequest::decode(sys::UBLK_IO_OP_WRITE | failfast, 0, 8),
            Ok(BlockRequest::Write {
                offset: 0,
                len: 4096,
                fua: false
            })
        );
    }

    #[test]
    fn range_operations_keep_lengths_beyond_u32() {
        assert_eq!(
            BlockRequest::decode(sys::UBLK_IO_OP_DISCARD, 0, u32::MAX),
            Ok(BlockRequest::Discard {
                offset: 0,
                len: u64::from(u32::MAX) << 9
            })
        );
        assert_eq!(
            BlockRequest::decode(sys::UBLK_IO_OP_WRITE_ZEROES, 2, 2),
            Ok(BlockRequest::WriteZeroes {
                offset: 1024,
                len: 1024
            })
        );
        assert_eq!(
            BlockRequest::decode(sys::UBLK_IO_OP_FLUSH, 0, 0),
            Ok(BlockRequest::Flush)
        );
    }

    #[test]
    fn unknown_operations_are_refused() {
        assert_eq!(
            BlockRequest::decode(sys::UBLK_IO_OP_WRITE_SAME, 0, 8),
            Err(-libc::EOPNOTSUPP)
        );
        assert_eq!(BlockRequest::decode(0x7f, 0, 8), Err(-libc::EOPNOTSUPP));
    }

    #[test]
    fn transfer_too_large_for_one_buffer_is_refused() {
        assert_eq!(
            BlockRequest::decode(sys::UBLK_IO_OP_READ, 0, u32::MAX),
            Err(-libc::EINVAL)
        );
    }
}
