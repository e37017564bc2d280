//! A node joining a store that already runs: probing the voters at start,
//! asking the leader to record it, and warning when the file names other
//! voters than the store has.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use openraft::BasicNode;
use tokio::sync::watch;

use super::{node_id, RETRY};
use crate::raft::network::{call, RaftRpc, StoreTls, WriteReply};
use crate::raft::Raft;

/// How long a voter starting afresh waits for each other voter to say
/// whether a store already runs.
const JOIN_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Asks the voters once each, in turn, to record this node at `node`;
/// returns the leader that did. `None` when none leads a store (they all
/// start afresh) or none answers in time.
pub(super) async fn join_once(
    node: &BasicNode,
    id: u64,
    voters: &[String],
    tls: &StoreTls,
) -> Option<String> {
    let rpc = RaftRpc::Join {
        id,
        node: node.clone(),
    };
    for voter in voters {
        let mut addr = voter.clone();
        // At most one hop: a voter names the leader.
        for _ in 0..2 {
            let reply = tokio::time::timeout(JOIN_PROBE_TIMEOUT, call(&addr, tls, &rpc)).await;
            match reply {
                Ok(Ok(WriteReply::Done(_))) => return Some(addr),
                Ok(Ok(WriteReply::NotLeader {
                    leader: Some(leader),
                })) => addr = leader.addr,
                _ => break,
            }
        }
    }
    None
}

/// Says so when the file's `[store] voters` are not the store's voters: the
/// file seeds a new store only, and its voters are changed with `ublkvd
/// store set-voters`.
pub(super) fn warn_if_voters_differ(raft: &Raft, named: &BTreeMap<String, SocketAddr>) {
    if named.is_empty() {
        return;
    }
    let metrics = raft.metrics();
    let metrics = metrics.borrow();
    let voters: BTreeSet<u64> = metrics.membership_config.membership().voter_ids().collect();
    let named_ids: BTreeSet<u64> = named.keys().map(|name| node_id(name)).collect();
    if voters != named_ids {
        let missing: Vec<&str> = named
            .keys()
            .filter(|name| !voters.contains(&node_id(name)))
            .map(String::as_str)
            .collect();
        tracing::warn!(
            voters = voters.len(),
            not_voting = ?missing,
            "[store] voters is not the store's voters: the file only seeds a new store; \
             `ublkvd store` shows the voters, `ublkvd store set-voters` changes them"
        );
    }
}

/// Asks the voters, in turn, to record this node at `node` (a learner if
/// new), until one leader has; unless the membership already has it there.
pub(super) async fn join(
    raft: Raft,
    id: u64,
    node: BasicNode,
    voters: Vec<String>,
    tls: StoreTls,
    mut stopped: watch::Receiver<bool>,
) {
    let known = |raft: &Raft| {
        let metrics = raft.metrics();
        let metrics = metrics.borrow();
        metrics.membership_config.membership().get_node(&id) == Some(&node)
    };
    if known(&raft) {
        return;
    }
    let rpc = RaftRpc::Join {
        id,
        node: node.clone(),
    };
    loop {
        for voter in &voters {
            let mut addr = voter.clone();
            // At most one hop: a voter names the leader.
            for _ in 0..2 {
                match call(&addr, &tls, &rpc).await {
                    Ok(WriteReply::Done(_)) => {
                        tracing::info!(leader = %addr, "joined the configuration store as a learner");
                        return;
                    }
                    Ok(WriteReply::NotLeader {
                        leader: Some(leader),
                    }) => addr = leader.addr,
                    Ok(WriteReply::NotLeader { leader: None }) => break,
                    Ok(WriteReply::Failed(why)) => {
                        tracing::debug!(voter = %addr, "joining the store: {why}");
                        break;
                    }
                    Err(e) => {
                        tracing::debug!(voter = %addr, "joining the store: {e}");
                        break;
                    }
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(RETRY * 10) => {}
            _ = stopped.wait_for(|&s| s) => return,
        }
    }
}
