//! What only this node can check of an `add`: its files, its vdisks, the
//! live members; and the vdisk's spec made from the request.

use std::path::Path;

use anyhow::bail;
use backend::mirror::DirtyGeometry;
use backend::LocalTail;
use configdb::{Configuration, Permissions, Placement, VdiskName, VdiskSpec};
use ublk_frontend::QueueRing;

use crate::client::size::format_size;
use crate::control::AddRequest;

use super::{device_options, Node, DEFAULT_REGION_SIZE};

impl Node {
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

pub(super) fn check_fits(spec: &VdiskSpec, tail: &str, tail_size: u64) -> anyhow::Result<()> {
    if spec.size_bytes > tail_size {
        bail!(
            "size {} ({} bytes) is larger than tail {tail} ({tail_size} bytes)",
            format_size(spec.size_bytes),
            spec.size_bytes,
        );
    }
    Ok(())
}
