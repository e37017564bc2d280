//! The peer wire protocol, without sockets: every message is a fixed
//! 56-byte header, followed by a payload for writes and read replies.
//! `docs/wire.md` specifies the layout byte by byte.

mod cache;
mod error;
mod frame;
mod tail;

pub use cache::{CacheMessage, Toward, CACHE_BODY_LEN};
pub use error::WireError;
pub use frame::{Frame, Header, Nack, Op, Status, HEADER_LEN, MAGIC, MAX_PAYLOAD, VERSION};

/// A server closes a connection that has sent nothing for this long, and
/// never starts a request of a closed connection: a client sends at least
/// a heartbeat every interval (80 ms by default), so only a dead, cut or
/// stalled client is this quiet. With it, a client knows how long a
/// request it sent on a connection it has since closed may still start.
pub const SILENCE: std::time::Duration = std::time::Duration::from_secs(1);
