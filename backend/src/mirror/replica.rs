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

/// One of a mirror's two copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Side {
    A,
    B,
}

impl Side {
    pub const BOTH: [Side; 2] = [Side::A, Side::B];

    pub fn other(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }

    pub fn index(self) -> usize {
        match self {
            Side::A => 0,
            Side::B => 1,
        }
    }
}

/// How far a side can be trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SideState {
    /// Holds every acknowledged write: written to, flushed, read from.
    InSync,
    /// Failed or unreachable: gets no request. Every write acknowledged
    /// meanwhile has its range recorded dirty.
    Down,
    /// Back after being down, and lacking what was written meanwhile:
    /// written to and flushed, never read from, until resynced.
    Stale,
}

/// What the vdisk was asked. Discards and write-zeroes change data like
/// writes and are mirrored as such.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    Read,
    Write { offset: u64, len: u64 },
    Flush,
}

/// What the caller must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Run request `id` on `side`, then report
    /// [`succeeded`](Replica::succeeded) or [`failed`](Replica::failed).
    Send { id: u64, side: Side },
    /// Make the range of write `id` durable as dirty (with
    /// [`DirtyMapFile::mark_durable`](super::DirtyMapFile::mark_durable)),
    /// then report [`dirty_marked`](Replica::dirty_marked) or
    /// [`dirty_mark_failed`](Replica::dirty_mark_failed). The write will
    /// not complete before.
    MarkDirty { id: u64, offset: u64, len: u64 },
    /// Request `id` succeeded: complete it (a read with the data its side
    /// returned) and forget it.
    Complete { id: u64 },
    /// Request `id` cannot be served: no side in sync has it, its dirty
    /// mark failed, or the store could not be told that a side it calls
    /// current missed it. Complete it with an I/O error.
    Fail { id: u64 },
    /// The tracked side was lost while the store calls its copy current:
    /// record it stale in the store, then report
    /// [`stale_recorded`](Replica::stale_recorded) or
    /// [`stale_record_failed`](Replica::stale_record_failed). Meanwhile
    /// new requests are held and no write that missed the side completes.
    RecordStale,
}

/// Tuning of a mirror.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaConfig {
    /// The side reads go to while it is in sync: the one on this node, as
    /// a local read costs no network round trip.
    pub read_from: Side,
    /// The side whose copy the configuration store vouches for: the
    /// mirror's. While the store calls it current it may take over, so no
    /// write it missed completes before the store has recorded it stale.
    /// `None`: the store is not told (a mirror used alone).
    pub tracked: Option<Side>,
    /// The side every write must reach: the primary's own copy, which the
    /// store cannot call stale. Losing it fails writes (reads and flushes
    /// go on from the other side) until it is back and resynced, so that
    /// it never lacks an acknowledged write and a restart may trust it.
    pub required: Option<Side>,
}

impl Default for ReplicaConfig {
    fn default() -> Self {
        ReplicaConfig {
            read_from: Side::A,
            tracked: None,
            required: None,
        }
    }
}

/// What the store says of the tracked side's copy, as far as the replica
/// knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// Current: losing the side must be recorded before a write it missed
    /// completes.
    Current,
    /// The shell is recording it stale; requests wait.
    RecordingStale,
    /// Stale: writes it misses only need their regions marked dirty.
    Stale,
    /// The store could not be told (no majority, or the vdisk moved on):
    /// this node may no longer be the primary, so requests fail until a
    /// retry of the record succeeds.
    Unrecordable,
    /// In sync again and being recorded current; a loss meanwhile is
    /// recorded stale after it.
    RecordingCurrent,
    /// Maybe current: a current record whose outcome is unknown (a store
    /// that timed out may still commit it), or a stale record read from a
    /// copy of the store that may lag. Treated as current: a loss must be
    /// recorded before a write it missed completes.
    Unconfirmed,
}

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
mod tests {
    use super::*;
    use Side::{A, B};

    const W: Request = Request::Write {
        offset: 4096,
        len: 8192,
    };

    fn send(id: u64, side: Side) -> Action {
        Action::Send { id, side }
    }

    fn mark(id: u64) -> Action {
        Action::MarkDirty {
            id,
            offset: 4096,
            len: 8192,
        }
    }

    fn complete(id: u64) -> Vec<Action> {
        vec![Action::Complete { id }]
    }

    #[test]
    fn a_write_in_sync_completes_only_once_both_sides_have_it() {
        let mut r = Replica::new(ReplicaConfig::default());
        assert_eq!(r.submit(1, W), [send(1, A), send(1, B)]);
        assert_eq!(r.succeeded(1, B), []);
        assert_eq!(r.succeeded(1, A), complete(1));
        assert!(!r.is_degraded());
        assert_eq!(r.in_flight(), 0);
    }

    #[test]
    fn reads_go_to_the_preferred_side_and_flushes_to_both() {
        let mut r = Replica::new(ReplicaConfig {
            read_from: B,
            ..ReplicaConfig::default()
        });
        assert_eq!(r.submit(1, Request::Read), [send(1, B)]);
        assert_eq!(r.succeeded(1, B), complete(1));
        assert_eq!(r.submit(2, Request::Flush), [send(2, A), send(2, B)]);
        assert_eq!(r.succeeded(2, A), []);
        assert_eq!(r.succeeded(2, B), complete(2));
    }

    #[test]
    fn a_side_failing_a_write_degrades_and_the_write_completes_once_marked_dirty() {
        let mut r = Replica::new(ReplicaConfig::default());
        r.submit(1, W);
        assert_eq!(r.succeeded(1, A), []);
        assert_eq!(r.failed(1, B), [mark(1)]);
        assert_eq!(r.state(B), SideState::Down);
        assert_eq!(r.dirty_marked(1), complete(1));
    }

    #[test]
    fn a_write_submitted_while_degraded_goes_to_the_survivor_and_is_marked_at_once() {
        let mut r = Replica::new(ReplicaConfig::default());
        assert_eq!(r.side_down(A), []);
        assert_eq!(r.submit(1, W), [send(1, B), mark(1)]);
        assert_eq!(r.dirty_marked(1), []);
        assert_eq!(r.succeeded(1, B), complete(1));
    }

    #[test]
    fn a_failed_dirty_mark_fails_the_write() {
        let mut r = Replica::new(ReplicaConfig::default());
        r.side_down(B);
        r.submit(1, W);
        r.succeeded(1, A);
        assert_eq!(r.dirty_mark_failed(1), [Action::Fail { id: 1 }]);
        assert_eq!(r.dirty_marked(1), []);
    }

    #[test]
    fn a_read_on_a_lost_side_moves_to_the_other_and_its_late_answer_is_ignored() {
        let mut r = Replica::new(ReplicaConfig::default());
        r.submit(1, Request::Read);
        assert_eq!(r.side_down(A), [send(1, B)]);
        assert_eq!(r.succeeded(1, A), []);
        assert_eq!(r.succeeded(1, B), complete(1));
    }

    #[test]
    fn a_side_that_returns_is_stale_written_to_but_not_read_until_resynced() {
        let mut r = Replica::new(ReplicaConfig::default());
        r.side_down(A);
        r.side_up(A);
        assert_eq!(r.state(A), SideState::Stale);
        assert_eq!(r.submit(1, Request::Read), [send(1, B)]);
        // Both sides take the write: no mark needed once both have it.
        assert_eq!(r.submit(2, W), [send(2, A), send(2, B)]);
        r.succeeded(2, A);
        assert_eq!(r.succeeded(2, B), complete(2));
        assert!(r.resynced(A));
        assert_eq!(r.submit(3, Request::Read), [send(3, A)]);
        assert!(!r.is_degraded());
    }

    #[test]
    fn resync_is_refused_while_a_write_that_missed_the_side_is_in_flight() {
        let mut r = Replica::new(ReplicaConfig::default());
        r.side_down(A);
        r.submit(1, W);
        r.side_up(A);
        assert!(!r.resynced(A));
        r.succeeded(1, B);
        r.dirty_marked(1);
        assert!(r.resynced(A));
    }

    #[test]
    fn with_no_side_in_sync_requests_fail() {
        let mut r = Replica::new(ReplicaConfig::default());
        r.submit(1, W);
        r.side_down(A);
        assert_eq!(r.side_down(B), [Action::Fail { id: 1 }]);
        r.side_up(A);
        assert_eq!(r.submit(2, Request::Read), [Action::Fail { id: 2 }]);
        assert_eq!(r.submit(3, W), [Action::Fail { id: 3 }]);
    }

    #[test]
    fn a_write_only_the_stale_side_took_fails() {
        let mut r = Replica::new(ReplicaConfig::default());
        r.side_down(A);
        r.side_up(A);
        r.submit(1, W);
        r.succeeded(1, A);
        assert_eq!(r.failed(1, B), [Action::Fail { id: 1 }]);
    }

    /// Reads from A, the store tracking B: a primary on A.
    const TRACKED: ReplicaConfig = ReplicaConfig {
        read_from: A,
        tracked: Some(B),
        required: None,
    };

    fn tracked() -> Replica {
        Replica::new(TRACKED)
    }

    #[test]
    fn losing_the_tracked_side_holds_everything_until_the_store_records_it_stale() {
        let mut r = tracked();
        r.submit(1, W);
        assert_eq!(r.failed(1, B), [Action::RecordStale, mark(1)]);
        assert_eq!(r.succeeded(1, A), []);
        assert_eq!(
            r.dirty_marked(1),
            [],
            "marked, but the store still calls B current"
        );
        assert_eq!(r.submit(2, Request::Read), [], "held while recording");
        assert_eq!(r.recorded(), Recorded::RecordingStale);
        assert_eq!(r.stale_recorded(), [Action::Complete { id: 1 }, send(2, A)]);
        // Stale from now on: a write only needs its mark.
        assert_eq!(r.submit(3, W), [send(3, A), mark(3)]);
    }

    #[test]
    fn a_primary_the_store_does_not_hear_fails_what_b_missed_and_all_new_requests() {
        let mut r = tracked();
        r.submit(1, W);
        r.submit(2, Request::Read);
        r.side_down(B);
        r.dirty_marked(1);
        r.succeeded(1, A);
        assert_eq!(r.submit(3, W), []);
        assert_eq!(
            r.stale_record_failed(),
            [Action::Fail { id: 1 }, Action::Fail { id: 3 }]
        );
        assert_eq!(
            r.succeeded(2, A),
            complete(2),
            "a read already out completes"
        );
        assert_eq!(r.submit(4, Request::Read), [Action::Fail { id: 4 }]);
        // A retried record went through: service resumes.
        assert_eq!(r.stale_recorded(), []);
        assert_eq!(r.submit(5, Request::Read), [send(5, A)]);
    }

    #[test]
    fn a_loss_while_recording_current_is_recorded_stale_after_it() {
        let mut r = Replica::with_states(TRACKED, [SideState::InSync, SideState::Stale], false);
        assert_eq!(
            r.recorded(),
            Recorded::Unconfirmed,
            "this node's store may lag"
        );
        assert!(r.resynced(B));
        assert!(r.record_current());
        assert_eq!(r.side_down(B), [Action::RecordStale]);
        r.current_recorded();
        assert_eq!(
            r.recorded(),
            Recorded::RecordingStale,
            "the later record stands"
        );
        assert!(!r.record_current(), "B is down");
    }

    #[test]
    fn losing_the_untracked_side_needs_no_record() {
        let mut r = tracked();
        r.submit(1, W);
        assert_eq!(r.failed(1, A), [mark(1)]);
        assert_eq!(r.succeeded(1, B), []);
        assert_eq!(r.dirty_marked(1), complete(1));
    }

    #[test]
    fn losing_the_required_side_fails_writes_but_not_reads_until_it_is_back() {
        let mut r = Replica::new(ReplicaConfig {
            read_from: A,
            tracked: Some(B),
            required: Some(A),
        });
        r.submit(1, W);
        assert_eq!(r.failed(1, A), [mark(1)]);
        assert_eq!(
            r.succeeded(1, B),
            [Action::Fail { id: 1 }],
            "B alone is not enough"
        );
        assert_eq!(r.submit(2, W), [Action::Fail { id: 2 }]);
        assert_eq!(r.submit(3, Request::Read), [send(3, B)]);
        r.side_up(A);
        assert!(r.resynced(A));
        assert_eq!(r.submit(4, W), [send(4, A), send(4, B)]);
    }

    #[test]
    fn a_failed_current_record_counts_as_maybe_current() {
        let mut r = Replica::with_states(TRACKED, [SideState::InSync, SideState::Stale], false);
        assert!(r.resynced(B));
        assert!(r.record_current());
        r.current_record_failed();
        assert_eq!(r.recorded(), Recorded::Unconfirmed);
        r.submit(1, W);
        assert_eq!(r.failed(1, B), [Action::RecordStale, mark(1)]);
        r.succeeded(1, A);
        assert_eq!(r.dirty_marked(1), [], "waits for the stale record");
        assert_eq!(r.stale_recorded(), complete(1));
    }

    #[test]
    fn a_flush_the_tracked_side_missed_waits_for_the_stale_record() {
        let mut r = tracked();
        r.submit(1, Request::Flush);
        assert_eq!(r.failed(1, B), [Action::RecordStale]);
        assert_eq!(r.succeeded(1, A), []);
        assert_eq!(r.stale_recorded(), complete(1));
    }
}
