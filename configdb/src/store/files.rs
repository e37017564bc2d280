//! The store's two redb files in a node's data dir: the Raft log and the
//! state machine.

use std::path::Path;

use super::StoreError;
use crate::raft::{LogStore, StateMachine};

/// The Raft log's file and the state machine's, inside the data dir.
const LOG_FILE: &str = "store-log.redb";
const STATE_FILE: &str = "store-state.redb";

/// Opens (creating them if need be) the log and the state machine in `dir`.
pub(super) fn open_files(dir: &Path) -> Result<(LogStore, StateMachine), StoreError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| StoreError::Start(format!("cannot create {}: {e}", dir.display())))?;
    let failed = |source| StoreError::Open {
        dir: dir.display().to_string(),
        source: Box::new(source),
    };
    let log = LogStore::open(&dir.join(LOG_FILE)).map_err(failed)?;
    let machine = StateMachine::open(&dir.join(STATE_FILE)).map_err(failed)?;
    Ok((log, machine))
}
