use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot, watch};

use super::{Action, DirtyMapFile, Replica, ReplicaConfig, Request, Side, SideState};
use crate::link::{LinkError, Reply};
use crate::route::TailPath;
use crate::wire::{Op, Status};
use crate::{AlignedBuf, BlockBackend, IoError};

/// What an admin (and later `ublkvd status`) sees of a mirror.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MirrorStatus {
    /// Side A's and side B's state, in that order.
    pub sides: [SideState; 2],
    /// Regions recorded dirty: what a resync of the other side would copy.
    pub dirty_regions: u64,
}

type Completion = Result<Option<AlignedBuf>, IoError>;

struct Submission {
    op: Op,
    payload: Option<Arc<AlignedBuf>>,
    done: oneshot::Sender<Completion>,
}

enum Event {
    /// An attempt of request `id` on `side` ended.
    Attempt {
        id: u64,
        side: Side,
        result: Result<Reply, LinkError>,
    },
    /// A peer side's reachability changed.
    Reachable { side: Side, up: bool },
}

/// A vdisk written to two tails at once ([`Replica`] decides, this shell
/// carries out): a write completes once both have it, or, while one side
/// is down, once the survivor has it and its range is durable in the dirty
/// map. Reads go to one in-sync side, the preferred one if it can.
///
/// Dropping it ends its task once the requests in flight are done.
pub struct MirroredVdisk {
    inputs: mpsc::UnboundedSender<Submission>,
    status: watch::Receiver<MirrorStatus>,
}

impl MirroredVdisk {
    /// Starts the mirror task of vdisk `vdisk` on `runtime`, sending under
    /// `epoch` to `sides` (side A, then side B), with both sides in sync.
    /// `dirty` records what a side misses while the other is down.
    pub fn spawn(
        runtime: &Handle,
        vdisk: u64,
        epoch: u64,
        sides: [TailPath; 2],
        dirty: DirtyMapFile,
        config: ReplicaConfig,
    ) -> MirroredVdisk {
        let replica = Replica::new(config);
        let (publish, status) = watch::channel(MirrorStatus {
            sides: replica.states(),
            dirty_regions: dirty.regions().count(),
        });
        let (inputs, inbox) = mpsc::unbounded_channel();
        let (events, events_rx) = mpsc::unbounded_channel();
        let task = MirrorTask {
            vdisk,
            epoch,
            sides: sides.map(Arc::new),
            replica,
            dirty,
            publish,
            events,
            pending: HashMap::new(),
        };
        runtime.spawn(task.run(inbox, events_rx));
        MirroredVdisk { inputs, status }
    }

    /// The mirror's state, updated as it changes.
    pub fn status(&self) -> watch::Receiver<MirrorStatus> {
        self.status.clone()
    }

    async fn submit(&self, op: Op, payload: Option<Arc<AlignedBuf>>) -> Completion {
        let (done, completion) = oneshot::channel();
        self.inputs
            .send(Submission { op, payload, done })
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

fn wire_len(len: u64) -> Result<u32, IoError> {
    u32::try_from(len).map_err(|_| IoError::TooLong { len })
}

impl BlockBackend for MirroredVdisk {
    async fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), IoError> {
        let len = wire_len(buf.len() as u64)?;
        let data = self
            .submit(Op::Read { offset, len }, None)
            .await?
            .ok_or(IoError::ShortTransfer { offset })?;
        // The task has checked the length of every read's data.
        buf.copy_from_slice(&data[..buf.len()]);
        Ok(())
    }

    async fn write(&self, offset: u64, buf: &[u8]) -> Result<(), IoError> {
        let len = wire_len(buf.len() as u64)?;
        // Copied once, shared by both sides' attempts.
        let mut data = AlignedBuf::new(buf.len())?;
        data.copy_from_slice(buf);
        self.submit(Op::Write { offset, len }, Some(Arc::new(data)))
            .await
            .map(drop)
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

/// The core's view of a wire operation: anything that changes data is
/// mirrored as a write of its range.
fn request_of(op: Op) -> Request {
    match op {
        Op::Read { .. } => Request::Read,
        Op::Write { offset, len }
        | Op::Discard { offset, len }
        | Op::WriteZeroes { offset, len } => Request::Write {
            offset,
            len: u64::from(len),
        },
        Op::Flush | Op::Heartbeat => Request::Flush,
    }
}

struct Pending {
    submission: Submission,
    /// A read's data, from the side that answered it.
    data: Option<AlignedBuf>,
}

/// The thin shell around a [`Replica`]: feeds it submissions, attempt
/// outcomes and reachability, and carries out its actions.
struct MirrorTask {
    vdisk: u64,
    epoch: u64,
    sides: [Arc<TailPath>; 2],
    replica: Replica,
    dirty: DirtyMapFile,
    publish: watch::Sender<MirrorStatus>,
    events: mpsc::UnboundedSender<Event>,
    pending: HashMap<u64, Pending>,
}

impl MirrorTask {
    async fn run(
        mut self,
        mut inbox: mpsc::UnboundedReceiver<Submission>,
        mut events: mpsc::UnboundedReceiver<Event>,
    ) {
        self.follow_reachability();
        let mut next_id = 0u64;
        loop {
            let actions = tokio::select! {
                submission = inbox.recv() => {
                    let Some(submission) = submission else { break };
                    next_id += 1;
                    let request = request_of(submission.op);
                    self.pending.insert(next_id, Pending { submission, data: None });
                    self.replica.submit(next_id, request)
                }
                Some(event) = events.recv() => self.event(event),
            };
            self.carry_out(actions);
            self.publish.send_if_modified(|status| {
                let now = MirrorStatus {
                    sides: self.replica.states(),
                    dirty_regions: self.dirty.regions().count(),
                };
                let changed = *status != now;
                *status = now;
                changed
            });
        }
        // The vdisk is gone: finish what is in flight, so that no caller
        // is left without an answer and no attempt outlives its buffer.
        while self.replica.in_flight() > 0 {
            let Some(event) = events.recv().await else {
                break;
            };
            let actions = self.event(event);
            self.carry_out(actions);
        }
    }

    fn event(&mut self, event: Event) -> Vec<Action> {
        match event {
            Event::Attempt { id, side, result } => self.attempt_ended(id, side, result),
            Event::Reachable { side, up: true } => {
                tracing::info!(
                    vdisk = self.vdisk,
                    side = self.name(side),
                    "mirror side reachable again: stale until resynced"
                );
                self.replica.side_up(side);
                Vec::new()
            }
            Event::Reachable { side, up: false } => {
                tracing::warn!(
                    vdisk = self.vdisk,
                    side = self.name(side),
                    "mirror side unreachable: going on degraded"
                );
                self.replica.side_down(side)
            }
        }
    }

    fn name(&self, side: Side) -> &str {
        self.sides[side.index()].name()
    }

    /// Reports each peer side's reachability changes as events. The
    /// initial state is not one: a peer whose links are still connecting
    /// is not down, and a request it cannot take fails it anyway.
    fn follow_reachability(&self) {
        for side in Side::BOTH {
            let TailPath::Peer(peer) = &*self.sides[side.index()] else {
                continue;
            };
            let mut state = peer.watch();
            state.mark_unchanged();
            let events = self.events.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        () = events.closed() => return,
                        changed = state.changed() => if changed.is_err() { return },
                    }
                    let up = *state.borrow_and_update();
                    if events.send(Event::Reachable { side, up }).is_err() {
                        return;
                    }
                }
            });
        }
    }

    fn attempt_ended(
        &mut self,
        id: u64,
        side: Side,
        result: Result<Reply, LinkError>,
    ) -> Vec<Action> {
        let why = match result {
            Ok(Reply {
                status: Status::Ok,
                data,
            }) => {
                let Some(pending) = self.pending.get_mut(&id) else {
                    return Vec::new();
                };
                let wanted = match pending.submission.op {
                    Op::Read { len, .. } => len as usize,
                    _ => 0,
                };
                let got = data.as_ref().map_or(0, |d| d.len());
                if got == wanted {
                    if data.is_some() {
                        pending.data = data;
                    }
                    return self.replica.succeeded(id, side);
                }
                format!("answered with {got} bytes for {wanted}")
            }
            Ok(Reply {
                status: Status::Nack(nack),
                ..
            }) => format!("refused: {nack:?}"),
            Err(e) => e.to_string(),
        };
        if self.replica.state(side) != SideState::Down {
            tracing::warn!(
                vdisk = self.vdisk,
                side = self.name(side),
                "mirror side failed a request ({why}): going on degraded"
            );
        }
        self.replica.failed(id, side)
    }

    /// Carries out `actions` and whatever they lead to: a dirty mark is
    /// made here, and its outcome fed back at once.
    fn carry_out(&mut self, actions: Vec<Action>) {
        let mut queue = VecDeque::from(actions);
        while let Some(action) = queue.pop_front() {
            match action {
                Action::Send { id, side } => self.send(id, side),
                Action::MarkDirty { id, offset, len } => {
                    // Synchronous on the task: it costs one small write
                    // and one fdatasync, and only for a write into a clean
                    // region while degraded; regions already dirty cost
                    // nothing.
                    let outcome = match self.dirty.mark_durable(offset, len) {
                        Ok(()) => self.replica.dirty_marked(id),
                        Err(e) => {
                            tracing::error!(vdisk = self.vdisk, offset, len, error = %e, "cannot record a dirty region: the write fails");
                            self.replica.dirty_mark_failed(id)
                        }
                    };
                    queue.extend(outcome);
                }
                Action::RecordStale => todo!(),
                Action::Complete { id } => {
                    if let Some(pending) = self.pending.remove(&id) {
                        let _ = pending.submission.done.send(Ok(pending.data));
                    }
                }
                Action::Fail { id } => {
                    if let Some(pending) = self.pending.remove(&id) {
                        tracing::error!(
                            vdisk = self.vdisk,
                            "request failed: no mirror side in sync could take it"
                        );
                        let _ = pending.submission.done.send(Err(IoError::NoCurrentCopy));
                    }
                }
            }
        }
    }

    fn send(&self, id: u64, side: Side) {
        let Some(pending) = self.pending.get(&id) else {
            return;
        };
        let path = self.sides[side.index()].clone();
        let (vdisk, epoch) = (self.vdisk, self.epoch);
        let op = pending.submission.op;
        let payload = pending.submission.payload.clone();
        let events = self.events.clone();
        // Runs to completion even if the request moves on: a local attempt
        // owns a buffer the kernel writes into.
        tokio::spawn(async move {
            let result = path.execute(vdisk, epoch, op, payload).await;
            let _ = events.send(Event::Attempt { id, side, result });
        });
    }
}
