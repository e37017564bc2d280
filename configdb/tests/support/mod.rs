//! What the replicated-store tests share: a vdisk record, the fast Raft
//! timing, and waiting for a leader.
#![allow(clippy::unwrap_used, dead_code)]

use std::sync::Arc;
use std::time::Duration;

use std::sync::atomic::{AtomicU64, Ordering};

use configdb::model::{Client, Command, Request};
use configdb::raft::{Raft, StateMachine, StoreTls};
use configdb::{Permissions, Placement, VdiskName, VdiskSpec};
use openraft::Config;

pub const TIMEOUT: Duration = Duration::from_secs(10);

pub fn spec(name: &str, size_bytes: u64) -> VdiskSpec {
    VdiskSpec {
        name: name.parse().unwrap(),
        size_bytes,
        placement: Placement::Local {
            node: "n1".into(),
            tail: format!("/srv/{name}.img").into(),
        },
        block_size: 4096,
        queues: 1,
        queue_depth: 64,
        read_only: false,
        permissions: Permissions::default(),
        multi_writer: false,
    }
}

/// `command` as a request of its own.
pub fn request(command: Command) -> Request {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let seq = NEXT.fetch_add(1, Ordering::Relaxed);
    let client = Client {
        node: "n1".into(),
        incarnation: 1,
    };
    Request {
        client,
        seq,
        acked_below: 0,
        command,
    }
}

pub fn add(name: &str, size_bytes: u64) -> Request {
    request(Command::AddVdisk(spec(name, size_bytes)))
}

pub fn delete(name: &str) -> Request {
    let name: VdiskName = name.parse().unwrap();
    request(Command::DeleteVdisk { name })
}

/// The specs of the vdisks `machine` has applied, in name order.
pub fn specs(machine: &StateMachine) -> Vec<VdiskSpec> {
    let configuration = machine.configuration();
    configuration
        .vdisks
        .values()
        .map(|v| v.spec.clone())
        .collect()
}

/// What node `name` of the test clusters proves who it is with: a
/// certificate of the CA their shared secret derives.
pub fn tls(name: &str) -> StoreTls {
    StoreTls::new(&identity(name, SECRET)).unwrap()
}

pub const SECRET: &[u8] = b"configdb test cluster secret";

pub fn identity(name: &str, secret: &[u8]) -> identity::NodeIdentity {
    identity::NodeIdentity::from_secret(name, secret).unwrap()
}

/// Heartbeats and elections fast enough for a test to take seconds.
pub fn raft_config() -> Arc<Config> {
    let config = Config {
        heartbeat_interval: 50,
        election_timeout_min: 150,
        election_timeout_max: 300,
        ..Default::default()
    };
    Arc::new(config.validate().unwrap())
}

/// The leader `raft` knows of, once one is elected.
pub async fn leader(raft: &Raft) -> u64 {
    let metrics = raft
        .wait(Some(TIMEOUT))
        .metrics(|m| m.current_leader.is_some(), "a leader is elected")
        .await
        .unwrap();
    metrics.current_leader.unwrap()
}
