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
pub mod server;
pub mod writer;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use backend::mirror::Side;
use backend::LEASE_RUN_OUT;
use configdb::{
    node_id, Command, Configuration, NodeRecord, Placement, Store, StoreRole, VdiskName,
    VdiskRecord,
};
use gossip::Gossip;
use tokio::sync::watch;

use crate::control::{
    AddRequest, MoveRequest, ResyncInfo, SetRequest, StoreInfo, VdiskInfo, VerifyInfo,
};
use crate::moves::coordinator::{must_wait_out_lease, progress, Progress};
use crate::moves::failover::{Decision, Failover};
use crate::node::{Node, Suspension};

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

    /// Drains the vdisk's I/O on this node, then tells the coordinator.
    async fn suspend_and_acknowledge(self: Arc<Self>, suspension: Suspension) {
        let started = Instant::now();
        if let Some(routed) = &suspension.routed {
            routed.suspend().await;
        }
        tracing::info!(
            vdisk = %suspension.name,
            drained_ms = started.elapsed().as_millis() as u64,
            "reconfiguration: I/O suspended and drained"
        );
        let ack = Command::AckMove {
            name: suspension.name.clone(),
            move_id: suspension.move_id,
            node: self.name.clone(),
        };
        if let Err(e) = self.store.write(ack).await {
            tracing::warn!(vdisk = %suspension.name, "reconfiguration: cannot acknowledge: {e}");
        }
    }

    /// Cancels moves pending for much longer than a move may take: their
    /// coordinator died or lost the store. Any node may; the store takes
    /// the first end of a move and refuses the others.
    fn end_abandoned_moves(self: &Arc<Self>, config: &Configuration) {
        let now = Instant::now();
        let mut seen = lock(&self.moves_seen);
        let pending: BTreeMap<u64, &VdiskRecord> = config
            .vdisks
            .values()
            .filter_map(|r| r.moving.as_ref().map(|m| (m.id, r)))
            .collect();
        seen.retain(|id, _| pending.contains_key(id));
        for (&id, record) in &pending {
            let first = *seen.entry(id).or_insert(now);
            if now.duration_since(first) < self.move_timeout * 3 {
                continue;
            }
            seen.insert(id, now);
            let end = Command::EndMove {
                name: record.spec.name.clone(),
                move_id: id,
                commit: false,
            };
            let daemon = self.clone();
            tokio::spawn(async move {
                if daemon.store.write(end).await.is_ok() {
                    tracing::warn!("reconfiguration {id} abandoned by its coordinator: cancelled");
                }
            });
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

    /// Moves a cluster vdisk to new tails while its I/O runs (seed 003's
    /// reconfiguration), once the tails are checked.
    pub async fn move_vdisk(&self, request: MoveRequest) -> anyhow::Result<VdiskInfo> {
        let name: VdiskName = request.name.parse()?;
        let config = self.store.configuration();
        let Some(record) = config.vdisks.get(&name) else {
            bail!("no vdisk named {name}");
        };
        let to = match &record.spec.placement {
            // A mirror's copies stay where they are: only which one is the
            // primary changes.
            Placement::Mirror {
                primary, mirror, ..
            } => {
                if request.primary != *mirror
                    || request.secondary.as_ref().is_some_and(|s| s != primary)
                {
                    bail!(
                        "vdisk {name} is mirrored: it can only switch to its mirror ({mirror}) as primary"
                    );
                }
                record.spec.placement.switched_over()
            }
            _ => Placement::Cluster {
                primary: request.primary,
                secondary: request.secondary,
            },
        };
        if to == record.spec.placement {
            bail!("vdisk {name} is already on {to}");
        }
        self.with_node(|node| node.check_tails(&record.spec, &to, &config))?;
        self.reconfigure(record, to).await
    }

    /// Takes `record` to `to` through the protocol: every live member
    /// suspends and drains the vdisk, then the new mapping commits at the
    /// next epoch and everyone resumes on it. A member that does not
    /// acknowledge in time cancels the move; I/O resumes on the old mapping.
    async fn reconfigure(&self, record: &VdiskRecord, to: Placement) -> anyhow::Result<VdiskInfo> {
        let name = record.spec.name.clone();
        let waiting_for = self.live_members();
        let started = Instant::now();
        let begun = self
            .store
            .write(Command::BeginMove {
                name: name.clone(),
                to: to.clone(),
                coordinator: self.name.clone(),
                waiting_for: waiting_for.clone(),
                from_epoch: record.epoch,
            })
            .await?;
        // No lease granted after this can let a node ignore the move: it
        // would see the move along with the confirmation.
        let begun_at = Instant::now();
        let move_id = begun
            .vdisk
            .as_ref()
            .and_then(|r| r.moving.as_ref().map(|m| m.id))
            .context("the store began no move")?;
        tracing::info!(vdisk = %name, %to, nodes = ?waiting_for, "reconfiguration: asking every live node to suspend");
        // The acknowledgements are read from this node's copy: it must
        // have the move first (a follower applies after the leader).
        self.store
            .wait_applied(begun.generation, self.move_timeout)
            .await;
        let acked = self.all_acknowledged(&name, move_id).await;
        if let Ok(vouched) = &acked {
            if must_wait_out_lease(&record.spec.placement, &waiting_for, vouched) {
                let until = begun_at + LEASE_RUN_OUT;
                tracing::info!(vdisk = %name, ms = until.saturating_duration_since(Instant::now()).as_millis() as u64, "reconfiguration: waiting out the lease of a tail's node that did not suspend");
                tokio::time::sleep_until(until.into()).await;
            }
        }
        let commit = acked.is_ok();
        let ended = self
            .store
            .write(Command::EndMove {
                name: name.clone(),
                move_id,
                commit,
            })
            .await?;
        self.reconciled(ended.generation).await?;
        if let Err(missing) = acked {
            bail!(
                "move of {name} cancelled: {} did not suspend within {} ms; I/O goes on with the old mapping",
                missing.join(", "),
                self.move_timeout.as_millis()
            );
        }
        tracing::info!(
            vdisk = %name,
            %to,
            ms = started.elapsed().as_millis() as u64,
            "reconfiguration committed"
        );
        self.info(&name)
    }

    /// On the store's leader, until `stop`: carries out the moves the
    /// failover policy ([`Failover`]) decides. The store then says which
    /// tail is in charge, and the old primary's node, back, serves as the
    /// secondary at the new epoch.
    pub async fn follow_membership(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        // Without gossip no member is ever seen down.
        let (Some(after), true) = (self.failover_move, self.gossip.is_some()) else {
            return;
        };
        let mut failover = Failover::new(after);
        loop {
            tokio::select! {
                () = tokio::time::sleep(RECHECK / 2) => {}
                _ = stop.wait_for(|&s| s) => return,
            }
            if self.store.status().role != StoreRole::Leader {
                failover.not_leading();
                continue;
            }
            let config = self.store.configuration();
            let decisions =
                failover.decide(config.vdisks.values(), &self.live_members(), Instant::now());
            for decision in decisions {
                match decision {
                    Decision::Move { name, down, to } => {
                        tracing::warn!(vdisk = %name, %down, "primary's node down: moving the vdisk to its secondary");
                        let Some(record) = config.vdisks.get(&name) else {
                            continue;
                        };
                        if let Err(e) = self.reconfigure(record, to).await {
                            tracing::error!(vdisk = %name, "{e:#}");
                        }
                    }
                    Decision::Stranded { name, down, copy } => {
                        tracing::error!(vdisk = %name, %down, %copy, "primary's node down, and the mirror cannot take over: its copy is not current; the vdisk waits for its primary");
                    }
                }
            }
        }
    }

    /// Waits for every acknowledgement of move `move_id`, at most the move
    /// timeout, and returns those the coordinator acknowledged for; else
    /// returns who is missing. A member declared down while the move waits
    /// is acknowledged for by the coordinator: its requests to peers are
    /// refused as a non-member's, and by the epoch once the move commits;
    /// its own tails it touches only while its lease lasts, which the
    /// commit waits out. Waiting for it would only hold everyone's I/O for
    /// the whole timeout.
    async fn all_acknowledged(
        &self,
        name: &VdiskName,
        move_id: u64,
    ) -> Result<BTreeSet<String>, Vec<String>> {
        let deadline = tokio::time::Instant::now() + self.move_timeout;
        let mut changes = self.store.subscribe();
        let mut view = self.gossip.as_ref().map(|g| g.view());
        let mut vouched = BTreeSet::new();
        loop {
            let moving = self
                .store
                .configuration()
                .vdisks
                .get(name)
                .and_then(|r| r.moving.clone());
            let alive = self.live_members();
            let (missing, vouch) = match progress(moving.as_ref(), move_id, &alive, &vouched) {
                Progress::Gone => {
                    return Err(vec!["the store (the move ended elsewhere)".to_owned()])
                }
                Progress::Acknowledged => return Ok(vouched),
                Progress::Waiting { missing, vouch } => (missing, vouch),
            };
            for node in vouch {
                vouched.insert(node.clone());
                tracing::warn!(vdisk = %name, node = %node, "reconfiguration: acknowledged for a member declared down");
                let ack = Command::AckMove {
                    name: name.clone(),
                    move_id,
                    node: node.clone(),
                };
                if let Err(e) = self.store.write(ack).await {
                    tracing::warn!(vdisk = %name, "reconfiguration: cannot acknowledge for {node}: {e}");
                }
            }
            let membership_changed = async {
                match &mut view {
                    Some(view) => {
                        let _ = view.changed().await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return Err(missing) },
                () = membership_changed => {}
                () = tokio::time::sleep_until(deadline) => return Err(missing),
            }
        }
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
