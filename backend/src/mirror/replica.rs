//! The mirrored write path as a pure state machine: which side each request
//! goes to, when it may be acknowledged, and what a side's failure costs.
//! No I/O, no clock: the caller feeds submissions and outcomes and carries
//! out the returned [`Action`]s ([`MirroredVdisk`](super::MirroredVdisk)
//! is that caller).
//!
//! The rule it keeps: every acknowledged write is on every side, or its
//! range is durably recorded dirty (so that a resync copies it there). With
//! both sides in sync that is DRBD's protocol C: a write completes once both
//! sides have it. When one side fails, the vdisk goes on with the survivor,
//! and each write completes once the survivor has it *and* the shell
//! reports its range durable in the dirty map ([`Action::MarkDirty`]).
//!
//! A side that returns is [`SideState::Stale`]: it gets writes again (so
//! that the regions written from now on need no copy) but serves no read
//! until a resync has copied it what it missed ([`Replica::resynced`]).

use std::collections::BTreeMap;

mod types;

pub use types::{Action, Recorded, ReplicaConfig, Request, Side, SideState};

/// Whether a write waits for its range to be marked dirty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mark {
    /// Every side it was sent to may still take it.
    NotNeeded,
    /// A side missed it; the shell is marking its range.
    Marking,
    Marked,
}

#[derive(Debug)]
struct Pending {
    request: Request,
    /// Sides the request is out on, awaiting their answer.
    out: [bool; 2],
    /// Sides that answered with success.
    done: [bool; 2],
    mark: Mark,
}

impl Pending {
    /// A side that will never have this write: neither took it nor may.
    fn missed(&self, side: Side) -> bool {
        !self.out[side.index()] && !self.done[side.index()]
    }
}

/// The requests in flight on one mirrored vdisk and the state of its sides.
#[derive(Debug)]
pub struct Replica {
    config: ReplicaConfig,
    states: [SideState; 2],
    recorded: Recorded,
    pending: BTreeMap<u64, Pending>,
    /// Requests submitted while a stale record was being made, in order.
    held: Vec<(u64, Request)>,
}

impl Replica {
    /// A mirror whose sides are both in sync, as after creation on two
    /// fresh (zeroed) tails.
    pub fn new(config: ReplicaConfig) -> Self {
        Self::with_states(config, [SideState::InSync; 2], true)
    }

    /// A mirror restarted in the given states: a side that was not in sync
    /// when the daemon stopped is still not (its dirty regions say what it
    /// lacks).
    /// `store_current`: whether the store calls the tracked side current.
    /// It may while the side is not in sync here (a restart after writes
    /// the side missed, whose loss the store never heard of): its loss
    /// must then still be recorded. A stale record read at a restart is
    /// only [`Recorded::Unconfirmed`]: this node's copy of the store may
    /// lag one that calls the side current.
    pub fn with_states(config: ReplicaConfig, states: [SideState; 2], store_current: bool) -> Self {
        let recorded = match config.tracked {
            Some(_) if store_current => Recorded::Current,
            Some(_) => Recorded::Unconfirmed,
            None => Recorded::Stale,
        };
        Replica {
            config,
            states,
            recorded,
            pending: BTreeMap::new(),
            held: Vec::new(),
        }
    }

    /// What the store says of the tracked side.
    pub fn recorded(&self) -> Recorded {
        self.recorded
    }

    pub fn state(&self, side: Side) -> SideState {
        self.states[side.index()]
    }

    pub fn states(&self) -> [SideState; 2] {
        self.states
    }

    /// Whether some side is not in sync: writes are being recorded dirty.
    pub fn is_degraded(&self) -> bool {
        self.states.iter().any(|&s| s != SideState::InSync)
    }

    pub fn in_flight(&self) -> usize {
        self.pending.len() + self.held.len()
    }

    /// A new request. With no side in sync it fails at once: no copy is
    /// known to be current, so none may be read, and a write to a stale
    /// copy alone would be acknowledged on data the store does not trust.
    pub fn submit(&mut self, id: u64, request: Request) -> Vec<Action> {
        match self.recorded {
            Recorded::RecordingStale => {
                self.held.push((id, request));
                return Vec::new();
            }
            Recorded::Unrecordable => return vec![Action::Fail { id }],
            Recorded::Current
            | Recorded::Stale
            | Recorded::RecordingCurrent
            | Recorded::Unconfirmed => {}
        }
        let required_down = self
            .config
            .required
            .is_some_and(|side| self.state(side) == SideState::Down);
        if required_down && matches!(request, Request::Write { .. }) {
            return vec![Action::Fail { id }];
        }
        let Some(reader) = self.reader() else {
            return vec![Action::Fail { id }];
        };
        let mut pending = Pending {
            request,
            out: [false; 2],
            done: [false; 2],
            mark: Mark::NotNeeded,
        };
        let mut actions = Vec::new();
        match request {
            Request::Read => {
                pending.out[reader.index()] = true;
                actions.push(Action::Send { id, side: reader });
            }
            Request::Write { .. } | Request::Flush => {
                for side in Side::BOTH {
                    if self.state(side) != SideState::Down {
                        pending.out[side.index()] = true;
                        actions.push(Action::Send { id, side });
                    }
                }
                // Marked while the survivor writes: the two overlap, and
                // the write waits for the slower.
                if let Some(mark) = start_mark(id, &mut pending) {
                    actions.push(mark);
                }
            }
        }
        self.pending.insert(id, pending);
        actions
    }

    /// Request `id` succeeded on `side`. A late answer from a side that was
    /// lost meanwhile is ignored: the request no longer counts on it.
    pub fn succeeded(&mut self, id: u64, side: Side) -> Vec<Action> {
        let Some(pending) = self.pending.get_mut(&id) else {
            return Vec::new();
        };
        if !pending.out[side.index()] {
            return Vec::new();
        }
        pending.out[side.index()] = false;
        pending.done[side.index()] = true;
        self.settle(id)
    }

    /// Request `id` failed on `side`. A side that fails any request is
    /// lost: it may lack a write it answered, or its disk is failing, so it
    /// is no longer trusted (DRBD's "detach on I/O error").
    pub fn failed(&mut self, id: u64, side: Side) -> Vec<Action> {
        match self.pending.get(&id) {
            Some(pending) if pending.out[side.index()] => self.lose(side),
            _ => Vec::new(),
        }
    }

    /// `side` became unreachable: its requests in flight count as lost.
    pub fn side_down(&mut self, side: Side) -> Vec<Action> {
        if self.state(side) == SideState::Down {
            return Vec::new();
        }
        self.lose(side)
    }

    /// `side` is reachable again. A side that was down comes back stale: it
    /// missed writes, and only a resync makes it readable.
    pub fn side_up(&mut self, side: Side) {
        if self.state(side) == SideState::Down {
            self.states[side.index()] = SideState::Stale;
        }
    }

    /// A resync has copied every region dirty so far to the stale `side`:
    /// it is in sync again. Refused (returning false) while a write that
    /// missed the side is still in flight, since the copy may have run
    /// before that write reached the survivor; or unless `side` is stale.
    pub fn resynced(&mut self, side: Side) -> bool {
        let missed = self
            .pending
            .values()
            .any(|p| matches!(p.request, Request::Write { .. }) && p.missed(side));
        if self.state(side) != SideState::Stale || missed {
            return false;
        }
        self.states[side.index()] = SideState::InSync;
        true
    }

    /// The store recorded the tracked side stale: writes it missed may
    /// complete, and held requests go out.
    pub fn stale_recorded(&mut self) -> Vec<Action> {
        self.recorded = Recorded::Stale;
        self.release()
    }

    /// The store could not record the tracked side stale: held requests
    /// and writes the side missed fail, and so do new requests until
    /// [`stale_recorded`](Replica::stale_recorded).
    pub fn stale_record_failed(&mut self) -> Vec<Action> {
        self.recorded = Recorded::Unrecordable;
        self.release()
    }

    /// The tracked side is in sync and the shell starts recording it
    /// current. Returns false (nothing to record) unless it is in sync and
    /// recorded stale, or maybe so.
    pub fn record_current(&mut self) -> bool {
        let Some(side) = self.config.tracked else {
            return false;
        };
        let maybe_stale = matches!(self.recorded, Recorded::Stale | Recorded::Unconfirmed);
        if !maybe_stale || self.state(side) != SideState::InSync {
            return false;
        }
        self.recorded = Recorded::RecordingCurrent;
        true
    }

    /// The store recorded the tracked side current. A loss while the
    /// record was made has asked for a stale record after it, which stands.
    pub fn current_recorded(&mut self) {
        if self.recorded == Recorded::RecordingCurrent {
            self.recorded = Recorded::Current;
        }
    }

    /// The store could not record the tracked side current, or did not
    /// say: it may have. Until a record succeeds, a loss is recorded as if
    /// the store called the side current.
    pub fn current_record_failed(&mut self) {
        if self.recorded == Recorded::RecordingCurrent {
            self.recorded = Recorded::Unconfirmed;
        }
    }

    /// Settles what waited for a stale record, and submits what was held.
    fn release(&mut self) -> Vec<Action> {
        let ids: Vec<u64> = self.pending.keys().copied().collect();
        let mut actions: Vec<Action> = ids.into_iter().flat_map(|id| self.settle(id)).collect();
        for (id, request) in std::mem::take(&mut self.held) {
            actions.extend(self.submit(id, request));
        }
        actions
    }

    /// The range of write `id` is durable as dirty.
    pub fn dirty_marked(&mut self, id: u64) -> Vec<Action> {
        let Some(pending) = self.pending.get_mut(&id) else {
            return Vec::new();
        };
        pending.mark = Mark::Marked;
        self.settle(id)
    }

    /// The range of write `id` could not be made durable as dirty: the
    /// write fails, as acknowledging it would promise the side that missed
    /// it a resync nobody recorded.
    pub fn dirty_mark_failed(&mut self, id: u64) -> Vec<Action> {
        match self.pending.remove(&id) {
            Some(_) => vec![Action::Fail { id }],
            None => Vec::new(),
        }
    }

    /// The in-sync side to read from: the preferred one if it can.
    fn reader(&self) -> Option<Side> {
        let preferred = self.config.read_from;
        [preferred, preferred.other()]
            .into_iter()
            .find(|&side| self.state(side) == SideState::InSync)
    }

    /// Marks `side` down and moves every request in flight on it on.
    fn lose(&mut self, side: Side) -> Vec<Action> {
        self.states[side.index()] = SideState::Down;
        let mut actions = Vec::new();
        if self.config.tracked == Some(side)
            && matches!(
                self.recorded,
                Recorded::Current | Recorded::RecordingCurrent | Recorded::Unconfirmed
            )
        {
            self.recorded = Recorded::RecordingStale;
            actions.push(Action::RecordStale);
        }
        let reader = self.reader();
        let affected: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.out[side.index()])
            .map(|(&id, _)| id)
            .collect();
        for id in affected {
            let Some(pending) = self.pending.get_mut(&id) else {
                continue;
            };
            pending.out[side.index()] = false;
            match pending.request {
                Request::Read => {
                    if let Some(other) = reader {
                        pending.out[other.index()] = true;
                        actions.push(Action::Send { id, side: other });
                        continue;
                    }
                }
                Request::Write { .. } | Request::Flush => {}
            }
            let settled = self.settle(id);
            // A write still pending waits for the survivor, and now for a
            // mark too; one that failed needs none.
            if let (true, Some(pending)) = (settled.is_empty(), self.pending.get_mut(&id)) {
                actions.extend(start_mark(id, pending));
            }
            actions.extend(settled);
        }
        actions
    }

    /// Completes or fails request `id` if no side can change its fate.
    fn settle(&mut self, id: u64) -> Vec<Action> {
        let Some(pending) = self.pending.get(&id) else {
            return Vec::new();
        };
        if pending.out.iter().any(|&out| out) {
            return Vec::new();
        }
        let on_a_current_side = Side::BOTH
            .into_iter()
            .any(|side| pending.done[side.index()] && self.state(side) == SideState::InSync);
        let everywhere = pending.done.iter().all(|&done| done);
        // A write or flush the tracked side missed waits for the store to
        // hear of it: until then the side may take over, and must have
        // every write acknowledged, and durable every write flushed.
        let changes = !matches!(pending.request, Request::Read);
        let missed_tracked =
            changes && self.config.tracked.is_some_and(|side| pending.missed(side));
        let recorded_stale = !missed_tracked || self.recorded == Recorded::Stale;
        let ready = match pending.request {
            Request::Read => true,
            Request::Flush => recorded_stale,
            Request::Write { .. } => everywhere || (pending.mark == Mark::Marked && recorded_stale),
        };
        let unrecordable = missed_tracked && self.recorded == Recorded::Unrecordable;
        let missed_required = matches!(pending.request, Request::Write { .. })
            && self
                .config
                .required
                .is_some_and(|side| pending.missed(side));
        if !on_a_current_side || unrecordable || missed_required {
            self.pending.remove(&id);
            vec![Action::Fail { id }]
        } else if ready {
            self.pending.remove(&id);
            vec![Action::Complete { id }]
        } else {
            // Waits for its mark, started when its side was missed.
            Vec::new()
        }
    }
}

/// The mark a write needs once a side missed it, if not asked for already.
fn start_mark(id: u64, pending: &mut Pending) -> Option<Action> {
    let Request::Write { offset, len } = pending.request else {
        return None;
    };
    let missed = Side::BOTH.into_iter().any(|side| pending.missed(side));
    if !missed || pending.mark != Mark::NotNeeded {
        return None;
    }
    pending.mark = Mark::Marking;
    Some(Action::MarkDirty { id, offset, len })
}

#[cfg(test)]
mod tests;
