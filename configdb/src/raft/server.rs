//! The store's listener: authenticates each connection, checks that every
//! RPC comes from the node it speaks for, and answers it with this node's
//! `Raft`. Also the answers to the requests openraft has no RPC for
//! (writes forwarded to the leader, joins, voter changes, read indexes).

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use identity::TlsAcceptor;
use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers};
use tokio::io::BufStream;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use super::network::{
    read_frame, write_frame, FrameError, LeaderReply, RaftRpc, ReadIndexReply, StoreTls,
    WriteReply, HANDSHAKE_TIMEOUT,
};
use super::types::{Raft, Response};
use crate::store::node_id;

/// A connection silent this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Connections the store's listener keeps open at once; beyond it, new
/// ones are closed at once.
const MAX_CONNECTIONS: usize = 256;

/// The leader's read index, or who leads.
pub async fn read_index(raft: &Raft) -> ReadIndexReply {
    match raft.get_read_log_id().await {
        Ok((read, _)) => LeaderReply::Done(read.map_or(0, |id| id.index)),
        Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(forward))) => {
            LeaderReply::NotLeader {
                leader: forward.leader_node,
            }
        }
        Err(e) => LeaderReply::Failed(e.to_string()),
    }
}

/// Answers RPCs arriving on `listener` with `raft`, from nodes that prove
/// a certificate of the cluster's CA, until `shutdown` completes; open
/// connections are dropped then.
pub async fn serve(
    listener: TcpListener,
    raft: Raft,
    tls: StoreTls,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(tls.server.clone());
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Ok(slot) = slots.clone().try_acquire_owned() else {
                        tracing::debug!(%peer, "store connection refused: {MAX_CONNECTIONS} open");
                        continue;
                    };
                    let raft = raft.clone();
                    let acceptor = acceptor.clone();
                    connections.spawn(async move {
                        if let Err(e) = answer(stream, acceptor, raft).await {
                            tracing::warn!(%peer, error = %e, "closing store connection");
                        }
                        drop(slot);
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a store connection failed");
                    // Likely out of descriptors: give others a moment.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    connections.shutdown().await;
}

/// Authenticates one connection, then answers its requests until the peer
/// closes it or sends something unreadable, or speaks for another node.
async fn answer(stream: TcpStream, acceptor: TlsAcceptor, raft: Raft) -> Result<(), FrameError> {
    stream.set_nodelay(true)?;
    let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream))
        .await
        .map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "no TLS handshake in time")
        })??;
    let peer = node_id(&identity::peer_name(stream.get_ref().1)?);
    let mut stream = BufStream::new(stream);
    loop {
        // Raft's heartbeats keep a used connection busy: a silent one is
        // dead or abandoned.
        let next = tokio::time::timeout(IDLE_TIMEOUT, read_frame::<_, RaftRpc>(&mut stream));
        let Some(rpc) = next.await.map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "silent for a minute")
        })??
        else {
            break;
        };
        rpc.check_sender(peer)?;
        match rpc {
            RaftRpc::AppendEntries(rpc) => {
                write_frame(&mut stream, &raft.append_entries(rpc).await).await?
            }
            RaftRpc::Vote(rpc) => write_frame(&mut stream, &raft.vote(rpc).await).await?,
            RaftRpc::InstallSnapshot(rpc) => {
                write_frame(&mut stream, &raft.install_snapshot(rpc).await).await?
            }
            RaftRpc::Write(request) => {
                let reply = write_reply(raft.client_write(request).await.map(|r| r.data));
                write_frame(&mut stream, &reply).await?
            }
            RaftRpc::Join { id, node } => {
                write_frame(&mut stream, &join(&raft, id, node).await).await?
            }
            RaftRpc::SetVoters(voters) => {
                write_frame(&mut stream, &set_voters(&raft, voters).await).await?
            }
            RaftRpc::ReadIndex => write_frame(&mut stream, &read_index(&raft).await).await?,
        }
    }
    Ok(())
}

impl RaftRpc {
    /// Refuses an RPC that authenticated node `peer` sends for another
    /// node: votes, appends and snapshots come from the node whose vote
    /// they carry, a join from the node joining, a write from the node
    /// whose session numbers it.
    fn check_sender(&self, peer: u64) -> Result<(), FrameError> {
        let (claimed, what) = match self {
            RaftRpc::AppendEntries(rpc) => (rpc.vote.leader_id().voted_for(), "an append"),
            RaftRpc::Vote(rpc) => (rpc.vote.leader_id().voted_for(), "a vote"),
            RaftRpc::InstallSnapshot(rpc) => (rpc.vote.leader_id().voted_for(), "a snapshot"),
            RaftRpc::Join { id, .. } => (Some(*id), "a join"),
            RaftRpc::Write(request) => (Some(node_id(&request.client.node)), "a write"),
            // Asks nothing of anybody's: any node of the cluster may.
            RaftRpc::ReadIndex => return Ok(()),
            // An admin's change, which the node it was given to passes on
            // after its control socket admitted the admin.
            RaftRpc::SetVoters(_) => return Ok(()),
        };
        match claimed {
            Some(claimed) if claimed == peer => Ok(()),
            claimed => Err(FrameError::Impersonation {
                peer,
                claimed: claimed.unwrap_or_default(),
                what,
            }),
        }
    }
}

/// Records node `id` at `node`: a new node becomes a learner; a known one
/// (learner or voter) keeps its role at its new address. Only the node
/// itself asks this ([`RaftRpc::check_sender`]), over a connection that
/// proved its name, so no node can be pointed at another's address.
pub async fn join(raft: &Raft, id: u64, node: BasicNode) -> WriteReply {
    let nodes = ChangeMembers::SetNodes(BTreeMap::from([(id, node)]));
    let changed = raft.change_membership(nodes, true).await;
    write_reply(changed.map(|_| Response::default()))
}

/// Makes exactly `voters` the voters (through a joint configuration, so a
/// majority of the old voters and of the new agree); the voters left out
/// stay as learners.
pub async fn set_voters(raft: &Raft, voters: BTreeSet<u64>) -> WriteReply {
    let changed = raft
        .change_membership(ChangeMembers::ReplaceAllVoters(voters), true)
        .await;
    write_reply(changed.map(|_| Response::default()))
}

/// A local write's outcome as a remote writer is told it.
pub fn write_reply(
    outcome: Result<Response, RaftError<u64, ClientWriteError<u64, BasicNode>>>,
) -> WriteReply {
    match outcome {
        Ok(response) => WriteReply::Done(Box::new(response)),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
            WriteReply::NotLeader {
                leader: forward.leader_node,
            }
        }
        Err(e) => WriteReply::Failed(e.to_string()),
    }
}
