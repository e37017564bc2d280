use super::cache::{self, Toward};
use super::WireError;

/// "UBKV" read as a little-endian u32.
pub const MAGIC: u32 = u32::from_le_bytes(*b"UBKV");
pub const VERSION: u8 = 1;
pub const HEADER_LEN: usize = 56;
/// The largest payload (and read length) a header may announce: a peer
/// never buffers more than this for one message.
pub const MAX_PAYLOAD: u32 = 8 << 20;

const KIND_REQUEST: u8 = 1;
const KIND_REPLY: u8 = 2;
const KIND_CACHE_TO_PARENT: u8 = 3;
const KIND_CACHE_TO_CHILD: u8 = 4;

/// What a request asks of the tail. Ranges are in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Read {
        offset: u64,
        len: u32,
    },
    /// The payload holds the `len` bytes to write; with `fua`, answered
    /// once they are on stable storage.
    Write {
        offset: u64,
        len: u32,
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
    /// Keeps a link's liveness known; answered with `Status::Ok`.
    Heartbeat,
    /// A drain barrier: closes the sender's other connections to this node
    /// and is answered once none of the requests they carried is running
    /// or can still start. A request copy lost with a broken connection
    /// is settled by it.
    Fence,
}

/// Why a peer refused a request; the sender may resend it elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nack {
    /// The peer serves no tail for this vdisk.
    NoSuchTail,
    /// The tail failed with this errno.
    Io { errno: u32 },
    /// The request's epoch is older than the peer's, which is `current`.
    StaleEpoch { current: u64 },
    /// The peer is shutting down and takes no new requests.
    ShuttingDown,
    /// The peer does not count the sender among the cluster's members and
    /// serves it nothing, heartbeats included: a node cut off from the
    /// configuration store is fenced from shared storage.
    NotAMember,
    /// The peer holds no lease from the store's majority (it is cut off
    /// from it) and touches none of its tails.
    NoLease,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    Nack(Nack),
}

/// One message, as the header describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    Request {
        id: u64,
        vdisk: u64,
        epoch: u64,
        op: Op,
    },
    /// Answers the request with the same `id`. An `Ok` reply to a read
    /// carries the data as payload.
    Reply { id: u64, status: Status },
    /// A cached vdisk's coherence message ([`CacheMessage`]), one way:
    /// its body, then its data, are the payload.
    ///
    /// [`CacheMessage`]: super::CacheMessage
    Cache {
        vdisk: u64,
        toward: Toward,
        code: u8,
    },
}

/// A decoded header: the frame, and the payload that follows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub frame: Frame,
    pub payload_len: u32,
    pub payload_crc: u32,
}

/// The fields as laid out on the wire (see `docs/wire.md`).
#[derive(Default)]
struct Raw {
    kind: u8,
    code: u8,
    id: u64,
    vdisk: u64,
    epoch: u64,
    offset: u64,
    length: u32,
}

impl Frame {
    /// The header announcing this frame with `payload` after it. Refuses a
    /// payload the frame cannot carry (a write's must be exactly its length;
    /// only writes and `Ok` replies carry one).
    pub fn encode(&self, payload: &[u8]) -> Result<[u8; HEADER_LEN], WireError> {
        let payload_len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
        let payload_crc = if payload.is_empty() {
            0
        } else {
            crc32c::crc32c(payload)
        };
        self.encode_announced(payload_len, payload_crc)
    }

    /// The header announcing a payload of `payload_len` bytes whose
    /// crc32c is `payload_crc`, for a payload sent in parts.
    pub(super) fn encode_announced(
        &self,
        payload_len: u32,
        payload_crc: u32,
    ) -> Result<[u8; HEADER_LEN], WireError> {
        let raw = self.to_raw();
        let header = Header {
            frame: *self,
            payload_len,
            payload_crc,
        };
        header.check_consistency()?;
        let mut out = [0u8; HEADER_LEN];
        out[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        out[4] = VERSION;
        out[5] = raw.kind;
        out[6] = raw.code;
        out[7] = 0;
        out[8..16].copy_from_slice(&raw.id.to_le_bytes());
        out[16..24].copy_from_slice(&raw.vdisk.to_le_bytes());
        out[24..32].copy_from_slice(&raw.epoch.to_le_bytes());
        out[32..40].copy_from_slice(&raw.offset.to_le_bytes());
        out[40..44].copy_from_slice(&raw.length.to_le_bytes());
        out[44..48].copy_from_slice(&header.payload_len.to_le_bytes());
        out[48..52].copy_from_slice(&header.payload_crc.to_le_bytes());
        let crc = crc32c::crc32c(&out[..52]);
        out[52..56].copy_from_slice(&crc.to_le_bytes());
        Ok(out)
    }

    fn to_raw(self) -> Raw {
        match self {
            Frame::Request {
                id,
                vdisk,
                epoch,
                op,
            } => {
                let (code, offset, length) = match op {
                    Op::Read { offset, len } => (1, offset, len),
                    Op::Write {
                        offset,
                        len,
                        fua: false,
                    } => (2, offset, len),
                    Op::Write {
                        offset,
                        len,
                        fua: true,
                    } => (8, offset, len),
                    Op::Flush => (3, 0, 0),
                    Op::Discard { offset, len } => (4, offset, len),
                    Op::WriteZeroes { offset, len } => (5, offset, len),
                    Op::Heartbeat => (6, 0, 0),
                    Op::Fence => (7, 0, 0),
                };
                Raw {
                    kind: KIND_REQUEST,
                    code,
                    id,
                    vdisk,
                    epoch,
                    offset,
                    length,
                }
            }
            Frame::Reply { id, status } => {
                let (code, epoch, length) = match status {
                    Status::Ok => (0, 0, 0),
                    Status::Nack(Nack::NoSuchTail) => (1, 0, 0),
                    Status::Nack(Nack::Io { errno }) => (2, 0, errno),
                    Status::Nack(Nack::StaleEpoch { current }) => (3, current, 0),
                    Status::Nack(Nack::ShuttingDown) => (4, 0, 0),
                    Status::Nack(Nack::NotAMember) => (5, 0, 0),
                    Status::Nack(Nack::NoLease) => (6, 0, 0),
                };
                Raw {
                    kind: KIND_REPLY,
                    code,
                    id,
                    epoch,
                    length,
                    ..Raw::default()
                }
            }
            Frame::Cache {
                vdisk,
                toward,
                code,
            } => Raw {
                kind: match toward {
                    Toward::Parent => KIND_CACHE_TO_PARENT,
                    Toward::Child => KIND_CACHE_TO_CHILD,
                },
                code,
                vdisk,
                ..Raw::default()
            },
        }
    }
}

impl Header {
    /// Decodes and checks a header. Never panics, whatever the bytes.
    pub fn decode(bytes: &[u8; HEADER_LEN]) -> Result<Header, WireError> {
        let u32_at =
            |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        let u64_at = |i: usize| u64::from(u32_at(i)) | u64::from(u32_at(i + 4)) << 32;
        let magic = u32_at(0);
        if magic != MAGIC {
            return Err(WireError::BadMagic(magic));
        }
        if bytes[4] != VERSION {
            return Err(WireError::UnsupportedVersion(bytes[4]));
        }
        if crc32c::crc32c(&bytes[..52]) != u32_at(52) {
            return Err(WireError::HeaderChecksum);
        }
        if bytes[7] != 0 {
            return Err(WireError::Reserved(bytes[7]));
        }
        let raw = Raw {
            kind: bytes[5],
            code: bytes[6],
            id: u64_at(8),
            vdisk: u64_at(16),
            epoch: u64_at(24),
            offset: u64_at(32),
            length: u32_at(40),
        };
        let header = Header {
            frame: Frame::from_raw(&raw)?,
            payload_len: u32_at(44),
            payload_crc: u32_at(48),
        };
        header.check_consistency()?;
        // Fields a frame does not use must be zero, so that every valid
        // header has exactly one encoding.
        let canonical = header.frame.to_raw();
        if (
            canonical.id,
            canonical.vdisk,
            canonical.epoch,
            canonical.offset,
            canonical.length,
        ) != (raw.id, raw.vdisk, raw.epoch, raw.offset, raw.length)
        {
            return Err(WireError::Inconsistent("unused field is not zero"));
        }
        Ok(header)
    }

    /// Checks a received payload against the header.
    pub fn verify_payload(&self, payload: &[u8]) -> Result<(), WireError> {
        self.verify_payload_parts(&[payload])
    }

    /// Checks a payload received in parts (a cache message's body, then
    /// its data) against the header, without putting them together.
    pub fn verify_payload_parts(&self, parts: &[&[u8]]) -> Result<(), WireError> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if len != self.payload_len as usize {
            return Err(WireError::PayloadLength {
                expected: self.payload_len,
                actual: len,
            });
        }
        let crc = if len == 0 {
            0
        } else {
            parts
                .iter()
                .fold(0, |crc, part| crc32c::crc32c_append(crc, part))
        };
        if crc != self.payload_crc {
            return Err(WireError::PayloadChecksum);
        }
        Ok(())
    }

    fn check_consistency(&self) -> Result<(), WireError> {
        let inconsistent = |why| Err(WireError::Inconsistent(why));
        if self.payload_len > MAX_PAYLOAD {
            return Err(WireError::PayloadTooLong(self.payload_len));
        }
        if self.payload_len == 0 && self.payload_crc != 0 {
            return inconsistent("checksum without payload");
        }
        match self.frame {
            Frame::Request { op, .. } => match op {
                Op::Read { offset, len } => {
                    check_range(offset, len)?;
                    if len > MAX_PAYLOAD {
                        return Err(WireError::PayloadTooLong(len));
                    }
                    if self.payload_len != 0 {
                        return inconsistent("read request with payload");
                    }
                }
                Op::Write { offset, len, .. } => {
                    check_range(offset, len)?;
                    if self.payload_len != len {
                        return inconsistent("write payload differs from its length");
                    }
                }
                Op::Discard { offset, len } | Op::WriteZeroes { offset, len } => {
                    check_range(offset, len)?;
                    if self.payload_len != 0 {
                        return inconsistent("range request with payload");
                    }
                }
                Op::Flush | Op::Heartbeat | Op::Fence => {
                    if self.payload_len != 0 {
                        return inconsistent("flush, heartbeat or fence with payload");
                    }
                }
            },
            Frame::Reply {
                status: Status::Nack(_),
                ..
            } if self.payload_len != 0 => {
                return inconsistent("refusal with payload");
            }
            Frame::Reply { .. } => {}
            Frame::Cache { toward, code, .. } => {
                cache::check_header(toward, code, self.payload_len)?;
            }
        }
        Ok(())
    }
}

fn check_range(offset: u64, len: u32) -> Result<(), WireError> {
    if len == 0 {
        return Err(WireError::Inconsistent("empty range"));
    }
    if offset.checked_add(u64::from(len)).is_none() {
        return Err(WireError::Inconsistent("range past the end of a u64"));
    }
    Ok(())
}

impl Frame {
    fn from_raw(raw: &Raw) -> Result<Frame, WireError> {
        let (offset, len) = (raw.offset, raw.length);
        match raw.kind {
            KIND_REQUEST => {
                let op = match raw.code {
                    1 => Op::Read { offset, len },
                    2 => Op::Write {
                        offset,
                        len,
                        fua: false,
                    },
                    8 => Op::Write {
                        offset,
                        len,
                        fua: true,
                    },
                    3 => Op::Flush,
                    4 => Op::Discard { offset, len },
                    5 => Op::WriteZeroes { offset, len },
                    6 => Op::Heartbeat,
                    7 => Op::Fence,
                    code => {
                        return Err(WireError::UnknownCode {
                            kind: "request",
                            code,
                        })
                    }
                };
                Ok(Frame::Request {
                    id: raw.id,
                    vdisk: raw.vdisk,
                    epoch: raw.epoch,
                    op,
                })
            }
            KIND_REPLY => {
                let status = match raw.code {
                    0 => Status::Ok,
                    1 => Status::Nack(Nack::NoSuchTail),
                    2 => Status::Nack(Nack::Io { errno: raw.length }),
                    3 => Status::Nack(Nack::StaleEpoch { current: raw.epoch }),
                    4 => Status::Nack(Nack::ShuttingDown),
                    5 => Status::Nack(Nack::NotAMember),
                    6 => Status::Nack(Nack::NoLease),
                    code => {
                        return Err(WireError::UnknownCode {
                            kind: "reply",
                            code,
                        })
                    }
                };
                Ok(Frame::Reply { id: raw.id, status })
            }
            KIND_CACHE_TO_PARENT | KIND_CACHE_TO_CHILD => Ok(Frame::Cache {
                vdisk: raw.vdisk,
                toward: match raw.kind {
                    KIND_CACHE_TO_PARENT => Toward::Parent,
                    _ => Toward::Child,
                },
                code: raw.code,
            }),
            kind => Err(WireError::UnknownKind(kind)),
        }
    }
}

#[cfg(test)]
mod tests;
