//! The vdisks whose device this node does not run although the cluster
//! maps one here: `ublkvd detach NAME` until `ublkvd attach NAME`. Local to
//! the node (the others keep theirs) and kept across restarts, one name per
//! line in `DATA_DIR/detached`.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use configdb::VdiskName;

pub struct Detached {
    path: PathBuf,
    names: BTreeSet<VdiskName>,
}

impl Detached {
    /// The set kept at `path`; none when the file does not exist.
    pub fn load(path: &Path) -> anyhow::Result<Detached> {
        let names = match std::fs::read_to_string(path) {
            Ok(text) => text
                .lines()
                .filter(|line| !line.trim().is_empty())
                .map(|line| {
                    line.trim()
                        .parse()
                        .with_context(|| format!("{}: a line is no vdisk name", path.display()))
                })
                .collect::<anyhow::Result<_>>()?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeSet::new(),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        Ok(Detached {
            path: path.to_owned(),
            names,
        })
    }

    pub fn contains(&self, name: &VdiskName) -> bool {
        self.names.contains(name)
    }

    pub fn names(&self) -> &BTreeSet<VdiskName> {
        &self.names
    }

    /// Adds `name`, durably; unchanged on error.
    pub fn insert(&mut self, name: &VdiskName) -> anyhow::Result<()> {
        let mut names = self.names.clone();
        names.insert(name.clone());
        self.save(names)
    }

    /// Removes `name`, durably; unchanged on error.
    pub fn remove(&mut self, name: &VdiskName) -> anyhow::Result<()> {
        let mut names = self.names.clone();
        names.remove(name);
        self.save(names)
    }

    /// Writes `names` beside the file, syncs, and renames it over: a crash
    /// leaves the old set or the new one.
    fn save(&mut self, names: BTreeSet<VdiskName>) -> anyhow::Result<()> {
        let staged = self.path.with_extension("new");
        let write = || -> std::io::Result<()> {
            let mut file = std::fs::File::create(&staged)?;
            for name in &names {
                writeln!(file, "{name}")?;
            }
            file.sync_all()?;
            std::fs::rename(&staged, &self.path)?;
            if let Some(dir) = self.path.parent() {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        };
        write().with_context(|| format!("cannot write {}", self.path.display()))?;
        self.names = names;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_set_survives_reloading_and_a_bad_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("detached");
        let mut set = Detached::load(&path).unwrap();
        let (a, b): (VdiskName, VdiskName) = ("a".parse().unwrap(), "b".parse().unwrap());
        set.insert(&a).unwrap();
        set.insert(&b).unwrap();
        set.remove(&a).unwrap();
        let again = Detached::load(&path).unwrap();
        assert!(!again.contains(&a) && again.contains(&b));
        std::fs::write(&path, "b\n../etc\n").unwrap();
        let refused = Detached::load(&path).err().unwrap();
        assert!(
            format!("{refused:#}").contains("no vdisk name"),
            "{refused:#}"
        );
    }
}
