use std::io::Cursor;

use serde::{Deserialize, Serialize};

use crate::{VdiskName, VdiskSpec};

/// A change to the configuration, as replicated in the Raft log.
///
/// Commands carry whole records rather than edits, so applying one is a pure
/// function of the command and the tables.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    /// Records a vdisk, replacing any record of the same name.
    PutVdisk(VdiskSpec),
    /// Forgets a vdisk; forgetting an unknown one changes nothing else.
    DeleteVdisk { name: VdiskName },
}

/// What applying a command did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// The state machine's generation after the command: it grows by one
    /// with every applied command, so a reader can tell whether anything
    /// changed since it last looked.
    pub generation: u64,
}

openraft::declare_raft_types!(
    /// The Raft types of the configuration store.
    pub TypeConfig:
        D = Command,
        R = Response,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A running member of the configuration store.
pub type Raft = openraft::Raft<TypeConfig>;
