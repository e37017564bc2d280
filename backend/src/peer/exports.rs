use std::collections::HashMap;
use std::sync::Arc;

use crate::{EngineRing, LocalTail};

/// The tails this node serves to peers, by vdisk id, and the configuration
/// epoch they are served under.
pub struct Exports {
    epoch: u64,
    tails: HashMap<u64, Arc<LocalTail<EngineRing>>>,
}

impl Exports {
    pub fn new(epoch: u64) -> Self {
        Exports {
            epoch,
            tails: HashMap::new(),
        }
    }

    pub fn insert(&mut self, vdisk: u64, tail: LocalTail<EngineRing>) {
        self.tails.insert(vdisk, Arc::new(tail));
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn get(&self, vdisk: u64) -> Option<Arc<LocalTail<EngineRing>>> {
        self.tails.get(&vdisk).cloned()
    }
}
