use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use identity::rustls::ServerConfig;
use identity::{SecureStream, SessionError, TlsAcceptor};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter, ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use super::exports::Admission;
use super::sessions::{Session, Sessions};
use super::Exports;
use crate::tail::{BlockOp, Tail};
use crate::wire::{
    self, CacheMessage, Frame, Header, Nack, Op, Status, CACHE_BODY_LEN, HEADER_LEN,
};
use crate::{AlignedBuf, Counted, OpenCounts};

/// Requests one connection may have in flight; reading pauses beyond it.
const IN_FLIGHT_PER_CONNECTION: usize = 256;

/// Bytes of data (write payloads, read buffers) one connection's requests
/// may hold at once; reading pauses beyond it. A queue depth of 32 of
/// 1 MiB requests fits twice.
const IN_FLIGHT_BYTES_PER_CONNECTION: u32 = 64 << 20;

/// Connections one authenticated node may keep open at once: one per link
/// of each of its networks, and room for reconnects while old ones close.
const CONNECTIONS_PER_PEER: usize = 16;

/// Connections from one address still in their TLS handshake: a flood from
/// one host cannot take every slot from the members.
const HANDSHAKES_PER_SOURCE: usize = 64;

/// What the listener counts to share itself out.
#[derive(Clone, Default)]
struct Limits {
    /// Connections in their handshake, by source address.
    handshaking: OpenCounts<IpAddr>,
    /// Authenticated connections, by node.
    sessions: Sessions,
}

/// How long a request's payload may take to arrive once its header has: 8
/// MiB at the slowest link a cluster would use, with room to spare.
const PAYLOAD_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the peer has to take a batch of replies.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// Socket buffering each way: several 4 KiB requests per system call;
/// larger transfers bypass it.
const IO_BUFFER: usize = 128 << 10;

/// Connections open at once, authenticated or not: beyond it, new ones
/// are closed at once, so that a flood costs a descriptor and a moment.
const MAX_CONNECTIONS: usize = 1024;

/// How long a connection has to complete its TLS handshake: a peer that
/// dawdles holds a connection slot for no longer.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the listener rests after an accept error (out of descriptors,
/// say) before it accepts again, so that it does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// How long a request of a newer epoch than its export's waits for this
/// node's store to apply it: the store applies a committed change within
/// milliseconds, and the sender resends after its request timeout.
const EPOCH_CATCH_UP: Duration = Duration::from_secs(1);

/// A reply ready to go: its header, and the data of a read.
/// The byte budget it holds is given back once it is sent: a peer that
/// does not read its replies stops being served, it cannot pile them up.
type Outgoing = ([u8; HEADER_LEN], Option<AlignedBuf>, OwnedSemaphorePermit);

/// The two halves of a peer's TLS session.
type SessionReader = ReadHalf<SecureStream>;
type SessionWriter = WriteHalf<SecureStream>;

/// An authenticated peer: the node its certificate names, and where its
/// connection comes from (for logs only).
#[derive(Clone, Debug)]
struct Peer {
    name: Arc<str>,
    addr: SocketAddr,
}

/// Serves `exports` to every peer that connects to one of `listeners` (one
/// per network) and proves a certificate of the cluster's CA (`tls`), many
/// requests in flight per connection, until `shutdown` resolves. Then it
/// stops reading, lets the requests in flight finish and answers them, and
/// returns. The listeners share their limits and their peers' sessions, so
/// that a fence on one network closes the node's connections on the other.
pub async fn serve(
    listeners: Vec<TcpListener>,
    exports: Arc<Exports>,
    tls: Arc<ServerConfig>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let acceptor = TlsAcceptor::from(tls);
    let (stop, stopped) = watch::channel(false);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let limits = Limits::default();
    let (accepted_tx, mut accepted) = mpsc::channel(listeners.len().max(1));
    let mut accepting = JoinSet::new();
    for listener in listeners {
        accepting.spawn(accept(listener, accepted_tx.clone()));
    }
    drop(accepted_tx);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            next = accepted.recv() => {
                let Some((stream, addr)) = next else { break };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    tracing::debug!(%addr, "peer connection refused: {MAX_CONNECTIONS} open");
                    continue;
                };
                let Some(handshaking) = limits.handshaking.open(&addr.ip(), HANDSHAKES_PER_SOURCE) else {
                    tracing::debug!(%addr, "peer connection refused: {HANDSHAKES_PER_SOURCE} handshakes from there already");
                    continue;
                };
                let connection = authenticate_and_serve(
                    stream, addr, acceptor.clone(), exports.clone(), stopped.clone(),
                    (slot, handshaking), limits.clone(),
                );
                connections.spawn(connection);
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    accepting.abort_all();
    let _ = stop.send(true);
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// Accepts connections on `listener` for the server, until it is gone.
async fn accept(listener: TcpListener, accepted: mpsc::Sender<(TcpStream, SocketAddr)>) {
    loop {
        match listener.accept().await {
            Ok(connection) => {
                if accepted.send(connection).await.is_err() {
                    return;
                }
            }
            // Out of descriptors or a connection reset while queued: the
            // listener itself is fine.
            Err(e) => {
                tracing::warn!("accepting a peer connection: {e}");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// Completes the TLS handshake, in bounded time, before a byte of the
/// wire protocol is read: whoever cannot prove a certificate of the
/// cluster's CA gets nothing allocated beyond the handshake's buffers.
async fn authenticate_and_serve(
    stream: TcpStream,
    addr: SocketAddr,
    acceptor: TlsAcceptor,
    exports: Arc<Exports>,
    stopped: watch::Receiver<bool>,
    (_slot, handshaking): (OwnedSemaphorePermit, Counted<IpAddr>),
    limits: Limits,
) {
    let _ = stream.set_nodelay(true);
    let accepted = tokio::time::timeout(HANDSHAKE_TIMEOUT, identity::accept(&acceptor, stream));
    let (stream, name) = match accepted.await {
        Ok(Ok(accepted)) => accepted,
        Ok(Err(e @ (SessionError::Handshake(_) | SessionError::Peer(_)))) => {
            tracing::warn!(%addr, "peer connection refused: {e}");
            return;
        }
        Ok(Err(e @ SessionError::Kernel(_))) => {
            tracing::debug!(%addr, "peer connection lost: {e}");
            return;
        }
        Err(_) => {
            tracing::debug!(%addr, "peer connection refused: no TLS handshake within {HANDSHAKE_TIMEOUT:?}");
            return;
        }
    };
    drop(handshaking);
    tracing::debug!(%addr, peer = %name, kernel_tls = stream.in_kernel(), "peer connection authenticated");
    let peer = Peer {
        name: name.into(),
        addr,
    };
    let budget = IN_FLIGHT_PER_CONNECTION as u32;
    let Some(registered) = limits
        .sessions
        .open(&peer.name, CONNECTIONS_PER_PEER, budget)
    else {
        tracing::warn!(%addr, peer = %peer.name, "peer connection refused: {CONNECTIONS_PER_PEER} open already");
        return;
    };
    let session = registered.session.clone();
    serve_connection(stream, peer, exports, stopped, session, limits.sessions).await;
}

async fn serve_connection(
    stream: SecureStream,
    peer: Peer,
    exports: Arc<Exports>,
    mut stopped: watch::Receiver<bool>,
    session: Arc<Session>,
    sessions: Sessions,
) {
    let addr = peer.addr;
    let (reader, writer) = tokio::io::split(stream);
    let mut reader = BufReader::with_capacity(IO_BUFFER, reader);
    let (replies, outgoing) = mpsc::channel(IN_FLIGHT_PER_CONNECTION);
    let writer = tokio::spawn(write_replies(writer, outgoing));
    let permits = session.requests().clone();
    let bytes = Arc::new(Semaphore::new(IN_FLIGHT_BYTES_PER_CONNECTION as usize));
    let mut requests = JoinSet::new();
    loop {
        let mut head = [0u8; HEADER_LEN];
        tokio::select! {
            _ = stopped.changed() => break,
            // The writer gave up on the peer: so does the reader.
            () = replies.closed() => break,
            () = session.closed() => {
                tracing::info!(%addr, peer = %peer.name, "closing peer connection: fenced from another of its connections");
                break;
            }
            read = tokio::time::timeout(wire::SILENCE, reader.read_exact(&mut head)) => match read {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    if e.kind() != io::ErrorKind::UnexpectedEof {
                        tracing::debug!(%addr, peer = %peer.name, "peer connection: {e}");
                    }
                    break;
                }
                Err(_) => {
                    tracing::warn!(%addr, peer = %peer.name, "closing peer connection: silent for {:?}", wire::SILENCE);
                    break;
                }
            }
        }
        let header = match Header::decode(&head) {
            Ok(header) => header,
            Err(e) => {
                tracing::warn!(%addr, peer = %peer.name, "closing peer connection: malformed header: {e}");
                break;
            }
        };
        if let Frame::Cache { vdisk, .. } = header.frame {
            // Its budget is taken before its payload is read, as a
            // request's is.
            let cost = header.payload_len.min(IN_FLIGHT_BYTES_PER_CONNECTION);
            let Ok(held) = bytes.clone().acquire_many_owned(cost).await else {
                break;
            };
            let (message, data) = match in_time(read_cache_message(&mut reader, &header)).await {
                Ok(read) => read,
                Err(why) => {
                    tracing::warn!(%addr, peer = %peer.name, "closing peer connection: {why}");
                    break;
                }
            };
            drop(held);
            deliver_cache_message(&exports, &peer.name, vdisk, message, data);
            continue;
        }
        let Frame::Request {
            id,
            vdisk,
            epoch,
            op,
        } = header.frame
        else {
            tracing::warn!(%addr, peer = %peer.name, "closing peer connection: it sent something other than a request");
            break;
        };
        // Both budgets are taken before the payload is read or a read's
        // buffer allocated: a peer cannot make this node hold more.
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let read_len = match op {
            Op::Read { len, .. } => len,
            _ => 0,
        };
        let cost = header
            .payload_len
            .saturating_add(read_len)
            .min(IN_FLIGHT_BYTES_PER_CONNECTION);
        let Ok(held) = bytes.clone().acquire_many_owned(cost).await else {
            break;
        };
        let payload = match in_time(read_payload(&mut reader, &header)).await {
            Ok(payload) => payload,
            Err(why) => {
                tracing::warn!(%addr, peer = %peer.name, "closing peer connection: {why}");
                break;
            }
        };
        let exports = exports.clone();
        let replies = replies.clone();
        let name = peer.name.clone();
        let (session, sessions) = (session.clone(), sessions.clone());
        requests.spawn(async move {
            let (status, data) = if op == Op::Fence {
                let closed = sessions.fence(&name, &session).await;
                tracing::debug!(peer = %name, closed, "fenced: the node's other connections closed and drained");
                (Status::Ok, None)
            } else {
                execute(&exports, &name, &session, (vdisk, epoch), op, payload).await
            };
            let frame = Frame::Reply { id, status };
            let head = frame.encode(data.as_deref().unwrap_or_default());
            match head {
                Ok(head) => {
                    let _ = replies.send((head, data, held)).await;
                }
                Err(e) => tracing::error!("cannot encode reply {frame:?}: {e}"),
            }
            drop(permit);
        });
        while requests.try_join_next().is_some() {}
    }
    // Whatever it read and has not started yet never starts: its sender
    // counts it lost from the moment it closed or went silent.
    session.shut();
    // Requests in flight own buffers the engine is writing into: they run
    // to completion, never dropped half-way.
    while requests.join_next().await.is_some() {}
    drop(replies);
    let _ = writer.await;
}

/// Reads a payload within [`PAYLOAD_TIMEOUT`]; why not, if it fails.
async fn in_time<T>(read: impl Future<Output = io::Result<T>>) -> Result<T, String> {
    match tokio::time::timeout(PAYLOAD_TIMEOUT, read).await {
        Ok(Ok(read)) => Ok(read),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("a payload not sent within {PAYLOAD_TIMEOUT:?}")),
    }
}

async fn read_payload(
    reader: &mut BufReader<SessionReader>,
    header: &Header,
) -> io::Result<AlignedBuf> {
    let mut payload = AlignedBuf::new(header.payload_len as usize)?;
    reader.read_exact(&mut payload).await?;
    header
        .verify_payload(&payload)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    Ok(payload)
}

/// Reads a cache message's body and data, each into its own buffer, and
/// checks them against the header.
async fn read_cache_message(
    reader: &mut BufReader<SessionReader>,
    header: &Header,
) -> io::Result<(CacheMessage, Option<Arc<AlignedBuf>>)> {
    let invalid = |e: wire::WireError| io::Error::new(io::ErrorKind::InvalidData, e);
    let mut body = [0u8; CACHE_BODY_LEN];
    reader.read_exact(&mut body).await?;
    let data_len = (header.payload_len as usize).saturating_sub(CACHE_BODY_LEN);
    let mut data = AlignedBuf::new(data_len)?;
    reader.read_exact(&mut data).await?;
    header
        .verify_payload_parts(&[&body, &data])
        .map_err(invalid)?;
    let message = CacheMessage::decode(header, &body).map_err(invalid)?;
    Ok((message, (data_len > 0).then(|| Arc::new(data))))
}

/// Hands a cache message from `peer` to the vdisk's cache on this node.
/// One that cannot be taken is dropped, as a lost one: its sender sends
/// again what it needs. A node that is not admitted, or one without its
/// lease (whose root must not act on the tail), takes none.
fn deliver_cache_message(
    exports: &Exports,
    peer: &str,
    vdisk: u64,
    message: CacheMessage,
    data: Option<Arc<AlignedBuf>>,
) {
    if !exports.admits(peer) || !exports.lease().is_held() {
        tracing::debug!(
            peer,
            vdisk,
            "cache message dropped: not a member, or no lease"
        );
        return;
    }
    match exports.cache(vdisk) {
        Some(endpoint) => endpoint.receive(peer, message, data),
        None => tracing::debug!(
            peer,
            vdisk,
            "cache message dropped: no cache of that vdisk here"
        ),
    }
}

/// Sends replies as they come; those ready together go out in one flush.
async fn write_replies(writer: SessionWriter, mut outgoing: mpsc::Receiver<Outgoing>) {
    let mut writer = BufWriter::with_capacity(IO_BUFFER, writer);
    while let Some(first) = outgoing.recv().await {
        let mut next = Some(first);
        let batch = async {
            while let Some((head, data, _held)) = next.take().or_else(|| outgoing.try_recv().ok()) {
                writer.write_all(&head).await?;
                if let Some(data) = &data {
                    writer.write_all(data).await?;
                }
            }
            writer.flush().await
        };
        match tokio::time::timeout(SEND_TIMEOUT, batch).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::debug!("peer connection: cannot send a reply: {e}");
                return;
            }
            Err(_) => {
                tracing::warn!(
                    "closing peer connection: its replies not taken within {SEND_TIMEOUT:?}"
                );
                return;
            }
        }
    }
}

/// Runs one request for the authenticated node `peer` on its connection
/// `session`: refuses a peer that is not a live member (its heartbeats
/// too, so that its links go down and it routes elsewhere), an unknown
/// vdisk or a stale epoch, and a request whose connection has closed
/// before it could start; else runs it on the exported tail.
async fn execute(
    exports: &Exports,
    peer: &str,
    session: &Session,
    (vdisk, epoch): (u64, u64),
    op: Op,
    payload: AlignedBuf,
) -> (Status, Option<AlignedBuf>) {
    if !exports.admits(peer) {
        return (Status::Nack(Nack::NotAMember), None);
    }
    if op == Op::Heartbeat {
        return (Status::Ok, None);
    }
    let served = admit(exports, peer, vdisk, epoch).await;
    if !session.is_open() {
        let fenced = session.was_fenced();
        tracing::debug!(
            peer,
            vdisk,
            fenced,
            "request not started: its connection closed"
        );
        return (Status::Nack(Nack::ShuttingDown), None);
    }
    if !exports.lease().is_held() {
        return (Status::Nack(Nack::NoLease), None);
    }
    let Some(op) = op.block() else {
        // Fences are answered by the session, heartbeats above.
        return (Status::Ok, None);
    };
    let tail = match served {
        Ok(tail) => tail,
        Err(nack) => return (Status::Nack(nack), None),
    };
    let payload = matches!(op, BlockOp::Write { .. }).then(|| Arc::new(payload));
    match tail.execute(epoch, op, payload).await {
        Ok(data) => (Status::Ok, data),
        Err(error) => (Status::Nack(error.into()), None),
    }
}

/// What `peer`'s request at `epoch` for `vdisk` may run on. A request
/// newer than the export waits, up to [`EPOCH_CATCH_UP`], for this node's
/// store to apply its epoch: the sender's store applied it first. Past
/// that, it is refused as stale with the export's epoch, which tells the
/// sender this node lags; the export's epoch is never raised by a request.
async fn admit(
    exports: &Exports,
    peer: &str,
    vdisk: u64,
    epoch: u64,
) -> Result<Arc<dyn Tail>, Nack> {
    let mut changes = exports.changes();
    let deadline = tokio::time::Instant::now() + EPOCH_CATCH_UP;
    loop {
        match exports.for_request(peer, vdisk, epoch) {
            Admission::Served(served) => return Ok(served),
            Admission::Refused(nack) => return Err(nack),
            Admission::Ahead { current } => {
                let changed = tokio::time::timeout_at(deadline, changes.changed()).await;
                if !matches!(changed, Ok(Ok(()))) {
                    tracing::debug!(
                        vdisk,
                        peer,
                        epoch,
                        current,
                        "request of a newer epoch refused: this node's store has not applied it"
                    );
                    return Err(Nack::StaleEpoch { current });
                }
            }
        }
    }
}
