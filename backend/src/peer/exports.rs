use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use crate::{EngineRing, LocalTail};

/// The tails this node serves to peers, by vdisk id, and the configuration
/// epoch they are served under. Shared by the peer server and whoever adds
/// and removes vdisks while it runs.
pub struct Exports {
    epoch: u64,
    tails: RwLock<HashMap<u64, Arc<LocalTail<EngineRing>>>>,
}

impl Exports {
    pub fn new(epoch: u64) -> Self {
        Exports {
            epoch,
            tails: RwLock::new(HashMap::new()),
        }
    }

    /// Serves `tail` for `vdisk` from now on, in place of any earlier one.
    pub fn insert(&self, vdisk: u64, tail: Arc<LocalTail<EngineRing>>) {
        self.write().insert(vdisk, tail);
    }

    /// Stops serving `vdisk`: later requests for it are refused. Requests
    /// already running keep their tail until they finish.
    pub fn remove(&self, vdisk: u64) {
        self.write().remove(&vdisk);
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn get(&self, vdisk: u64) -> Option<Arc<LocalTail<EngineRing>>> {
        // The map is never left half-changed: a poisoned lock is still sound.
        let tails = self.tails.read().unwrap_or_else(PoisonError::into_inner);
        tails.get(&vdisk).cloned()
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<u64, Arc<LocalTail<EngineRing>>>> {
        self.tails.write().unwrap_or_else(PoisonError::into_inner)
    }
}
