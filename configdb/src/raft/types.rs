use std::io::Cursor;

pub use crate::model::{Request, Response};

openraft::declare_raft_types!(
    /// The Raft types of the configuration store.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A running member of the configuration store.
pub type Raft = openraft::Raft<TypeConfig>;
