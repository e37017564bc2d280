//! The coherence core of cached vdisks (seed 002): nodes keep copies of a
//! vdisk's extents under leases granted by the vdisk's root, which keeps
//! the directory of who holds what and recalls every copy before a write
//! lands. The caching nodes form a tree under the root: each is a
//! [`Relay`], a holder of copies toward its parent and a granter of copies
//! from its own to its children. Sans-I/O, as the mirror's `Replica`: a
//! [`Directory`] (the root) and relays are fed events with their own
//! clock's time and answer with actions; a shell moves the messages and
//! the data, which an [`ExtentStore`] keeps in a cache file. `sim.rs`
//! runs many of them, flat and as a tree, over a lossy, reordering network
//! with partitions, restarts, evictions, moves to another parent and
//! drifting clocks.
//!
//! The rules (docs/cache.md has the protocol in full):
//! - **Write-through, at the root.** A write goes to the root, which
//!   recalls every copy of its extent (the writer's too), applies it to
//!   the tail once no other node can read the old data, and only then
//!   acknowledges it. Reads of an extent with a write under way wait
//!   behind it. So a copy is always the root's current version.
//! - **Leases.** A holder's copies are valid while its lease is: renewed by
//!   heartbeats, counted by the holder from when it *sent* the renewal,
//!   for a shorter time than the root counts from when it received it (the
//!   margin covers clock drift). A holder that cannot renew drops its
//!   copies before the root may take them for gone, so a recall that is
//!   never answered ends with the lease, not with a wait for ever.
//! - **Nesting.** A relay's children hold copies only of what it holds,
//!   under leases that end before its own; a recall from above goes down
//!   before it is answered (`relay.rs`).
//! - **Two roots.** A second root takes over with the next epoch only once
//!   every lease of the first has ended ([`LeaseConfig::takeover_after_ms`]);
//!   its versions start above the first's.
//! - **Stale messages do no harm.** Every message down is stamped with
//!   the root's per-holder sequence number and the lease generation: a
//!   grant overtaken by a recall, or sent under a lease that has since
//!   expired, is used for the read that asked but not cached.

mod directory;
mod grants;
mod holder;
mod node;
mod relay;
mod root;
#[cfg(test)]
mod sim;
mod store;
#[cfg(test)]
mod tests;

pub use directory::{Directory, DirectoryAction, Writer};
pub use node::{CacheFile, CacheNode, NodeCounters};
pub use relay::{Relay, RelayAction};
pub use root::CacheRoot;
pub use store::{ExtentStore, Inserted, StoreError, Tag};

/// How a cache shell's messages leave this node: to its parent (a write's
/// data goes at byte `at` of its extent), and to its children (a grant
/// carries its whole extent). Messages may be lost: the cores send again.
pub trait CacheTransport: Send + Sync {
    fn to_parent(&self, msg: Up, at: u32, data: Option<std::sync::Arc<crate::AlignedBuf>>);
    fn to_child(
        &self,
        child: HolderId,
        msg: Stamped,
        data: Option<std::sync::Arc<crate::AlignedBuf>>,
    );
}

/// A caching node, as its parent numbers its children.
pub type HolderId = u32;
/// An extent of the vdisk: the unit of caching and of coherence.
pub type Extent = u64;
/// The root's count of the writes applied to an extent.
pub type Version = u64;
/// A node's own clock, in milliseconds. The cores never read a clock:
/// every call says what time it is on the node it runs on.
pub type Millis = u64;

/// How long leases last, and how far apart clocks may drift.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseConfig {
    /// A lease's length on the root's clock, from the renewal's arrival.
    pub ttl_ms: u64,
    /// The largest difference between two nodes' clock rates, in parts per
    /// million, that the margin covers.
    pub drift_ppm: u64,
    /// How often an unanswered request or recall is sent again, and how
    /// often a holder renews (a quarter of the lease).
    pub resend_ms: u64,
}

impl LeaseConfig {
    /// The length, on the holder's clock from the renewal's sending, of a
    /// lease its parent counts for `granted_ms` from the renewal's
    /// arrival: short enough that it ends, in real time, before the
    /// parent's count does when the holder's clock runs slow and the
    /// parent's fast (twice the drift), with a millisecond each way for
    /// clocks read in whole milliseconds.
    pub fn holder_ttl_ms(&self, granted_ms: u64) -> u64 {
        let drift = (granted_ms * 2 * self.drift_ppm).div_ceil(1_000_000);
        granted_ms.saturating_sub(drift + 2)
    }

    /// How long a second root waits, on its own clock, from when the
    /// first stopped granting leases, before it takes the vdisk over:
    /// until every lease the first granted, and every lease nested in
    /// those, has ended, with the first root's clock slow and its own
    /// fast, and a millisecond each way for clocks read in whole
    /// milliseconds.
    pub fn takeover_after_ms(&self) -> u64 {
        let (ttl, drift) = (u128::from(self.ttl_ms), u128::from(self.drift_ppm));
        let wait =
            (ttl * (1_000_000 + drift)).div_ceil(1_000_000_u128.saturating_sub(drift).max(1));
        u64::try_from(wait).unwrap_or(u64::MAX).saturating_add(2)
    }

    fn renew_every_ms(&self) -> u64 {
        self.ttl_ms / 4
    }
}

/// A message from a holder to the root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Up {
    /// Keeps (or starts) the holder's lease; `renewal` is the holder's own
    /// number for it.
    Renew { renewal: u64 },
    /// Asks for an extent's data, to read it (and cache it).
    Get { id: u64, extent: Extent },
    /// A write of an extent; its data travels beside it. `oldest` is the
    /// holder's oldest write not yet acknowledged: the root forgets the
    /// ones before it.
    Write {
        id: u64,
        extent: Extent,
        oldest: u64,
    },
    /// The holder has dropped its copy of `extent` for the recall stamped
    /// `seq` (or a later one).
    Recalled { extent: Extent, seq: u64 },
}

/// A message from the root to a holder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Down {
    /// The lease stands for `ttl_ms` more, counted by the parent from the
    /// renewal's arrival (by the holder from its sending, less the drift
    /// margin); `generation` names the lease: a new one after the parent
    /// let the last one expire. A relay's leases end no later than its
    /// own: `ttl_ms` is what is left of it, up to the configured length.
    Renewed {
        renewal: u64,
        generation: u64,
        ttl_ms: u64,
    },
    /// The data of `extent` at `version`, for read `id`. `holder`: the root
    /// counts the asker among the extent's holders and will recall it, so
    /// it may cache the copy.
    Granted {
        id: u64,
        extent: Extent,
        version: Version,
        holder: bool,
    },
    /// Drop your copy of `extent` and say so.
    Recall { extent: Extent },
    /// Write `id` is applied as `version`; `holder` as for `Granted`, the
    /// writer's data being the extent's.
    Written {
        id: u64,
        extent: Extent,
        version: Version,
        holder: bool,
    },
}

/// A message down with what makes a stale one recognisable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamped {
    /// The vdisk's epoch at the root: a holder ignores a root of an older
    /// one (a deposed root's late messages).
    pub epoch: u64,
    /// Counts the root's messages to this holder, from 1.
    pub seq: u64,
    /// The holder's lease generation when the root sent it.
    pub generation: u64,
    pub msg: Down,
}
