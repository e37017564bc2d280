//! What the replicated-store tests share: a vdisk record, the fast Raft
//! timing, and waiting for a leader.
#![allow(clippy::unwrap_used, dead_code)]

use std::sync::Arc;
use std::time::Duration;

use configdb::raft::Raft;
use configdb::{Placement, VdiskSpec};
use openraft::Config;

pub const TIMEOUT: Duration = Duration::from_secs(10);

pub fn spec(name: &str, size_bytes: u64) -> VdiskSpec {
    VdiskSpec {
        name: name.parse().unwrap(),
        size_bytes,
        placement: Placement::Local {
            tail: format!("/srv/{name}.img").into(),
        },
        block_size: 4096,
        queues: 1,
        queue_depth: 64,
        read_only: false,
        device_id: None,
    }
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
