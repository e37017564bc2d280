//! ublkvd's configuration store: what vdisks exist, where their data lives,
//! who may open them, and which nodes make up the cluster.
//!
//! [`model`] is the configuration and the rules that change it, pure;
//! [`raft`] replicates it with openraft over redb (the Raft log and the
//! state machine each in their own file); [`store`] is the daemon's view:
//! one member of the store, which writes from any node.

pub mod model;
pub mod raft;
pub mod store;
mod vdisk;

pub use model::{Client, Command, Configuration, Request, Response};
pub use store::{node_id, Store, StoreConfig, StoreError, StoreRole, StoreStatus};
pub use vdisk::{
    is_safe_name, MirrorCopy, NodeRecord, PendingMove, Permissions, Placement, TailRef,
    TailRefError, VdiskName, VdiskNameError, VdiskRecord, VdiskSpec,
};
