//! Three nodes in one process talking Raft over TCP on the loopback.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::result_large_err)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use configdb::model::Request;
use configdb::node_id;
use configdb::raft::network::{read_frame, write_frame};
use configdb::raft::{serve, LogStore, Raft, RaftRpc, StateMachine, TcpNetwork, MAX_FRAME};
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

use support::{add, identity, leader, raft_config, spec, specs, tls, SECRET, TIMEOUT};

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
    /// Starts nodes n1, n2 and n3, each serving on its own ephemeral port,
    /// and makes them one cluster.
    async fn start() -> Cluster {
        let mut listeners = BTreeMap::new();
        for name in NODES {
            listeners.insert(
                node_id(name),
                (name, TcpListener::bind("127.0.0.1:0").await.unwrap()),
            );
        }
        let members: BTreeMap<u64, BasicNode> = listeners
            .iter()
            .map(|(&id, (_, l))| (id, BasicNode::new(l.local_addr().unwrap().to_string())))
            .collect();
        let config = raft_config();
        let mut nodes = BTreeMap::new();
        for (id, (name, listener)) in listeners {
            let dir = tempfile::tempdir().unwrap();
            let log = LogStore::open(&dir.path().join("log.redb")).unwrap();
            let machine = StateMachine::open(&dir.path().join("state.redb")).unwrap();
            let raft = Raft::new(
                id,
                config.clone(),
                TcpNetwork::new(id, Some(tls(name))),
                log,
                machine.clone(),
            )
            .await
            .unwrap();
            let addr = listener.local_addr().unwrap();
            let (stop, stopped) = oneshot::channel::<()>();
            let server = tokio::spawn(serve(listener, raft.clone(), tls(name), async move {
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
        nodes[&node_id(NODES[0])]
            .raft
            .initialize(members)
            .await
            .unwrap();
        Cluster { nodes }
    }

    async fn leader(&self) -> u64 {
        leader(&self.nodes[&node_id(NODES[0])].raft).await
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

/// The test cluster's nodes.
const NODES: [&str; 3] = ["n1", "n2", "n3"];

type ClientStream = identity::client::TlsStream<TcpStream>;

/// A TLS session with the store at `addr` as node `name`, with a
/// certificate of the CA `secret` derives.
async fn dial(addr: SocketAddr, name: &str, secret: &[u8]) -> std::io::Result<ClientStream> {
    let config = identity(name, secret).client_config_any_member().unwrap();
    let tcp = TcpStream::connect(addr).await?;
    let mut tls = identity::TlsConnector::from(config)
        .connect(identity::ServerName::from(addr.ip()), tcp)
        .await?;
    // The server checks the client's certificate after the client thinks
    // the handshake done: an empty write and flush makes a refusal show.
    tls.flush().await?;
    Ok(tls)
}

/// Reads until the server closes the session; an error counts as closed.
async fn closed_by_tls_server(mut stream: ClientStream) -> bool {
    let mut rest = Vec::new();
    match tokio::time::timeout(TIMEOUT, stream.read_to_end(&mut rest)).await {
        Ok(Ok(_)) => rest.is_empty(),
        Ok(Err(_)) => true,
        Err(_) => false,
    }
}

/// Reads until the server closes the connection (after a TLS alert,
/// perhaps); a reset counts as closed.
async fn closed_by_server(mut stream: TcpStream) -> bool {
    let mut rest = Vec::new();
    tokio::time::timeout(TIMEOUT, stream.read_to_end(&mut rest))
        .await
        .is_ok()
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
    let addr = cluster.nodes[&node_id(NODES[1])].addr;

    // A length over the cap from a member: refused on the header alone.
    let mut oversize = dial(addr, "n9", SECRET).await.unwrap();
    oversize
        .write_all(&(MAX_FRAME + 1).to_be_bytes())
        .await
        .unwrap();
    oversize.flush().await.unwrap();
    assert!(closed_by_tls_server(oversize).await, "oversize frame");

    // Bytes that are no TLS handshake: closed without a frame read.
    let mut garbage = TcpStream::connect(addr).await.unwrap();
    garbage.write_all(&5u32.to_be_bytes()).await.unwrap();
    garbage.write_all(b"\xff\x00ab}").await.unwrap();
    assert!(closed_by_server(garbage).await, "garbage");

    // Valid JSON that is no RPC, from a member.
    let mut confused = dial(addr, "n9", SECRET).await.unwrap();
    write_frame(&mut confused, &serde_json::json!({"Hello": 1}))
        .await
        .unwrap();
    assert!(closed_by_tls_server(confused).await, "unknown rpc");

    // A member that votes for another node: closed, unanswered.
    let forged = RaftRpc::Vote(VoteRequest::new(Vote::new(0, node_id(NODES[0])), None));
    let mut impostor = dial(addr, "n9", SECRET).await.unwrap();
    write_frame(&mut impostor, &forged).await.unwrap();
    assert!(
        closed_by_tls_server(impostor).await,
        "a vote for another node"
    );

    // A member that forwards a write numbered in another node's session.
    let mut forger = dial(addr, "n9", SECRET).await.unwrap();
    write_frame(&mut forger, &RaftRpc::Write(add("forged", 4096)))
        .await
        .unwrap();
    assert!(
        closed_by_tls_server(forger).await,
        "a write for another node"
    );

    // Another cluster's certificate: no session at all.
    assert!(
        dial(addr, "n9", b"not this cluster's secret")
            .await
            .is_err()
            || closed_by_tls_server(
                dial(addr, "n9", b"not this cluster's secret")
                    .await
                    .unwrap()
            )
            .await,
        "a stranger's session"
    );

    // The server still answers a member's own stale vote, which it turns
    // down without disturbing the cluster.
    let stale = RaftRpc::Vote(VoteRequest::new(Vote::new(0, node_id("n9")), None));
    let mut client = dial(addr, "n9", SECRET).await.unwrap();
    write_frame(&mut client, &stale).await.unwrap();
    let reply: Result<VoteResponse<u64>, RaftError<u64>> =
        read_frame(&mut client).await.unwrap().unwrap();
    assert!(!reply.unwrap().vote_granted);

    // And the cluster still replicates through it.
    cluster
        .write_and_see_everywhere(add("b", 4096), &[spec("b", 4096)])
        .await;
    cluster.shutdown().await;
}
