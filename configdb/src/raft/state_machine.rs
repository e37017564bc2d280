use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    AnyError, BasicNode, Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, RaftSnapshotBuilder,
    SnapshotMeta, StorageError, StorageIOError, StoredMembership,
};
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction,
};
use serde::{Deserialize, Serialize};

use super::types::{Command, Response, TypeConfig};
use crate::{VdiskName, VdiskSpec};

/// Vdisk name → JSON-encoded [`VdiskSpec`]: the applied configuration.
const VDISKS: TableDefinition<&str, &[u8]> = TableDefinition::new("vdisks");
/// The state machine's own values: see the `*_KEY` constants.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("state_machine_meta");

/// The id of the last applied entry.
const LAST_APPLIED_KEY: &str = "last_applied";
/// The membership of the last applied membership entry.
const MEMBERSHIP_KEY: &str = "last_membership";
/// How many commands have been applied.
const GENERATION_KEY: &str = "generation";
/// The last snapshot built or installed: [`StoredSnapshot`].
const SNAPSHOT_KEY: &str = "snapshot";

type Error = StorageError<u64>;
type Membership = StoredMembership<u64, BasicNode>;

/// The content of a snapshot: everything applied, in one JSON document.
#[derive(Debug, Default, Serialize, Deserialize)]
struct SnapshotContent {
    generation: u64,
    vdisks: Vec<VdiskSpec>,
}

/// A snapshot kept in the META table, so that it survives a restart.
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<u64, BasicNode>,
    data: Vec<u8>,
}

/// The applied configuration of one node, in its own redb file.
///
/// Each batch of entries is applied in one write transaction that also
/// records the last applied log id, so after a crash the tables and the
/// applied mark agree, and openraft re-applies exactly what is missing.
/// Cloning gives another handle on the same file, to read it while Raft
/// owns the first.
#[derive(Clone)]
pub struct StateMachine {
    db: Arc<Database>,
}

/// Builds snapshots of a [`StateMachine`] from a consistent read.
pub struct SnapshotBuilder {
    db: Arc<Database>,
}

impl StateMachine {
    /// Opens the state machine at `path`, creating an empty one if there is
    /// none.
    pub fn open(path: &Path) -> Result<Self, Error> {
        let db = Database::create(path).map_err(|e| write(&e))?;
        let sm = StateMachine { db: Arc::new(db) };
        // Create the tables once so that readers never meet a missing one.
        let txn = begin_write(&sm.db)?;
        txn.open_table(VDISKS).map_err(|e| write(&e))?;
        txn.open_table(META).map_err(|e| write(&e))?;
        txn.commit().map_err(|e| write(&e))?;
        Ok(sm)
    }

    /// Every applied vdisk, in name order.
    pub fn vdisks(&self) -> Result<Vec<VdiskSpec>, Error> {
        let txn = self.db.begin_read().map_err(|e| read(&e))?;
        let table = txn.open_table(VDISKS).map_err(|e| read(&e))?;
        let mut specs = Vec::new();
        for item in table.iter().map_err(|e| read(&e))? {
            let (_, bytes) = item.map_err(|e| read(&e))?;
            specs.push(serde_json::from_slice(bytes.value()).map_err(|e| read(&e))?);
        }
        Ok(specs)
    }

    /// The applied record of one vdisk.
    pub fn vdisk(&self, name: &VdiskName) -> Result<Option<VdiskSpec>, Error> {
        let txn = self.db.begin_read().map_err(|e| read(&e))?;
        let table = txn.open_table(VDISKS).map_err(|e| read(&e))?;
        match table.get(name.as_str()).map_err(|e| read(&e))? {
            Some(bytes) => serde_json::from_slice(bytes.value())
                .map(Some)
                .map_err(|e| read(&e)),
            None => Ok(None),
        }
    }

    /// How many commands have been applied: grows with every one.
    pub fn generation(&self) -> Result<u64, Error> {
        let txn = self.db.begin_read().map_err(|e| read(&e))?;
        let meta = txn.open_table(META).map_err(|e| read(&e))?;
        Ok(get_meta(&meta, GENERATION_KEY)?.unwrap_or(0))
    }
}

fn begin_write(db: &Database) -> Result<WriteTransaction, Error> {
    let mut txn = db.begin_write().map_err(|e| write(&e))?;
    txn.set_durability(Durability::Immediate)
        .map_err(|e| write(&e))?;
    Ok(txn)
}

fn get_meta<T: serde::de::DeserializeOwned>(
    meta: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<Option<T>, Error> {
    match meta.get(key).map_err(|e| read(&e))? {
        Some(bytes) => serde_json::from_slice(bytes.value())
            .map(Some)
            .map_err(|e| read(&e)),
        None => Ok(None),
    }
}

fn put_meta<T: Serialize>(
    meta: &mut redb::Table<&'static str, &'static [u8]>,
    key: &str,
    value: &T,
) -> Result<(), Error> {
    let bytes = serde_json::to_vec(value).map_err(|e| write(&e))?;
    meta.insert(key, bytes.as_slice()).map_err(|e| write(&e))?;
    Ok(())
}

fn read(e: &(impl std::error::Error + 'static)) -> Error {
    StorageIOError::new(
        ErrorSubject::StateMachine,
        ErrorVerb::Read,
        AnyError::new(e),
    )
    .into()
}

fn write(e: &(impl std::error::Error + 'static)) -> Error {
    StorageIOError::new(
        ErrorSubject::StateMachine,
        ErrorVerb::Write,
        AnyError::new(e),
    )
    .into()
}

/// Applies one command to the vdisk table.
fn apply_command(
    vdisks: &mut redb::Table<&'static str, &'static [u8]>,
    command: &Command,
    log_id: LogId<u64>,
) -> Result<(), Error> {
    let failed = |e: &dyn std::error::Error| -> Error {
        StorageIOError::apply(log_id, AnyError::error(e.to_string())).into()
    };
    match command {
        Command::PutVdisk(spec) => {
            let bytes = serde_json::to_vec(spec).map_err(|e| failed(&e))?;
            vdisks
                .insert(spec.name.as_str(), bytes.as_slice())
                .map_err(|e| failed(&e))?;
        }
        Command::DeleteVdisk { name } => {
            vdisks.remove(name.as_str()).map_err(|e| failed(&e))?;
        }
    }
    Ok(())
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, Error> {
        // One read transaction: the tables and the applied mark agree even
        // if entries are applied meanwhile.
        let (meta, data) = {
            let txn = self.db.begin_read().map_err(|e| read(&e))?;
            let meta_table = txn.open_table(META).map_err(|e| read(&e))?;
            let last_log_id: Option<LogId<u64>> = get_meta(&meta_table, LAST_APPLIED_KEY)?;
            let last_membership: Membership =
                get_meta(&meta_table, MEMBERSHIP_KEY)?.unwrap_or_default();
            let generation = get_meta(&meta_table, GENERATION_KEY)?.unwrap_or(0);
            let table = txn.open_table(VDISKS).map_err(|e| read(&e))?;
            let mut vdisks = Vec::new();
            for item in table.iter().map_err(|e| read(&e))? {
                let (_, bytes) = item.map_err(|e| read(&e))?;
                vdisks.push(serde_json::from_slice(bytes.value()).map_err(|e| read(&e))?);
            }
            let content = SnapshotContent { generation, vdisks };
            let data = serde_json::to_vec(&content).map_err(|e| read(&e))?;
            let snapshot_id = match last_log_id {
                Some(id) => format!("{}-{}-{generation}", id.leader_id, id.index),
                None => format!("none-{generation}"),
            };
            let meta = SnapshotMeta {
                last_log_id,
                last_membership,
                snapshot_id,
            };
            (meta, data)
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: data.clone(),
        };
        let txn = begin_write(&self.db)?;
        {
            let mut meta_table = txn.open_table(META).map_err(|e| write(&e))?;
            put_meta(&mut meta_table, SNAPSHOT_KEY, &stored)?;
        }
        txn.commit().map_err(|e| write(&e))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId<u64>>, Membership), Error> {
        let txn = self.db.begin_read().map_err(|e| read(&e))?;
        let meta = txn.open_table(META).map_err(|e| read(&e))?;
        let last_applied = get_meta(&meta, LAST_APPLIED_KEY)?;
        let membership = get_meta(&meta, MEMBERSHIP_KEY)?.unwrap_or_default();
        Ok((last_applied, membership))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, Error>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + openraft::OptionalSend,
        I::IntoIter: openraft::OptionalSend,
    {
        let txn = begin_write(&self.db)?;
        let mut responses = Vec::new();
        {
            let mut meta = txn.open_table(META).map_err(|e| write(&e))?;
            let mut vdisks = txn.open_table(VDISKS).map_err(|e| write(&e))?;
            let mut last_applied: Option<LogId<u64>> = get_meta(&meta, LAST_APPLIED_KEY)?;
            let mut membership: Option<Membership> = None;
            let mut generation: u64 = get_meta(&meta, GENERATION_KEY)?.unwrap_or(0);
            for entry in entries {
                // An entry at or below the applied mark is already in the
                // tables: applying it again would bump the generation twice.
                if last_applied.is_some_and(|applied| entry.log_id.index <= applied.index) {
                    responses.push(Response { generation });
                    continue;
                }
                match &entry.payload {
                    EntryPayload::Blank => {}
                    EntryPayload::Normal(command) => {
                        apply_command(&mut vdisks, command, entry.log_id)?;
                        generation += 1;
                    }
                    EntryPayload::Membership(m) => {
                        membership = Some(StoredMembership::new(Some(entry.log_id), m.clone()));
                    }
                }
                last_applied = Some(entry.log_id);
                responses.push(Response { generation });
            }
            put_meta(&mut meta, LAST_APPLIED_KEY, &last_applied)?;
            put_meta(&mut meta, GENERATION_KEY, &generation)?;
            if let Some(membership) = membership {
                put_meta(&mut meta, MEMBERSHIP_KEY, &membership)?;
            }
        }
        txn.commit().map_err(|e| write(&e))?;
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        SnapshotBuilder {
            db: Arc::clone(&self.db),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, Error> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), Error> {
        let signature = Some(meta.signature());
        let data = snapshot.into_inner();
        let content: SnapshotContent = serde_json::from_slice(&data)
            .map_err(|e| StorageIOError::read_snapshot(signature.clone(), &e))?;
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        // The whole state is replaced in one transaction: a crash leaves
        // either the old state or the snapshot's, never a mix.
        let txn = begin_write(&self.db)?;
        {
            let mut vdisks = txn.open_table(VDISKS).map_err(|e| write(&e))?;
            vdisks.retain(|_, _| false).map_err(|e| write(&e))?;
            for spec in &content.vdisks {
                let bytes = serde_json::to_vec(spec).map_err(|e| write(&e))?;
                vdisks
                    .insert(spec.name.as_str(), bytes.as_slice())
                    .map_err(|e| write(&e))?;
            }
            let mut meta_table = txn.open_table(META).map_err(|e| write(&e))?;
            put_meta(&mut meta_table, LAST_APPLIED_KEY, &meta.last_log_id)?;
            put_meta(&mut meta_table, MEMBERSHIP_KEY, &meta.last_membership)?;
            put_meta(&mut meta_table, GENERATION_KEY, &content.generation)?;
            put_meta(&mut meta_table, SNAPSHOT_KEY, &stored)?;
        }
        txn.commit().map_err(|e| write(&e))?;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, Error> {
        let txn = self.db.begin_read().map_err(|e| read(&e))?;
        let meta = txn.open_table(META).map_err(|e| read(&e))?;
        let stored: Option<StoredSnapshot> = get_meta(&meta, SNAPSHOT_KEY)?;
        Ok(stored.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}
