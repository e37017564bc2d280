//! The vdisks this node runs, kept in step with the configuration store:
//! every configuration the store applies is reconciled here. Devices are
//! created and removed, their nodes get the stored permissions, mappings
//! are swapped at a new epoch, and moves are suspended and acknowledged.
//!
//! `plan.rs` decides, as a pure function of what runs here and the new
//! configuration, which steps that takes; `apply.rs` carries them out, with
//! `start.rs` for what starting a vdisk involves. This file holds the node's
//! state and the commands that act on it directly (detach, attach, add's
//! checks, the views for `list`, `status` and the metrics).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::bail;
use backend::mirror::{DirtyGeometry, MirrorStatus, MirroredVdisk, Recorded, Side, SideState};
use backend::route::{RoutedVdisk, VdiskCounters};
use backend::{IoMetrics, LocalTail, Tail};
use configdb::{
    Configuration, Permissions, Placement, Store, TailRef, VdiskName, VdiskRecord, VdiskSpec,
};
use ublk_frontend::{Device, DeviceOptions, QueueRing};

use crate::client::size::format_size;
use crate::control::{AddRequest, LinkInfo, PathInfo, ResyncInfo, VdiskInfo};
use crate::daemon::cluster::{Cluster, Export, LinkMetrics};
use crate::daemon::detached::Detached;
use crate::daemon::links::DeviceLinks;
use crate::daemon::writer::WriteRole;

mod apply;
mod plan;
mod start;

use plan::{plan, Me, Running, Step};
use start::{start, start_routed_device};

/// A mirror's dirty-region size when `add` gives none: a 4 KiB write
/// costs at most 1 MiB of resync, and 1 TiB needs a 128 KiB map.
pub const DEFAULT_REGION_SIZE: u32 = 1 << 20;

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

    /// This node, as the plan of a reconciliation sees it.
    fn me(&self) -> Me<'_> {
        Me {
            name: &self.cluster.node,
            devices: self.cluster.devices,
            detached: self.detached.names(),
        }
    }

    fn wants_device(&self, record: &VdiskRecord) -> bool {
        self.me().wants_device(record)
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
    /// mappings ([`plan`] decides, [`apply`](Self::apply) carries out).
    /// Returns the moves it must suspend for.
    pub fn reconcile(&mut self, config: &Configuration) -> Vec<Suspension> {
        let running = self
            .vdisks
            .iter()
            .map(|(name, v)| {
                let view = Running {
                    record: &v.record,
                    failed: matches!(v.state, VdiskState::Failed(_)),
                    deleted: v.deleted,
                    suspended_for: v.suspended_for,
                };
                (name.clone(), view)
            })
            .collect();
        let steps = plan(&running, config, &self.me(), &self.acking);
        let suspensions = steps
            .into_iter()
            .filter_map(|step| self.apply(step))
            .collect();
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

    fn has_part(&self, record: &VdiskRecord) -> bool {
        self.me().has_part(record)
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
                self.apply(Step::Start(record.clone()));
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
