//! The replicated store end to end: openraft's storage suite against the
//! redb stores, then three nodes in one process talking through an
//! in-memory network (the TCP network comes later).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::result_large_err)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use configdb::model::Request;
use configdb::raft::{LogStore, Raft, StateMachine, TypeConfig};
use openraft::error::{InstallSnapshotError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{
    BasicNode, CommittedLeaderId, Entry, EntryPayload, LogId, RaftLogReader, StorageError, Vote,
};
use tempfile::TempDir;

mod support;

use support::{add, delete, leader, raft_config, spec, specs, TIMEOUT};

fn log_id(term: u64, index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn entry(term: u64, index: u64, request: Request) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(request),
    }
}

fn open_stores(dir: &Path) -> (LogStore, StateMachine) {
    (
        LogStore::open(&dir.join("log.redb")).unwrap(),
        StateMachine::open(&dir.join("state.redb")).unwrap(),
    )
}

/// Opens a stopped node's stores once its last tasks let go of them:
/// `Raft::shutdown` returns before every task holding a store has ended
/// (a peer's RPC may still be running on the node's handle), and redb
/// refuses a second opener of a file.
async fn open_stores_when_released(dir: &Path) -> (LogStore, StateMachine) {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let log = LogStore::open(&dir.join("log.redb"));
        let sm = StateMachine::open(&dir.join("state.redb"));
        match (log, sm) {
            (Ok(log), Ok(sm)) => return (log, sm),
            (log, sm) => {
                let why = format!("{:?} / {:?}", log.err(), sm.err());
                assert!(
                    why.contains("already open") && tokio::time::Instant::now() < deadline,
                    "{why}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// Fresh stores in a temporary directory, kept alive by the returned guard.
struct TempStores;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for TempStores {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<u64>> {
        let dir = tempfile::tempdir().unwrap();
        let (log, sm) = open_stores(dir.path());
        Ok((dir, log, sm))
    }
}

#[test]
fn the_redb_stores_pass_openraft_storage_suite() {
    Suite::test_all(TempStores).unwrap();
}

#[tokio::test]
async fn the_log_store_keeps_vote_entries_and_purge_mark_across_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.redb");
    let vote = Vote::new_committed(3, 2);
    {
        let mut log = LogStore::open(&path).unwrap();
        log.save_vote(&vote).await.unwrap();
        let entries = (1..=5).map(|i| entry(1, i, add("a", i)));
        log.blocking_append(entries).await.unwrap();
        log.purge(log_id(1, 2)).await.unwrap();
        log.truncate(log_id(1, 5)).await.unwrap();
        log.save_committed(Some(log_id(1, 4))).await.unwrap();
    }
    let mut log = LogStore::open(&path).unwrap();
    assert_eq!(log.read_vote().await.unwrap(), Some(vote));
    assert_eq!(log.read_committed().await.unwrap(), Some(log_id(1, 4)));
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 2)));
    assert_eq!(state.last_log_id, Some(log_id(1, 4)));
    let kept: Vec<u64> = log
        .try_get_log_entries(0..100)
        .await
        .unwrap()
        .iter()
        .map(|e| e.log_id.index)
        .collect();
    assert_eq!(kept, [3, 4]);
}

#[tokio::test]
async fn reapplying_an_entry_already_applied_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = StateMachine::open(&dir.path().join("state.redb")).unwrap();
    let put = entry(1, 1, add("a", 1));
    let first = sm.apply([put.clone()]).await.unwrap();
    assert_eq!(first[0].generation, 1);

    // As after a crash between applying and openraft noting it: the same
    // index comes again, here with a different record to make a change
    // visible if it were applied.
    let replay = entry(1, 1, add("a", 999));
    let again = sm.apply([put, replay]).await.unwrap();
    assert_eq!(again.len(), 2, "one response per entry");
    assert!(again.iter().all(|r| r.generation == 1));
    assert_eq!(sm.configuration().generation, 1);
    assert_eq!(specs(&sm), [spec("a", 1)]);
    assert_eq!(sm.applied_state().await.unwrap().0, Some(log_id(1, 1)));
}

#[tokio::test]
async fn the_state_machine_keeps_what_it_applied_across_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    {
        let mut sm = StateMachine::open(&path).unwrap();
        sm.apply([
            entry(1, 1, add("a", 1)),
            entry(1, 2, add("b", 2)),
            entry(1, 3, delete("a")),
        ])
        .await
        .unwrap();
    }
    let mut sm = StateMachine::open(&path).unwrap();
    assert_eq!(specs(&sm), [spec("b", 2)]);
    assert_eq!(sm.configuration().generation, 3);
    assert_eq!(sm.applied_state().await.unwrap().0, Some(log_id(1, 3)));
}

/// The running nodes, by id. A node missing from the map is unreachable.
#[derive(Clone, Default)]
struct Router {
    nodes: Arc<Mutex<BTreeMap<u64, Raft>>>,
}

impl Router {
    fn get(&self, id: u64) -> Result<Raft, Unreachable> {
        self.nodes
            .lock()
            .unwrap()
            .get(&id)
            .cloned()
            .ok_or_else(|| Unreachable::new(&std::io::Error::other(format!("node {id} is down"))))
    }
}

struct Connection {
    router: Router,
    target: u64,
}

impl RaftNetworkFactory<TypeConfig> for Router {
    type Network = Connection;

    async fn new_client(&mut self, target: u64, _node: &BasicNode) -> Connection {
        Connection {
            router: self.clone(),
            target,
        }
    }
}

type RpcError<E> = RPCError<u64, BasicNode, RaftError<u64, E>>;

fn remote<E: std::error::Error>(target: u64, e: RaftError<u64, E>) -> RpcError<E> {
    RPCError::RemoteError(RemoteError::new(target, e))
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RpcError<openraft::error::Infallible>> {
        let raft = self.router.get(self.target)?;
        raft.append_entries(rpc)
            .await
            .map_err(|e| remote(self.target, e))
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<InstallSnapshotResponse<u64>, RpcError<InstallSnapshotError>> {
        let raft = self.router.get(self.target)?;
        raft.install_snapshot(rpc)
            .await
            .map_err(|e| remote(self.target, e))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        _option: RPCOption,
    ) -> Result<VoteResponse<u64>, RpcError<openraft::error::Infallible>> {
        let raft = self.router.get(self.target)?;
        raft.vote(rpc).await.map_err(|e| remote(self.target, e))
    }
}

struct Cluster {
    router: Router,
    dirs: BTreeMap<u64, TempDir>,
    /// A second handle on each node's state machine, to read what it applied.
    machines: BTreeMap<u64, StateMachine>,
}

impl Cluster {
    /// Starts nodes 1, 2 and 3 and makes them one cluster.
    async fn start() -> Cluster {
        let mut cluster = Cluster {
            router: Router::default(),
            dirs: BTreeMap::new(),
            machines: BTreeMap::new(),
        };
        for id in 1..=3 {
            cluster.dirs.insert(id, tempfile::tempdir().unwrap());
            cluster.boot(id).await;
        }
        let members: BTreeMap<u64, BasicNode> = (1..=3)
            .map(|id| (id, BasicNode::new(format!("node{id}"))))
            .collect();
        cluster.raft(1).initialize(members).await.unwrap();
        cluster
    }

    /// Starts node `id` from whatever its directory holds.
    async fn boot(&mut self, id: u64) {
        let (log, sm) = open_stores_when_released(self.dirs[&id].path()).await;
        self.machines.insert(id, sm.clone());
        let raft = Raft::new(id, raft_config(), self.router.clone(), log, sm)
            .await
            .unwrap();
        self.router.nodes.lock().unwrap().insert(id, raft);
    }

    /// Stops node `id` and lets go of its files.
    async fn stop(&mut self, id: u64) {
        let raft = self.router.nodes.lock().unwrap().remove(&id).unwrap();
        raft.shutdown().await.unwrap();
        drop(raft);
        self.machines.remove(&id);
    }

    fn raft(&self, id: u64) -> Raft {
        self.router.get(id).unwrap()
    }

    async fn leader(&self) -> u64 {
        leader(&self.raft(1)).await
    }

    async fn write(&self, request: Request) -> u64 {
        let leader = self.leader().await;
        let written = self.raft(leader).client_write(request).await.unwrap();
        written.log_id.index
    }

    async fn wait_applied(&self, id: u64, index: u64) {
        self.raft(id)
            .wait(Some(TIMEOUT))
            .applied_index_at_least(Some(index), format!("node {id} applies {index}"))
            .await
            .unwrap();
    }

    async fn shutdown(self) {
        let nodes: Vec<Raft> = self
            .router
            .nodes
            .lock()
            .unwrap()
            .values()
            .cloned()
            .collect();
        for raft in nodes {
            raft.shutdown().await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_on_the_leader_is_applied_on_all_three_nodes() {
    let cluster = Cluster::start().await;
    let index = cluster.write(add("a", 1 << 30)).await;
    for id in 1..=3 {
        cluster.wait_applied(id, index).await;
        let sm = &cluster.machines[&id];
        assert_eq!(specs(sm), [spec("a", 1 << 30)], "node {id}");
        // The store's first membership, then the vdisk.
        assert_eq!(sm.configuration().generation, 2, "node {id}");
    }
    let members: BTreeSet<u64> = cluster
        .raft(2)
        .metrics()
        .borrow()
        .membership_config
        .voter_ids()
        .collect();
    assert_eq!(members, BTreeSet::from([1, 2, 3]));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_from_its_files_keeps_its_log_and_state_and_catches_up() {
    let mut cluster = Cluster::start().await;
    let first = cluster.write(add("a", 1)).await;
    for id in 1..=3 {
        cluster.wait_applied(id, first).await;
    }
    let leader = cluster.leader().await;
    let down = (1..=3).find(|&id| id != leader).unwrap();
    cluster.stop(down).await;

    // What the stopped node has on disk, read without Raft.
    {
        let (mut log, mut sm) = open_stores_when_released(cluster.dirs[&down].path()).await;
        let state = log.get_log_state().await.unwrap();
        assert!(state.last_log_id.is_some_and(|id| id.index >= first));
        assert!(log.read_vote().await.unwrap().is_some());
        assert_eq!(specs(&sm), [spec("a", 1)]);
        assert!(sm
            .applied_state()
            .await
            .unwrap()
            .0
            .is_some_and(|id| id.index >= first));
    }

    // The other two are a majority: writes go on without it.
    let second = cluster.write(delete("a")).await;
    cluster.boot(down).await;
    cluster.wait_applied(down, second).await;
    let sm = &cluster.machines[&down];
    assert_eq!(specs(sm), []);
    // The first membership, the add and the delete.
    assert_eq!(sm.configuration().generation, 3);
    cluster.shutdown().await;
}
