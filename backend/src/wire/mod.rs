//! The peer wire protocol, without sockets: every message is a fixed
//! 56-byte header, followed by a payload for writes and read replies.
//! `docs/wire.md` specifies the layout byte by byte.

mod error;
mod frame;

pub use error::WireError;
pub use frame::{Frame, Header, Nack, Op, Status, HEADER_LEN, MAGIC, MAX_PAYLOAD, VERSION};
