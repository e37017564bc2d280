//! Starting a vdisk on this node, and what that takes: its device, its
//! paths (this node's tail, the peers', a mirror), the export of its tail
//! to peers, a mirror's dirty map and a former primary's take-back; and
//! swapping its mapping at a new epoch.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use backend::mirror::{
    copy_id, pull_dirty, CopyRecorder, DirtyGeometry, DirtyMapFile, MirrorSetup, MirrorStatus,
    MirroredVdisk, RecordFuture, ReplicaConfig, Side, SideState,
};
use backend::peer::Clients;
use backend::route::RoutedVdisk;
use backend::{EngineRing, IoMetrics, LocalTail, Metered, Tail};
use configdb::{
    Command, MirrorCopy, Permissions, Placement, Store, TailRef, VdiskName, VdiskRecord, VdiskSpec,
};
use tokio::sync::watch;
use ublk_frontend::{Device, QueueRing};

use crate::daemon::cluster::{Cluster, Export};
use crate::daemon::writer::{Guarded, WriteRole};

use super::add::check_fits;
use super::{device_options, Vdisk, VdiskState};

/// Gives a device node the vdisk's owner, group and mode.
pub(super) fn set_permissions(path: &Path, permissions: Permissions) -> anyhow::Result<()> {
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
pub(super) fn start(
    record: &VdiskRecord,
    device: bool,
    cluster: &Cluster,
    store: &Arc<Store>,
) -> VdiskState {
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
        let metered = Metered::new(local, io.clone());
        let options = device_options(spec, Some(record.id))?;
        // The tail's I/O runs on the queue's ring, where the kernel can
        // register the request's pages: zero copy.
        let device = if cluster.zero_copy {
            Device::start_zero_copy(&options, metered)?
        } else {
            Device::start(&options, metered)?
        };
        set_permissions(&device.path(), spec.permissions)?;
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
pub(super) fn start_routed_device(
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
pub(super) fn map_path(cluster: &Cluster, name: &VdiskName) -> std::path::PathBuf {
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

/// Moves a running vdisk to its record's new mapping: its own tail's
/// export (or mirror) follows, and its device's held requests go out on
/// the new paths with the new epoch.
pub(super) fn remap(
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
