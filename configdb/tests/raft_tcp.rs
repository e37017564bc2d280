//! Three nodes in one process talking Raft over TCP on the loopback.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::result_large_err)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use configdb::model::Request;
use configdb::raft::network::{read_frame, write_frame};
use configdb::raft::{
    serve, LogStore, Raft, RaftRpc, StateMachine, StoreKey, TcpNetwork, MAX_FRAME,
};
use configdb::VdiskSpec;
use openraft::error::RaftError;
use openraft::raft::{VoteRequest, VoteResponse};
use openraft::{BasicNode, Vote};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

mod support;

use support::{add, key, leader, raft_config, spec, specs, TIMEOUT};

struct Node {
    raft: Raft,
    machine: StateMachine,
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    server: JoinHandle<()>,
    _dir: TempDir,
}

struct Cluster {
    nodes: BTreeMap<u64, Node>,
}

impl Cluster {
    /// Starts nodes 1, 2 and 3, each serving on its own ephemeral port, and
    /// makes them one cluster.
    async fn start() -> Cluster {
        let mut listeners = BTreeMap::new();
        for id in 1..=3u64 {
            listeners.insert(id, TcpListener::bind("127.0.0.1:0").await.unwrap());
        }
        let members: BTreeMap<u64, BasicNode> = listeners
            .iter()
            .map(|(&id, l)| (id, BasicNode::new(l.local_addr().unwrap().to_string())))
            .collect();
        let config = raft_config();
        let mut nodes = BTreeMap::new();
        for (id, listener) in listeners {
            let dir = tempfile::tempdir().unwrap();
            let log = LogStore::open(&dir.path().join("log.redb")).unwrap();
            let machine = StateMachine::open(&dir.path().join("state.redb")).unwrap();
            let raft = Raft::new(
                id,
                config.clone(),
                TcpNetwork::new(id, key()),
                log,
                machine.clone(),
            )
            .await
            .unwrap();
            let addr = listener.local_addr().unwrap();
            let (stop, stopped) = oneshot::channel::<()>();
            let server = tokio::spawn(serve(listener, raft.clone(), key(), async move {
                let _ = stopped.await;
            }));
            nodes.insert(
                id,
                Node {
                    raft,
                    machine,
                    addr,
                    stop,
                    server,
                    _dir: dir,
                },
            );
        }
        nodes[&1].raft.initialize(members).await.unwrap();
        Cluster { nodes }
    }

    async fn leader(&self) -> u64 {
        leader(&self.nodes[&1].raft).await
    }

    /// Writes `request` on the leader and waits until every state machine
    /// holds `expected`.
    async fn write_and_see_everywhere(&self, request: Request, expected: &[VdiskSpec]) {
        let leader = self.leader().await;
        self.nodes[&leader]
            .raft
            .client_write(request)
            .await
            .unwrap();
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        for (id, node) in &self.nodes {
            loop {
                if specs(&node.machine) == expected {
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "node {id} never applied the write"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    async fn shutdown(self) {
        for node in self.nodes.into_values() {
            node.raft.shutdown().await.unwrap();
            node.stop.send(()).unwrap();
            node.server.await.unwrap();
        }
    }
}

/// Reads until the server closes the connection; a reset counts as closed.
async fn closed_by_server(mut stream: TcpStream) -> bool {
    let mut rest = Vec::new();
    match tokio::time::timeout(TIMEOUT, stream.read_to_end(&mut rest)).await {
        Ok(Ok(_)) => rest.is_empty(),
        Ok(Err(_)) => true,
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_on_the_leader_reaches_all_three_nodes_over_tcp() {
    let cluster = Cluster::start().await;
    cluster
        .write_and_see_everywhere(add("a", 1 << 30), &[spec("a", 1 << 30)])
        .await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_or_garbage_frames_close_the_connection_and_the_server_keeps_serving() {
    let cluster = Cluster::start().await;
    let addr = cluster.nodes[&2].addr;

    // A length over the cap: refused on the header alone.
    let mut oversize = TcpStream::connect(addr).await.unwrap();
    oversize
        .write_all(&(MAX_FRAME + 1).to_be_bytes())
        .await
        .unwrap();
    assert!(closed_by_server(oversize).await, "oversize frame");

    // A frame of the right shape holding no JSON, with a tag of zeros.
    let mut garbage = TcpStream::connect(addr).await.unwrap();
    garbage.write_all(&5u32.to_be_bytes()).await.unwrap();
    garbage.write_all(b"\xff\x00ab}").await.unwrap();
    garbage.write_all(&[0; 32]).await.unwrap();
    assert!(closed_by_server(garbage).await, "garbage frame");

    // Signed, valid JSON that is no RPC.
    let mut confused = TcpStream::connect(addr).await.unwrap();
    write_frame(&mut confused, &key(), &serde_json::json!({"Hello": 1}))
        .await
        .unwrap();
    assert!(closed_by_server(confused).await, "unknown rpc");

    // A well-formed vote signed without the cluster secret: not answered.
    let stale = RaftRpc::Vote(VoteRequest::new(Vote::new(0, 99), None));
    let mut stranger = TcpStream::connect(addr).await.unwrap();
    let other_key = StoreKey::from_secret(b"not this cluster's secret");
    write_frame(&mut stranger, &other_key, &stale)
        .await
        .unwrap();
    assert!(closed_by_server(stranger).await, "unsigned vote");

    // The same server still answers it signed: a stale vote, which it
    // turns down without disturbing the cluster.
    let mut client = TcpStream::connect(addr).await.unwrap();
    write_frame(&mut client, &key(), &stale).await.unwrap();
    let reply: Result<VoteResponse<u64>, RaftError<u64>> =
        read_frame(&mut client, &key()).await.unwrap().unwrap();
    assert!(!reply.unwrap().vote_granted);

    // And the cluster still replicates through it.
    cluster
        .write_and_see_everywhere(add("b", 4096), &[spec("b", 4096)])
        .await;
    cluster.shutdown().await;
}
