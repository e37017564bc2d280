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

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use identity::rustls::{ClientConfig, ServerConfig};
use identity::{IdentityError, NodeIdentity, ServerName, TlsConnector};
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable,
};
use openraft::network::{RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufStream};
use tokio::net::TcpStream;

use super::types::{Request, Response, TypeConfig};
use crate::store::node_id;

/// The largest frame either side sends or accepts, in bytes.
pub const MAX_FRAME: u32 = 64 << 20;

/// How long one RPC may take when openraft gives no deadline of its own.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long an accepted connection has to complete its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// What the store's connections are made and accepted with: this node's
/// certificate and the cluster's CA.
#[derive(Clone)]
pub struct StoreTls {
    pub(super) server: Arc<ServerConfig>,
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
