use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use identity::{rustls::ClientConfig, SecureStream, ServerName, TlsConnector};
use tokio::io::{AsyncWriteExt, BufWriter, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};

use super::frames::{buffer_cache, buffer_call, read_replies, ReadEnd};
use super::{Health, HealthConfig, Transition};
use crate::wire::{CacheMessage, Frame, Nack, Op, Status, HEADER_LEN, SILENCE};
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
    /// Sessions replaced once they carried their records
    /// ([`HealthConfig::records_per_session`]).
    pub renewals: AtomicU64,
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

/// What goes out on a link: a call, answered, or a cache message, one way.
pub(super) enum Outbound {
    Call(Call),
    Cache {
        vdisk: u64,
        message: CacheMessage,
        data: Option<Arc<AlignedBuf>>,
    },
}

impl Outbound {
    /// The link is down: a call fails at once, so that it moves to another
    /// path; a cache message is dropped, as a lost one.
    fn refuse(self) {
        if let Outbound::Call(call) = self {
            let _ = call.reply.send(Err(LinkError::Down));
        }
    }
}

/// The two halves of a link's TLS session.
pub(super) type SessionReader = ReadHalf<SecureStream>;
pub(super) type SessionWriter = WriteHalf<SecureStream>;

/// One connection to one address of a peer, kept up by a task of its own:
/// it connects, authenticates both ends (TLS 1.3, the peer's certificate
/// must name the peer), multiplexes calls by request id, probes with
/// heartbeats in the same session, and reconnects after a failure.
/// Dropping the `Link` stops the task.
pub struct Link {
    addr: SocketAddr,
    calls: mpsc::Sender<Outbound>,
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
        self.calls
            .send(Outbound::Call(call))
            .await
            .map_err(|_| LinkError::Closed)?;
        answer.await.map_err(|_| LinkError::Closed)?
    }

    /// Sends a cache message about `vdisk`, with a write's or a grant's
    /// data, if the link can take it now: one way, and a message that
    /// cannot go is dropped, as a lost one (the cache's cores send again).
    pub fn send_cache(&self, vdisk: u64, message: CacheMessage, data: Option<Arc<AlignedBuf>>) {
        let _ = self.calls.try_send(Outbound::Cache {
            vdisk,
            message,
            data,
        });
    }
}

/// The link's task: sessions one after another until the `Link` drops.
async fn run(
    addr: SocketAddr,
    config: HealthConfig,
    connector: TlsConnector,
    mut inbox: mpsc::Receiver<Outbound>,
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
                    Some(call) => call.refuse(),
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
                tracing::warn!(%addr, "link refused: {e}");
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
        let went_down = health.disconnected() == Some(Transition::Down);
        if went_down {
            counters.downs.fetch_add(1, Ordering::Relaxed);
            let _ = up.send(false);
        }
        match reason {
            SessionEnd::Lost(why) if went_down => tracing::warn!(%addr, "link down: {why}"),
            SessionEnd::Lost(_) => {}
            SessionEnd::Spent => {
                counters.renewals.fetch_add(1, Ordering::Relaxed);
                tracing::info!(%addr, "link renews its TLS session: {} records carried", config.records_per_session);
            }
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
    /// Somebody answered, but the TLS handshake failed (a certificate of
    /// another cluster or of another node, or none at all), or the kernel
    /// did not take the session.
    Handshake(identity::SessionError),
}

/// Connects to `addr` and authenticates both ends.
async fn connect(connector: &TlsConnector, addr: SocketAddr) -> Result<SecureStream, ConnectError> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(ConnectError::Refused)?;
    let _ = stream.set_nodelay(true);
    // A link given up on is reset, its unsent requests discarded: none of
    // them reaches the peer after the sender counted it lost.
    let _ = stream.set_zero_linger();
    // The name is not what is checked (the client configuration holds the
    // peer's name), but a handshake needs one.
    identity::connect(connector, ServerName::from(addr.ip()), stream)
        .await
        .map_err(ConnectError::Handshake)
}

/// While the peer cannot be reached, calls fail at once so that they move
/// to another path; returns `Err` when the `Link` is gone.
async fn refuse_calls_for(
    inbox: &mut mpsc::Receiver<Outbound>,
    pause: std::time::Duration,
) -> Result<(), ()> {
    let deadline = tokio::time::sleep(pause);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            () = &mut deadline => return Ok(()),
            call = inbox.recv() => match call {
                Some(call) => call.refuse(),
                None => return Err(()),
            },
        }
    }
}

/// Why a session ended.
enum SessionEnd {
    /// It failed, or the peer or the link ended it; why.
    Lost(String),
    /// It carried its [`HealthConfig::records_per_session`] and answered
    /// every call: the link dials a new one at once.
    Spent,
}

/// An upper bound of the TLS records one way of a session has carried,
/// from the frames and bytes that went that way: either end writes a
/// frame in at most three writes (what was buffered before it, its
/// header, its data), and each write makes a record per 16 KiB or part.
#[derive(Default)]
struct RecordBound {
    frames: u64,
    bytes: u64,
}

impl RecordBound {
    fn carried(&mut self, bytes: u64) {
        self.frames += 1;
        self.bytes += bytes;
    }

    fn records(&self) -> u64 {
        3 * self.frames + (self.bytes >> 14)
    }
}

/// One connection's life; returns why it ended.
async fn session(
    stream: SecureStream,
    addr: SocketAddr,
    health: &mut Health,
    inbox: &mut mpsc::Receiver<Outbound>,
    up: &watch::Sender<bool>,
    counters: &LinkCounters,
    spawned: Instant,
) -> SessionEnd {
    let kernel_tls = stream.in_kernel();
    let (mut sent, mut received) = (RecordBound::default(), RecordBound::default());
    // Spent: no more calls go out on this session, and it ends once the
    // calls out are answered.
    let mut spent = false;
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
                let Some(reply) = reply else { break SessionEnd::Lost("connection closed by the peer".to_owned()) };
                let (id, reply) = match reply {
                    Ok(reply) => reply,
                    Err(ReadEnd::Closed(e)) => {
                        peer_closed = true;
                        break SessionEnd::Lost(format!("connection closed by the peer: {e}"));
                    }
                    Err(ReadEnd::Malformed(why)) => break SessionEnd::Lost(why),
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
                        tracing::info!(%addr, kernel_tls, "link up");
                    }
                }
                let bytes = HEADER_LEN + reply.data.as_ref().map_or(0, |d| d.len());
                counters.received_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
                received.carried(bytes as u64);
                match pending.remove(&id) {
                    Some(Waiter::Call(caller)) => { let _ = caller.send(Ok(reply)); }
                    Some(Waiter::Heartbeat { sent }) => {
                        let rtt = now.duration_since(sent).as_micros() as u64;
                        counters.heartbeat_rtt_us.store(rtt, Ordering::Relaxed);
                    }
                    None => break SessionEnd::Lost(format!("reply to unknown request {id}")),
                }
                spent |= received.records() >= health.config().records_per_session;
                if spent && !pending.values().any(|w| matches!(w, Waiter::Call(_))) {
                    break SessionEnd::Spent;
                }
            }
            _ = ticker.tick() => {
                let now = Instant::now();
                if health.is_silent(now) {
                    break SessionEnd::Lost("heartbeats unanswered".to_owned());
                }
                if health.probe_due(now) {
                    next_id += 1;
                    let frame = Frame::Request { id: next_id, vdisk: 0, epoch: 0, op: Op::Heartbeat };
                    if let Ok(head) = frame.encode(&[]) {
                        pending.insert(next_id, Waiter::Heartbeat { sent: now });
                        counters.sent_bytes.fetch_add(head.len() as u64, Ordering::Relaxed);
                        sent.carried(head.len() as u64);
                        if let Err(e) = writer.write_all(&head).await.and(writer.flush().await) {
                            break SessionEnd::Lost(format!("heartbeat send failed: {e}"));
                        }
                    }
                }
            }
            call = inbox.recv(), if !spent => {
                let Some(call) = call else { break SessionEnd::Lost("link closed".to_owned()) };
                // Whatever else is queued goes out in the same flush: at a
                // queue depth of 32, one segment carries many requests.
                let mut next = Some(call);
                let mut buffered = Ok(());
                for _ in 0..BATCH {
                    let Some(call) = next.take().or_else(|| inbox.try_recv().ok()) else { break };
                    let buffered_one = match call {
                        Outbound::Call(call) => {
                            next_id += 1;
                            buffer_call(&mut writer, next_id, call, &mut pending).await
                        }
                        Outbound::Cache { vdisk, message, data } => {
                            buffer_cache(&mut writer, vdisk, message, data.as_deref()).await
                        }
                    };
                    match buffered_one {
                        Ok(bytes) => {
                            counters.sent_bytes.fetch_add(bytes, Ordering::Relaxed);
                            sent.carried(bytes);
                        }
                        Err(e) => {
                            buffered = Err(e);
                            break;
                        }
                    }
                }
                if let Err(e) = buffered.and(writer.flush().await) {
                    break SessionEnd::Lost(format!("send failed: {e}"));
                }
                health.sent(Instant::now());
                spent |= sent.records() >= health.config().records_per_session;
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
