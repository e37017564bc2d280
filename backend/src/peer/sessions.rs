use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, Semaphore};

/// The authenticated connections of each node: counted, so that none
/// takes more than its share, and reachable from each other, so that a
/// fence on one of a node's connections can close the others.
#[derive(Clone, Default)]
pub(super) struct Sessions(Arc<Mutex<Registry>>);

#[derive(Default)]
struct Registry {
    next_id: u64,
    by_node: HashMap<Arc<str>, Vec<Arc<Session>>>,
}

/// What others need of one connection.
pub(super) struct Session {
    id: u64,
    /// Cleared when the connection stops taking requests: a request of it
    /// that has not started by then never does.
    open: AtomicBool,
    /// Wakes the connection's reader to close it.
    close: Notify,
    /// The connection's in-flight budget: all of it free means none of its
    /// requests is running.
    requests: Arc<Semaphore>,
    budget: u32,
    /// Fences that closed this connection, for the logs.
    fenced: AtomicU64,
}

impl Session {
    /// Whether a request of this connection may still start.
    pub(super) fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    /// Stops the connection's requests from starting from now on.
    pub(super) fn shut(&self) {
        self.open.store(false, Ordering::Release);
        self.close.notify_one();
    }

    /// Resolves once the connection is to close at another's fence.
    pub(super) async fn closed(&self) {
        self.close.notified().await
    }

    /// The budget each of the connection's requests holds while it runs.
    pub(super) fn requests(&self) -> &Arc<Semaphore> {
        &self.requests
    }

    pub(super) fn was_fenced(&self) -> bool {
        self.fenced.load(Ordering::Relaxed) > 0
    }
}

/// One registered connection; unregistered when dropped.
pub(super) struct Registered {
    sessions: Sessions,
    node: Arc<str>,
    pub(super) session: Arc<Session>,
}

impl Sessions {
    /// Registers a new connection of `node` whose requests hold permits of
    /// a `budget`-permit semaphore, unless `node` has `cap` open.
    pub(super) fn open(&self, node: &Arc<str>, cap: usize, budget: u32) -> Option<Registered> {
        let mut registry = self.0.lock().unwrap_or_else(|p| p.into_inner());
        registry.next_id += 1;
        let id = registry.next_id;
        let sessions = registry.by_node.entry(node.clone()).or_default();
        if sessions.len() >= cap {
            return None;
        }
        let session = Arc::new(Session {
            id,
            open: AtomicBool::new(true),
            close: Notify::new(),
            requests: Arc::new(Semaphore::new(budget as usize)),
            budget,
            fenced: AtomicU64::new(0),
        });
        sessions.push(session.clone());
        Some(Registered {
            sessions: self.clone(),
            node: node.clone(),
            session,
        })
    }

    /// A fence from `node` on its connection `from`: every other connection
    /// of `node` stops starting requests and closes, and this resolves
    /// once none of their requests is running any more. A connection
    /// registered later carries only requests sent after its handshake,
    /// so after the fence.
    pub(super) async fn fence(&self, node: &str, from: &Session) -> usize {
        let others: Vec<Arc<Session>> = {
            let registry = self.0.lock().unwrap_or_else(|p| p.into_inner());
            let all = registry.by_node.get(node).map_or(&[][..], Vec::as_slice);
            all.iter().filter(|s| s.id != from.id).cloned().collect()
        };
        for session in &others {
            session.fenced.fetch_add(1, Ordering::Relaxed);
            session.shut();
        }
        for session in &others {
            // Every permit back: nothing of it runs; a closed semaphore
            // (never, today) would mean the same.
            let _ = session.requests.acquire_many(session.budget).await;
        }
        others.len()
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.session.shut();
        let mut registry = self.sessions.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(sessions) = registry.by_node.get_mut(&self.node) {
            sessions.retain(|s| s.id != self.session.id);
            if sessions.is_empty() {
                registry.by_node.remove(&self.node);
            }
        }
    }
}
