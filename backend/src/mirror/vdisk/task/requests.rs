//! The mirror task's request path: a submission becomes the core's
//! request, waits for its dirty mark, and its attempts go out to the sides.

use std::collections::VecDeque;
use std::time::Instant;

use super::{overlaps, written, Event, MarkWaiter, MirrorTask, Pending};
use crate::mirror::dirty::async_map::MarksDone;
use crate::mirror::sides::{attempt, AttemptError};
use crate::mirror::{Action, Request, Side, SideState};
use crate::tail::{BlockOp, Submission};
use crate::{AlignedBuf, IoError};

/// The core's view of a block operation: anything that changes data is
/// mirrored as a write of its range.
fn request_of(op: BlockOp) -> Request {
    match op {
        BlockOp::Read { .. } => Request::Read,
        BlockOp::Write { offset, len, .. }
        | BlockOp::Discard { offset, len }
        | BlockOp::WriteZeroes { offset, len } => Request::Write {
            offset,
            len: u64::from(len),
        },
        BlockOp::Flush => Request::Flush,
    }
}

impl MirrorTask {
    pub(super) fn submit(&mut self, id: u64, submission: Submission) -> Vec<Action> {
        let request = request_of(submission.op);
        let mut ticket = None;
        if let Request::Write { offset, len } = request {
            // The activity log: a write's regions are durably dirty before
            // either side has it, so that a crash of this node with the
            // write half done leaves them to resync. Hot regions cost
            // nothing; the sweep clears cold ones while in sync.
            match self.dirty.mark(offset, len) {
                Ok(durable_at) => ticket = durable_at,
                Err(e) => {
                    tracing::error!(vdisk = self.vdisk, offset, len, error = %e, "cannot record a region being written: the write fails");
                    let _ = submission.done.send(Err(IoError::NoCurrentCopy));
                    return Vec::new();
                }
            }
            self.background.written(offset, len);
        }
        self.pending.insert(
            id,
            Pending {
                submission,
                request,
                submitted: Instant::now(),
                data: None,
            },
        );
        if let Some(ticket) = ticket {
            self.marking.push_back((ticket, MarkWaiter::Write(id)));
            return Vec::new();
        }
        self.start(id, request)
    }

    /// Hands a request to the core, unless a job holds its range.
    fn start(&mut self, id: u64, request: Request) -> Vec<Action> {
        let held = self
            .job
            .as_ref()
            .zip(written(request))
            .is_some_and(|(job, range)| overlaps(&job.range, &range));
        if held {
            self.deferred.push((id, request));
            return Vec::new();
        }
        self.replica.submit(id, request)
    }

    /// The writer synced the marks up to `done.ticket` (or failed to):
    /// what waited for them goes on, or fails.
    pub(super) fn marked(&mut self, done: MarksDone) -> Vec<Action> {
        self.dirty.synced(&done);
        let ok = done.result.is_ok();
        let mut actions = Vec::new();
        while let Some((_, waiter)) = self
            .marking
            .pop_front_if(|(ticket, _)| *ticket <= done.ticket)
        {
            match waiter {
                MarkWaiter::Write(id) => {
                    let Some(request) = self.pending.get(&id).map(|p| p.request) else {
                        continue;
                    };
                    if ok {
                        actions.extend(self.start(id, request));
                    } else if let Some(pending) = self.pending.remove(&id) {
                        tracing::error!(
                            vdisk = self.vdisk,
                            "cannot record a region being written: the write fails"
                        );
                        let _ = pending.submission.done.send(Err(IoError::NoCurrentCopy));
                    }
                }
                MarkWaiter::Degraded(id) => actions.extend(match ok {
                    true => self.replica.dirty_marked(id),
                    false => {
                        tracing::error!(
                            vdisk = self.vdisk,
                            "cannot record a dirty region: the write fails"
                        );
                        self.replica.dirty_mark_failed(id)
                    }
                }),
                MarkWaiter::FullResync { side, done: reply } => match &done.result {
                    Ok(()) => actions.extend(self.begin_full_resync(side, reply)),
                    Err(why) => {
                        let _ =
                            reply.send(Err(format!("cannot mark the whole device dirty: {why}")));
                    }
                },
            }
        }
        actions
    }

    pub(super) fn attempt_ended(
        &mut self,
        id: u64,
        side: Side,
        result: Result<Option<AlignedBuf>, AttemptError>,
    ) -> Vec<Action> {
        let why = match result {
            Ok(data) => {
                let Some(pending) = self.pending.get_mut(&id) else {
                    return Vec::new();
                };
                if data.is_some() {
                    pending.data = data;
                }
                return self.replica.succeeded(id, side);
            }
            Err(why) => why,
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
    pub(super) fn carry_out(&mut self, actions: Vec<Action>) {
        let mut queue = VecDeque::from(actions);
        while let Some(action) = queue.pop_front() {
            match action {
                Action::Send { id, side } => self.send(id, side),
                Action::MarkDirty { id, offset, len } => match self.dirty.mark(offset, len) {
                    Ok(None) => queue.extend(self.replica.dirty_marked(id)),
                    Ok(Some(ticket)) => self.marking.push_back((ticket, MarkWaiter::Degraded(id))),
                    Err(e) => {
                        tracing::error!(vdisk = self.vdisk, offset, len, error = %e, "cannot record a dirty region: the write fails");
                        queue.extend(self.replica.dirty_mark_failed(id));
                    }
                },
                Action::RecordStale => self.records.push_back(false),
                Action::Complete { id } => {
                    if let Some(pending) = self.pending.remove(&id) {
                        self.background
                            .foreground(pending.submitted.elapsed(), Instant::now());
                        let _ = pending.submission.done.send(Ok(pending.data));
                    }
                }
                Action::Fail { id } => {
                    if let Some(pending) = self.pending.remove(&id) {
                        tracing::error!(
                            vdisk = self.vdisk,
                            recorded = ?self.replica.recorded(),
                            "request failed: no mirror side in sync could take it, or the store could not hear of a lost side"
                        );
                        let _ = pending.submission.done.send(Err(IoError::NoCurrentCopy));
                    }
                }
            }
        }
    }

    fn send(&mut self, id: u64, side: Side) {
        let Some(pending) = self.pending.get(&id) else {
            return;
        };
        self.outstanding[side.index()] += 1;
        let path = self.sides[side.index()].clone();
        let (epoch, timeout) = (self.epoch, self.config.request_timeout);
        let op = pending.submission.op;
        let payload = pending.submission.payload.clone();
        let events = self.events.clone();
        // Runs to completion even if the request moves on: a local attempt
        // owns a buffer the kernel writes into (it has no timeout).
        tokio::spawn(async move {
            let result = attempt(&path, epoch, op, payload, timeout).await;
            let _ = events.send(Event::Attempt { id, side, result });
        });
    }
}
