//! The vdisks this node runs, kept in step with the configuration store:
//! every configuration the store applies is reconciled here. Devices are
//! created and removed, their nodes get the stored permissions, mappings
//! are swapped at a new epoch, and moves are suspended and acknowledged.
//!
//! `plan.rs` decides, as a pure function of what runs here and the new
//! configuration, which steps that takes; `apply.rs` carries them out, with
//! `start.rs` for what starting a vdisk involves. This file holds the node's
//! state and the commands that act on it directly (detach, attach,
//! shutdown); `add.rs` checks an add, `views.rs` makes what `list`,
//! `status` and the metrics show.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use anyhow::bail;
use backend::mirror::MirroredVdisk;
use backend::route::{RoutedVdisk, VdiskCounters};
use backend::{IoMetrics, Tail};
use configdb::{Configuration, Store, VdiskName, VdiskRecord, VdiskSpec};
use ublk_frontend::{Device, DeviceOptions};

use crate::control::VdiskInfo;
use crate::daemon::cluster::{Cluster, Export};
use crate::daemon::detached::Detached;
use crate::daemon::links::DeviceLinks;
use crate::daemon::writer::WriteRole;

mod add;
mod apply;
mod plan;
mod start;
mod views;

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
