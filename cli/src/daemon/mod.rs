//! What the daemon does with the configuration store: client changes go
//! to the store, and every node follows what the store applies. A move is
//! coordinated here: every live node suspends and drains the vdisk, then
//! the new mapping is committed at the next epoch, or the move cancelled.

pub mod access;
pub mod cluster;
pub mod detached;
pub mod lease;
pub mod links;
pub mod metrics;
mod mover;
pub mod server;
pub mod writer;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use backend::mirror::Side;
use configdb::{node_id, Command, Configuration, NodeRecord, Store, VdiskName};
use gossip::Gossip;
use tokio::sync::watch;

use crate::control::{AddRequest, ResyncInfo, SetRequest, StoreInfo, VdiskInfo, VerifyInfo};
use crate::node::Node;

/// How long a client change waits for this node to run it.
const RECONCILE_WAIT: Duration = Duration::from_secs(30);

/// How often a node looks again at what the store holds, to end moves
/// whose coordinator went away.
const RECHECK: Duration = Duration::from_secs(1);

pub struct Daemon {
    pub node: Arc<Mutex<Node>>,
    pub store: Arc<Store>,
    pub gossip: Option<Arc<Gossip>>,
    name: String,
    voters: BTreeSet<String>,
    move_timeout: Duration,
    failover_move: Option<Duration>,
    /// The last generation this node has reconciled.
    reconciled: watch::Sender<u64>,
    /// When this node first saw each pending move.
    moves_seen: Mutex<BTreeMap<u64, Instant>>,
}

impl Daemon {
    pub fn new(
        node: Node,
        store: Arc<Store>,
        gossip: Option<Arc<Gossip>>,
        voters: BTreeSet<String>,
        move_timeout: Duration,
        failover_move: Option<Duration>,
    ) -> Arc<Daemon> {
        Arc::new(Daemon {
            name: node.name().to_owned(),
            node: Arc::new(Mutex::new(node)),
            store,
            gossip,
            voters,
            move_timeout,
            failover_move,
            reconciled: watch::channel(0).0,
            moves_seen: Mutex::new(BTreeMap::new()),
        })
    }

    /// Brings the node in line with the configuration this node's store
    /// holds now: after a restart, that is what it had applied, with or
    /// without a majority.
    pub async fn reconcile_now(self: &Arc<Self>) -> anyhow::Result<()> {
        let config = self.store.configuration();
        self.reconcile(config).await
    }

    async fn reconcile(self: &Arc<Self>, config: Arc<Configuration>) -> anyhow::Result<()> {
        let node = self.node.clone();
        let applied = config.clone();
        let suspensions = tokio::task::spawn_blocking(move || lock(&node).reconcile(&applied))
            .await
            .context("reconciling panicked")?;
        for suspension in suspensions {
            tokio::spawn(self.clone().suspend_and_acknowledge(suspension));
        }
        self.end_abandoned_moves(&config);
        self.reconciled.send_replace(config.generation);
        Ok(())
    }

    /// Follows the store until `stop` turns true: each applied
    /// configuration is reconciled, and between changes pending moves are
    /// checked for a coordinator that went away, and vdisks that could not
    /// start here are tried again.
    pub async fn follow_store(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut changes = self.store.subscribe();
        loop {
            let config = changes.borrow_and_update().clone();
            if let Err(e) = self.reconcile(config).await {
                tracing::error!("{e:#}");
            }
            loop {
                tokio::select! {
                    changed = changes.changed() => match changed {
                        Ok(()) => break,
                        Err(_) => return,
                    },
                    _ = stop.wait_for(|&s| s) => return,
                    () = tokio::time::sleep(RECHECK) => {
                        self.end_abandoned_moves(&self.store.configuration());
                    }
                }
                let node = self.node.clone();
                let retried = tokio::task::spawn_blocking(move || lock(&node).retry_failed());
                if retried.await.is_err() {
                    tracing::error!("retrying failed vdisks panicked");
                }
            }
        }
    }

    /// Records this node's links and tails in the store, once the store
    /// takes writes, unless it already holds them.
    pub async fn register(self: Arc<Self>, record: NodeRecord) {
        loop {
            if self.store.configuration().nodes.get(&record.name) == Some(&record) {
                return;
            }
            match self
                .store
                .write(Command::RegisterNode(record.clone()))
                .await
            {
                Ok(_) => {
                    tracing::info!("node recorded in the configuration store");
                    return;
                }
                Err(e) => tracing::debug!("cannot record this node in the store yet: {e}"),
            }
            tokio::time::sleep(RECHECK).await;
        }
    }

    /// Waits until this node has reconciled `generation`.
    async fn reconciled(&self, generation: u64) -> anyhow::Result<()> {
        let mut reconciled = self.reconciled.subscribe();
        let done = async move { reconciled.wait_for(|&g| g >= generation).await.is_ok() };
        match tokio::time::timeout(RECONCILE_WAIT, done).await {
            Ok(true) => Ok(()),
            _ => bail!(
                "the change is committed, but this node has not applied it after {} s",
                RECONCILE_WAIT.as_secs()
            ),
        }
    }

    /// The vdisk `name` as the store and this node have it now.
    fn info(&self, name: &VdiskName) -> anyhow::Result<VdiskInfo> {
        let config = self.store.configuration();
        let Some(record) = config.vdisks.get(name) else {
            bail!("no vdisk named {name}");
        };
        Ok(self.with_node(|node| node.info(record)))
    }

    pub async fn add(&self, request: AddRequest) -> anyhow::Result<VdiskInfo> {
        let config = self.store.configuration();
        let node = self.node.clone();
        let spec = tokio::task::spawn_blocking(move || lock(&node).prepare_add(request, &config))
            .await
            .context("add panicked")??;
        let name = spec.name.clone();
        let response = self.store.write(Command::AddVdisk(spec)).await?;
        self.reconciled(response.generation).await?;
        let info = self.info(&name)?;
        // The node asked to add is the one the admin watches: if it cannot
        // run the vdisk, the add is undone and says why.
        if let Some(why) = info.state.strip_prefix("failed: ") {
            let undo = self
                .store
                .write(Command::DeleteVdisk { name: name.clone() })
                .await;
            if let Err(e) = undo {
                tracing::error!(vdisk = %name, "cannot undo the failed add: {e}");
            }
            bail!("{why}");
        }
        tracing::info!(vdisk = %name, "vdisk added to the cluster");
        Ok(info)
    }

    /// Deletes vdisk `name` everywhere; returns it as it was, its state
    /// `deleted`.
    pub async fn del(&self, name: &str) -> anyhow::Result<VdiskInfo> {
        let name: VdiskName = name.parse()?;
        if !self.store.configuration().vdisks.contains_key(&name) {
            bail!("no vdisk named {name}");
        }
        self.with_node(|node| node.check_unused(&name))?;
        let mut deleted = self.info(&name)?;
        let response = self
            .store
            .write(Command::DeleteVdisk { name: name.clone() })
            .await?;
        self.reconciled(response.generation).await?;
        tracing::info!(vdisk = %name, "vdisk deleted from the cluster");
        deleted.device = None;
        deleted.paths.clear();
        deleted.state = "deleted".into();
        Ok(deleted)
    }

    /// Takes down this node's device for vdisk `name` (`attach` brings it
    /// back), and gives up its write role; nothing changes on the other
    /// nodes.
    pub async fn detach(&self, name: &str) -> anyhow::Result<VdiskInfo> {
        let name: VdiskName = name.parse()?;
        let config = self.store.configuration();
        let Some(record) = config.vdisks.get(&name) else {
            bail!("no vdisk named {name}");
        };
        self.with_node(|node| node.detach(record))?;
        if record.writer.as_ref() == Some(&self.name) {
            if let Err(e) = self.release(name.as_str()).await {
                tracing::warn!(vdisk = %name, "detached, but the write role stays here: {e:#}");
            }
        }
        self.info(&name)
    }

    /// Gives up this node's write role for vdisk `name`: another node's
    /// device may take it with its next write.
    pub async fn release(&self, name: &str) -> anyhow::Result<VdiskInfo> {
        let name: VdiskName = name.parse()?;
        if !self.store.configuration().vdisks.contains_key(&name) {
            bail!("no vdisk named {name}");
        }
        let response = self
            .store
            .write(Command::ReleaseWriter { name: name.clone() })
            .await?;
        self.reconciled(response.generation).await?;
        tracing::info!(vdisk = %name, "write role released");
        self.info(&name)
    }

    /// Brings back this node's device for vdisk `name`.
    pub fn attach(&self, name: &str) -> anyhow::Result<VdiskInfo> {
        let name: VdiskName = name.parse()?;
        let config = self.store.configuration();
        let Some(record) = config.vdisks.get(&name) else {
            bail!("no vdisk named {name}");
        };
        self.with_node(|node| {
            node.attach(record)?;
            Ok(node.info(record))
        })
    }

    pub async fn set(&self, request: SetRequest) -> anyhow::Result<VdiskInfo> {
        let name: VdiskName = request.name.parse()?;
        if request.owner.is_none() && request.group.is_none() && request.mode.is_none() {
            bail!("give --owner, --group or --mode");
        }
        let response = self
            .store
            .write(Command::SetPermissions {
                name: name.clone(),
                owner: request.owner,
                group: request.group,
                mode: request.mode,
            })
            .await?;
        self.reconciled(response.generation).await?;
        self.info(&name)
    }

    /// The members a move waits for: every live one, this node included.
    fn live_members(&self) -> BTreeSet<String> {
        let mut members: BTreeSet<String> = match &self.gossip {
            Some(gossip) => gossip.view().borrow().alive.keys().cloned().collect(),
            None => BTreeSet::new(),
        };
        members.insert(self.name.clone());
        members
    }

    pub fn list(&self) -> Vec<VdiskInfo> {
        let config = self.store.configuration();
        self.with_node(|node| node.list(&config))
    }

    /// How mirrored vdisk `name`'s copies stand; only its primary knows.
    /// With `full`, the whole mirror is to be copied first.
    pub async fn resync(&self, name: &str, full: bool) -> anyhow::Result<ResyncInfo> {
        let name: VdiskName = name.parse()?;
        let config = self.store.configuration();
        let primary = self.with_node(|node| node.primary_mirror(&name, &config))?;
        if full {
            primary
                .vdisk()
                .full_resync(Side::B)
                .await
                .map_err(anyhow::Error::msg)?;
        }
        Ok(primary.resync_info())
    }

    /// Runs `f` on the node. The node's lock may be held for long (a
    /// device starting, whose first reads need this runtime's workers), so
    /// the worker waiting for it hands its other tasks to another thread
    /// first: control requests cannot starve the I/O the holder waits for.
    fn with_node<T>(&self, f: impl FnOnce(&mut Node) -> T) -> T {
        tokio::task::block_in_place(|| f(&mut lock(&self.node)))
    }

    /// Compares both copies of mirrored vdisk `name`; only its primary can.
    pub async fn verify(&self, name: &str) -> anyhow::Result<VerifyInfo> {
        let name: VdiskName = name.parse()?;
        let config = self.store.configuration();
        let primary = self.with_node(|node| node.primary_mirror(&name, &config))?;
        let report = primary.vdisk().verify().await?;
        Ok(VerifyInfo {
            vdisk: name.to_string(),
            regions: report.regions,
            region_size: report.region_size,
            differing: report.differing,
            skipped_dirty: report.skipped_dirty,
        })
    }

    /// Makes exactly `voters` the store's voters; once this node has
    /// caught up with the change, says how the store stands.
    pub async fn set_voters(&self, voters: Vec<String>) -> anyhow::Result<StoreInfo> {
        let wanted: BTreeSet<String> = voters.into_iter().collect();
        self.store.set_voters(&wanted).await?;
        self.store.confirm(Duration::from_secs(5)).await?;
        Ok(self.store_info())
    }

    /// The store as this node sees it, with node names for Raft ids.
    pub fn store_info(&self) -> StoreInfo {
        let status = self.store.status();
        let config = self.store.configuration();
        let names: BTreeMap<u64, String> = config
            .nodes
            .keys()
            .chain(&self.voters)
            .chain(std::iter::once(&self.name))
            .map(|name| (node_id(name), name.clone()))
            .collect();
        let name = |id: u64| names.get(&id).cloned().unwrap_or_else(|| id.to_string());
        let sorted = |ids: BTreeSet<u64>| {
            let mut names: Vec<String> = ids.into_iter().map(name).collect();
            names.sort();
            names
        };
        StoreInfo {
            role: status.role,
            term: status.term,
            leader: status.leader.map(name),
            generation: config.generation,
            last_log_index: status.last_log_index,
            last_applied: status.last_applied,
            voters: sorted(status.voters),
            learners: sorted(status.learners),
            configured_voters: self.voters.iter().cloned().collect(),
        }
    }
}

/// A panic while holding a lock leaves the state usable: the node only
/// changes after the fallible steps succeed.
pub fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
