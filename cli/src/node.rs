//! The node's vdisks: the catalog on disk and the devices running from it.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context};
use backend::LocalTail;
use configdb::{Catalog, VdiskName, VdiskSpec};
use ublk_frontend::{Device, DeviceOptions, QueueRing};

use crate::control::{AddRequest, VdiskInfo};
use crate::size::format_size;

/// The catalog's file inside the data dir.
const CATALOG_FILE: &str = "catalog.redb";

pub struct Node {
    catalog: Catalog,
    vdisks: BTreeMap<VdiskName, Vdisk>,
}

struct Vdisk {
    spec: VdiskSpec,
    state: VdiskState,
}

enum VdiskState {
    Running(Device),
    /// Recorded but not served: why its device could not be started.
    Failed(String),
}

impl Node {
    /// Opens the data dir and brings back every recorded vdisk. A vdisk that
    /// cannot start stays recorded, in the failed state, so that nothing an
    /// admin configured is forgotten.
    pub fn open(data_dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("cannot create data dir {}", data_dir.display()))?;
        let catalog_path = data_dir.join(CATALOG_FILE);
        let catalog = Catalog::open(&catalog_path)
            .with_context(|| format!("cannot open {}", catalog_path.display()))?;
        let mut node = Node {
            catalog,
            vdisks: BTreeMap::new(),
        };
        for spec in node.catalog.list()? {
            let state = match start_device(&spec) {
                Ok(device) => {
                    tracing::info!(vdisk = %spec.name, device = %device.path().display(), "vdisk restored");
                    node.remember_device_id(&spec, &device);
                    VdiskState::Running(device)
                }
                Err(e) => {
                    tracing::error!(vdisk = %spec.name, "cannot restore vdisk: {e:#}");
                    VdiskState::Failed(format!("{e:#}"))
                }
            };
            node.vdisks.insert(spec.name.clone(), Vdisk { spec, state });
        }
        Ok(node)
    }

    /// Creates a vdisk on a local tail and starts its device. On any error
    /// nothing is recorded and no device is left.
    pub fn add(&mut self, request: AddRequest) -> anyhow::Result<VdiskInfo> {
        let name: VdiskName = request.name.parse()?;
        if self.vdisks.contains_key(&name) {
            bail!("vdisk {name} already exists");
        }
        if let Some(other) = self
            .vdisks
            .values()
            .find(|v| same_tail(&v.spec.tail, &request.tail))
        {
            bail!(
                "tail {} is already used by vdisk {}",
                request.tail.display(),
                other.spec.name
            );
        }
        let mut spec = VdiskSpec {
            name,
            size_bytes: request.size_bytes,
            tail: request.tail,
            block_size: request.block_size,
            queues: request.queues,
            queue_depth: request.queue_depth,
            read_only: request.read_only,
            device_id: None,
        };
        let device = start_device(&spec)?;
        spec.device_id = Some(device.id());
        // On error `device` drops here and removes itself from the kernel.
        self.catalog.insert(&spec)?;
        tracing::info!(vdisk = %spec.name, device = %device.path().display(), "vdisk added");
        let vdisk = Vdisk {
            spec,
            state: VdiskState::Running(device),
        };
        let info = vdisk.info();
        self.vdisks.insert(vdisk.spec.name.clone(), vdisk);
        Ok(info)
    }

    /// Removes a vdisk's device and forgets it; the tail keeps the data.
    /// Refuses while the device is in use (mounted, or held by a volume
    /// manager).
    pub fn del(&mut self, name: &str) -> anyhow::Result<()> {
        let name: VdiskName = name.parse()?;
        let Some(vdisk) = self.vdisks.get(&name) else {
            bail!("no vdisk named {name}");
        };
        if let VdiskState::Running(device) = &vdisk.state {
            device.ensure_unused()?;
        }
        self.catalog.remove(&name)?;
        if let Some(Vdisk {
            state: VdiskState::Running(device),
            ..
        }) = self.vdisks.remove(&name)
        {
            device
                .stop()
                .with_context(|| format!("vdisk {name} is forgotten, but stopping its device"))?;
        }
        tracing::info!(vdisk = %name, "vdisk deleted");
        Ok(())
    }

    pub fn list(&self) -> Vec<VdiskInfo> {
        self.vdisks.values().map(Vdisk::info).collect()
    }

    /// Stops every device; the catalog keeps them for the next start.
    pub fn shutdown(&mut self) {
        for (name, vdisk) in std::mem::take(&mut self.vdisks) {
            if let VdiskState::Running(device) = vdisk.state {
                match device.stop() {
                    Ok(()) => tracing::info!(vdisk = %name, "device stopped"),
                    Err(e) => tracing::error!(vdisk = %name, "stopping device: {e:#}"),
                }
            }
        }
    }

    /// A restored device may have been given another number than before:
    /// record it, so that the next restart asks for this one.
    fn remember_device_id(&self, spec: &VdiskSpec, device: &Device) {
        if spec.device_id == Some(device.id()) {
            return;
        }
        let mut updated = spec.clone();
        updated.device_id = Some(device.id());
        if let Err(e) = self.catalog.update(&updated) {
            tracing::warn!(vdisk = %spec.name, "cannot record the device number: {e}");
        }
    }
}

impl Vdisk {
    fn info(&self) -> VdiskInfo {
        let (device, state) = match &self.state {
            VdiskState::Running(device) => (Some(device.path()), "running".to_owned()),
            VdiskState::Failed(why) => (None, format!("failed: {why}")),
        };
        VdiskInfo {
            name: self.spec.name.to_string(),
            size_bytes: self.spec.size_bytes,
            device,
            tail: self.spec.tail.clone(),
            block_size: self.spec.block_size,
            read_only: self.spec.read_only,
            state,
        }
    }
}

/// Whether two paths name the same file, or the same block device through
/// any of its nodes.
fn same_tail(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) if a.file_type().is_block_device() && b.file_type().is_block_device() => {
            a.rdev() == b.rdev()
        }
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

/// Opens the tail, checks that the vdisk fits in it, and starts the device.
fn start_device(spec: &VdiskSpec) -> anyhow::Result<Device> {
    let options = DeviceOptions {
        logical_block_size: spec.block_size,
        queues: spec.queues,
        queue_depth: spec.queue_depth,
        read_only: spec.read_only,
        device_id: spec.device_id,
        ..DeviceOptions::new(spec.size_bytes)
    };
    options.validate()?;
    let tail = LocalTail::open(&spec.tail, spec.block_size, spec.read_only, QueueRing)?;
    let tail_size = tail.geometry().size_bytes;
    if spec.size_bytes > tail_size {
        bail!(
            "size {} ({} bytes) is larger than tail {} ({} bytes)",
            format_size(spec.size_bytes),
            spec.size_bytes,
            spec.tail.display(),
            tail_size
        );
    }
    Ok(Device::start(&options, tail)?)
}
