/// Why a received header or payload was refused. Any of these means the
/// byte stream can no longer be trusted: the connection is closed, with the
/// error logged as the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    #[error("bad magic {0:#010x}")]
    BadMagic(u32),
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u8),
    #[error("header checksum mismatch")]
    HeaderChecksum,
    #[error("unknown message kind {0}")]
    UnknownKind(u8),
    #[error("unknown {kind} code {code}")]
    UnknownCode { kind: &'static str, code: u8 },
    #[error("reserved header byte is {0}, not 0")]
    Reserved(u8),
    #[error("payload of {0} bytes exceeds the limit")]
    PayloadTooLong(u32),
    #[error("inconsistent header: {0}")]
    Inconsistent(&'static str),
    #[error("payload checksum mismatch")]
    PayloadChecksum,
    #[error("payload is {actual} bytes, header says {expected}")]
    PayloadLength { expected: u32, actual: usize },
}
