use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use prometheus_client::metrics::histogram::Histogram;
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot};

use super::{Action, RouteConfig, Router};
use crate::link::{LinkError, PeerLinks, Reply};
use crate::peer::run_on_tail;
use crate::wire::{Nack, Op, Status};
use crate::{AlignedBuf, BlockBackend, EngineRing, IoError, LocalTail};

/// One way to a vdisk's data.
pub enum TailPath {
    /// A tail this node is attached to, through the I/O engine's ring.
    Local(Arc<LocalTail<EngineRing>>),
    /// A tail on a peer, over its links.
    Peer(Arc<PeerLinks>),
}

impl TailPath {
    /// "local", or the peer's name: how logs and counters name the path.
    pub fn name(&self) -> &str {
        match self {
            TailPath::Local(_) => "local",
            TailPath::Peer(peer) => peer.name(),
        }
    }

    async fn execute(
        &self,
        vdisk: u64,
        epoch: u64,
        op: Op,
        payload: Option<Arc<AlignedBuf>>,
    ) -> Result<Reply, LinkError> {
        match self {
            TailPath::Local(tail) => {
                let data = payload.as_deref().map_or(&[][..], |p| &p[..]);
                let (status, data) = run_on_tail(tail, op, data).await;
                Ok(Reply { status, data })
            }
            TailPath::Peer(peer) => peer.call(vdisk, epoch, op, payload).await,
        }
    }
}

/// What one path has done for a vdisk, for status views and tests.
#[derive(Debug, Default)]
pub struct PathCounters {
    /// Requests this path completed.
    pub completed: AtomicU64,
    /// Attempts this path refused, lost or left unanswered.
    pub failed: AtomicU64,
}

/// A vdisk's routing counters: one entry per path, in preference order.
#[derive(Debug)]
pub struct VdiskCounters {
    pub paths: Vec<(String, PathCounters)>,
    /// Attempts that resent a request after another attempt failed.
    pub resends: AtomicU64,
    /// Requests that completed only after being resent: each lived through
    /// a failover (or a refusal) and the application saw a delay.
    pub failovers: AtomicU64,
    /// Seconds from submission to completion of those requests: what a
    /// failover costs the application.
    pub failover_stall: Histogram,
    /// Requests that failed on every path for the I/O timeout.
    pub errors: AtomicU64,
}

type Completion = Result<Option<AlignedBuf>, IoError>;

struct Submission {
    op: Op,
    payload: Option<Arc<AlignedBuf>>,
    done: oneshot::Sender<Completion>,
}

enum Event {
    /// An attempt of request `id` on path `path` ended.
    Attempt {
        id: u64,
        path: usize,
        result: Result<Reply, LinkError>,
    },
    /// A path became reachable or unreachable.
    PathState { path: usize, up: bool },
}

/// A vdisk whose requests go to whichever of its tails can take them: the
/// routing task owns a [`Router`] (the pending-request table) and carries
/// out its actions on [`TailPath`]s. Requests come from any thread or
/// executor, a ublk queue's among them.
///
/// Dropping it ends the routing task once the requests in flight are done.
pub struct RoutedVdisk {
    submissions: mpsc::UnboundedSender<Submission>,
    counters: Arc<VdiskCounters>,
}

impl RoutedVdisk {
    /// Starts the routing task of vdisk `vdisk` on `runtime`. `paths` are in
    /// order of preference: the local tail first if this node has one, then
    /// the primary, then the secondary.
    pub fn spawn(
        runtime: &Handle,
        vdisk: u64,
        epoch: u64,
        paths: Vec<TailPath>,
        config: RouteConfig,
    ) -> RoutedVdisk {
        let counters = Arc::new(VdiskCounters {
            paths: paths
                .iter()
                .map(|p| (p.name().to_owned(), PathCounters::default()))
                .collect(),
            resends: AtomicU64::new(0),
            failovers: AtomicU64::new(0),
            failover_stall: crate::IoMetrics::latency_histogram(),
            errors: AtomicU64::new(0),
        });
        let (submissions, inbox) = mpsc::unbounded_channel();
        let task = RoutingTask {
            vdisk,
            epoch,
            paths: paths.into_iter().map(Arc::new).collect(),
            config,
            counters: counters.clone(),
        };
        runtime.spawn(task.run(inbox));
        RoutedVdisk {
            submissions,
            counters,
        }
    }

    pub fn counters(&self) -> &Arc<VdiskCounters> {
        &self.counters
    }

    async fn submit(&self, op: Op, payload: Option<Arc<AlignedBuf>>) -> Completion {
        let (done, completion) = oneshot::channel();
        let submission = Submission { op, payload, done };
        self.submissions
            .send(submission)
            .map_err(|_| IoError::ShuttingDown)?;
        completion.await.map_err(|_| IoError::ShuttingDown)?
    }

    async fn submit_range(
        &self,
        offset: u64,
        len: u64,
        op: fn(u64, u32) -> Op,
    ) -> Result<(), IoError> {
        self.submit(op(offset, wire_len(len)?), None)
            .await
            .map(drop)
    }
}

/// A request's length as a frame carries it.
fn wire_len(len: u64) -> Result<u32, IoError> {
    u32::try_from(len).map_err(|_| IoError::TooLong { len })
}

impl BlockBackend for RoutedVdisk {
    async fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), IoError> {
        let len = wire_len(buf.len() as u64)?;
        let data = self
            .submit(Op::Read { offset, len }, None)
            .await?
            .ok_or(IoError::ShortTransfer { offset })?;
        // The routing task has checked the length of every read's data.
        buf.copy_from_slice(&data[..buf.len()]);
        Ok(())
    }

    async fn write(&self, offset: u64, buf: &[u8]) -> Result<(), IoError> {
        let len = wire_len(buf.len() as u64)?;
        // The data is copied out of the caller's buffer once, and kept until
        // the request completes, so that any path can be sent it again.
        let mut data = AlignedBuf::new(buf.len())?;
        data.copy_from_slice(buf);
        let op = Op::Write { offset, len };
        self.submit(op, Some(Arc::new(data))).await.map(drop)
    }

    async fn flush(&self) -> Result<(), IoError> {
        self.submit(Op::Flush, None).await.map(drop)
    }

    async fn discard(&self, offset: u64, len: u64) -> Result<(), IoError> {
        self.submit_range(offset, len, |offset, len| Op::Discard { offset, len })
            .await
    }

    async fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), IoError> {
        self.submit_range(offset, len, |offset, len| Op::WriteZeroes { offset, len })
            .await
    }
}

/// The thin shell around a [`Router`]: feeds it submissions, attempt
/// outcomes, path states and time, and carries out what it says.
struct RoutingTask {
    vdisk: u64,
    epoch: u64,
    paths: Vec<Arc<TailPath>>,
    config: RouteConfig,
    counters: Arc<VdiskCounters>,
}

struct Pending {
    submission: Submission,
    attempts: u32,
    since: Instant,
}

impl RoutingTask {
    async fn run(self, mut inbox: mpsc::UnboundedReceiver<Submission>) {
        let mut router = Router::new((0..self.paths.len()).collect(), self.config);
        let (events_tx, mut events) = mpsc::unbounded_channel();
        self.follow_path_states(&events_tx);
        let mut pending: HashMap<u64, Pending> = HashMap::new();
        let mut next_id = 0u64;
        loop {
            let deadline = router.next_deadline();
            let timer = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            let (actions, mut data) = tokio::select! {
                submission = inbox.recv() => {
                    let Some(submission) = submission else { break };
                    next_id += 1;
                    pending.insert(next_id, Pending { submission, attempts: 0, since: Instant::now() });
                    (router.submit(next_id, Instant::now()), None)
                }
                Some(event) = events.recv() => match event {
                    Event::Attempt { id, path, result } => {
                        let op = pending.get(&id).map(|p| p.submission.op);
                        self.attempt_ended(&mut router, id, path, op, result)
                    }
                    Event::PathState { path, up } => {
                        let name = self.paths[path].name();
                        let now = Instant::now();
                        if up {
                            tracing::info!(vdisk = self.vdisk, path = name, "path usable again");
                            (router.path_up(path, now), None)
                        } else {
                            tracing::warn!(vdisk = self.vdisk, path = name, "path down: its requests move to the next path");
                            (router.path_down(path, now), None)
                        }
                    }
                },
                () = timer => (router.tick(Instant::now()), None),
            };
            for action in actions {
                self.carry_out(action, &mut pending, &mut data, &events_tx);
            }
        }
    }

    /// Reports each peer path's reachability as events, until the task ends.
    fn follow_path_states(&self, events: &mpsc::UnboundedSender<Event>) {
        for (path, tail_path) in self.paths.iter().enumerate() {
            let TailPath::Peer(peer) = &**tail_path else {
                continue;
            };
            let mut state = peer.watch();
            let events = events.clone();
            tokio::spawn(async move {
                loop {
                    let up = *state.borrow_and_update();
                    if events.send(Event::PathState { path, up }).is_err() {
                        return;
                    }
                    tokio::select! {
                        () = events.closed() => return,
                        changed = state.changed() => if changed.is_err() { return },
                    }
                }
            });
        }
    }

    /// Feeds an attempt's outcome to the router. Returns its actions and,
    /// for a successful read, the data to complete it with.
    fn attempt_ended(
        &self,
        router: &mut Router<usize>,
        id: u64,
        path: usize,
        op: Option<Op>,
        result: Result<Reply, LinkError>,
    ) -> (Vec<Action<usize>>, Option<AlignedBuf>) {
        let name = self.paths[path].name();
        let why = match result {
            Ok(Reply {
                status: Status::Ok,
                data,
            }) => {
                let wanted = match op {
                    Some(Op::Read { len, .. }) => len as usize,
                    _ => 0,
                };
                let got = data.as_ref().map_or(0, |d| d.len());
                if got == wanted {
                    let actions = router.succeeded(id, path);
                    if !actions.is_empty() {
                        let completed = &self.counters.paths[path].1.completed;
                        completed.fetch_add(1, Ordering::Relaxed);
                    }
                    return (actions, data);
                }
                format!("answered with {got} bytes for {wanted}")
            }
            Ok(Reply {
                status: Status::Nack(nack),
                ..
            }) => describe(nack),
            Err(e) => e.to_string(),
        };
        tracing::debug!(vdisk = self.vdisk, path = name, id, "attempt failed: {why}");
        self.counters.paths[path]
            .1
            .failed
            .fetch_add(1, Ordering::Relaxed);
        (router.failed(id, path, Instant::now()), None)
    }

    fn carry_out(
        &self,
        action: Action<usize>,
        pending: &mut HashMap<u64, Pending>,
        data: &mut Option<AlignedBuf>,
        events: &mpsc::UnboundedSender<Event>,
    ) {
        match action {
            Action::Send { id, path } => {
                let Some(request) = pending.get_mut(&id) else {
                    return;
                };
                request.attempts += 1;
                if request.attempts > 1 {
                    self.counters.resends.fetch_add(1, Ordering::Relaxed);
                }
                let tail_path = self.paths[path].clone();
                let (vdisk, epoch) = (self.vdisk, self.epoch);
                let op = request.submission.op;
                let payload = request.submission.payload.clone();
                let events = events.clone();
                // The attempt runs to completion even if the request moves
                // on: a local attempt owns a buffer the kernel writes into.
                tokio::spawn(async move {
                    let result = tail_path.execute(vdisk, epoch, op, payload).await;
                    let _ = events.send(Event::Attempt { id, path, result });
                });
            }
            Action::Complete { id } => {
                if let Some(request) = pending.remove(&id) {
                    if request.attempts > 1 {
                        self.counters.failovers.fetch_add(1, Ordering::Relaxed);
                        let stall = request.since.elapsed().as_secs_f64();
                        self.counters.failover_stall.observe(stall);
                    }
                    let _ = request.submission.done.send(Ok(data.take()));
                }
            }
            Action::Fail { id } => {
                if let Some(request) = pending.remove(&id) {
                    self.counters.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(
                        vdisk = self.vdisk,
                        "request failed: no path answered for the I/O timeout"
                    );
                    let seconds = self.config.io_timeout.as_secs();
                    let _ = request
                        .submission
                        .done
                        .send(Err(IoError::Unreachable { seconds }));
                }
            }
        }
    }
}

fn describe(nack: Nack) -> String {
    match nack {
        Nack::NoSuchTail => "refused: the peer serves no tail for this vdisk".into(),
        Nack::Io { errno } => format!(
            "refused: tail I/O error: {}",
            std::io::Error::from_raw_os_error(errno as i32)
        ),
        Nack::StaleEpoch { current } => format!("refused: stale epoch (peer has {current})"),
        Nack::ShuttingDown => "refused: the peer is shutting down".into(),
        Nack::NotAMember => "refused: the peer does not count this node as a member".into(),
    }
}
