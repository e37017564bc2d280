//! A link session's frames: calls written into the send buffer, replies
//! read off the connection.

use std::collections::HashMap;
use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::sync::mpsc;

use super::connection::{Call, LinkError, Reply, SessionReader, SessionWriter, Waiter, IO_BUFFER};
use crate::wire::{CacheMessage, Frame, Header, CACHE_BODY_LEN, HEADER_LEN};
use crate::AlignedBuf;

/// Puts one call in the send buffer as request `id`; returns the bytes
/// buffered. It is pending from now on, so that a failed send fails it
/// with the rest.
pub(super) async fn buffer_call(
    writer: &mut BufWriter<SessionWriter>,
    id: u64,
    call: Call,
    pending: &mut HashMap<u64, Waiter>,
) -> io::Result<u64> {
    let payload = call.payload.as_deref().map_or(&[][..], |p| &p[..]);
    let frame = Frame::Request {
        id,
        vdisk: call.vdisk,
        epoch: call.epoch,
        op: call.op,
    };
    let head = match frame.encode(payload) {
        Ok(head) => head,
        Err(e) => {
            tracing::error!("cannot encode {frame:?}: {e}");
            let _ = call.reply.send(Err(LinkError::Down));
            return Ok(0);
        }
    };
    pending.insert(id, Waiter::Call(call.reply));
    writer.write_all(&head).await?;
    writer.write_all(payload).await?;
    Ok((head.len() + payload.len()) as u64)
}

/// Puts one cache message in the send buffer: its header, its body, then
/// its data; returns the bytes buffered.
pub(super) async fn buffer_cache(
    writer: &mut BufWriter<SessionWriter>,
    vdisk: u64,
    message: CacheMessage,
    data: Option<&AlignedBuf>,
) -> io::Result<u64> {
    let data = data.map_or(&[][..], |d| &d[..]);
    let (head, body) = match message.encode(vdisk, data) {
        Ok(encoded) => encoded,
        Err(e) => {
            tracing::error!("cannot encode {message:?}: {e}");
            return Ok(0);
        }
    };
    // Header and body in one write, the data in another: a frame is at
    // most three writes, with what was buffered before it, as the
    // session's record count assumes.
    let mut first = [0u8; HEADER_LEN + CACHE_BODY_LEN];
    first[..HEADER_LEN].copy_from_slice(&head);
    first[HEADER_LEN..].copy_from_slice(&body);
    writer.write_all(&first).await?;
    writer.write_all(data).await?;
    Ok((first.len() + data.len()) as u64)
}

/// Why reading replies ended.
pub(super) enum ReadEnd {
    /// The peer closed or reset the connection.
    Closed(io::Error),
    /// It sent something that is not a reply: this side ends it.
    Malformed(String),
}

/// Reads replies until the connection fails; a malformed one ends it.
pub(super) async fn read_replies(
    reader: SessionReader,
    replies: mpsc::Sender<Result<(u64, Reply), ReadEnd>>,
) {
    let mut reader = BufReader::with_capacity(IO_BUFFER, reader);
    loop {
        let result = read_reply(&mut reader).await;
        let failed = result.is_err();
        if replies.send(result).await.is_err() || failed {
            return;
        }
    }
}

async fn read_reply(reader: &mut BufReader<SessionReader>) -> Result<(u64, Reply), ReadEnd> {
    let malformed = |e: &dyn std::fmt::Display| ReadEnd::Malformed(format!("malformed reply: {e}"));
    let mut head = [0u8; HEADER_LEN];
    reader
        .read_exact(&mut head)
        .await
        .map_err(ReadEnd::Closed)?;
    let header = Header::decode(&head).map_err(|e| malformed(&e))?;
    let mut data = AlignedBuf::new(header.payload_len as usize)
        .map_err(|e| ReadEnd::Malformed(e.to_string()))?;
    reader
        .read_exact(&mut data)
        .await
        .map_err(ReadEnd::Closed)?;
    header.verify_payload(&data).map_err(|e| malformed(&e))?;
    let Frame::Reply { id, status } = header.frame else {
        return Err(ReadEnd::Malformed(
            "the peer sent a link something other than a reply".to_owned(),
        ));
    };
    let data = (header.payload_len > 0).then_some(data);
    Ok((id, Reply { status, data }))
}
