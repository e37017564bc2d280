//! Stable names for devices: `/dev/ublkvd/NAME` links to this node's
//! `/dev/ublkbN` for vdisk NAME. The number can differ between nodes (each
//! takes another where its kernel has the vdisk's in use); the name is the
//! same on every node, for fstab, LVM filters and scripts.
//!
//! The directory holds only the links of the devices running here: each
//! [`DeviceLinks::sync`] makes it so, and leaves anything that is not a
//! symbolic link alone.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use configdb::VdiskName;

/// Where this node keeps its device links; `None`: it keeps none.
#[derive(Debug, Clone)]
pub struct DeviceLinks {
    dir: Option<PathBuf>,
}

impl DeviceLinks {
    pub fn new(dir: Option<PathBuf>) -> Self {
        DeviceLinks { dir }
    }

    /// Makes the directory hold exactly a link NAME → device for each of
    /// `running`. Errors are logged: a missing link costs a name, not I/O.
    pub fn sync(&self, running: &BTreeMap<VdiskName, PathBuf>) {
        let Some(dir) = &self.dir else {
            return;
        };
        if let Err(e) = sync_dir(dir, running) {
            tracing::warn!(dir = %dir.display(), "device links: {e:#}");
        }
    }
}

fn sync_dir(dir: &Path, running: &BTreeMap<VdiskName, PathBuf>) -> anyhow::Result<()> {
    if running.is_empty() && !dir.exists() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot read {}", dir.display()))?;
        let path = entry.path();
        let is_link = entry.file_type().is_ok_and(|t| t.is_symlink());
        let wanted = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<VdiskName>().ok())
            .and_then(|name| running.get(&name));
        let current = std::fs::read_link(&path).ok();
        if is_link && (wanted.is_none() || current.as_ref() != wanted) {
            std::fs::remove_file(&path)
                .with_context(|| format!("cannot remove {}", path.display()))?;
        }
    }
    for (name, device) in running {
        let link = dir.join(name.as_str());
        if std::fs::read_link(&link).ok().as_ref() == Some(device) {
            continue;
        }
        std::os::unix::fs::symlink(device, &link)
            .with_context(|| format!("cannot link {} to {}", link.display(), device.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running(pairs: &[(&str, &str)]) -> BTreeMap<VdiskName, PathBuf> {
        pairs
            .iter()
            .map(|(name, dev)| (name.parse().unwrap(), PathBuf::from(dev)))
            .collect()
    }

    fn links(dir: &Path) -> BTreeMap<String, PathBuf> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| e.file_type().unwrap().is_symlink())
            .map(|e| {
                (
                    e.file_name().into_string().unwrap(),
                    std::fs::read_link(e.path()).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn the_directory_follows_the_running_devices_and_keeps_other_files() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("ublkvd");
        let device_links = DeviceLinks::new(Some(dir.clone()));
        device_links.sync(&running(&[]));
        assert!(!dir.exists(), "made with nothing to link");
        device_links.sync(&running(&[("db", "/dev/ublkb0"), ("logs", "/dev/ublkb3")]));
        assert_eq!(
            links(&dir),
            BTreeMap::from([
                ("db".into(), "/dev/ublkb0".into()),
                ("logs".into(), "/dev/ublkb3".into())
            ])
        );
        std::fs::write(dir.join("README"), "not ours").unwrap();
        // logs now runs as another number; db is gone.
        device_links.sync(&running(&[("logs", "/dev/ublkb1")]));
        assert_eq!(
            links(&dir),
            BTreeMap::from([("logs".into(), "/dev/ublkb1".into())])
        );
        assert!(dir.join("README").exists());
        device_links.sync(&running(&[]));
        assert!(links(&dir).is_empty());
    }
}
