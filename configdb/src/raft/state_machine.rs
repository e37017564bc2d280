use std::collections::BTreeSet;
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
use tokio::sync::watch;

use super::types::TypeConfig;
use crate::model::{Configuration, Response};
use crate::{VdiskName, VdiskRecord};

/// Vdisk name → JSON-encoded [`VdiskRecord`].
const VDISKS: TableDefinition<&str, &[u8]> = TableDefinition::new("vdisks");
/// The state machine's own values: see the `*_KEY` constants.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("state_machine_meta");

/// The id of the last applied entry.
const LAST_APPLIED_KEY: &str = "last_applied";
/// The membership of the last applied membership entry.
const MEMBERSHIP_KEY: &str = "last_membership";
/// The configuration but its vdisks (stored one per row).
const CONFIGURATION_KEY: &str = "configuration";
/// The last snapshot built or installed: [`StoredSnapshot`].
const SNAPSHOT_KEY: &str = "snapshot";

type Error = StorageError<u64>;
type Membership = StoredMembership<u64, BasicNode>;

/// The content of a snapshot: everything applied, in one JSON document.
#[derive(Debug, Default, Serialize, Deserialize)]
struct SnapshotContent {
    configuration: Configuration,
    vdisks: Vec<VdiskRecord>,
}

/// A snapshot kept in the META table, so that it survives a restart.
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<u64, BasicNode>,
    data: Vec<u8>,
}

/// The applied configuration of one node, in its own redb file, and in
/// memory for readers.
///
/// Each batch of entries is applied in one write transaction that also
/// records the last applied log id, so after a crash the tables and the
/// applied mark agree, and openraft re-applies exactly what is missing.
/// Only once the transaction is durable do readers see the new
/// configuration. Cloning gives another handle on the same state.
#[derive(Clone)]
pub struct StateMachine {
    db: Arc<Database>,
    current: Arc<watch::Sender<Arc<Configuration>>>,
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
        // Create the tables once so that readers never meet a missing one.
        let txn = begin_write(&db)?;
        txn.open_table(VDISKS).map_err(|e| write(&e))?;
        txn.open_table(META).map_err(|e| write(&e))?;
        txn.commit().map_err(|e| write(&e))?;
        let configuration = {
            let txn = db.begin_read().map_err(|e| read(&e))?;
            load(
                &txn.open_table(META).map_err(|e| read(&e))?,
                &txn.open_table(VDISKS).map_err(|e| read(&e))?,
            )?
        };
        Ok(StateMachine {
            db: Arc::new(db),
            current: Arc::new(watch::channel(Arc::new(configuration)).0),
        })
    }

    /// The configuration as last applied on this node.
    pub fn configuration(&self) -> Arc<Configuration> {
        self.current.borrow().clone()
    }

    /// Sees each newly applied configuration.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Configuration>> {
        self.current.subscribe()
    }
}

/// The configuration stored in the two tables.
fn load(
    meta: &impl ReadableTable<&'static str, &'static [u8]>,
    vdisks: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<Configuration, Error> {
    let mut configuration: Configuration = get_meta(meta, CONFIGURATION_KEY)?.unwrap_or_default();
    for item in vdisks.iter().map_err(|e| read(&e))? {
        let (_, bytes) = item.map_err(|e| read(&e))?;
        let record: VdiskRecord = serde_json::from_slice(bytes.value()).map_err(|e| read(&e))?;
        configuration
            .vdisks
            .insert(record.spec.name.clone(), record);
    }
    Ok(configuration)
}

/// Writes the configuration's META part, and the rows of `touched` vdisks
/// as they now are (removed if gone).
fn store(
    meta: &mut redb::Table<&'static str, &'static [u8]>,
    vdisks: &mut redb::Table<&'static str, &'static [u8]>,
    configuration: &Configuration,
    touched: &BTreeSet<VdiskName>,
) -> Result<(), Error> {
    put_meta(meta, CONFIGURATION_KEY, configuration)?;
    for name in touched {
        match configuration.vdisks.get(name) {
            Some(record) => {
                let bytes = serde_json::to_vec(record).map_err(|e| write(&e))?;
                vdisks
                    .insert(name.as_str(), bytes.as_slice())
                    .map_err(|e| write(&e))?;
            }
            None => {
                vdisks.remove(name.as_str()).map_err(|e| write(&e))?;
            }
        }
    }
    Ok(())
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
            let configuration = load(&meta_table, &txn.open_table(VDISKS).map_err(|e| read(&e))?)?;
            let generation = configuration.generation;
            let content = SnapshotContent {
                vdisks: configuration.vdisks.values().cloned().collect(),
                configuration,
            };
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
        let mut configuration = Configuration::clone(&self.configuration());
        let mut touched = BTreeSet::new();
        let txn = begin_write(&self.db)?;
        let mut responses = Vec::new();
        {
            let mut meta = txn.open_table(META).map_err(|e| write(&e))?;
            let mut vdisks = txn.open_table(VDISKS).map_err(|e| write(&e))?;
            let mut last_applied: Option<LogId<u64>> = get_meta(&meta, LAST_APPLIED_KEY)?;
            let mut membership: Option<Membership> = None;
            for entry in entries {
                // An entry at or below the applied mark is already in the
                // tables: applying it again would change them twice.
                if last_applied.is_some_and(|applied| entry.log_id.index <= applied.index) {
                    responses.push(Response {
                        generation: configuration.generation,
                        ..Response::default()
                    });
                    continue;
                }
                let response = match &entry.payload {
                    EntryPayload::Blank => Response {
                        generation: configuration.generation,
                        ..Response::default()
                    },
                    EntryPayload::Normal(request) => {
                        touched.extend(request.command.vdisk().cloned());
                        configuration.apply(request)
                    }
                    EntryPayload::Membership(m) => {
                        membership = Some(StoredMembership::new(Some(entry.log_id), m.clone()));
                        configuration.membership_changed();
                        Response {
                            generation: configuration.generation,
                            ..Response::default()
                        }
                    }
                };
                last_applied = Some(entry.log_id);
                responses.push(response);
            }
            put_meta(&mut meta, LAST_APPLIED_KEY, &last_applied)?;
            if let Some(membership) = membership {
                put_meta(&mut meta, MEMBERSHIP_KEY, &membership)?;
            }
            store(&mut meta, &mut vdisks, &configuration, &touched)?;
        }
        txn.commit().map_err(|e| write(&e))?;
        self.current.send_replace(Arc::new(configuration));
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
        let mut configuration = content.configuration;
        configuration.vdisks = content
            .vdisks
            .into_iter()
            .map(|record| (record.spec.name.clone(), record))
            .collect();
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
            let mut meta_table = txn.open_table(META).map_err(|e| write(&e))?;
            let all = configuration.vdisks.keys().cloned().collect();
            store(&mut meta_table, &mut vdisks, &configuration, &all)?;
            put_meta(&mut meta_table, LAST_APPLIED_KEY, &meta.last_log_id)?;
            put_meta(&mut meta_table, MEMBERSHIP_KEY, &meta.last_membership)?;
            put_meta(&mut meta_table, SNAPSHOT_KEY, &stored)?;
        }
        txn.commit().map_err(|e| write(&e))?;
        self.current.send_replace(Arc::new(configuration));
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
