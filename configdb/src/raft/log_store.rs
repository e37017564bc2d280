use std::fmt::Debug;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    AnyError, Entry, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftLogReader, StorageError,
    StorageIOError, Vote,
};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use super::types::TypeConfig;

/// Log index → JSON-encoded [`Entry`].
const LOGS: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
/// The few single values of the log: see the `*_KEY` constants.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_log_meta");

const VOTE_KEY: &str = "vote";
const COMMITTED_KEY: &str = "committed";
const LAST_PURGED_KEY: &str = "last_purged";

type Error = StorageError<u64>;

/// The Raft log of one node, in its own redb file.
///
/// Every change is one write transaction committed with
/// [`Durability::Immediate`] before openraft hears of it, so what a node has
/// acknowledged (a vote, an appended entry) is still there after a crash.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

/// A read-only handle on a [`LogStore`], used by openraft's replication
/// tasks while the log keeps being written.
#[derive(Clone)]
pub struct LogReader {
    db: Arc<Database>,
}

impl LogStore {
    /// Opens the log at `path`, creating an empty one if there is none.
    pub fn open(path: &Path) -> Result<Self, Error> {
        let db = Database::create(path).map_err(|e| write(ErrorSubject::Logs, &e))?;
        let store = LogStore { db: Arc::new(db) };
        // Create the tables once so that readers never meet a missing one.
        store.write_txn(ErrorSubject::Logs, |txn| {
            txn.open_table(LOGS)
                .map_err(|e| write(ErrorSubject::Logs, &e))?;
            txn.open_table(META)
                .map_err(|e| write(ErrorSubject::Logs, &e))?;
            Ok(())
        })?;
        Ok(store)
    }

    /// Runs `f` in a write transaction and commits it durably.
    fn write_txn<T>(
        &self,
        subject: ErrorSubject<u64>,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let mut txn = self
            .db
            .begin_write()
            .map_err(|e| write(subject.clone(), &e))?;
        txn.set_durability(Durability::Immediate)
            .map_err(|e| write(subject.clone(), &e))?;
        let value = f(&txn)?;
        txn.commit().map_err(|e| write(subject, &e))?;
        Ok(value)
    }

    fn put_meta<T: serde::Serialize>(
        &self,
        key: &str,
        value: &T,
        subject: ErrorSubject<u64>,
    ) -> Result<(), Error> {
        let bytes = serde_json::to_vec(value).map_err(|e| write(subject.clone(), &e))?;
        self.write_txn(subject.clone(), |txn| {
            let mut meta = txn
                .open_table(META)
                .map_err(|e| write(subject.clone(), &e))?;
            meta.insert(key, bytes.as_slice())
                .map_err(|e| write(subject.clone(), &e))?;
            Ok(())
        })
    }
}

/// Reads one JSON value of the META table, `None` if it was never written.
fn get_meta<T: serde::de::DeserializeOwned>(
    db: &Database,
    key: &str,
    subject: ErrorSubject<u64>,
) -> Result<Option<T>, Error> {
    let txn = db.begin_read().map_err(|e| read(subject.clone(), &e))?;
    let meta = txn
        .open_table(META)
        .map_err(|e| read(subject.clone(), &e))?;
    let Some(bytes) = meta.get(key).map_err(|e| read(subject.clone(), &e))? else {
        return Ok(None);
    };
    serde_json::from_slice(bytes.value())
        .map(Some)
        .map_err(|e| read(subject, &e))
}

fn read_entries<RB: RangeBounds<u64>>(
    db: &Database,
    range: RB,
) -> Result<Vec<Entry<TypeConfig>>, Error> {
    let subject = ErrorSubject::Logs;
    let txn = db.begin_read().map_err(|e| read(subject.clone(), &e))?;
    let logs = txn
        .open_table(LOGS)
        .map_err(|e| read(subject.clone(), &e))?;
    let mut entries = Vec::new();
    for item in logs.range(range).map_err(|e| read(subject.clone(), &e))? {
        let (index, bytes) = item.map_err(|e| read(subject.clone(), &e))?;
        let entry = serde_json::from_slice(bytes.value()).map_err(|e| {
            StorageIOError::new(ErrorSubject::LogIndex(index.value()), ErrorVerb::Read, &e)
        })?;
        entries.push(entry);
    }
    Ok(entries)
}

fn read(subject: ErrorSubject<u64>, e: &(impl std::error::Error + 'static)) -> Error {
    StorageIOError::new(subject, ErrorVerb::Read, AnyError::new(e)).into()
}

fn write(subject: ErrorSubject<u64>, e: &(impl std::error::Error + 'static)) -> Error {
    StorageIOError::new(subject, ErrorVerb::Write, AnyError::new(e)).into()
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, Error> {
        read_entries(&self.db, range)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, Error> {
        read_entries(&self.db, range)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, Error> {
        let last_purged_log_id: Option<LogId<u64>> =
            get_meta(&self.db, LAST_PURGED_KEY, ErrorSubject::Logs)?;
        let last = {
            let subject = ErrorSubject::Logs;
            let txn = self
                .db
                .begin_read()
                .map_err(|e| read(subject.clone(), &e))?;
            let logs = txn
                .open_table(LOGS)
                .map_err(|e| read(subject.clone(), &e))?;
            let last = logs.last().map_err(|e| read(subject.clone(), &e))?;
            match last {
                Some((index, bytes)) => {
                    let entry: Entry<TypeConfig> =
                        serde_json::from_slice(bytes.value()).map_err(|e| {
                            StorageIOError::new(
                                ErrorSubject::LogIndex(index.value()),
                                ErrorVerb::Read,
                                &e,
                            )
                        })?;
                    Some(entry.log_id)
                }
                None => None,
            }
        };
        Ok(LogState {
            last_log_id: last.or(last_purged_log_id),
            last_purged_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        LogReader {
            db: Arc::clone(&self.db),
        }
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), Error> {
        self.put_meta(VOTE_KEY, vote, ErrorSubject::Vote)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, Error> {
        get_meta(&self.db, VOTE_KEY, ErrorSubject::Vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId<u64>>) -> Result<(), Error> {
        self.put_meta(COMMITTED_KEY, &committed, ErrorSubject::Logs)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<u64>>, Error> {
        // Stored as an `Option` itself: `None` both when never written and
        // when written as nothing committed.
        Ok(get_meta::<Option<LogId<u64>>>(&self.db, COMMITTED_KEY, ErrorSubject::Logs)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), Error>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        self.write_txn(ErrorSubject::Logs, |txn| {
            let mut logs = txn
                .open_table(LOGS)
                .map_err(|e| write(ErrorSubject::Logs, &e))?;
            for entry in entries {
                let bytes = serde_json::to_vec(&entry)
                    .map_err(|e| StorageIOError::write_log_entry(entry.log_id, &e))?;
                logs.insert(entry.log_id.index, bytes.as_slice())
                    .map_err(|e| StorageIOError::write_log_entry(entry.log_id, &e))?;
            }
            Ok(())
        })?;
        // Only now, with the transaction durably committed, may openraft
        // count these entries as on this node's disk.
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<(), Error> {
        // Conflicting entries from `log_id` on are dropped, `log_id` included.
        self.write_txn(ErrorSubject::Logs, |txn| {
            let mut logs = txn
                .open_table(LOGS)
                .map_err(|e| write(ErrorSubject::Logs, &e))?;
            logs.retain_in(log_id.index.., |_, _| false)
                .map_err(|e| write(ErrorSubject::Logs, &e))?;
            Ok(())
        })
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), Error> {
        // Entries up to `log_id`, included, are already in the state
        // machine. The purge mark and the deletion go in one transaction so
        // that the log state read after a crash is consistent.
        let mark = serde_json::to_vec(&log_id).map_err(|e| write(ErrorSubject::Logs, &e))?;
        self.write_txn(ErrorSubject::Logs, |txn| {
            let mut meta = txn
                .open_table(META)
                .map_err(|e| write(ErrorSubject::Logs, &e))?;
            meta.insert(LAST_PURGED_KEY, mark.as_slice())
                .map_err(|e| write(ErrorSubject::Logs, &e))?;
            let mut logs = txn
                .open_table(LOGS)
                .map_err(|e| write(ErrorSubject::Logs, &e))?;
            logs.retain_in(..=log_id.index, |_, _| false)
                .map_err(|e| write(ErrorSubject::Logs, &e))?;
            Ok(())
        })
    }
}
