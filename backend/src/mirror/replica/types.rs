//! The replica's terms: its sides and their states, the requests it is
//! fed, the actions it returns, and its configuration.

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
