//! Raft RPCs over TCP. openraft runs the protocol; this only carries its
//! requests and replies between nodes.
//!
//! Each message is one frame: a big-endian `u32` length, that many bytes
//! of JSON, then a 32-byte BLAKE3 tag of the JSON keyed with the cluster's
//! [`StoreKey`]: a node without the cluster secret can neither vote nor
//! write. A request frame holds a [`RaftRpc`]; the reply frame holds the
//! `Result` that the target's `Raft` returned for it. Frames longer than
//! [`MAX_FRAME`] are refused on both sides.

use std::future::Future;
use std::time::Duration;

use openraft::error::{
    ClientWriteError, InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError,
    Timeout, Unreachable,
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
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use super::types::{Raft, Request, Response, TypeConfig};

/// The largest frame either side sends or accepts, in bytes.
pub const MAX_FRAME: u32 = 64 << 20;

/// How long one RPC may take when openraft gives no deadline of its own.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// The bytes of a frame's tag.
const TAG_LEN: usize = 32;

/// What the store's frames are authenticated with, derived from the
/// cluster secret.
#[derive(Clone)]
pub struct StoreKey([u8; 32]);

impl StoreKey {
    /// Derived with its own context: the gossip key made from the same
    /// secret cannot sign store frames.
    pub fn from_secret(secret: &[u8]) -> StoreKey {
        StoreKey(blake3::derive_key(
            "ublkvd 2026-11 configuration store frames",
            secret,
        ))
    }

    fn tag(&self, body: &[u8]) -> blake3::Hash {
        blake3::keyed_hash(&self.0, body)
    }
}

impl std::fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreKey(..)")
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
    /// Node `id` asks to follow the log as a learner at `node`.
    Join {
        id: u64,
        node: BasicNode,
    },
}

/// The answer to [`RaftRpc::Write`] and [`RaftRpc::Join`].
#[derive(Debug, Serialize, Deserialize)]
pub enum WriteReply {
    /// Committed and applied.
    Done(Box<Response>),
    /// This node does not lead; `leader` does, if one is known.
    NotLeader { leader: Option<BasicNode> },
    /// It could not be done, for this reason.
    Failed(String),
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
    #[error("frame not signed with the cluster secret")]
    BadTag,
}

/// Writes `value` as one frame signed with `key`, and flushes it.
pub async fn write_frame<W, T>(w: &mut W, key: &StoreKey, value: &T) -> Result<(), FrameError>
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
    w.write_all(key.tag(&body).as_bytes()).await?;
    w.flush().await?;
    Ok(())
}

/// Reads one frame and checks it was signed with `key`. `Ok(None)` when
/// the peer closed cleanly before a frame.
pub async fn read_frame<R, T>(r: &mut R, key: &StoreKey) -> Result<Option<T>, FrameError>
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
    let mut tag = [0u8; TAG_LEN];
    r.read_exact(&mut tag).await?;
    // `Hash` compares in constant time: no tag found byte by byte.
    if key.tag(&body) != blake3::Hash::from_bytes(tag) {
        return Err(FrameError::BadTag);
    }
    Ok(Some(serde_json::from_slice(&body)?))
}

/// Makes a [`TcpConnection`] to each node openraft asks for.
#[derive(Debug, Clone)]
pub struct TcpNetwork {
    id: u64,
    key: StoreKey,
}

impl TcpNetwork {
    /// The network of node `id`, which it names as the sender in timeouts,
    /// signing with `key`.
    pub fn new(id: u64, key: StoreKey) -> Self {
        TcpNetwork { id, key }
    }
}

impl RaftNetworkFactory<TypeConfig> for TcpNetwork {
    type Network = TcpConnection;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> TcpConnection {
        TcpConnection {
            id: self.id,
            key: self.key.clone(),
            target,
            addr: node.addr.clone(),
            stream: None,
        }
    }
}

/// One node's link to another: a TCP stream opened on first use and
/// reopened after any error.
#[derive(Debug)]
pub struct TcpConnection {
    id: u64,
    key: StoreKey,
    target: u64,
    addr: String,
    stream: Option<BufStream<TcpStream>>,
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
                let tcp = TcpStream::connect(&self.addr).await?;
                tcp.set_nodelay(true)?;
                self.stream.insert(BufStream::new(tcp))
            }
        };
        write_frame(stream, &self.key, rpc).await?;
        read_frame(stream, &self.key).await?.ok_or_else(|| {
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

/// Answers RPCs arriving on `listener` with `raft` until `shutdown`
/// completes; open connections are dropped then.
pub async fn serve(
    listener: TcpListener,
    raft: Raft,
    key: StoreKey,
    shutdown: impl Future<Output = ()>,
) {
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let raft = raft.clone();
                    let key = key.clone();
                    connections.spawn(async move {
                        if let Err(e) = answer(stream, raft, key).await {
                            tracing::warn!(%peer, error = %e, "closing raft connection");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a raft connection failed");
                    // Likely out of descriptors: give others a moment.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    connections.shutdown().await;
}

/// Answers the requests on one connection until the peer closes it or sends
/// something unreadable or unsigned.
async fn answer(stream: TcpStream, raft: Raft, key: StoreKey) -> Result<(), FrameError> {
    stream.set_nodelay(true)?;
    let mut stream = BufStream::new(stream);
    while let Some(rpc) = read_frame::<_, RaftRpc>(&mut stream, &key).await? {
        match rpc {
            RaftRpc::AppendEntries(rpc) => {
                write_frame(&mut stream, &key, &raft.append_entries(rpc).await).await?
            }
            RaftRpc::Vote(rpc) => write_frame(&mut stream, &key, &raft.vote(rpc).await).await?,
            RaftRpc::InstallSnapshot(rpc) => {
                write_frame(&mut stream, &key, &raft.install_snapshot(rpc).await).await?
            }
            RaftRpc::Write(request) => {
                let reply = write_reply(raft.client_write(request).await.map(|r| r.data));
                write_frame(&mut stream, &key, &reply).await?
            }
            RaftRpc::Join { id, node } => {
                let added = raft.add_learner(id, node, false).await;
                let reply = write_reply(added.map(|_| Response::default()));
                write_frame(&mut stream, &key, &reply).await?
            }
        }
    }
    Ok(())
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

/// Sends one write or join to the store node at `addr` on a connection of
/// its own, and returns its answer.
pub async fn call(addr: &str, key: &StoreKey, rpc: &RaftRpc) -> Result<WriteReply, FrameError> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let mut stream = BufStream::new(tcp);
    write_frame(&mut stream, key, rpc).await?;
    read_frame(&mut stream, key).await?.ok_or_else(|| {
        FrameError::Io(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed before the reply",
        ))
    })
}
