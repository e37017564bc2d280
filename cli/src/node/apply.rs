//! Carrying out the steps of a reconciliation ([`plan`](super::plan)):
//! devices started and removed, permissions set, mappings swapped, I/O
//! suspended for a move.

use configdb::VdiskRecord;

use super::plan::Step;
use super::start::{map_path, remap, set_permissions, start};
use super::{Node, Suspension, Vdisk, VdiskState};
use configdb::VdiskName;

impl Node {
    /// Carries out `step`; a suspension is left to the async side.
    pub(super) fn apply(&mut self, step: Step) -> Option<Suspension> {
        match step {
            Step::Remove(name) => self.remove(&name),
            Step::Start(record) => self.start(&record),
            Step::Update {
                record,
                permissions,
                remap,
                cancel_suspension,
            } => self.update(&record, permissions, remap, cancel_suspension),
            Step::Suspend { name, move_id } => return self.suspend(&name, move_id),
        }
        None
    }

    /// Starts the vdisk of `record`: new here, or failed before.
    fn start(&mut self, record: &VdiskRecord) {
        let name = record.spec.name.clone();
        let device = self.wants_device(record);
        if self.vdisks.get(&name).is_some_and(|v| v.deleted) {
            // Gone from the store, in use here: nothing changes until it
            // is free and removed.
            return;
        }
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
        match self.vdisks.get_mut(&name) {
            Some(vdisk) => {
                vdisk.state = state;
                vdisk.record = record.clone();
            }
            None => {
                let vdisk = Vdisk {
                    record: record.clone(),
                    state,
                    suspended_for: None,
                    deleted: false,
                };
                self.vdisks.insert(name, vdisk);
            }
        }
    }

    /// Brings a running vdisk to `record`, as [`Step::Update`] says.
    fn update(&mut self, record: &VdiskRecord, permissions: bool, new_mapping: bool, cancel: bool) {
        let name = &record.spec.name;
        let Some(vdisk) = self.vdisks.get_mut(name) else {
            return;
        };
        if let VdiskState::Served {
            role: Some(role), ..
        } = &vdisk.state
        {
            role.follow(record);
        }
        if permissions {
            if let Some(device) = vdisk.state.device() {
                match set_permissions(&device.path(), record.spec.permissions) {
                    Ok(()) => tracing::info!(vdisk = %name, "device permissions changed"),
                    Err(e) => tracing::error!(vdisk = %name, "{e:#}"),
                }
            }
        }
        if new_mapping {
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
        } else if cancel {
            if let Some(routed) = vdisk.state.routed() {
                routed.resume(None);
            }
            tracing::info!(vdisk = %name, "reconfiguration cancelled: I/O resumed on the old mapping");
            vdisk.suspended_for = None;
        }
        vdisk.record = record.clone();
    }

    /// The suspension move `move_id` asks of this node, once.
    fn suspend(&mut self, name: &VdiskName, move_id: u64) -> Option<Suspension> {
        if !self.acking.insert(move_id) {
            return None;
        }
        let routed = self.vdisks.get_mut(name).and_then(|vdisk| {
            vdisk.suspended_for = Some(move_id);
            vdisk.state.routed()
        });
        tracing::info!(vdisk = %name, move_id, "reconfiguration: suspending I/O");
        Some(Suspension {
            name: name.clone(),
            move_id,
            routed,
        })
    }

    /// Stops running a vdisk here, unless its device is in use: then it is
    /// kept, and removed by a later reconciliation once it is free.
    pub(super) fn remove(&mut self, name: &VdiskName) {
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
}
