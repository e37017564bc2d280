//! A caching node's shell: a [`Relay`] driven by this node's reads and
//! writes, by messages from its parent and its children, and by time, with
//! its copies' data in an [`ExtentStore`]. Data the core may keep goes
//! into the store before the core hears of it, so a copy the core holds is
//! in the store; a copy the store could not keep (full, or a write's
//! answer whose data this node has only part of) is let go from the core
//! at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use tokio::sync::oneshot;

use super::root::{check_write, split, write_parts, Part};
use super::{
    CacheTransport, Down, Extent, ExtentStore, HolderId, LeaseConfig, Millis, Relay, RelayAction,
    Stamped, Tag, Up, Version,
};
use crate::{AlignedBuf, EngineRing, IoError, LocalTail};

/// The store of a node's copies: a cache file on this node.
pub type CacheFile = ExtentStore<LocalTail<EngineRing>>;

/// Reads and hits, for `ublkvd cache` and the metrics.
#[derive(Debug, Default)]
pub struct NodeCounters {
    pub reads: AtomicU64,
    pub hits: AtomicU64,
}

/// One cached vdisk on a node that is not its root.
pub struct CacheNode {
    store: CacheFile,
    extent_bytes: u64,
    transport: Arc<dyn CacheTransport>,
    started: Instant,
    counters: NodeCounters,
    state: Mutex<NodeState>,
}

struct NodeState {
    relay: Relay,
    next_id: u64,
    /// This node's reads waiting for their extent from above.
    reads: HashMap<u64, oneshot::Sender<Arc<AlignedBuf>>>,
    /// This node's writes waiting to be applied.
    writes: HashMap<u64, oneshot::Sender<()>>,
    /// The data of the writes sent up, by their number there, for as long
    /// as they may be sent again.
    sent_writes: HashMap<u64, (u32, Arc<AlignedBuf>)>,
}

/// What a batch of the core's actions comes with: the data of the
/// message being handled (a grant's extent), or of a write going up for
/// the first time.
#[derive(Default)]
struct Context {
    granted: Option<(Version, Arc<AlignedBuf>)>,
    new_write: Option<(u32, Arc<AlignedBuf>)>,
}

impl CacheNode {
    pub fn new(
        store: CacheFile,
        extent_bytes: u64,
        config: LeaseConfig,
        transport: Arc<dyn CacheTransport>,
    ) -> Arc<CacheNode> {
        Arc::new(CacheNode {
            store,
            extent_bytes,
            transport,
            started: Instant::now(),
            counters: NodeCounters::default(),
            state: Mutex::new(NodeState {
                relay: Relay::new(config),
                next_id: 1,
                reads: HashMap::new(),
                writes: HashMap::new(),
                sent_writes: HashMap::new(),
            }),
        })
    }

    pub fn counters(&self) -> &NodeCounters {
        &self.counters
    }

    /// Fills `buf` from `offset` of the vdisk: each extent's part from this
    /// node's copy if it has a valid one, else from above.
    pub async fn read(self: &Arc<Self>, offset: u64, buf: &mut [u8]) -> Result<(), IoError> {
        for Part { extent, at, bytes } in split(offset, buf.len(), self.extent_bytes) {
            self.read_part(extent, at, &mut buf[bytes]).await?;
        }
        Ok(())
    }

    /// Writes `data` at `offset` of the vdisk, through the root.
    pub async fn write(self: &Arc<Self>, offset: u64, data: &[u8]) -> Result<(), IoError> {
        write_parts(offset, data, self.extent_bytes, |extent, at, part| {
            let (tx, rx) = oneshot::channel();
            let actions = {
                let mut state = self.lock();
                let id = state.take_id();
                state.writes.insert(id, tx);
                state.relay.write(self.now(), id, extent)
            };
            let context = Context {
                new_write: Some((at, part)),
                ..Context::default()
            };
            self.run(actions, &context);
            rx
        })
        .await
    }

    /// A message from the parent, with a grant's data.
    pub async fn receive_from_parent(
        self: &Arc<Self>,
        msg: Stamped,
        data: Option<Arc<AlignedBuf>>,
    ) {
        let whole_extent = data.as_ref().map(|d| d.len() as u64 == self.extent_bytes);
        let fits = match msg.msg {
            Down::Granted { .. } => whole_extent == Some(true),
            _ => whole_extent.is_none(),
        };
        if !fits {
            tracing::warn!(
                ?msg,
                "cache node: message from the parent dropped: its data is not one extent's"
            );
            return;
        }
        let extent = match msg.msg {
            Down::Granted { extent, .. }
            | Down::Written { extent, .. }
            | Down::Recall { extent } => Some(extent),
            Down::Renewed { .. } => None,
        };
        if let Some((extent, version, whole)) = self.keepable(&msg, data.as_ref()) {
            let tag = Tag {
                epoch: msg.epoch,
                version,
            };
            let inserted = self.store.insert(extent, tag, &whole).await;
            for evicted in inserted.evicted {
                let actions = self.lock().relay.evict(self.now(), evicted);
                self.run(actions, &Context::default());
            }
        }
        let actions = self.lock().relay.receive_up(self.now(), msg);
        let granted = match msg.msg {
            Down::Granted { version, .. } => data.map(|data| (version, data)),
            _ => None,
        };
        let context = Context {
            granted,
            ..Context::default()
        };
        self.run(actions, &context);
        if let Some(extent) = extent {
            self.forget_unstored(extent);
        }
        if let Down::Recall { extent } = msg.msg {
            // The copy is gone from the core: its slot can go too.
            self.store.remove(extent);
        }
    }

    /// A message from child `from`; a write's data goes at byte `at` of
    /// its extent.
    pub fn receive_from_child(
        self: &Arc<Self>,
        from: HolderId,
        msg: Up,
        at: u32,
        data: Option<Arc<AlignedBuf>>,
    ) {
        if let Err(why) = check_write(msg, at, data.as_deref(), self.extent_bytes) {
            tracing::warn!(
                from,
                ?msg,
                "cache node: message from a child dropped: {why}"
            );
            return;
        }
        let actions = self.lock().relay.receive_down(self.now(), from, msg);
        let context = Context {
            new_write: data.map(|data| (at, data)),
            ..Context::default()
        };
        self.run(actions, &context);
    }

    /// This node moved to another parent (its transport sends there now):
    /// nothing of the old one's counts, and requests under way go to the
    /// new one.
    pub fn reattach(self: &Arc<Self>) {
        let actions = self.lock().relay.reattach(self.now());
        self.run(actions, &Context::default());
    }

    /// Time passes: the lease is renewed, requests and recalls are sent
    /// again.
    pub fn tick(self: &Arc<Self>) {
        let actions = self.lock().relay.tick(self.now());
        self.run(actions, &Context::default());
    }

    async fn read_part(
        self: &Arc<Self>,
        extent: Extent,
        at: u32,
        out: &mut [u8],
    ) -> Result<(), IoError> {
        self.counters.reads.fetch_add(1, Ordering::Relaxed);
        loop {
            let (tx, rx) = oneshot::channel();
            let (hit, actions) = {
                let mut state = self.lock();
                let id = state.take_id();
                state.reads.insert(id, tx);
                let actions = state.relay.read(self.now(), id, extent);
                let hit = actions.iter().find_map(|action| match action {
                    RelayAction::ReadDone {
                        id: done,
                        version,
                        hit: true,
                    } if *done == id => Some(*version),
                    _ => None,
                });
                if hit.is_some() {
                    state.reads.remove(&id);
                }
                let epoch = state.relay.epoch();
                (hit.map(|version| Tag { epoch, version }), actions)
            };
            self.run(actions, &Context::default());
            let Some(tag) = hit else {
                let data = rx.await.map_err(|_| IoError::ShuttingDown)?;
                out.copy_from_slice(&data[at as usize..at as usize + out.len()]);
                return Ok(());
            };
            let mut part = AlignedBuf::new(out.len())?;
            if self
                .store
                .read(extent, tag, u64::from(at), &mut part)
                .await?
            {
                out.copy_from_slice(&part);
                self.counters.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            // The store let the extent go after the core's answer: it goes
            // from the core too, and the read goes up.
            let actions = self.lock().relay.evict(self.now(), extent);
            self.run(actions, &Context::default());
        }
    }

    /// The extent, version and data of a message whose copy the core may
    /// keep: a grant it may cache, or the answer to a write of a whole
    /// extent.
    fn keepable(
        &self,
        msg: &Stamped,
        data: Option<&Arc<AlignedBuf>>,
    ) -> Option<(Extent, u64, Arc<AlignedBuf>)> {
        match (msg.msg, data) {
            (
                Down::Granted {
                    extent,
                    version,
                    holder: true,
                    ..
                },
                Some(data),
            ) => Some((extent, version, data.clone())),
            (
                Down::Written {
                    id,
                    extent,
                    version,
                    holder: true,
                },
                _,
            ) => {
                let state = self.lock();
                let (at, data) = state.sent_writes.get(&id)?;
                (*at == 0 && data.len() as u64 == self.extent_bytes)
                    .then(|| (extent, version, data.clone()))
            }
            _ => None,
        }
    }

    /// Lets a copy the core keeps of `extent` go if the store does not
    /// hold its data.
    fn forget_unstored(self: &Arc<Self>, extent: Extent) {
        let actions = {
            let mut state = self.lock();
            let now = self.now();
            let epoch = state.relay.epoch();
            match state.relay.copy(now, extent) {
                Some(version) if !self.store.holds(extent, Tag { epoch, version }) => {
                    state.relay.evict(now, extent)
                }
                _ => return,
            }
        };
        self.run(actions, &Context::default());
    }

    fn run(self: &Arc<Self>, actions: Vec<RelayAction>, context: &Context) {
        for action in actions {
            match action {
                RelayAction::Up(msg @ Up::Write { id, .. }) => {
                    let data = {
                        let mut state = self.lock();
                        match (state.sent_writes.get(&id), &context.new_write) {
                            (Some(sent), _) => Some(sent.clone()),
                            (None, Some(new)) => {
                                state.sent_writes.insert(id, new.clone());
                                Some(new.clone())
                            }
                            (None, None) => None,
                        }
                    };
                    match data {
                        Some((at, data)) => self.transport.to_parent(msg, at, Some(data)),
                        None => tracing::error!(id, "cache node: a write to send up has no data"),
                    }
                }
                RelayAction::Up(msg) => self.transport.to_parent(msg, 0, None),
                RelayAction::Down { to, msg } => self.send_down(to, msg, context),
                RelayAction::ReadDone { id, hit: false, .. } => {
                    let waiter = self.lock().reads.remove(&id);
                    match (waiter, &context.granted) {
                        (Some(waiter), Some((_, data))) => {
                            let _ = waiter.send(data.clone());
                        }
                        (Some(_), None) => {
                            tracing::error!(id, "cache node: a read answered without data")
                        }
                        (None, _) => {}
                    }
                }
                // Answered where the read was made.
                RelayAction::ReadDone { hit: true, .. } => {}
                RelayAction::WriteDone { id, .. } => {
                    if let Some(done) = self.lock().writes.remove(&id) {
                        let _ = done.send(());
                    }
                }
            }
        }
        let mut state = self.lock();
        let NodeState {
            relay, sent_writes, ..
        } = &mut *state;
        sent_writes.retain(|id, _| relay.sending_up(*id));
    }

    /// Sends `msg` to child `to`; a grant carries its extent, which is the
    /// data of the grant being handled if it is forwarded, else this
    /// node's copy.
    fn send_down(self: &Arc<Self>, to: HolderId, msg: Stamped, context: &Context) {
        let Down::Granted {
            extent, version, ..
        } = msg.msg
        else {
            self.transport.to_child(to, msg, None);
            return;
        };
        if let Some((granted, data)) = &context.granted {
            if *granted == version {
                self.transport.to_child(to, msg, Some(data.clone()));
                return;
            }
        }
        let node = self.clone();
        let tag = Tag {
            epoch: self.lock().relay.epoch(),
            version,
        };
        tokio::spawn(async move {
            let read = async {
                let mut data = AlignedBuf::new(node.extent_bytes as usize)?;
                let held = node.store.read(extent, tag, 0, &mut data).await?;
                Ok::<_, IoError>(held.then_some(data))
            };
            match read.await {
                Ok(Some(data)) => node.transport.to_child(to, msg, Some(Arc::new(data))),
                // Not sent: the child asks again, and this node, no
                // longer holding the copy, asks above.
                outcome => {
                    if let Err(error) = outcome {
                        tracing::warn!(extent, %error, "cache node: cannot read a copy to share");
                    }
                    let actions = node.lock().relay.evict(node.now(), extent);
                    node.run(actions, &Context::default());
                }
            }
        });
    }

    fn now(&self) -> Millis {
        self.started.elapsed().as_millis() as Millis
    }

    fn lock(&self) -> MutexGuard<'_, NodeState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl NodeState {
    fn take_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }
}
