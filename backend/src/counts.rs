//! Connections counted by who opened them, so that none takes more than
//! its share: the peer server's handshakes per source address, the control
//! socket's connections per user.

use std::sync::Arc;

/// How many connections each key has open.
pub struct OpenCounts<K>(Arc<std::sync::Mutex<std::collections::HashMap<K, usize>>>);

impl<K> Clone for OpenCounts<K> {
    fn clone(&self) -> Self {
        OpenCounts(self.0.clone())
    }
}

impl<K> Default for OpenCounts<K> {
    fn default() -> Self {
        OpenCounts(Arc::default())
    }
}

/// One counted connection; uncounted when dropped.
pub struct Counted<K: std::hash::Hash + Eq> {
    counts: OpenCounts<K>,
    key: K,
}

impl<K: std::hash::Hash + Eq + Clone> OpenCounts<K> {
    /// Counts a new connection of `key`, unless it has `cap` open.
    pub fn open(&self, key: &K, cap: usize) -> Option<Counted<K>> {
        let mut open = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let count = open.entry(key.clone()).or_default();
        if *count >= cap {
            return None;
        }
        *count += 1;
        Some(Counted {
            counts: self.clone(),
            key: key.clone(),
        })
    }
}

impl<K: std::hash::Hash + Eq> Drop for Counted<K> {
    fn drop(&mut self) {
        let mut open = self.counts.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = open.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}
