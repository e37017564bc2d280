use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use identity::{client::TlsStream, rustls::ClientConfig, ServerName, TlsConnector};
use tokio::io::{AsyncWriteExt, BufWriter, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};

use super::frames::{buffer_call, read_replies, ReadEnd};
use super::{Health, HealthConfig, Transition};
use crate::wire::{Frame, Nack, Op, Status, HEADER_LEN, SILENCE};
use crate::AlignedBuf;

/// How often a session checks its heartbeats: finer than the heartbeat
/// interval, so that probes and silences are acted on within a few
/// milliseconds of being due.
const TICK: std::time::Duration = std::time::Duration::from_millis(10);

/// How long after a connection was given up a request lost with it may
/// still start at the peer: its [`SILENCE`] to notice, and a second for
/// the network to deliver what was in it and the peer to start it.
pub const STRAGGLE: std::time::Duration = SILENCE.saturating_add(std::time::Duration::from_secs(1));

/// How long after the peer closed or reset the connection a request lost
/// with it may still land: the peer closes a connection itself only once
/// its requests have run, and a peer process that died starts nothing
/// more; what its disk had already taken lands within this.
pub const PEER_CLOSED_SETTLE: std::time::Duration = std::time::Duration::from_millis(200);

/// Calls queued together that go out in one flush, at most.
const BATCH: usize = 64;

/// Socket buffering each way: several 4 KiB requests per system call;
/// larger transfers bypass it.
pub(super) const IO_BUFFER: usize = 128 << 10;

/// A peer's answer to one call.
#[derive(Debug)]
pub struct Reply {
    pub status: Status,
    /// The data of a successful read.
    pub data: Option<AlignedBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// Not connected: the call never left.
    #[error("link is down")]
    Down,
    /// The connection broke or went silent while the call was out: it may
    /// or may not have reached the peer, and the peer may still start it
    /// until `settles_at` (it stops taking a closed connection's requests
    /// within [`crate::wire::SILENCE`]), unless fenced sooner.
    #[error("link lost with the call unanswered")]
    Lost { settles_at: Instant },
    /// The link was shut down.
    #[error("link is closed")]
    Closed,
}

/// What a link has done, for logs and metrics.
#[derive(Debug, Default)]
pub struct LinkCounters {
    pub ups: AtomicU64,
    pub downs: AtomicU64,
    /// Frame bytes (headers and data) sent and received.
    pub sent_bytes: AtomicU64,
    pub received_bytes: AtomicU64,
    /// Round trip of the latest heartbeat, in microseconds.
    pub heartbeat_rtt_us: AtomicU64,
    /// When the peer was last heard on this link: milliseconds since the
    /// link was spawned.
    heard_at_ms: AtomicU64,
}

pub(super) struct Call {
    pub(super) vdisk: u64,
    pub(super) epoch: u64,
    pub(super) op: Op,
    pub(super) payload: Option<Arc<AlignedBuf>>,
    pub(super) reply: oneshot::Sender<Result<Reply, LinkError>>,
}

/// The two halves of a link's TLS session.
pub(super) type SessionReader = ReadHalf<TlsStream<TcpStream>>;
pub(super) type SessionWriter = WriteHalf<TlsStream<TcpStream>>;

/// One connection to one address of a peer, kept up by a task of its own:
/// it connects, authenticates both ends (TLS 1.3, the peer's certificate
/// must name the peer), multiplexes calls by request id, probes with
/// heartbeats in the same session, and reconnects after a failure.
/// Dropping the `Link` stops the task.
pub struct Link {
    addr: SocketAddr,
    calls: mpsc::Sender<Call>,
    up: watch::Receiver<bool>,
    counters: Arc<LinkCounters>,
    spawned: Instant,
    interval: std::time::Duration,
}

impl Link {
    /// Starts the link's task on the current tokio runtime; `tls` is what
    /// the peer is dialled with ([`identity::NodeIdentity::client_config`]
    /// for the peer's name).
    pub fn spawn(addr: SocketAddr, config: HealthConfig, tls: Arc<ClientConfig>) -> Link {
        let (calls, inbox) = mpsc::channel(1024);
        let (up_tx, up) = watch::channel(false);
        let counters = Arc::new(LinkCounters::default());
        let spawned = Instant::now();
        let connector = TlsConnector::from(tls);
        let task = run(
            addr,
            config,
            connector,
            inbox,
            up_tx,
            counters.clone(),
            spawned,
        );
        tokio::spawn(task);
        Link {
            addr,
            calls,
            up,
            counters,
            spawned,
            interval: config.interval,
        }
    }

    /// Up, and heard within two heartbeat intervals: an idle link that
    /// works is probed and answers once per interval, so a link silent for
    /// longer is probably cut, even before its silence is long enough to
    /// declare it down.
    pub fn is_fresh(&self) -> bool {
        let now = self.spawned.elapsed().as_millis() as u64;
        let heard = self.counters.heard_at_ms.load(Ordering::Relaxed);
        self.is_up() && now.saturating_sub(heard) <= 2 * self.interval.as_millis() as u64
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn is_up(&self) -> bool {
        *self.up.borrow()
    }

    /// Follows the link's state: `true` while up.
    pub fn watch(&self) -> watch::Receiver<bool> {
        self.up.clone()
    }

    pub fn counters(&self) -> &LinkCounters {
        &self.counters
    }

    /// Sends one request and waits for its reply. A write's data goes as
    /// `payload`, shared so that the caller keeps it for a resend.
    pub async fn call(
        &self,
        vdisk: u64,
        epoch: u64,
        op: Op,
        payload: Option<Arc<AlignedBuf>>,
    ) -> Result<Reply, LinkError> {
        let (reply, answer) = oneshot::channel();
        let call = Call {
            vdisk,
            epoch,
            op,
            payload,
            reply,
        };
        self.calls.send(call).await.map_err(|_| LinkError::Closed)?;
        answer.await.map_err(|_| LinkError::Closed)?
    }
}

/// The link's task: sessions one after another until the `Link` drops.
async fn run(
    addr: SocketAddr,
    config: HealthConfig,
    connector: TlsConnector,
    mut inbox: mpsc::Receiver<Call>,
    up: watch::Sender<bool>,
    counters: Arc<LinkCounters>,
    spawned: Instant,
) {
    let mut health = Health::new(config, Instant::now());
    let silence = config.interval * config.allowed_misses;
    loop {
        let connect = tokio::time::timeout(silence, connect(&connector, addr));
        tokio::pin!(connect);
        // Calls made while connecting fail at once, without disturbing the
        // attempt.
        let connected = loop {
            tokio::select! {
                connected = &mut connect => break connected,
                call = inbox.recv() => match call {
                    Some(call) => {
                        let _ = call.reply.send(Err(LinkError::Down));
                    }
                    None => return,
                },
            }
        };
        let stream = match connected {
            Ok(Ok(stream)) => stream,
            Ok(Err(ConnectError::Refused(e))) => {
                tracing::debug!(%addr, "link cannot connect: {e}");
                if refuse_calls_for(&mut inbox, config.interval).await.is_err() {
                    return;
                }
                continue;
            }
            Ok(Err(ConnectError::Handshake(e))) => {
                // Not the peer it should be, or not of this cluster: worth
                // an admin's look, once per attempt.
                tracing::warn!(%addr, "link refused: TLS handshake failed: {e}");
                if refuse_calls_for(&mut inbox, config.interval).await.is_err() {
                    return;
                }
                continue;
            }
            Err(_) => {
                tracing::debug!(%addr, "link connect timed out");
                continue;
            }
        };
        health.connected(Instant::now());
        let reason = session(
            stream,
            addr,
            &mut health,
            &mut inbox,
            &up,
            &counters,
            spawned,
        )
        .await;
        if health.disconnected() == Some(Transition::Down) {
            counters.downs.fetch_add(1, Ordering::Relaxed);
            let _ = up.send(false);
            tracing::warn!(%addr, "link down: {reason}");
        }
        if inbox.is_closed() {
            return;
        }
    }
}

/// Why a link could not connect.
enum ConnectError {
    /// Nobody answered at the address.
    Refused(io::Error),
    /// Somebody answered, but the TLS handshake failed: a certificate of
    /// another cluster or of another node, or none at all.
    Handshake(io::Error),
}

/// Connects to `addr` and authenticates both ends.
async fn connect(
    connector: &TlsConnector,
    addr: SocketAddr,
) -> Result<TlsStream<TcpStream>, ConnectError> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(ConnectError::Refused)?;
    let _ = stream.set_nodelay(true);
    // A link given up on is reset, its unsent requests discarded: none of
    // them reaches the peer after the sender counted it lost.
    let _ = stream.set_zero_linger();
    // The name is not what is checked (the client configuration holds the
    // peer's name), but a handshake needs one.
    connector
        .connect(ServerName::from(addr.ip()), stream)
        .await
        .map_err(ConnectError::Handshake)
}

/// While the peer cannot be reached, calls fail at once so that they move
/// to another path; returns `Err` when the `Link` is gone.
async fn refuse_calls_for(
    inbox: &mut mpsc::Receiver<Call>,
    pause: std::time::Duration,
) -> Result<(), ()> {
    let deadline = tokio::time::sleep(pause);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            () = &mut deadline => return Ok(()),
            call = inbox.recv() => match call {
                Some(call) => {
                    let _ = call.reply.send(Err(LinkError::Down));
                }
                None => return Err(()),
            },
        }
    }
}

/// One connection's life; returns why it ended.
async fn session(
    stream: TlsStream<TcpStream>,
    addr: SocketAddr,
    health: &mut Health,
    inbox: &mut mpsc::Receiver<Call>,
    up: &watch::Sender<bool>,
    counters: &LinkCounters,
    spawned: Instant,
) -> String {
    let (reader, writer) = tokio::io::split(stream);
    let mut writer = BufWriter::with_capacity(IO_BUFFER, writer);
    let (replies_tx, mut replies) = mpsc::channel(1024);
    // Whether the peer ended the connection (closed or reset it), rather
    // than this side giving up on it.
    let mut peer_closed = false;
    let reader = tokio::spawn(read_replies(reader, replies_tx));
    let mut pending: HashMap<u64, Waiter> = HashMap::new();
    let mut next_id = 0u64;
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let reason = loop {
        tokio::select! {
            // Replies first: one that came while the loop was busy sending
            // counts as heard before silence is judged (a long send of
            // large requests must not cut the link it is using). Then the
            // ticker, which cannot starve calls: it fires once a tick.
            biased;
            reply = replies.recv() => {
                let Some(reply) = reply else { break "connection closed by the peer".to_owned() };
                let (id, reply) = match reply {
                    Ok(reply) => reply,
                    Err(ReadEnd::Closed(e)) => {
                        peer_closed = true;
                        break format!("connection closed by the peer: {e}");
                    }
                    Err(ReadEnd::Malformed(why)) => break why,
                };
                let now = Instant::now();
                // A peer that refuses us as a non-member serves us nothing:
                // its answers do not keep the link up, so that requests
                // route elsewhere.
                if reply.status != Status::Nack(Nack::NotAMember) {
                    let heard_at = now.duration_since(spawned).as_millis() as u64;
                    counters.heard_at_ms.store(heard_at, Ordering::Relaxed);
                    if health.heard(now) == Some(Transition::Up) {
                        counters.ups.fetch_add(1, Ordering::Relaxed);
                        let _ = up.send(true);
                        tracing::info!(%addr, "link up");
                    }
                }
                let bytes = HEADER_LEN + reply.data.as_ref().map_or(0, |d| d.len());
                counters.received_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
                match pending.remove(&id) {
                    Some(Waiter::Call(caller)) => { let _ = caller.send(Ok(reply)); }
                    Some(Waiter::Heartbeat { sent }) => {
                        let rtt = now.duration_since(sent).as_micros() as u64;
                        counters.heartbeat_rtt_us.store(rtt, Ordering::Relaxed);
                    }
                    None => break format!("reply to unknown request {id}"),
                }
            }
            _ = ticker.tick() => {
                let now = Instant::now();
                if health.is_silent(now) {
                    break "heartbeats unanswered".to_owned();
                }
                if health.probe_due(now) {
                    next_id += 1;
                    let frame = Frame::Request { id: next_id, vdisk: 0, epoch: 0, op: Op::Heartbeat };
                    if let Ok(head) = frame.encode(&[]) {
                        pending.insert(next_id, Waiter::Heartbeat { sent: now });
                        counters.sent_bytes.fetch_add(head.len() as u64, Ordering::Relaxed);
                        if let Err(e) = writer.write_all(&head).await.and(writer.flush().await) {
                            break format!("heartbeat send failed: {e}");
                        }
                    }
                }
            }
            call = inbox.recv() => {
                let Some(call) = call else { break "link closed".to_owned() };
                // Whatever else is queued goes out in the same flush: at a
                // queue depth of 32, one segment carries many requests.
                let mut next = Some(call);
                let mut sent = Ok(());
                for _ in 0..BATCH {
                    let Some(call) = next.take().or_else(|| inbox.try_recv().ok()) else { break };
                    next_id += 1;
                    match buffer_call(&mut writer, next_id, call, &mut pending).await {
                        Ok(bytes) => {
                            counters.sent_bytes.fetch_add(bytes, Ordering::Relaxed);
                        }
                        Err(e) => {
                            sent = Err(e);
                            break;
                        }
                    }
                }
                if let Err(e) = sent.and(writer.flush().await) {
                    break format!("send failed: {e}");
                }
                health.sent(Instant::now());
            }
        }
    };
    reader.abort();
    // Whatever the peer has not started of them, it never will, once it
    // sees the connection reset, or silent for its `SILENCE`; if it ended
    // the connection itself, it has started nothing more since.
    let settles_at = Instant::now()
        + if peer_closed {
            PEER_CLOSED_SETTLE
        } else {
            STRAGGLE
        };
    for waiter in pending.into_values() {
        if let Waiter::Call(caller) = waiter {
            let _ = caller.send(Err(LinkError::Lost { settles_at }));
        }
    }
    reason
}

/// What waits for a reply: a caller, or a heartbeat sent at `sent`.
pub(super) enum Waiter {
    Call(oneshot::Sender<Result<Reply, LinkError>>),
    Heartbeat { sent: Instant },
}
