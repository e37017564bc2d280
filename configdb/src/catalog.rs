use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::{VdiskName, VdiskSpec};

/// Vdisk name → JSON-encoded [`VdiskSpec`].
const VDISKS: TableDefinition<&str, &[u8]> = TableDefinition::new("vdisks");

/// The vdisks of this node, kept in a redb file. Every change is one
/// committed (durable) write transaction.
pub struct Catalog {
    db: Database,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CatalogError {
    #[error("vdisk {0} already exists")]
    Duplicate(VdiskName),
    #[error("no vdisk named {0}")]
    NotFound(VdiskName),
    #[error("configuration store: {0}")]
    Store(#[from] redb::Error),
    #[error("configuration store holds an unreadable record for {name}: {source}")]
    Corrupt {
        name: String,
        source: serde_json::Error,
    },
}

/// redb has one error type per operation; all of them become `Store`.
fn store<E: Into<redb::Error>>(e: E) -> CatalogError {
    CatalogError::Store(e.into())
}

impl Catalog {
    /// Opens the catalog at `path`, creating an empty one if there is none.
    pub fn open(path: &Path) -> Result<Self, CatalogError> {
        let db = Database::create(path).map_err(store)?;
        let txn = db.begin_write().map_err(store)?;
        txn.open_table(VDISKS).map_err(store)?;
        txn.commit().map_err(store)?;
        Ok(Catalog { db })
    }

    /// Records a new vdisk; refuses a name already in use.
    pub fn insert(&self, spec: &VdiskSpec) -> Result<(), CatalogError> {
        let txn = self.db.begin_write().map_err(store)?;
        {
            let mut table = txn.open_table(VDISKS).map_err(store)?;
            if table.get(spec.name.as_str()).map_err(store)?.is_some() {
                return Err(CatalogError::Duplicate(spec.name.clone()));
            }
            table
                .insert(spec.name.as_str(), encode(spec).as_slice())
                .map_err(store)?;
        }
        txn.commit().map_err(store)
    }

    /// Replaces the record of an existing vdisk.
    pub fn update(&self, spec: &VdiskSpec) -> Result<(), CatalogError> {
        let txn = self.db.begin_write().map_err(store)?;
        {
            let mut table = txn.open_table(VDISKS).map_err(store)?;
            if table.get(spec.name.as_str()).map_err(store)?.is_none() {
                return Err(CatalogError::NotFound(spec.name.clone()));
            }
            table
                .insert(spec.name.as_str(), encode(spec).as_slice())
                .map_err(store)?;
        }
        txn.commit().map_err(store)
    }

    /// Forgets a vdisk and returns what it was.
    pub fn remove(&self, name: &VdiskName) -> Result<VdiskSpec, CatalogError> {
        let txn = self.db.begin_write().map_err(store)?;
        let spec = {
            let mut table = txn.open_table(VDISKS).map_err(store)?;
            let removed = table.remove(name.as_str()).map_err(store)?;
            match removed {
                Some(bytes) => decode(name.as_str(), bytes.value())?,
                None => return Err(CatalogError::NotFound(name.clone())),
            }
        };
        txn.commit().map_err(store)?;
        Ok(spec)
    }

    pub fn get(&self, name: &VdiskName) -> Result<VdiskSpec, CatalogError> {
        let txn = self.db.begin_read().map_err(store)?;
        let table = txn.open_table(VDISKS).map_err(store)?;
        match table.get(name.as_str()).map_err(store)? {
            Some(bytes) => decode(name.as_str(), bytes.value()),
            None => Err(CatalogError::NotFound(name.clone())),
        }
    }

    /// Every vdisk, in name order.
    pub fn list(&self) -> Result<Vec<VdiskSpec>, CatalogError> {
        let txn = self.db.begin_read().map_err(store)?;
        let table = txn.open_table(VDISKS).map_err(store)?;
        let mut specs = Vec::new();
        for entry in table.iter().map_err(store)? {
            let (name, bytes) = entry.map_err(store)?;
            specs.push(decode(name.value(), bytes.value())?);
        }
        Ok(specs)
    }
}

fn encode(spec: &VdiskSpec) -> Vec<u8> {
    // A struct of plain fields always serialises.
    serde_json::to_vec(spec).unwrap_or_default()
}

fn decode(name: &str, bytes: &[u8]) -> Result<VdiskSpec, CatalogError> {
    serde_json::from_slice(bytes).map_err(|source| CatalogError::Corrupt {
        name: name.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str) -> VdiskSpec {
        VdiskSpec {
            name: name.parse().unwrap(),
            size_bytes: 1 << 30,
            placement: crate::Placement::Local {
                tail: format!("/srv/{name}.img").into(),
            },
            block_size: 4096,
            queues: 1,
            queue_depth: 64,
            read_only: false,
            device_id: None,
        }
    }

    #[test]
    fn inserted_vdisks_survive_reopening_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.redb");
        {
            let catalog = Catalog::open(&path).unwrap();
            catalog.insert(&spec("b")).unwrap();
            catalog.insert(&spec("a")).unwrap();
        }
        let catalog = Catalog::open(&path).unwrap();
        let names: Vec<_> = catalog
            .list()
            .unwrap()
            .into_iter()
            .map(|s| s.name.to_string())
            .collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(catalog.get(&"a".parse().unwrap()).unwrap(), spec("a"));
    }

    #[test]
    fn duplicate_name_is_refused_and_keeps_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(&dir.path().join("c.redb")).unwrap();
        catalog.insert(&spec("a")).unwrap();
        let mut other = spec("a");
        other.size_bytes = 4096;
        assert!(matches!(
            catalog.insert(&other),
            Err(CatalogError::Duplicate(_))
        ));
        assert_eq!(catalog.get(&"a".parse().unwrap()).unwrap(), spec("a"));
    }

    #[test]
    fn remove_returns_the_spec_and_forgets_it() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(&dir.path().join("c.redb")).unwrap();
        catalog.insert(&spec("a")).unwrap();
        let name = "a".parse().unwrap();
        assert_eq!(catalog.remove(&name).unwrap(), spec("a"));
        assert!(matches!(catalog.get(&name), Err(CatalogError::NotFound(_))));
        assert!(matches!(
            catalog.remove(&name),
            Err(CatalogError::NotFound(_))
        ));
    }

    #[test]
    fn update_changes_only_existing_vdisks() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(&dir.path().join("c.redb")).unwrap();
        assert!(matches!(
            catalog.update(&spec("a")),
            Err(CatalogError::NotFound(_))
        ));
        catalog.insert(&spec("a")).unwrap();
        let mut changed = spec("a");
        changed.device_id = Some(3);
        catalog.update(&changed).unwrap();
        assert_eq!(catalog.get(&"a".parse().unwrap()).unwrap(), changed);
    }
}
