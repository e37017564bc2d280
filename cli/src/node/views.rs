//! What this node shows of the vdisks it runs: `list` and `status` rows,
//! the metrics, and a mirror's resync state.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::bail;
use backend::mirror::{MirrorStatus, MirroredVdisk, Recorded, Side, SideState};
use backend::route::VdiskCounters;
use configdb::{Configuration, Placement, TailRef, VdiskName, VdiskRecord};
use ublk_frontend::Device;

use crate::control::{LinkInfo, PathInfo, ResyncInfo, VdiskInfo};
use crate::daemon::cluster::{Cluster, LinkMetrics};

use super::{Node, Vdisk, VdiskMetrics, VdiskState};

impl Node {
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
                (device.as_ref(), state.to_owned(), paths)
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
            device: device.map(Device::path),
            zero_copy: device.is_some_and(Device::zero_copy),
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
