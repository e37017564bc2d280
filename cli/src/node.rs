//! The node's vdisks: the catalog on disk and the devices running from it.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::{bail, Context};
use backend::route::{RoutedVdisk, TailPath, VdiskCounters};
use backend::{IoMetrics, LocalTail, Metered};
use configdb::{Catalog, Placement, TailRef, VdiskName, VdiskSpec};
use ublk_frontend::{Device, DeviceOptions, QueueRing};

use crate::cluster::{Cluster, Export, LinkMetrics, EPOCH};
use crate::control::{AddRequest, LinkInfo, PathInfo, VdiskInfo};
use crate::size::format_size;

/// The catalog's file inside the data dir.
const CATALOG_FILE: &str = "catalog.redb";

pub struct Node {
    catalog: Catalog,
    cluster: Cluster,
    vdisks: BTreeMap<VdiskName, Vdisk>,
}

struct Vdisk {
    spec: VdiskSpec,
    state: VdiskState,
}

/// A served vdisk as the metrics endpoint sees it.
pub struct VdiskMetrics {
    pub info: VdiskInfo,
    pub io: IoMetrics,
    pub routing: Option<Arc<VdiskCounters>>,
}

enum VdiskState {
    /// Served on this node: through a device, to peers, or both. Fields
    /// drop in order: the device (and its I/O) goes before the export.
    Served {
        device: Option<Device>,
        /// What the device's I/O does (idle without a device).
        io: IoMetrics,
        routing: Option<Arc<VdiskCounters>>,
        /// Held, not read: dropping it stops serving the tail to peers.
        _export: Option<Export>,
    },
    /// Recorded but not served: why it could not be started.
    Failed(String),
}

impl Node {
    /// Opens the data dir and brings back every recorded vdisk. A vdisk that
    /// cannot start stays recorded, in the failed state, so that nothing an
    /// admin configured is forgotten.
    pub fn open(data_dir: &Path, cluster: Cluster) -> anyhow::Result<Self> {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("cannot create data dir {}", data_dir.display()))?;
        let catalog_path = data_dir.join(CATALOG_FILE);
        let catalog = Catalog::open(&catalog_path)
            .with_context(|| format!("cannot open {}", catalog_path.display()))?;
        let mut node = Node {
            catalog,
            cluster,
            vdisks: BTreeMap::new(),
        };
        for spec in node.catalog.list()? {
            let state = match start(&spec, &node.cluster) {
                Ok(state) => {
                    match state.device() {
                        Some(device) if device.recovered() => tracing::info!(
                            vdisk = %spec.name,
                            device = %device.path().display(),
                            "vdisk restored: device taken over with its held I/O"
                        ),
                        _ => tracing::info!(vdisk = %spec.name, "vdisk restored"),
                    }
                    if let Some(device) = state.device() {
                        node.remember_device_id(&spec, device);
                    }
                    state
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

    /// Creates a vdisk and starts serving it: its device, and its tail to
    /// peers if this node holds one. On any error nothing is recorded, and
    /// nothing is left running.
    pub fn add(&mut self, request: AddRequest) -> anyhow::Result<VdiskInfo> {
        let name: VdiskName = request.name.parse()?;
        if self.vdisks.contains_key(&name) {
            bail!("vdisk {name} already exists");
        }
        let placement = match (request.tail, request.primary, request.secondary) {
            (Some(tail), None, None) => Placement::Local { tail },
            (None, Some(primary), secondary) => {
                if secondary.as_ref().is_some_and(|s| s.node == primary.node) {
                    bail!("the primary and the secondary must be tails of different nodes");
                }
                for tail in std::iter::once(&primary).chain(&secondary) {
                    self.cluster.check_remote_tail(tail)?;
                }
                Placement::Cluster { primary, secondary }
            }
            _ => bail!("give either --tail, or --primary with an optional --secondary"),
        };
        if let Some(other) = self
            .vdisks
            .values()
            .find(|v| shares_a_tail(&v.spec.placement, &placement))
        {
            bail!(
                "{} is already used by vdisk {}",
                describe_tails(&placement),
                other.spec.name
            );
        }
        let mut spec = VdiskSpec {
            name,
            size_bytes: request.size_bytes,
            placement,
            block_size: request.block_size,
            queues: request.queues,
            queue_depth: request.queue_depth,
            read_only: request.read_only,
            device_id: None,
        };
        let state = start(&spec, &self.cluster)?;
        spec.device_id = state.device().map(Device::id);
        // On error `state` drops here: the device leaves the kernel and the
        // tail is no longer exported.
        self.catalog.insert(&spec)?;
        tracing::info!(vdisk = %spec.name, placement = %describe_tails(&spec.placement), "vdisk added");
        let vdisk = Vdisk { spec, state };
        let info = vdisk.info(&self.cluster);
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
        if let Some(device) = vdisk.state.device() {
            device.ensure_unused()?;
        }
        self.catalog.remove(&name)?;
        if let Some(Vdisk {
            state:
                VdiskState::Served {
                    device: Some(device),
                    ..
                },
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
        self.vdisks
            .values()
            .map(|v| v.info(&self.cluster))
            .collect()
    }

    /// Stops every device; the catalog keeps them for the next start.
    pub fn shutdown(&mut self, keep_devices: bool) {
        for (name, vdisk) in std::mem::take(&mut self.vdisks) {
            if let VdiskState::Served {
                device: Some(device),
                ..
            } = vdisk.state
            {
                if keep_devices {
                    tracing::info!(vdisk = %name, device = %device.path().display(), "device kept for the next daemon: its I/O waits");
                    device.keep();
                    continue;
                }
                match device.stop() {
                    Ok(()) => tracing::info!(vdisk = %name, "device stopped"),
                    Err(e) => tracing::error!(vdisk = %name, "stopping device: {e:#}"),
                }
            }
        }
    }

    /// Each served vdisk's metrics and paths, for the metrics endpoint.
    pub fn metrics(&self) -> Vec<VdiskMetrics> {
        self.vdisks
            .values()
            .filter_map(|vdisk| match &vdisk.state {
                VdiskState::Served { io, routing, .. } => Some(VdiskMetrics {
                    info: vdisk.info(&self.cluster),
                    io: io.clone(),
                    routing: routing.clone(),
                }),
                VdiskState::Failed(_) => None,
            })
            .collect()
    }

    /// Every link this node's vdisks use, for the metrics endpoint.
    pub fn link_metrics(&self) -> Vec<LinkMetrics> {
        self.cluster.link_metrics()
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

impl VdiskState {
    fn device(&self) -> Option<&Device> {
        match self {
            VdiskState::Served { device, .. } => device.as_ref(),
            VdiskState::Failed(_) => None,
        }
    }
}

impl Vdisk {
    fn info(&self, cluster: &Cluster) -> VdiskInfo {
        let (device, state, paths) = match &self.state {
            VdiskState::Served {
                device, routing, ..
            } => {
                let state = if device.is_some() {
                    "running"
                } else {
                    "exported"
                };
                let paths = routing
                    .as_deref()
                    .map_or_else(Vec::new, |r| path_info(r, cluster));
                (device.as_ref().map(Device::path), state.to_owned(), paths)
            }
            VdiskState::Failed(why) => (None, format!("failed: {why}"), Vec::new()),
        };
        let (tail, primary, secondary) = match &self.spec.placement {
            Placement::Local { tail } => (Some(tail.clone()), None, None),
            Placement::Cluster { primary, secondary } => {
                (None, Some(primary.clone()), secondary.clone())
            }
        };
        VdiskInfo {
            name: self.spec.name.to_string(),
            size_bytes: self.spec.size_bytes,
            device,
            tail,
            primary,
            secondary,
            block_size: self.spec.block_size,
            read_only: self.spec.read_only,
            state,
            paths,
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

/// The tails of a placement, as a person writes them.
fn describe_tails(placement: &Placement) -> String {
    match placement {
        Placement::Local { tail } => format!("tail {}", tail.display()),
        Placement::Cluster {
            primary,
            secondary: Some(secondary),
        } => format!("tails {primary} and {secondary}"),
        Placement::Cluster { primary, .. } => format!("tail {primary}"),
    }
}

/// Whether two vdisks would share a tail: the same local file or device,
/// or the same cluster tail.
fn shares_a_tail(a: &Placement, b: &Placement) -> bool {
    match (a, b) {
        (Placement::Local { tail: a }, Placement::Local { tail: b }) => same_file(a, b),
        (
            Placement::Cluster {
                primary: pa,
                secondary: sa,
            },
            Placement::Cluster {
                primary: pb,
                secondary: sb,
            },
        ) => {
            let a: Vec<&TailRef> = std::iter::once(pa).chain(sa).collect();
            std::iter::once(pb).chain(sb).any(|t| a.contains(&t))
        }
        _ => false,
    }
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

fn device_options(spec: &VdiskSpec) -> anyhow::Result<DeviceOptions> {
    let options = DeviceOptions {
        logical_block_size: spec.block_size,
        queues: spec.queues,
        queue_depth: spec.queue_depth,
        read_only: spec.read_only,
        device_id: spec.device_id,
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

/// Starts serving a vdisk on this node as its placement says.
fn start(spec: &VdiskSpec, cluster: &Cluster) -> anyhow::Result<VdiskState> {
    let options = device_options(spec)?;
    match &spec.placement {
        Placement::Local { tail } => {
            let local = LocalTail::open(tail, spec.block_size, spec.read_only, QueueRing)?;
            check_fits(
                spec,
                &tail.display().to_string(),
                local.geometry().size_bytes,
            )?;
            let io = IoMetrics::default();
            Ok(VdiskState::Served {
                device: Some(Device::start(&options, Metered::new(local, io.clone()))?),
                io,
                routing: None,
                _export: None,
            })
        }
        Placement::Cluster { primary, secondary } => {
            start_cluster_vdisk(spec, primary, secondary.as_ref(), &options, cluster)
        }
    }
}

/// A cluster vdisk: this node's tail of it (if any) is exported to peers
/// and is the first path; then the primary, then the secondary.
fn start_cluster_vdisk(
    spec: &VdiskSpec,
    primary: &TailRef,
    secondary: Option<&TailRef>,
    options: &DeviceOptions,
    cluster: &Cluster,
) -> anyhow::Result<VdiskState> {
    let id = spec.name.id();
    let mut paths = Vec::new();
    let mut export = None;
    if let Some(own) = spec.placement.tail_on(&cluster.node) {
        let tail = cluster.open_tail(&own.tail, spec.block_size, spec.read_only)?;
        check_fits(spec, &own.to_string(), tail.geometry().size_bytes)?;
        export = Some(cluster.export(id, tail.clone()));
        paths.push(TailPath::Local(tail));
    }
    for remote in std::iter::once(primary)
        .chain(secondary)
        .filter(|t| t.node != cluster.node)
    {
        paths.push(TailPath::Peer(cluster.peer(&remote.node)?));
    }
    if !cluster.devices {
        if export.is_none() {
            bail!(
                "node {} has devices = false and holds none of {}: it has nothing to serve",
                cluster.node,
                describe_tails(&spec.placement)
            );
        }
        return Ok(VdiskState::Served {
            device: None,
            io: IoMetrics::default(),
            routing: None,
            _export: export,
        });
    }
    let routed = RoutedVdisk::spawn(&cluster.runtime, id, EPOCH, paths, cluster.route);
    let routing = Some(routed.counters().clone());
    let io = IoMetrics::default();
    let device = Device::start(options, Metered::new(routed, io.clone()))?;
    Ok(VdiskState::Served {
        device: Some(device),
        io,
        routing,
        _export: export,
    })
}
