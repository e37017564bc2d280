//! The thin tokio shell around foca: one task owns the protocol state,
//! reads the UDP socket, fires timers in order, answers queries, and
//! publishes the membership view.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use foca::{
    AccumulatingRuntime, Foca, Identity, NoCustomBroadcast, OwnedNotification, PostcardCodec,
    State, Timer,
};
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::{
    Change, ClusterKey, NodeId, NodeMeta, ReplayError, ReplayWindow, Timing, TimingError, View,
};

/// How often a node that knows no member announces itself to its seeds
/// again: seeds may start after it, or come back after a partition.
const RESEED_INTERVAL: Duration = Duration::from_secs(2);
/// How long a leaving node waits for its goodbye to be sent.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(1);

/// What the agent needs to join a cluster.
#[derive(Clone)]
pub struct GossipConfig {
    pub name: String,
    /// The UDP address this node gossips on; others reach it there, so it
    /// must be a specific address, not 0.0.0.0.
    pub bind: SocketAddr,
    /// Members to announce this node to; any live one will do.
    pub seeds: Vec<SocketAddr>,
    pub timing: Timing,
    pub key: ClusterKey,
    pub meta: NodeMeta,
}

#[derive(Debug, thiserror::Error)]
pub enum GossipError {
    #[error("gossip bind address {0} is unspecified: others must know where to reach this node")]
    Unspecified(SocketAddr),
    #[error("cannot bind the gossip socket {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Timing(#[from] TimingError),
    #[error("the gossip agent has stopped")]
    Stopped,
}

/// Datagrams in and out, and those dropped, each for one reason.
#[derive(Debug, Default)]
pub struct GossipCounters {
    pub sent: AtomicU64,
    pub received: AtomicU64,
    /// Not authenticated: sealed without the cluster secret, or altered.
    pub rejected: AtomicU64,
    /// Authenticated, but sent outside the window of this node's clock
    /// ([`crate::MAX_SKEW_MS`]) or before the oldest datagram it
    /// remembers: a clock is off, or an old datagram was replayed.
    pub stale: AtomicU64,
    /// Authenticated, but received already: replayed, or duplicated by
    /// the network.
    pub replayed: AtomicU64,
    /// Authenticated and fresh, but foca could not use it.
    pub malformed: AtomicU64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    Alive,
    Suspect,
    Down,
}

/// One member as this node sees it, itself included.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    pub name: String,
    pub gossip: SocketAddr,
    pub links: Vec<SocketAddr>,
    pub tails: Vec<String>,
    pub version: String,
    pub state: MemberState,
    pub incarnation: u64,
    /// Whether this entry is the node answering.
    pub is_self: bool,
}

enum Command {
    Members(oneshot::Sender<Vec<MemberStatus>>),
    Leave(oneshot::Sender<()>),
}

/// A running gossip agent. Dropping it stops the agent without a goodbye;
/// [`Gossip::leave`] says goodbye first.
pub struct Gossip {
    commands: mpsc::Sender<Command>,
    view: watch::Receiver<View>,
    counters: Arc<GossipCounters>,
    local_addr: SocketAddr,
}

impl Gossip {
    /// Binds the socket and starts the agent on the current runtime; it
    /// announces itself to the seeds until it meets a member.
    pub async fn start(config: GossipConfig) -> Result<Gossip, GossipError> {
        if config.bind.ip().is_unspecified() {
            return Err(GossipError::Unspecified(config.bind));
        }
        config.timing.check()?;
        let bind_error = |source| GossipError::Bind {
            addr: config.bind,
            source,
        };
        // Opened before the socket: a datagram sent earlier was meant for
        // a previous life of this node, or for nobody, and may be a replay
        // this new window could not recognise.
        let replay = ReplayWindow::new(unix_millis());
        let socket = UdpSocket::bind(config.bind).await.map_err(bind_error)?;
        let local_addr = socket.local_addr().map_err(bind_error)?;
        let identity = NodeId::new(config.name.clone(), local_addr, config.meta.clone());
        tracing::info!(node = %config.name, gossip = %local_addr, incarnation = identity.incarnation, "gossip starting");
        let rng: StdRng = rand::make_rng();
        let foca = Foca::new(identity, config.timing.foca_config(1), rng, PostcardCodec);
        let (commands, inbox) = mpsc::channel(16);
        let (view_tx, view) = watch::channel(View::default());
        let counters = Arc::new(GossipCounters::default());
        let agent = Agent {
            foca,
            runtime: AccumulatingRuntime::new(),
            socket,
            replay,
            timers: BinaryHeap::new(),
            timer_seq: 0,
            view: View::default(),
            view_tx,
            counters: counters.clone(),
            config,
            leaving: false,
        };
        tokio::spawn(agent.run(inbox));
        Ok(Gossip {
            commands,
            view,
            counters,
            local_addr,
        })
    }

    /// Follows the live members and the configuration number.
    pub fn view(&self) -> watch::Receiver<View> {
        self.view.clone()
    }

    pub fn counters(&self) -> &Arc<GossipCounters> {
        &self.counters
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Every member this node knows of, itself first.
    pub async fn members(&self) -> Result<Vec<MemberStatus>, GossipError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Members(reply))
            .await
            .map_err(|_| GossipError::Stopped)?;
        answer.await.map_err(|_| GossipError::Stopped)
    }

    /// Tells a few members this node is leaving, so that the cluster sees
    /// it down at once instead of after the suspicion timeout, and stops.
    pub async fn leave(&self) {
        let (reply, answer) = oneshot::channel();
        if self.commands.send(Command::Leave(reply)).await.is_ok() {
            let _ = tokio::time::timeout(LEAVE_TIMEOUT, answer).await;
        }
    }
}

/// A foca timer due at `at`; `seq` keeps timers due at once in the order
/// foca asked for them.
#[derive(PartialEq, Eq)]
struct Scheduled {
    at: Instant,
    seq: u64,
    timer: Timer<NodeId>,
}

impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

type Swim = Foca<NodeId, PostcardCodec, StdRng, NoCustomBroadcast>;

struct Agent {
    foca: Swim,
    runtime: AccumulatingRuntime<NodeId>,
    socket: UdpSocket,
    replay: ReplayWindow,
    timers: BinaryHeap<Reverse<Scheduled>>,
    timer_seq: u64,
    view: View,
    view_tx: watch::Sender<View>,
    counters: Arc<GossipCounters>,
    config: GossipConfig,
    /// Set once this node said goodbye: its own death is then expected.
    leaving: bool,
}

impl Agent {
    async fn run(mut self, mut inbox: mpsc::Receiver<Command>) {
        let mut datagram = vec![0u8; 65536];
        let mut reseed = tokio::time::interval(RESEED_INTERVAL);
        loop {
            let next_timer = self.timers.peek().map(|Reverse(s)| s.at);
            let timer = async {
                match next_timer {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let result = tokio::select! {
                received = self.socket.recv_from(&mut datagram) => match received {
                    Ok((len, from)) => self.received(&mut datagram[..len], from),
                    Err(e) => {
                        tracing::debug!("gossip receive: {e}");
                        Ok(())
                    }
                },
                command = inbox.recv() => match command {
                    Some(Command::Members(reply)) => {
                        let _ = reply.send(self.members());
                        Ok(())
                    }
                    Some(Command::Leave(reply)) => {
                        tracing::info!("leaving the cluster");
                        self.leaving = true;
                        let left = self.foca.leave_cluster(&mut self.runtime);
                        self.flush().await;
                        let _ = reply.send(());
                        if let Err(e) = left {
                            tracing::warn!("gossip leave: {e}");
                        }
                        return;
                    }
                    None => return,
                },
                () = timer => {
                    let now = Instant::now();
                    let mut result = Ok(());
                    while let Some(Reverse(due)) = self.timers.peek() {
                        if due.at > now {
                            break;
                        }
                        let Some(Reverse(due)) = self.timers.pop() else { break };
                        result = result.and(self.foca.handle_timer(due.timer, &mut self.runtime));
                    }
                    result
                }
                _ = reseed.tick() => self.reseed(),
            };
            if let Err(e) = result {
                // foca refuses what it cannot use and keeps its state: a
                // stray packet, a late timer. Nothing to undo.
                tracing::debug!("gossip: {e}");
            }
            self.flush().await;
        }
    }

    fn received(&mut self, datagram: &mut [u8], from: SocketAddr) -> Result<(), foca::Error> {
        self.counters.received.fetch_add(1, Ordering::Relaxed);
        let opened = match self.config.key.open(datagram) {
            Ok(opened) => opened,
            Err(e) => {
                dropped(&self.counters.rejected, from, &e);
                return Ok(());
            }
        };
        if let Err(e) = self
            .replay
            .admit(opened.sent_at_ms, opened.nonce, unix_millis())
        {
            let counter = match e {
                ReplayError::Stale { .. } | ReplayError::Unverifiable => &self.counters.stale,
                ReplayError::Replayed => &self.counters.replayed,
            };
            dropped(counter, from, &e);
            return Ok(());
        }
        let handled = self.foca.handle_data(opened.packet, &mut self.runtime);
        if handled.is_err() {
            self.counters.malformed.fetch_add(1, Ordering::Relaxed);
        }
        handled
    }

    /// Announces this node to every seed while it knows no live member.
    fn reseed(&mut self) -> Result<(), foca::Error> {
        if self.foca.num_members() > 0 {
            return Ok(());
        }
        let own = self.foca.identity().addr();
        for &seed in &self.config.seeds {
            if seed != own {
                self.foca.announce(NodeId::seed(seed), &mut self.runtime)?;
            }
        }
        Ok(())
    }

    /// Carries out what foca asked for: datagrams, timers, notifications.
    async fn flush(&mut self) {
        while let Some((to, packet)) = self.runtime.to_send() {
            let datagram = match self.config.key.seal(&packet, unix_millis()) {
                Ok(datagram) => datagram,
                Err(e) => {
                    tracing::warn!(to = %to.gossip, "gossip send: {e}");
                    continue;
                }
            };
            match self.socket.send_to(&datagram, to.gossip).await {
                Ok(_) => {
                    self.counters.sent.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => tracing::debug!(to = %to.gossip, "gossip send: {e}"),
            }
        }
        let now = Instant::now();
        while let Some((after, timer)) = self.runtime.to_schedule() {
            self.timer_seq += 1;
            self.timers.push(Reverse(Scheduled {
                at: now + after,
                seq: self.timer_seq,
                timer,
            }));
        }
        let mut changed = false;
        while let Some(notification) = self.runtime.to_notify() {
            changed |= self.notified(notification);
        }
        if changed {
            // Larger clusters repeat news more often.
            let members = self.view.alive.len() + 1;
            if let Err(e) = self
                .foca
                .set_config(self.config.timing.foca_config(members))
            {
                tracing::debug!("gossip config: {e}");
            }
            self.view_tx.send_replace(self.view.clone());
        }
    }

    /// Logs one line per membership change; true if the view changed.
    fn notified(&mut self, notification: OwnedNotification<NodeId>) -> bool {
        match &notification {
            OwnedNotification::Defunct if !self.leaving => {
                tracing::error!("this node was declared down and cannot rejoin");
            }
            OwnedNotification::Rejoin(id) => {
                tracing::warn!(
                    incarnation = id.incarnation,
                    "this node was declared down: rejoined under a new incarnation"
                );
            }
            OwnedNotification::Idle => tracing::warn!("no live member known"),
            _ => {}
        }
        let Some(change) = self.view.apply(notification) else {
            return false;
        };
        let number = self.view.config_number;
        match change {
            Change::Up(id) if id.name == self.config.name => tracing::error!(
                gossip = %id.gossip,
                "another node gossips under this node's name: node names must be unique"
            ),
            Change::Up(id) => {
                tracing::info!(member = %id.name, incarnation = id.incarnation, config_number = number, "member up")
            }
            Change::Down(id) => {
                tracing::warn!(member = %id.name, incarnation = id.incarnation, config_number = number, "member down")
            }
            Change::Renamed { old, new } => tracing::info!(
                member = %new.name,
                old_incarnation = old.incarnation,
                incarnation = new.incarnation,
                config_number = number,
                "member restarted"
            ),
        }
        true
    }

    fn members(&self) -> Vec<MemberStatus> {
        let status = |id: &NodeId, state, is_self| MemberStatus {
            name: id.name.clone(),
            gossip: id.gossip,
            links: id.meta.links.clone(),
            tails: id.meta.tails.clone(),
            version: id.meta.version.clone(),
            state,
            incarnation: id.incarnation,
            is_self,
        };
        let mut members = vec![status(self.foca.identity(), MemberState::Alive, true)];
        for member in self.foca.iter_membership_state() {
            let state = match member.state() {
                State::Alive => MemberState::Alive,
                State::Suspect => MemberState::Suspect,
                State::Down => MemberState::Down,
            };
            members.push(status(member.id(), state, false));
        }
        members[1..].sort_by(|a, b| a.name.cmp(&b.name));
        members
    }
}

/// Counts a dropped datagram; logs the first few of each kind, not one line
/// per packet.
fn dropped(counter: &AtomicU64, from: SocketAddr, reason: &dyn std::fmt::Display) {
    if counter.fetch_add(1, Ordering::Relaxed) < 10 {
        tracing::warn!(%from, "gossip datagram dropped: {reason}");
    }
}

/// This node's clock in ms since the Unix epoch: the timestamp of what it
/// sends and the `now` of its replay window.
fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        })
}
