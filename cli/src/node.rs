//! The vdisks this node runs, kept in step with the configuration store:
//! every configuration the store applies is reconciled here. Devices are
//! created and removed, their nodes get the stored permissions, mappings
//! are swapped at a new epoch, and moves are suspended and acknowledged.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::{bail, Context};
use backend::mirror::{
    copy_id, pull_dirty, CopyRecorder, DirtyGeometry, DirtyMapFile, MirrorSetup, MirrorStatus,
    MirroredVdisk, RecordFuture, Recorded, ReplicaConfig, Side, SideState,
};
use backend::peer::Clients;
use backend::route::{RoutedVdisk, VdiskCounters};
use backend::{EngineRing, IoMetrics, LocalTail, Metered, Tail};
use configdb::{
    Command, Configuration, MirrorCopy, Permissions, Placement, Store, TailRef, VdiskName,
    VdiskRecord, VdiskSpec,
};
use tokio::sync::watch;
use ublk_frontend::{Device, DeviceOptions, QueueRing};

use crate::cluster::{Cluster, Export, LinkMetrics};
use crate::control::{AddRequest, LinkInfo, PathInfo, ResyncInfo, VdiskInfo};
use crate::detached::Detached;
use crate::links::DeviceLinks;
use crate::size::format_size;
use crate::writer::{Guarded, WriteRole};

pub struct Node {
    cluster: Cluster,
    /// Where the mirrors this node is primary of record their copies.
    store: Arc<Store>,
    vdisks: BTreeMap<VdiskName, Vdisk>,
    /// Moves this node has been asked to suspend for and is acknowledging.
    acking: BTreeSet<u64>,
    /// `/dev/ublkvd/NAME` for each device running here.
    links: DeviceLinks,
    /// Vdisks whose device an admin took down on this node.
    detached: Detached,
}

/// A vdisk this node has a part in.
struct Vdisk {
    /// The record it runs from.
    record: VdiskRecord,
    state: VdiskState,
    /// The move this node suspended the vdisk's I/O for.
    suspended_for: Option<u64>,
    /// Deleted from the store while its device was in use here: kept
    /// until it is no longer used.
    deleted: bool,
}

/// A served vdisk as the metrics endpoint sees it.
pub struct VdiskMetrics {
    pub info: VdiskInfo,
    pub io: IoMetrics,
    pub routing: Option<Arc<VdiskCounters>>,
}

/// What a reconciliation leaves to the async side: suspend a vdisk's I/O
/// (drain it) for a move, then acknowledge the move in the store.
pub struct Suspension {
    pub name: VdiskName,
    pub move_id: u64,
    /// The routed device to drain; none where this node runs no I/O to it.
    pub routed: Option<Arc<RoutedVdisk>>,
}

enum VdiskState {
    /// Served on this node: through a device, to peers, or both. Fields
    /// drop in order: the device (and its I/O) goes before the export.
    Served {
        device: Option<Device>,
        /// What the device's I/O does (idle without a device).
        io: IoMetrics,
        /// The device's backend, shared to suspend and remap it.
        routed: Option<Arc<RoutedVdisk>>,
        /// A cluster or mirrored vdisk's paths at its epoch, which a device
        /// routes over (kept without a device, for `attach`).
        paths: Vec<Arc<dyn Tail>>,
        /// Whether the device may write (one writer at a time).
        role: Option<Arc<WriteRole>>,
        /// This node's tail, or its mirror, served to peers, while the
        /// mapping has one.
        export: Option<Export>,
        /// The mirror this node runs as a mirrored vdisk's primary.
        mirror: Option<Arc<MirroredVdisk>>,
    },
    /// Recorded but not served: why it could not be started.
    Failed(String),
}

impl Node {
    pub fn new(
        cluster: Cluster,
        store: Arc<Store>,
        links: DeviceLinks,
        detached: Detached,
    ) -> Self {
        Node {
            cluster,
            store,
            vdisks: BTreeMap::new(),
            acking: BTreeSet::new(),
            links,
            detached,
        }
    }

    /// Whether this node runs a device for the vdisk: it makes devices, the
    /// placement has one here, and no admin detached it.
    fn wants_device(&self, record: &VdiskRecord) -> bool {
        self.cluster.devices
            && record.spec.placement.has_device_on(&self.cluster.node)
            && !self.detached.contains(&record.spec.name)
    }

    /// Points the device links at the devices running now.
    fn sync_links(&self) {
        let running = self
            .vdisks
            .iter()
            .filter_map(|(name, vdisk)| Some((name.clone(), vdisk.state.device()?.path())))
            .collect();
        self.links.sync(&running);
    }

    pub fn name(&self) -> &str {
        &self.cluster.node
    }

    /// Brings this node in line with `config`: starts what it should run,
    /// removes what it should not, and applies changed permissions and
    /// mappings. Returns the moves it must suspend for.
    pub fn reconcile(&mut self, config: &Configuration) -> Vec<Suspension> {
        let gone: Vec<VdiskName> = self
            .vdisks
            .iter()
            .filter(|(name, v)| {
                v.deleted
                    || config
                        .vdisks
                        .get(*name)
                        .is_none_or(|record| !self.has_part(record) || record.id != v.record.id)
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in gone {
            self.remove(&name);
        }
        let mut suspensions = Vec::new();
        for record in config.vdisks.values() {
            if self.has_part(record) {
                self.update(record);
            }
            if let Some(suspension) = self.suspension(record) {
                suspensions.push(suspension);
            }
        }
        // Forget moves that ended: their acknowledgements are done with.
        let pending: BTreeSet<u64> = config
            .vdisks
            .values()
            .filter_map(|r| r.moving.as_ref().map(|m| m.id))
            .collect();
        self.acking.retain(|id| pending.contains(id));
        self.sync_links();
        suspensions
    }

    /// Whether this node runs anything for the vdisk: a device, or a tail
    /// served to peers.
    fn has_part(&self, record: &VdiskRecord) -> bool {
        self.wants_device(record) || record.spec.placement.tail_on(&self.cluster.node).is_some()
    }

    /// Starts a vdisk new to this node, or brings a running one to its
    /// record.
    fn update(&mut self, record: &VdiskRecord) {
        let name = record.spec.name.clone();
        let device = self.wants_device(record);
        let Some(vdisk) = self.vdisks.get_mut(&name) else {
            let state = start(record, device, &self.cluster, &self.store);
            match &state {
                VdiskState::Served { device, .. } => {
                    let how = match device {
                        Some(d) if d.recovered() => "device taken over with its held I/O",
                        Some(_) => "device started",
                        None => "tail exported",
                    };
                    tracing::info!(vdisk = %name, epoch = record.epoch, placement = %record.spec.placement, "vdisk started: {how}");
                }
                VdiskState::Failed(why) => {
                    tracing::error!(vdisk = %name, "cannot start vdisk: {why}")
                }
            }
            self.vdisks.insert(
                name,
                Vdisk {
                    record: record.clone(),
                    state,
                    suspended_for: None,
                    deleted: false,
                },
            );
            return;
        };
        if vdisk.deleted {
            // Gone from the store, in use here: nothing changes until it
            // is free and removed.
            return;
        }
        if let VdiskState::Failed(_) = vdisk.state {
            if vdisk.record != *record {
                vdisk.state = start(record, device, &self.cluster, &self.store);
                vdisk.record = record.clone();
            }
            return;
        }
        if let VdiskState::Served {
            role: Some(role), ..
        } = &vdisk.state
        {
            role.follow(record);
        }
        if record.spec.permissions != vdisk.record.spec.permissions {
            if let Some(device) = vdisk.state.device() {
                match set_permissions(&device.path(), record.spec.permissions) {
                    Ok(()) => tracing::info!(vdisk = %name, "device permissions changed"),
                    Err(e) => tracing::error!(vdisk = %name, "{e:#}"),
                }
            }
        }
        if record.epoch != vdisk.record.epoch {
            match remap(vdisk, record, &self.cluster, &self.store) {
                Ok(()) => tracing::info!(
                    vdisk = %name,
                    epoch = record.epoch,
                    placement = %record.spec.placement,
                    "reconfiguration: new mapping in effect, I/O resumed"
                ),
                Err(e) => tracing::error!(
                    vdisk = %name,
                    epoch = record.epoch,
                    "reconfiguration: cannot take the new mapping: {e:#}"
                ),
            }
            vdisk.suspended_for = None;
        } else if vdisk.suspended_for.is_some()
            && record.moving.as_ref().map(|m| m.id) != vdisk.suspended_for
        {
            // The move ended without a new epoch: cancelled.
            if let Some(routed) = vdisk.state.routed() {
                routed.resume(None);
            }
            tracing::info!(vdisk = %name, "reconfiguration cancelled: I/O resumed on the old mapping");
            vdisk.suspended_for = None;
        }
        vdisk.record = record.clone();
    }

    /// Tries again to start the vdisks that could not start, their records
    /// unchanged: what they needed (a peer, a former primary's regions to
    /// take back) may be there now. Logs only what changed.
    pub fn retry_failed(&mut self) {
        let wanted: BTreeSet<VdiskName> = self
            .vdisks
            .values()
            .filter(|v| self.wants_device(&v.record))
            .map(|v| v.record.spec.name.clone())
            .collect();
        for (name, vdisk) in &mut self.vdisks {
            let VdiskState::Failed(why) = &vdisk.state else {
                continue;
            };
            let state = start(
                &vdisk.record,
                wanted.contains(name),
                &self.cluster,
                &self.store,
            );
            match &state {
                VdiskState::Served { .. } => {
                    tracing::info!(vdisk = %name, epoch = vdisk.record.epoch, "vdisk started on a later try")
                }
                VdiskState::Failed(now) if now != why => {
                    tracing::error!(vdisk = %name, "cannot start vdisk: {now}")
                }
                VdiskState::Failed(_) => {}
            }
            vdisk.state = state;
        }
        self.sync_links();
    }

    /// The suspension a pending move asks of this node, once.
    fn suspension(&mut self, record: &VdiskRecord) -> Option<Suspension> {
        let moving = record.moving.as_ref()?;
        let me = &self.cluster.node;
        if !moving.waiting_for.contains(me)
            || moving.acked.contains(me)
            || !self.acking.insert(moving.id)
        {
            return None;
        }
        let routed = match self.vdisks.get_mut(&record.spec.name) {
            Some(vdisk) => {
                vdisk.suspended_for = Some(moving.id);
                vdisk.state.routed()
            }
            None => None,
        };
        tracing::info!(vdisk = %record.spec.name, coordinator = %moving.coordinator, to = %moving.to, "reconfiguration: suspending I/O");
        Some(Suspension {
            name: record.spec.name.clone(),
            move_id: moving.id,
            routed,
        })
    }

    /// Stops running a vdisk here, unless its device is in use: then it is
    /// kept, and removed by a later reconciliation once it is free.
    fn remove(&mut self, name: &VdiskName) {
        let Some(vdisk) = self.vdisks.get_mut(name) else {
            return;
        };
        if let Some(device) = vdisk.state.device() {
            if let Err(e) = device.ensure_unused() {
                if !vdisk.deleted {
                    tracing::error!(vdisk = %name, "vdisk left this node's configuration, but its device stays until it is free: {e:#}");
                }
                vdisk.deleted = true;
                return;
            }
        }
        if let Some(Vdisk {
            state:
                VdiskState::Served {
                    device: Some(device),
                    ..
                },
            ..
        }) = self.vdisks.remove(name)
        {
            if let Err(e) = device.stop() {
                tracing::error!(vdisk = %name, "stopping its device: {e:#}");
            }
        }
        // A dirty map says what a mirror lacks only while this node serves
        // it; a vdisk that comes back here starts from the store's word.
        let map = map_path(&self.cluster, name);
        if map.exists() {
            if let Err(e) = std::fs::remove_file(&map) {
                tracing::warn!(vdisk = %name, map = %map.display(), "cannot remove the dirty map: {e}");
            }
        }
        tracing::info!(vdisk = %name, "vdisk removed from this node");
    }

    /// Takes down this node's device for the vdisk of `record`, and only
    /// that: the cluster keeps the vdisk, the other nodes their devices, and
    /// this node what it serves to peers (its tail, or a mirror it is the
    /// primary of). Refused while the device is in use. Kept across
    /// restarts until [`attach`](Self::attach).
    pub fn detach(&mut self, record: &VdiskRecord) -> anyhow::Result<()> {
        let name = &record.spec.name;
        if self.detached.contains(name) {
            bail!("vdisk {name} is already detached on this node");
        }
        if !self.wants_device(record) {
            bail!("vdisk {name} has no device on this node");
        }
        let vdisk = self.vdisks.get_mut(name);
        if let Some(device) = vdisk.as_ref().and_then(|v| v.state.device()) {
            device.ensure_unused()?;
        }
        self.detached.insert(name)?;
        if let Some(vdisk) = vdisk {
            if let VdiskState::Served {
                device,
                routed,
                role,
                ..
            } = &mut vdisk.state
            {
                // The device first: its last requests go through the routing.
                if let Some(device) = device.take() {
                    device.stop()?;
                }
                *routed = None;
                *role = None;
            }
        }
        if !self.has_part(record) {
            self.vdisks.remove(name);
        }
        tracing::info!(vdisk = %name, "device detached on this node");
        self.sync_links();
        Ok(())
    }

    /// Brings back this node's device for the vdisk of `record`, which
    /// [`detach`](Self::detach) took down.
    pub fn attach(&mut self, record: &VdiskRecord) -> anyhow::Result<()> {
        let name = &record.spec.name;
        if !self.detached.contains(name) {
            bail!("vdisk {name} is not detached on this node");
        }
        self.detached.remove(name)?;
        let started = match self.vdisks.get_mut(name) {
            // What serves peers goes on; the device joins it.
            Some(Vdisk {
                state:
                    VdiskState::Served {
                        device: device @ None,
                        routed,
                        paths,
                        role,
                        io,
                        ..
                    },
                ..
            }) if !paths.is_empty() => {
                let (started, routing, writing) =
                    start_routed_device(record, paths.clone(), io, &self.cluster, &self.store)?;
                *device = Some(started);
                *routed = Some(routing);
                *role = Some(writing);
                Ok(())
            }
            // A local vdisk (or one that failed): started afresh.
            _ => {
                self.vdisks.remove(name);
                self.update(record);
                match self.vdisks.get(name).map(|v| &v.state) {
                    Some(VdiskState::Failed(why)) => Err(anyhow::anyhow!("{why}")),
                    _ => Ok(()),
                }
            }
        };
        if let Err(e) = started {
            // Not attached after all: leave it as it was.
            let _ = self.detached.insert(name);
            return Err(e.context(format!("cannot start vdisk {name}'s device")));
        }
        tracing::info!(vdisk = %name, "device attached on this node");
        self.sync_links();
        Ok(())
    }

    /// Checks an add against what only this node can see (its files, its
    /// vdisks, the live members) and makes the vdisk's spec.
    pub fn prepare_add(
        &self,
        request: AddRequest,
        config: &Configuration,
    ) -> anyhow::Result<VdiskSpec> {
        let name: VdiskName = request.name.parse()?;
        if config.vdisks.contains_key(&name) {
            bail!("vdisk {name} already exists");
        }
        let placement = match (
            request.tail,
            request.primary,
            request.secondary,
            request.mirror,
        ) {
            (Some(tail), None, None, None) => Placement::Local {
                node: self.cluster.node.clone(),
                tail,
            },
            (None, Some(primary), secondary, None) => Placement::Cluster { primary, secondary },
            (None, Some(primary), None, Some(mirror)) => {
                let region_size = request.region_size.unwrap_or(DEFAULT_REGION_SIZE);
                DirtyGeometry::new(request.size_bytes, u64::from(region_size))?;
                Placement::Mirror {
                    primary,
                    mirror,
                    region_size,
                }
            }
            _ => bail!("give either --tail, or --primary with an optional --secondary or --mirror"),
        };
        let default = Permissions::default();
        let spec = VdiskSpec {
            name,
            size_bytes: request.size_bytes,
            placement,
            block_size: request.block_size,
            queues: request.queues,
            queue_depth: request.queue_depth,
            read_only: request.read_only,
            permissions: Permissions {
                owner: request.owner.unwrap_or(default.owner),
                group: request.group.unwrap_or(default.group),
                mode: request.mode.unwrap_or(default.mode),
            },
            multi_writer: request.multi_writer,
        };
        device_options(&spec, None)?;
        // Before the tail is opened: a tail a vdisk of this node holds
        // would only say "in use".
        if let Placement::Local { tail, .. } = &spec.placement {
            if let Some(other) = self
                .vdisks
                .values()
                .find(|v| match &v.record.spec.placement {
                    Placement::Local { tail: t, .. } => same_file(t, tail),
                    Placement::Cluster { .. } | Placement::Mirror { .. } => false,
                })
            {
                bail!(
                    "tail {} is already used by vdisk {}",
                    tail.display(),
                    other.record.spec.name
                );
            }
        }
        self.check_tails(&spec, &spec.placement, config)?;
        Ok(spec)
    }

    /// Checks the tails of `placement` for vdisk `spec`: two distinct
    /// nodes, each tail announced by a live member, and large enough.
    pub fn check_tails(
        &self,
        spec: &VdiskSpec,
        placement: &Placement,
        config: &Configuration,
    ) -> anyhow::Result<()> {
        match placement {
            Placement::Local { tail, .. } => {
                let local = LocalTail::open(tail, spec.block_size, spec.read_only, QueueRing)?;
                check_fits(
                    spec,
                    &tail.display().to_string(),
                    local.geometry().size_bytes,
                )
            }
            Placement::Cluster { .. } | Placement::Mirror { .. } => {
                let mut tails = placement.cluster_tails();
                if let (Some(primary), Some(other)) = (tails.next(), tails.next()) {
                    if primary.node == other.node {
                        let what = match placement {
                            Placement::Mirror { .. } => "mirror",
                            _ => "secondary",
                        };
                        bail!("the primary and the {what} must be tails of different nodes");
                    }
                }
                for tail in placement.cluster_tails() {
                    self.cluster.check_remote_tail(tail)?;
                    if tail.node == self.cluster.node {
                        let local = self.cluster.open_tail(&tail.tail, spec.block_size, true)?;
                        check_fits(spec, &tail.to_string(), local.geometry().size_bytes)?;
                    } else if let Some(size) = config
                        .nodes
                        .get(&tail.node)
                        .and_then(|n| n.tails.get(&tail.tail))
                    {
                        check_fits(spec, &tail.to_string(), *size)?;
                    }
                }
                Ok(())
            }
        }
    }

    /// Refuses to delete a vdisk whose device this node uses.
    pub fn check_unused(&self, name: &VdiskName) -> anyhow::Result<()> {
        match self.vdisks.get(name).and_then(|v| v.state.device()) {
            Some(device) => Ok(device.ensure_unused()?),
            None => Ok(()),
        }
    }

    /// Every vdisk of the store, with what this node runs for it.
    pub fn list(&self, config: &Configuration) -> Vec<VdiskInfo> {
        let mut infos: Vec<VdiskInfo> = config
            .vdisks
            .values()
            .map(|record| self.info(record))
            .collect();
        // Deleted from the store, still in use here: shown until removed.
        for vdisk in self.vdisks.values().filter(|v| v.deleted) {
            infos.push(self.info(&vdisk.record));
        }
        infos
    }

    /// One vdisk of the store, with what this node runs for it.
    pub fn info(&self, record: &VdiskRecord) -> VdiskInfo {
        let local = self
            .vdisks
            .get(&record.spec.name)
            .filter(|v| v.record.id == record.id);
        let (device, state, paths) = match local.map(|v| (v, &v.state)) {
            Some((
                vdisk,
                VdiskState::Served {
                    device,
                    routed,
                    mirror,
                    ..
                },
            )) => {
                let state = if vdisk.deleted {
                    "deleted: device still in use here"
                } else if vdisk.suspended_for.is_some() {
                    "suspended"
                } else if device.is_some() {
                    "running"
                } else if self.detached.contains(&record.spec.name) {
                    "detached"
                } else if mirror.is_some() {
                    "mirroring"
                } else {
                    "exported"
                };
                let paths = routed
                    .as_deref()
                    .map_or_else(Vec::new, |r| path_info(r.counters(), &self.cluster));
                (device.as_ref().map(Device::path), state.to_owned(), paths)
            }
            Some((_, VdiskState::Failed(why))) => (None, format!("failed: {why}"), Vec::new()),
            None if self.detached.contains(&record.spec.name) => {
                (None, "detached".to_owned(), Vec::new())
            }
            None => (None, "not here".to_owned(), Vec::new()),
        };
        let spec = &record.spec;
        let (node, tail, primary, secondary) = match &spec.placement {
            Placement::Local { node, tail } => (Some(node.clone()), Some(tail.clone()), None, None),
            Placement::Cluster { primary, secondary } => {
                (None, None, Some(primary.clone()), secondary.clone())
            }
            Placement::Mirror { primary, .. } => (None, None, Some(primary.clone()), None),
        };
        let (mirror, mirror_copy, resync) = match &spec.placement {
            Placement::Mirror {
                primary, mirror, ..
            } => {
                let resync = self
                    .mirror(&spec.name, record)
                    .map(|m| resync_info(record, primary, mirror, &m.status().borrow()));
                (
                    Some(mirror.clone()),
                    Some(record.mirror_copy.to_string()),
                    resync,
                )
            }
            _ => (None, None, None),
        };
        VdiskInfo {
            name: spec.name.to_string(),
            id: record.id,
            epoch: record.epoch,
            size_bytes: spec.size_bytes,
            device,
            node,
            tail,
            primary,
            secondary,
            mirror,
            mirror_copy,
            resync,
            block_size: spec.block_size,
            read_only: spec.read_only,
            owner: spec.permissions.owner,
            group: spec.permissions.group,
            mode: spec.permissions.mode,
            state,
            writer: record.writer.clone(),
            multi_writer: spec.multi_writer,
            moving_to: record.moving.as_ref().map(|m| m.to.to_string()),
            paths,
        }
    }

    /// Mirrored vdisk `name`, if this node is its primary; else who to ask.
    pub fn primary_mirror<'a>(
        &self,
        name: &VdiskName,
        config: &'a Configuration,
    ) -> anyhow::Result<PrimaryMirror<'a>> {
        let (record, primary, mirror) = mirror_record(name, config)?;
        let Some(vdisk) = self.mirror(name, record) else {
            bail!(
                "vdisk {name}'s copies are kept by its primary, node {}: ask there",
                primary.node
            );
        };
        Ok(PrimaryMirror {
            record,
            primary,
            mirror,
            vdisk,
        })
    }

    /// The mirror this node runs for vdisk `name` as its primary, if it is
    /// serving `record`'s mapping.
    pub fn mirror(&self, name: &VdiskName, record: &VdiskRecord) -> Option<Arc<MirroredVdisk>> {
        match self.vdisks.get(name) {
            Some(Vdisk {
                record: running,
                state: VdiskState::Served { mirror, .. },
                ..
            }) if running.id == record.id && running.epoch == record.epoch => mirror.clone(),
            _ => None,
        }
    }

    /// Stops every device (or keeps it, for the next daemon: then returns
    /// their ids); the store keeps the vdisks for the next start.
    pub fn shutdown(&mut self, keep_devices: bool) -> Vec<u32> {
        let mut kept = Vec::new();
        for (name, vdisk) in std::mem::take(&mut self.vdisks) {
            if let VdiskState::Served {
                device: Some(device),
                ..
            } = vdisk.state
            {
                if keep_devices {
                    tracing::info!(vdisk = %name, device = %device.path().display(), "device kept for the next daemon: its I/O waits");
                    kept.push(device.id());
                    device.keep();
                    continue;
                }
                match device.stop() {
                    Ok(()) => tracing::info!(vdisk = %name, "device stopped"),
                    Err(e) => tracing::error!(vdisk = %name, "stopping device: {e:#}"),
                }
            }
        }
        // Kept devices keep their links, for the next daemon to take over.
        if !keep_devices {
            self.links.sync(&BTreeMap::new());
        }
        kept
    }

    /// Each served vdisk's metrics and paths, for the metrics endpoint.
    pub fn metrics(&self) -> Vec<VdiskMetrics> {
        self.vdisks
            .values()
            .filter_map(|vdisk| match &vdisk.state {
                VdiskState::Served { io, routed, .. } => Some(VdiskMetrics {
                    info: self.info(&vdisk.record),
                    io: io.clone(),
                    routing: routed.as_ref().map(|r| r.counters().clone()),
                }),
                VdiskState::Failed(_) => None,
            })
            .collect()
    }

    /// Every link this node's vdisks use, for the metrics endpoint.
    pub fn link_metrics(&self) -> Vec<LinkMetrics> {
        self.cluster.link_metrics()
    }
}

impl VdiskState {
    fn device(&self) -> Option<&Device> {
        match self {
            VdiskState::Served { device, .. } => device.as_ref(),
            VdiskState::Failed(_) => None,
        }
    }

    fn routed(&self) -> Option<Arc<RoutedVdisk>> {
        match self {
            VdiskState::Served { routed, .. } => routed.clone(),
            VdiskState::Failed(_) => None,
        }
    }
}

fn path_info(counters: &VdiskCounters, cluster: &Cluster) -> Vec<PathInfo> {
    counters
        .paths()
        .iter()
        .map(|(name, path)| PathInfo {
            name: name.clone(),
            reachable: cluster.is_reachable(name),
            completed: path.completed.load(Ordering::Relaxed),
            links: cluster
                .links(name)
                .into_iter()
                .map(|(addr, up)| LinkInfo { addr, up })
                .collect(),
        })
        .collect()
}

/// Whether two paths name the same file, or the same block device through
/// any of its nodes.
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) if a.file_type().is_block_device() && b.file_type().is_block_device() => {
            a.rdev() == b.rdev()
        }
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

/// The device's geometry; `device_id` is the number asked for.
fn device_options(spec: &VdiskSpec, device_id: Option<u32>) -> anyhow::Result<DeviceOptions> {
    let options = DeviceOptions {
        logical_block_size: spec.block_size,
        queues: spec.queues,
        queue_depth: spec.queue_depth,
        read_only: spec.read_only,
        device_id,
        ..DeviceOptions::new(spec.size_bytes)
    };
    options.validate()?;
    Ok(options)
}

fn check_fits(spec: &VdiskSpec, tail: &str, tail_size: u64) -> anyhow::Result<()> {
    if spec.size_bytes > tail_size {
        bail!(
            "size {} ({} bytes) is larger than tail {tail} ({tail_size} bytes)",
            format_size(spec.size_bytes),
            spec.size_bytes,
        );
    }
    Ok(())
}

/// Gives a device node the vdisk's owner, group and mode.
fn set_permissions(path: &Path, permissions: Permissions) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::os::unix::fs::chown(path, Some(permissions.owner), Some(permissions.group))
        .with_context(|| format!("cannot change the owner of {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(permissions.mode))
        .with_context(|| format!("cannot change the mode of {}", path.display()))
}

/// Starts a vdisk's device, asking for its cluster-wide number (the
/// frontend takes another when this kernel has that one in use), and gives
/// its node the vdisk's permissions.
fn start_device<B: backend::BlockBackend + Send + Sync + 'static>(
    spec: &VdiskSpec,
    id: u32,
    backend: B,
) -> anyhow::Result<Device> {
    let device = Device::start(&device_options(spec, Some(id))?, backend)?;
    set_permissions(&device.path(), spec.permissions)?;
    Ok(device)
}

/// Starts serving a vdisk on this node as its record says; never fails,
/// but records why it could not.
/// `device`: whether it runs a device here ([`Node::wants_device`]).
fn start(record: &VdiskRecord, device: bool, cluster: &Cluster, store: &Arc<Store>) -> VdiskState {
    start_served(record, device, cluster, store)
        .unwrap_or_else(|e| VdiskState::Failed(format!("{e:#}")))
}

fn start_served(
    record: &VdiskRecord,
    with_device: bool,
    cluster: &Cluster,
    store: &Arc<Store>,
) -> anyhow::Result<VdiskState> {
    let spec = &record.spec;
    if let Placement::Local { tail, .. } = &spec.placement {
        let io = IoMetrics::default();
        let local = LocalTail::open(tail, spec.block_size, spec.read_only, QueueRing)?;
        let device = start_device(spec, record.id, Metered::new(local, io.clone()))?;
        return Ok(VdiskState::Served {
            device: Some(device),
            io,
            routed: None,
            paths: Vec::new(),
            role: None,
            export: None,
            mirror: None,
        });
    }
    let Mapping {
        paths,
        export,
        mirror,
    } = mapping(record, cluster, store, None)?;
    let io = IoMetrics::default();
    let (device, routed, role) = match with_device {
        true => {
            let (device, routed, role) =
                start_routed_device(record, paths.clone(), &io, cluster, store)?;
            (Some(device), Some(routed), Some(role))
        }
        false => (None, None, None),
    };
    Ok(VdiskState::Served {
        device,
        io,
        routed,
        paths,
        role,
        export,
        mirror,
    })
}

/// A cluster or mirrored vdisk's device, routed over `paths`, writing
/// while this node holds the write role.
fn start_routed_device(
    record: &VdiskRecord,
    paths: Vec<Arc<dyn Tail>>,
    io: &IoMetrics,
    cluster: &Cluster,
    store: &Arc<Store>,
) -> anyhow::Result<(Device, Arc<RoutedVdisk>, Arc<WriteRole>)> {
    let spec = &record.spec;
    let routed = Arc::new(RoutedVdisk::spawn(
        &cluster.runtime,
        spec.name.id(),
        record.epoch,
        paths,
        cluster.route,
        cluster.lease.clone(),
    ));
    let role = WriteRole::new(
        record,
        &cluster.node,
        store.clone(),
        cluster.runtime.clone(),
        cluster.view(),
    );
    let backend = Guarded::new(Metered::new(routed.clone(), io.clone()), role.clone());
    let device = start_device(spec, record.id, backend)?;
    Ok((device, routed, role))
}

/// What this node runs for a cluster or mirrored vdisk's mapping.
struct Mapping {
    /// Its device's paths, in order of preference.
    paths: Vec<Arc<dyn Tail>>,
    /// What it serves to peers.
    export: Option<Export>,
    /// The mirror it runs as a mirrored vdisk's primary.
    mirror: Option<Arc<MirroredVdisk>>,
}

/// A vdisk's mapping on this node. A cluster vdisk's paths: this node's own
/// tail (exported to peers at the record's epoch), then the primary, then
/// the secondary. A mirrored vdisk's: its primary, which on the primary's
/// node is the mirror itself, exported to peers; the mirror's node exports
/// its copy for the primary to write.
/// `previous` is the mirror this node ran for the vdisk until now, if it
/// was its primary.
fn mapping(
    record: &VdiskRecord,
    cluster: &Cluster,
    store: &Arc<Store>,
    previous: Option<watch::Receiver<MirrorStatus>>,
) -> anyhow::Result<Mapping> {
    let spec = &record.spec;
    let id = spec.name.id();
    if let Placement::Mirror {
        primary, mirror, ..
    } = &spec.placement
    {
        if primary.node == cluster.node {
            let tail = open_own_tail(spec, primary, cluster)?;
            let mirrored = Arc::new(start_mirror(record, tail, mirror, cluster, store)?);
            return Ok(Mapping {
                paths: vec![mirrored.clone()],
                export: Some(cluster.export(id, record.epoch, mirrored.clone())),
                mirror: Some(mirrored),
            });
        }
        let export = match mirror.node == cluster.node {
            true => {
                let tail = open_own_tail(spec, mirror, cluster)?;
                let ready = take_back(record, primary, &tail, cluster, previous)?;
                // The raw copy answers the primary alone: anything else
                // writing it would go behind the dirty map's back.
                let primary_only = Clients::Only(primary.node.clone());
                let copy = copy_id(id);
                Some(cluster.export_when(copy, record.epoch, tail, primary_only, ready))
            }
            false => None,
        };
        return Ok(Mapping {
            paths: vec![cluster.remote_tail(&primary.node, id)?],
            export,
            mirror: None,
        });
    }
    let mut paths: Vec<Arc<dyn Tail>> = Vec::new();
    let mut export = None;
    if let Some(own) = spec.placement.tail_on(&cluster.node) {
        let tail = open_own_tail(spec, own, cluster)?;
        export = Some(cluster.export(id, record.epoch, tail.clone()));
        paths.push(tail);
    }
    for remote in spec
        .placement
        .cluster_tails()
        .filter(|t| t.node != cluster.node)
    {
        paths.push(cluster.remote_tail(&remote.node, id)?);
    }
    Ok(Mapping {
        paths,
        export,
        mirror: None,
    })
}

fn open_own_tail(
    spec: &VdiskSpec,
    own: &TailRef,
    cluster: &Cluster,
) -> anyhow::Result<Arc<LocalTail<EngineRing>>> {
    let tail = cluster.open_tail(&own.tail, spec.block_size, spec.read_only)?;
    check_fits(spec, &own.to_string(), tail.geometry().size_bytes)?;
    Ok(tail)
}

/// A mirror's dirty-region size when `add` gives none: a 4 KiB write
/// costs at most 1 MiB of resync, and 1 TiB needs a 128 KiB map.
pub const DEFAULT_REGION_SIZE: u32 = 1 << 20;

/// Starts the mirror of a vdisk this node is primary of, from what the
/// store says of the mirror's copy and what the dirty map holds.
fn start_mirror(
    record: &VdiskRecord,
    tail: Arc<LocalTail<EngineRing>>,
    mirror: &TailRef,
    cluster: &Cluster,
    store: &Arc<Store>,
) -> anyhow::Result<MirroredVdisk> {
    let spec = &record.spec;
    let Placement::Mirror { region_size, .. } = spec.placement else {
        bail!("vdisk {} is not mirrored", spec.name);
    };
    let geometry = DirtyGeometry::new(spec.size_bytes, u64::from(region_size))?;
    let (dirty, origin) = open_map(&map_path(cluster, &spec.name), geometry)?;
    let name = &spec.name;
    let (mirror_state, full) = match (record.mirror_copy, origin) {
        // Its record of the writes half done when this node stopped is
        // lost: they may be anywhere.
        (MirrorCopy::Current, MapOrigin::Replaced) => {
            tracing::warn!(vdisk = %name, "the dirty map was unreadable: full resync of the mirror");
            (SideState::Stale, true)
        }
        (MirrorCopy::Current, _) if dirty.regions().count() == 0 => (SideState::InSync, false),
        // Writes the mirror missed before this node stopped, whose loss
        // the store never heard of: acknowledged or not, the copies may
        // differ there until a resync.
        (MirrorCopy::Current, _) => (SideState::Stale, false),
        (MirrorCopy::Stale, MapOrigin::Opened) => (SideState::Down, false),
        (MirrorCopy::Stale, _) => {
            tracing::warn!(vdisk = %name, "the mirror's copy is stale and this node has no record of what it lacks: full resync");
            (SideState::Down, true)
        }
        (MirrorCopy::Blank, _) => {
            tracing::info!(vdisk = %name, "new mirror: full resync from the primary");
            (SideState::Down, true)
        }
    };
    let recorder = StoreRecorder {
        store: store.clone(),
        name: name.clone(),
        epoch: record.epoch,
    };
    Ok(MirroredVdisk::spawn(
        &cluster.runtime,
        MirrorSetup {
            vdisk: name.id(),
            epoch: record.epoch,
            sides: [tail, cluster.remote_tail(&mirror.node, copy_id(name.id()))?],
            dirty,
            states: [SideState::InSync, mirror_state],
            store_current: record.mirror_copy == MirrorCopy::Current,
            replica: ReplicaConfig {
                // Local reads cost no round trip.
                read_from: Side::A,
                tracked: Some(Side::B),
                // This node's own copy: never behind, so a restart may
                // trust it.
                required: Some(Side::A),
            },
            config: cluster.mirror,
            recorder: Some(Arc::new(recorder)),
            full,
        },
    ))
}

/// How long a former primary waits for each piece of a region it takes
/// back from the new one, and between tries.
const TAKE_BACK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
const TAKE_BACK_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// What a former primary does before it serves its copy of a mirrored
/// vdisk: it copies from the new primary the regions its dirty map left,
/// writes it may have made on its own copy alone (which the new primary
/// cannot know of), then drops the map. First it waits for its old mirror
/// (`previous`) to end, so that no write of its lands after. Tried until
/// it succeeds, or the export it prepares is dropped.
fn take_back(
    record: &VdiskRecord,
    primary: &TailRef,
    tail: &Arc<LocalTail<EngineRing>>,
    cluster: &Cluster,
    previous: Option<watch::Receiver<MirrorStatus>>,
) -> anyhow::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    let spec = &record.spec;
    let Placement::Mirror { region_size, .. } = spec.placement else {
        bail!("vdisk {} is not mirrored", spec.name);
    };
    let geometry = DirtyGeometry::new(spec.size_bytes, u64::from(region_size))?;
    let path = map_path(cluster, &spec.name);
    // The new primary's service of the vdisk, which mirrors what it reads.
    let source = cluster.remote_tail(&primary.node, spec.name.id())?;
    let target: Arc<dyn Tail> = tail.clone();
    let (name, from, epoch) = (spec.name.clone(), primary.node.clone(), record.epoch);
    Ok(async move {
        if let Some(mut previous) = previous {
            while previous.changed().await.is_ok() {}
        }
        let mut logged = false;
        loop {
            let (source, target) = (source.clone(), target.clone());
            match take_back_once(&path, geometry, source, target, epoch).await {
                Ok(0) => return,
                Ok(copied) => {
                    tracing::info!(vdisk = %name, primary = %from, copied, "took back from the new primary the regions this node wrote alone as the old one");
                    return;
                }
                Err(e) if !logged => {
                    tracing::warn!(vdisk = %name, primary = %from, "cannot take back from the new primary yet, so this copy is not served: {e:#}");
                    logged = true;
                }
                Err(_) => {}
            }
            tokio::time::sleep(TAKE_BACK_RETRY).await;
        }
    })
}

/// One try of [`take_back`]: the bytes copied.
async fn take_back_once(
    path: &Path,
    geometry: DirtyGeometry,
    source: Arc<dyn Tail>,
    target: Arc<dyn Tail>,
    epoch: u64,
) -> anyhow::Result<u64> {
    if !path.exists() {
        return Ok(0);
    }
    let (mut dirty, _) = open_map(path, geometry)?;
    let copied = pull_dirty(source, target, epoch, &mut dirty, TAKE_BACK_TIMEOUT).await?;
    drop(dirty);
    std::fs::remove_file(path).with_context(|| format!("cannot remove {}", path.display()))?;
    Ok(copied)
}

/// Where the dirty map of mirrored vdisk `name` lives on its primary.
fn map_path(cluster: &Cluster, name: &VdiskName) -> std::path::PathBuf {
    cluster.maps_dir.join(format!("{name}.map"))
}

/// Opens a dirty map, or creates it; says whether an earlier map was
/// missing or unreadable (its record of what the mirror lacks is lost).
/// Where a dirty map came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MapOrigin {
    Opened,
    /// There was none: this node kept no record for the vdisk.
    Created,
    /// There was one, unreadable: whatever it recorded is lost.
    Replaced,
}

/// Opens a dirty map, or creates it.
fn open_map(path: &Path, geometry: DirtyGeometry) -> anyhow::Result<(DirtyMapFile, MapOrigin)> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut origin = MapOrigin::Created;
    if path.exists() {
        match DirtyMapFile::open(path, geometry) {
            Ok(map) => return Ok((map, MapOrigin::Opened)),
            Err(e) => {
                tracing::warn!(map = %path.display(), "unreadable dirty map ({e:#}): starting a new one");
                std::fs::remove_file(path)
                    .with_context(|| format!("cannot remove {}", path.display()))?;
                origin = MapOrigin::Replaced;
            }
        }
    }
    Ok((DirtyMapFile::create(path, geometry)?, origin))
}

/// Records a mirror's copy in the configuration store, as of the epoch its
/// primary serves: a primary the vdisk moved on from is refused.
struct StoreRecorder {
    store: Arc<Store>,
    name: VdiskName,
    epoch: u64,
}

impl CopyRecorder for StoreRecorder {
    fn record(&self, current: bool) -> RecordFuture {
        let store = self.store.clone();
        let command = Command::SetMirrorCopy {
            name: self.name.clone(),
            epoch: self.epoch,
            copy: match current {
                true => MirrorCopy::Current,
                false => MirrorCopy::Stale,
            },
        };
        Box::pin(async move {
            let response = store.write(command).await.map_err(|e| e.to_string())?;
            match response.refused {
                Some(why) => Err(why),
                None => Ok(()),
            }
        })
    }
}

/// A mirrored vdisk this node runs as its primary, found under the node's
/// lock and used without it.
pub struct PrimaryMirror<'a> {
    record: &'a VdiskRecord,
    primary: &'a TailRef,
    mirror: &'a TailRef,
    vdisk: Arc<MirroredVdisk>,
}

impl PrimaryMirror<'_> {
    pub fn vdisk(&self) -> &MirroredVdisk {
        &self.vdisk
    }

    /// How its copies stand now.
    pub fn resync_info(&self) -> ResyncInfo {
        let status = *self.vdisk.status().borrow();
        resync_info(self.record, self.primary, self.mirror, &status)
    }
}

/// A mirrored vdisk's record and its two tails.
fn mirror_record<'a>(
    name: &VdiskName,
    config: &'a Configuration,
) -> anyhow::Result<(&'a VdiskRecord, &'a TailRef, &'a TailRef)> {
    let Some(record) = config.vdisks.get(name) else {
        bail!("no vdisk named {name}");
    };
    match &record.spec.placement {
        Placement::Mirror {
            primary, mirror, ..
        } => Ok((record, primary, mirror)),
        _ => bail!("vdisk {name} is not mirrored"),
    }
}

fn resync_info(
    record: &VdiskRecord,
    primary: &TailRef,
    mirror: &TailRef,
    status: &MirrorStatus,
) -> ResyncInfo {
    let state = match (status.recorded, status.sides[Side::B.index()]) {
        (Recorded::Unrecordable, _) => "fenced",
        (_, SideState::InSync) => "in sync",
        (_, SideState::Down) => "degraded",
        (_, SideState::Stale) => "resyncing",
    };
    let eta_secs =
        (state == "resyncing" && status.rate > 0).then(|| status.dirty_bytes.div_ceil(status.rate));
    ResyncInfo {
        vdisk: record.spec.name.to_string(),
        primary: primary.clone(),
        mirror: mirror.clone(),
        state: state.to_owned(),
        mirror_copy: record.mirror_copy.to_string(),
        size_bytes: record.spec.size_bytes,
        region_size: status.region_size,
        dirty_bytes: status.dirty_bytes,
        resynced_bytes: status.resynced_bytes,
        rate_bytes_per_sec: status.rate,
        eta_secs,
        full: status.full,
    }
}

/// Moves a running vdisk to its record's new mapping: its own tail's
/// export (or mirror) follows, and its device's held requests go out on
/// the new paths with the new epoch.
fn remap(
    vdisk: &mut Vdisk,
    record: &VdiskRecord,
    cluster: &Cluster,
    store: &Arc<Store>,
) -> anyhow::Result<()> {
    let VdiskState::Served {
        routed,
        paths,
        export,
        mirror,
        ..
    } = &mut vdisk.state
    else {
        return Ok(());
    };
    // The old export goes first: the new one may serve the same tail.
    *export = None;
    let previous = mirror.take().map(|m| m.status());
    let new = mapping(record, cluster, store, previous)?;
    *export = new.export;
    *mirror = new.mirror;
    paths.clone_from(&new.paths);
    if let Some(routed) = routed {
        routed.resume(Some((record.epoch, new.paths)));
    }
    Ok(())
}
