use std::collections::{HashMap, HashSet};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use tokio::sync::watch;

use crate::tail::Tail;
use crate::wire::{CacheMessage, Nack};
use crate::{AlignedBuf, Lease};

/// What takes a cached vdisk's coherence messages on this node: its root,
/// or a caching node of its tree.
pub trait CacheEndpoint: Send + Sync {
    /// A message from node `from`, as its certificate names it, with a
    /// write's or a grant's data. Called on the connection's reader: it
    /// must not block.
    fn receive(&self, from: &str, message: CacheMessage, data: Option<Arc<AlignedBuf>>);
}

/// Which authenticated nodes an export answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Clients {
    /// Every admitted node: a vdisk every member has a device of.
    Members,
    /// That node alone: a mirror's raw copy answers its primary only, so
    /// that nothing reaches it behind the primary's dirty map.
    Only(String),
}

impl Clients {
    fn include(&self, peer: &str) -> bool {
        match self {
            Clients::Members => true,
            Clients::Only(node) => node == peer,
        }
    }
}

/// What a request may run on.
pub(crate) enum Admission {
    Served(Arc<dyn Tail>),
    Refused(Nack),
    /// The request's epoch is newer than the export's: the sender applied
    /// a mapping this node has not yet; it may catch up in a moment.
    Ahead {
        current: u64,
    },
}

/// One export, the configuration epoch it is served under, and whom.
struct Export {
    served: Arc<dyn Tail>,
    epoch: u64,
    clients: Clients,
}

/// The tails and mirrors this node serves to peers, by vdisk id, each under its own
/// configuration epoch, and the peers it serves at all. Shared by the peer
/// server and whoever adds, removes and reconfigures vdisks while it runs.
pub struct Exports {
    tails: RwLock<HashMap<u64, Export>>,
    caches: RwLock<HashMap<u64, Arc<dyn CacheEndpoint>>>,
    /// The nodes served, by the name their certificate proves; `None`:
    /// every node of the cluster's CA is.
    admitted: RwLock<Option<HashSet<String>>>,
    /// Marked at every change of `tails`, for requests that wait for an
    /// epoch.
    changes: watch::Sender<()>,
    /// This node's right to touch its tails at all.
    lease: Lease,
}

impl Default for Exports {
    fn default() -> Self {
        Exports::new()
    }
}

impl Exports {
    /// No tails, every authenticated peer admitted.
    /// Exports of a node without a replicated store: nothing fences it.
    pub fn new() -> Self {
        Exports::leased(Lease::unbounded())
    }

    /// Exports served only while this node holds `lease`.
    pub fn leased(lease: Lease) -> Self {
        Exports {
            tails: RwLock::new(HashMap::new()),
            caches: RwLock::new(HashMap::new()),
            admitted: RwLock::new(None),
            changes: watch::Sender::new(()),
            lease,
        }
    }

    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    /// Serves a tail or a mirror for `vdisk` under `epoch` to every
    /// admitted node from now on, in place of any earlier one.
    pub fn insert(&self, vdisk: u64, epoch: u64, served: Arc<dyn Tail>) {
        let export = Export {
            served,
            epoch,
            clients: Clients::Members,
        };
        write(&self.tails).insert(vdisk, export);
        self.changes.send_replace(());
    }

    /// Serves `served` for `vdisk` under `epoch` to `clients` if `still()`
    /// holds, checked under the lock that [`remove`](Self::remove) takes:
    /// an export whose owner gave it up before it was ready is never
    /// inserted after.
    pub fn insert_if(
        &self,
        vdisk: u64,
        epoch: u64,
        served: Arc<dyn Tail>,
        clients: Clients,
        still: impl FnOnce() -> bool,
    ) -> bool {
        let mut tails = write(&self.tails);
        if !still() {
            return false;
        }
        let export = Export {
            served,
            epoch,
            clients,
        };
        tails.insert(vdisk, export);
        drop(tails);
        self.changes.send_replace(());
        true
    }

    /// Raises the epoch `vdisk` is served under to `epoch`: requests of
    /// older epochs are refused from now on. Never lowers it: a peer that
    /// has seen a newer mapping may already have raised it. Returns the
    /// epoch now in force, `None` if `vdisk` is not exported.
    pub fn set_epoch(&self, vdisk: u64, epoch: u64) -> Option<u64> {
        let mut tails = write(&self.tails);
        let export = tails.get_mut(&vdisk)?;
        export.epoch = export.epoch.max(epoch);
        let now = export.epoch;
        drop(tails);
        self.changes.send_replace(());
        Some(now)
    }

    /// Stops serving `vdisk`: later requests for it are refused. Requests
    /// already running keep their tail until they finish.
    pub fn remove(&self, vdisk: u64) {
        write(&self.tails).remove(&vdisk);
        self.changes.send_replace(());
    }

    /// What is served for `vdisk`, and its epoch.
    pub fn get(&self, vdisk: u64) -> Option<(Arc<dyn Tail>, u64)> {
        let tails = read(&self.tails);
        tails.get(&vdisk).map(|e| (e.served.clone(), e.epoch))
    }

    /// Serves only the nodes named in `members` from now on (`None`: every
    /// node with a certificate of the cluster's CA). Checked on every
    /// request, so a peer that leaves is refused at once on the
    /// connections it already has.
    pub fn admit_only(&self, members: Option<HashSet<String>>) {
        *write(&self.admitted) = members;
    }

    /// Whether the authenticated node `peer` is served.
    pub fn admits(&self, peer: &str) -> bool {
        let admitted = read(&self.admitted);
        admitted
            .as_ref()
            .is_none_or(|members| members.contains(peer))
    }

    /// What a request of node `peer` at `epoch` for `vdisk` may run on,
    /// or why not. An export that does not answer `peer` is, to it, no
    /// tail at all. A request never changes an epoch: only what this
    /// node's store applied does ([`set_epoch`](Self::set_epoch),
    /// [`insert`](Self::insert)), so that no peer, however buggy, can
    /// fence the others out.
    pub(crate) fn for_request(&self, peer: &str, vdisk: u64, epoch: u64) -> Admission {
        let tails = read(&self.tails);
        let Some(export) = tails.get(&vdisk) else {
            return Admission::Refused(Nack::NoSuchTail);
        };
        if !export.clients.include(peer) {
            return Admission::Refused(Nack::NoSuchTail);
        }
        match epoch.cmp(&export.epoch) {
            std::cmp::Ordering::Less => Admission::Refused(Nack::StaleEpoch {
                current: export.epoch,
            }),
            std::cmp::Ordering::Equal => Admission::Served(export.served.clone()),
            std::cmp::Ordering::Greater => Admission::Ahead {
                current: export.epoch,
            },
        }
    }

    /// Follows changes to the exports: each insert, epoch raise or removal
    /// marks the receiver changed.
    /// Takes `vdisk`'s cache messages to `endpoint` from now on.
    pub fn insert_cache(&self, vdisk: u64, endpoint: Arc<dyn CacheEndpoint>) {
        write(&self.caches).insert(vdisk, endpoint);
    }

    pub fn remove_cache(&self, vdisk: u64) {
        write(&self.caches).remove(&vdisk);
    }

    /// Where `vdisk`'s cache messages go, if this node takes them.
    pub(crate) fn cache(&self, vdisk: u64) -> Option<Arc<dyn CacheEndpoint>> {
        read(&self.caches).get(&vdisk).cloned()
    }

    pub(crate) fn changes(&self) -> watch::Receiver<()> {
        self.changes.subscribe()
    }
}

// The maps are never left half-changed: a poisoned lock is still sound.
fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}
