//! Raft RPCs over TLS 1.3 on TCP. openraft runs the protocol; this only
//! carries its requests and replies between nodes.
//!
//! Both ends of every connection prove a certificate of the cluster's CA
//! ([`identity::NodeIdentity`]); a node's Raft id is [`node_id`] of the
//! name its certificate carries, and a node may only speak for itself: a
//! vote, an append or a snapshot must come from the candidate or leader it
//! names, a join from the node joining (which alone may set its address).
//! A dialled node must be the target
//! openraft asked for. TLS numbers and authenticates every record, so a
//! frame can be neither altered, replayed nor moved to another session; a
//! connection carries one request at a time, each answered before the next,
//! so a reply is bound to its request.
//!
//! Each message is one frame: a big-endian `u32` length, then that many
//! bytes of JSON. A request frame holds a [`RaftRpc`]; the reply frame holds
//! the `Result` that the target's `Raft` returned for it. Frames longer than
//! [`MAX_FRAME`] are refused on both sides; nothing is read before the
//! handshake completes, within [`HANDSHAKE_TIMEOUT`].

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use identity::rustls::{ClientConfig, ServerConfig};
use identity::{IdentityError, NodeIdentity, ServerName, TlsAcceptor, TlsConnector};
use openraft::error::{
    CheckIsLeaderError, ClientWriteError, InstallSnapshotError, NetworkError, RPCError, RaftError,
    RemoteError, Timeout, Unreachable,
};
use openraft::network::{RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, ChangeMembers};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufStream};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use super::types::{Raft, Request, Response, TypeConfig};
use crate::store::node_id;

/// The largest frame either side sends or accepts, in bytes.
pub const MAX_FRAME: u32 = 64 << 20;

/// How long one RPC may take when openraft gives no deadline of its own.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long an accepted connection has to complete its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection silent this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Connections the store's listener keeps open at once; beyond it, new
/// ones are closed at once.
const MAX_CONNECTIONS: usize = 256;

/// What the store's connections are made and accepted with: this node's
/// certificate and the cluster's CA.
#[derive(Clone)]
pub struct StoreTls {
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

impl StoreTls {
    pub fn new(identity: &NodeIdentity) -> Result<StoreTls, IdentityError> {
        Ok(StoreTls {
            server: identity.server_config()?,
            client: identity.client_config_any_member()?,
        })
    }

    /// Dials `addr` and returns the stream and the Raft id of the node the
    /// certificate it proved names.
    async fn connect(
        &self,
        addr: &str,
    ) -> Result<(BufStream<identity::client::TlsStream<TcpStream>>, u64), FrameError> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let ip = tcp.peer_addr()?.ip();
        let tls = TlsConnector::from(self.client.clone())
            .connect(ServerName::from(ip), tcp)
            .await?;
        let peer = identity::peer_name(tls.get_ref().1)?;
        Ok((BufStream::new(tls), node_id(&peer)))
    }
}

impl std::fmt::Debug for StoreTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreTls(..)")
    }
}

/// A request from one node's store to another's.
#[derive(Debug, Serialize, Deserialize)]
pub enum RaftRpc {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<u64>),
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// A client's change, sent to the node believed to lead.
    Write(Request),
    /// Node `id` asks to follow the log at `node`: as a learner if it is
    /// new, at its new address if it moved.
    Join {
        id: u64,
        node: BasicNode,
    },
    /// An admin makes exactly these nodes the voters; each must have
    /// joined already. The others stay, as learners.
    SetVoters(BTreeSet<u64>),
    /// A node asks the leader how far the log is committed, confirmed with
    /// a majority now (Raft's read index): once it has applied that far,
    /// it knows every change committed before it asked.
    ReadIndex,
}

/// A node's answer to what only the leader does.
#[derive(Debug, Serialize, Deserialize)]
pub enum LeaderReply<T> {
    /// Done: committed and applied (a write, a join), or confirmed with a
    /// majority (a read index).
    Done(T),
    /// This node does not lead; `leader` does, if one is known.
    NotLeader { leader: Option<BasicNode> },
    /// It could not be done, for this reason.
    Failed(String),
}

/// The answer to [`RaftRpc::Write`] and [`RaftRpc::Join`].
pub type WriteReply = LeaderReply<Box<Response>>;

/// The answer to [`RaftRpc::ReadIndex`]: committed this far (0: nothing
/// yet), as a majority confirmed.
pub type ReadIndexReply = LeaderReply<u64>;

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

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame of {0} bytes is over the {MAX_FRAME}-byte limit")]
    TooLarge(u64),
    #[error("malformed frame: {0}")]
    Json(#[from] serde_json::Error),
    #[error("this node has no identity to reach others with ([gossip] or [tls])")]
    NoIdentity,
    #[error("peer identity: {0}")]
    Identity(#[from] IdentityError),
    #[error("node {peer} is not the node {wanted} this connection is for")]
    WrongPeer { peer: u64, wanted: u64 },
    #[error("node {peer} may not send {what} for node {claimed}")]
    Impersonation {
        peer: u64,
        claimed: u64,
        what: &'static str,
    },
}

/// Writes `value` as one frame, and flushes it.
pub async fn write_frame<W, T>(w: &mut W, value: &T) -> Result<(), FrameError>
where
    W: AsyncWrite + Unpin,
    T: Serialize + ?Sized,
{
    let body = serde_json::to_vec(value)?;
    let len = u32::try_from(body.len())
        .ok()
        .filter(|&len| len <= MAX_FRAME)
        .ok_or(FrameError::TooLarge(body.len() as u64))?;
    w.write_all(&len.to_be_bytes()).await?;
    w.write_all(&body).await?;
    w.flush().await?;
    Ok(())
}

/// Reads one frame. `Ok(None)` when the peer closed cleanly before a
/// frame.
pub async fn read_frame<R, T>(r: &mut R) -> Result<Option<T>, FrameError>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len);
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(u64::from(len)));
    }
    let mut body = vec![0u8; len as usize];
    r.read_exact(&mut body).await?;
    Ok(Some(serde_json::from_slice(&body)?))
}

/// Makes a [`TcpConnection`] to each node openraft asks for.
#[derive(Debug, Clone)]
pub struct TcpNetwork {
    id: u64,
    tls: Option<StoreTls>,
}

impl TcpNetwork {
    /// The network of node `id`, which it names as the sender in timeouts,
    /// dialling with `tls` (`None`: a node alone, which dials nobody).
    pub fn new(id: u64, tls: Option<StoreTls>) -> Self {
        TcpNetwork { id, tls }
    }
}

impl RaftNetworkFactory<TypeConfig> for TcpNetwork {
    type Network = TcpConnection;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> TcpConnection {
        TcpConnection {
            id: self.id,
            tls: self.tls.clone(),
            target,
            addr: node.addr.clone(),
            stream: None,
        }
    }
}

/// One node's link to another: a TLS stream opened on first use and
/// reopened after any error.
#[derive(Debug)]
pub struct TcpConnection {
    id: u64,
    tls: Option<StoreTls>,
    target: u64,
    addr: String,
    stream: Option<BufStream<identity::client::TlsStream<TcpStream>>>,
}

type RpcError<E> = RPCError<u64, BasicNode, RaftError<u64, E>>;

impl TcpConnection {
    async fn exchange<Resp, E>(
        &mut self,
        rpc: &RaftRpc,
    ) -> Result<Result<Resp, RaftError<u64, E>>, FrameError>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let stream = match &mut self.stream {
            Some(stream) => stream,
            None => {
                let tls = self.tls.as_ref().ok_or(FrameError::NoIdentity)?;
                let (stream, peer) = tls.connect(&self.addr).await?;
                if peer != self.target {
                    return Err(FrameError::WrongPeer {
                        peer,
                        wanted: self.target,
                    });
                }
                self.stream.insert(stream)
            }
        };
        write_frame(stream, rpc).await?;
        read_frame(stream).await?.ok_or_else(|| {
            FrameError::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed before the reply",
            ))
        })
    }

    async fn call<Resp, E>(
        &mut self,
        action: RPCTypes,
        rpc: RaftRpc,
        option: &RPCOption,
    ) -> Result<Resp, RpcError<E>>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let ttl = option.hard_ttl();
        let ttl = if ttl.is_zero() { DEFAULT_TIMEOUT } else { ttl };
        let outcome = tokio::time::timeout(ttl, self.exchange::<Resp, E>(&rpc)).await;
        match outcome {
            Ok(Ok(reply)) => {
                reply.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            Ok(Err(e)) => {
                // The stream may be mid-frame: start afresh next time.
                self.stream = None;
                match e {
                    FrameError::Io(e) => Err(RPCError::Unreachable(Unreachable::new(&e))),
                    e => Err(RPCError::Network(NetworkError::new(&e))),
                }
            }
            Err(_) => {
                self.stream = None;
                Err(RPCError::Timeout(Timeout {
                    action,
                    id: self.id,
                    target: self.target,
                    timeout: ttl,
                }))
            }
        }
    }
}

impl RaftNetwork<TypeConfig> for TcpConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RpcError<openraft::error::Infallible>> {
        self.call(
            RPCTypes::AppendEntries,
            RaftRpc::AppendEntries(rpc),
            &option,
        )
        .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<u64>, RpcError<InstallSnapshotError>> {
        self.call(
            RPCTypes::InstallSnapshot,
            RaftRpc::InstallSnapshot(rpc),
            &option,
        )
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RpcError<openraft::error::Infallible>> {
        self.call(RPCTypes::Vote, RaftRpc::Vote(rpc), &option).await
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

/// Sends one write, join or read index to the store node at `addr` on a
/// connection of its own, and returns its answer.
pub async fn call<R: DeserializeOwned>(
    addr: &str,
    tls: &StoreTls,
    rpc: &RaftRpc,
) -> Result<R, FrameError> {
    let (mut stream, _) = tls.connect(addr).await?;
    write_frame(&mut stream, rpc).await?;
    read_frame(&mut stream).await?.ok_or_else(|| {
        FrameError::Io(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed before the reply",
        ))
    })
}
