//! The store as a daemon uses it: a Raft member over redb that answers its
//! peers on TCP, takes writes from any node (forwarding them to the
//! leader), and shows every node the configuration as it is applied there.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{InitializeError, RaftError};
use openraft::{BasicNode, ServerState};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::model::{Command, Configuration, Request, Response};
use crate::raft::network::{call, FrameError, LeaderReply, RaftRpc, StoreTls};
use crate::raft::server::{self, read_index, write_reply};
use crate::raft::{serve, Raft, StateMachine, TcpNetwork};

mod files;
mod join;
mod session;

use files::open_files;
use join::{join, join_once, warn_if_voters_differ};
use session::ClientSession;

/// How long a node waits before asking again to join, or to write when no
/// leader is known.
const RETRY: Duration = Duration::from_millis(100);

/// What a node's store is told at start.
#[derive(Debug)]
pub struct StoreConfig {
    /// This node's name; its Raft id is [`node_id`] of it.
    pub node: String,
    /// Where the log and the state machine live.
    pub dir: PathBuf,
    /// The voters by node name, and where each answers store RPCs. Empty:
    /// this node alone is the store, and nothing listens.
    pub voters: BTreeMap<String, SocketAddr>,
    /// Where this node answers store RPCs: its voter address, or where a
    /// learner is sent the log. `None` only for a node alone.
    pub listen: Option<TcpListener>,
    /// How this node proves who it is to the others, and checks them;
    /// `None` only for a node alone.
    pub tls: Option<StoreTls>,
    pub raft: Arc<openraft::Config>,
    /// How long a write may wait for a majority before it is given up.
    pub write_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("the configuration store cannot open its files in {dir}: {source}")]
    Open {
        dir: String,
        source: Box<openraft::StorageError<u64>>,
    },
    #[error("the configuration store cannot start: {0}")]
    Start(String),
    /// The store looked at the command and said no; nothing changed.
    #[error("{0}")]
    Refused(String),
    /// No leader took the write in time: it was not applied, or its
    /// outcome is unknown (a retry with the same request is safe).
    #[error(
        "the configuration store did not commit the change within {seconds} s \
         (a majority of the voters must be reachable): {last_error}"
    )]
    Unavailable { seconds: u64, last_error: String },
}

/// This node's part in the store, as the consensus reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreRole {
    Leader,
    Follower,
    Candidate,
    /// Receives the log but does not vote.
    Learner,
    Stopped,
}

impl std::fmt::Display for StoreRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StoreRole::Leader => "leader",
            StoreRole::Follower => "follower",
            StoreRole::Candidate => "candidate",
            StoreRole::Learner => "learner",
            StoreRole::Stopped => "stopped",
        })
    }
}

/// Where the store stands, as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreStatus {
    pub id: u64,
    pub role: StoreRole,
    pub term: u64,
    pub leader: Option<u64>,
    pub last_log_index: u64,
    pub last_applied: u64,
    pub voters: BTreeSet<u64>,
    pub learners: BTreeSet<u64>,
}

/// One node's member of the replicated configuration store.
pub struct Store {
    id: u64,
    raft: Raft,
    machine: StateMachine,
    tls: Option<StoreTls>,
    session: ClientSession,
    write_timeout: Duration,
    stop: watch::Sender<bool>,
    tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
}

/// Raft timing for nodes on one LAN: heartbeats every 100 ms, a new
/// election after 400 to 800 ms without one. Snapshots every 1000 entries
/// keep the log short.
pub fn lan_raft_config() -> Arc<openraft::Config> {
    let config = openraft::Config {
        cluster_name: "ublkvd".into(),
        heartbeat_interval: 100,
        election_timeout_min: 400,
        election_timeout_max: 800,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(1000),
        ..Default::default()
    };
    // Constant values that satisfy every rule `validate` checks.
    Arc::new(config.validate().unwrap_or_default())
}

/// A node's Raft id: FNV-1a of its name, the same on every node.
pub fn node_id(name: &str) -> u64 {
    crate::vdisk::fnv1a(name)
}

impl Store {
    /// Opens the node's store files and joins the store: voters start
    /// (or resume) the cluster of the voters named; other nodes ask a
    /// voter to be added as learners, and follow the log.
    pub async fn open(config: StoreConfig) -> Result<Store, StoreError> {
        let id = node_id(&config.node);
        let (log, machine) = open_files(&config.dir)?;
        let addr = match &config.listen {
            Some(listener) => listener
                .local_addr()
                .map_err(|e| StoreError::Start(format!("listener address: {e}")))?
                .to_string(),
            None => String::new(),
        };
        let raft = Raft::new(
            id,
            config.raft.clone(),
            TcpNetwork::new(id, config.tls.clone()),
            log,
            machine.clone(),
        )
        .await
        .map_err(|e| StoreError::Start(e.to_string()))?;
        let (stop, stopped) = watch::channel(false);
        let mut tasks = Vec::new();
        if let Some(listener) = config.listen {
            let Some(tls) = config.tls.clone() else {
                return Err(StoreError::Start(
                    "a store that listens needs this node's identity ([gossip] or [tls])".into(),
                ));
            };
            let mut stopped = stopped.clone();
            tasks.push(tokio::spawn(serve(
                listener,
                raft.clone(),
                tls,
                async move {
                    let _ = stopped.wait_for(|&s| s).await;
                },
            )));
        }
        let members: BTreeMap<u64, BasicNode> = if config.voters.is_empty() {
            BTreeMap::from([(id, BasicNode::new(&addr))])
        } else {
            config
                .voters
                .iter()
                .map(|(name, addr)| (node_id(name), BasicNode::new(addr.to_string())))
                .collect()
        };
        let initialized = raft
            .is_initialized()
            .await
            .map_err(|e| StoreError::Start(e.to_string()))?;
        let me = BasicNode::new(&addr);
        let voters: Vec<String> = config
            .voters
            .iter()
            .filter(|(name, _)| **name != config.node)
            .map(|(_, addr)| addr.to_string())
            .collect();
        let recorded_at = |raft: &Raft| {
            let metrics = raft.metrics();
            let metrics = metrics.borrow();
            metrics
                .membership_config
                .membership()
                .get_node(&id)
                .cloned()
        };
        let recorded = if initialized {
            warn_if_voters_differ(&raft, &config.voters);
            recorded_at(&raft)
        } else if members.contains_key(&id) {
            // A voter the file names, starting with empty files, first asks
            // the other voters: if a store already runs, this node joins it
            // and that store's voters stand; the file only seeds a new one.
            let joined = match &config.tls {
                Some(tls) => join_once(&me, id, &voters, tls).await,
                None => None,
            };
            match joined {
                Some(leader) => tracing::warn!(
                    %leader,
                    "joined the configuration store that already runs there; its voters stand \
                     (`ublkvd store` shows them, `ublkvd store set-voters` changes them)"
                ),
                // Every voter proposes the same first membership; another
                // voter's may have reached this one first.
                None => match raft.initialize(members).await {
                    Ok(()) | Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
                    Err(e) => return Err(StoreError::Start(e.to_string())),
                },
            }
            Some(me.clone())
        } else {
            None
        };
        // A new learner, or a node whose address is not the one the store
        // has (a node alone has none): asks until the leader records it.
        if !addr.is_empty() && recorded.as_ref() != Some(&me) {
            let Some(tls) = config.tls.clone() else {
                return Err(StoreError::Start(
                    "a node that listens needs this node's identity ([gossip] or [tls])".into(),
                ));
            };
            let mut asked = voters.clone();
            if recorded.is_some() {
                // A voter of a store that was this node alone: it leads,
                // and answers itself.
                asked.push(addr.clone());
            }
            tasks.push(tokio::spawn(join(
                raft.clone(),
                id,
                me,
                asked,
                tls,
                stopped,
            )));
        }
        Ok(Store {
            id,
            raft,
            machine,
            session: ClientSession::new(&config.node),
            tls: config.tls,
            write_timeout: config.write_timeout,
            stop,
            tasks: std::sync::Mutex::new(tasks),
        })
    }

    /// The configuration as last applied on this node.
    pub fn configuration(&self) -> Arc<Configuration> {
        self.machine.configuration()
    }

    /// Sees each configuration as it is applied on this node.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Configuration>> {
        self.machine.subscribe()
    }

    /// Waits until this node has applied `generation`.
    pub async fn wait_applied(&self, generation: u64, timeout: Duration) -> bool {
        let mut changes = self.subscribe();
        let applied = async move {
            changes
                .wait_for(|c| c.generation >= generation)
                .await
                .is_ok()
        };
        tokio::time::timeout(timeout, applied).await == Ok(true)
    }

    /// Commits `command` through the leader, wherever it is, and returns
    /// what applying it did. A refused command is an error, with the
    /// store's reason.
    pub async fn write(&self, command: Command) -> Result<Response, StoreError> {
        let numbered = self.session.begin();
        let request = Request {
            client: self.session.client.clone(),
            seq: numbered.seq,
            acked_below: numbered.acked_below,
            command,
        };
        let here = || async {
            let outcome = self.raft.client_write(request.clone()).await;
            write_reply(outcome.map(|r| r.data))
        };
        let rpc = RaftRpc::Write(request.clone());
        match self.ask_leader(&rpc, here, self.write_timeout).await {
            Ok(response) => match response.refused {
                Some(why) => Err(StoreError::Refused(why)),
                None => Ok(*response),
            },
            Err(last_error) => Err(StoreError::Unavailable {
                seconds: self.write_timeout.as_secs(),
                last_error,
            }),
        }
    }

    /// Makes exactly the nodes `voters` (by name) the store's voters,
    /// through whoever leads: the voters left out stay as learners. Each
    /// must have joined the store (its daemon started once with this
    /// cluster's `[store]`), and a majority of the old voters and of the
    /// new must be reachable.
    pub async fn set_voters(&self, voters: &BTreeSet<String>) -> Result<(), StoreError> {
        if !matches!(voters.len(), 1 | 3 | 5) {
            return Err(StoreError::Refused(format!(
                "{} voters named: name 3 or 5 (1 for a test cluster), so that a majority survives a failure",
                voters.len()
            )));
        }
        let known: BTreeSet<u64> = {
            let metrics = self.raft.metrics();
            let metrics = metrics.borrow();
            metrics
                .membership_config
                .membership()
                .nodes()
                .map(|(id, _)| *id)
                .collect()
        };
        let strangers: Vec<&str> = voters
            .iter()
            .filter(|name| !known.contains(&node_id(name)))
            .map(String::as_str)
            .collect();
        if !strangers.is_empty() {
            return Err(StoreError::Refused(format!(
                "not in the store yet: {}; start each one's daemon with this cluster's [store] section first \
                 (`ublkvd store` lists the voters and learners)",
                strangers.join(", ")
            )));
        }
        let ids: BTreeSet<u64> = voters.iter().map(|name| node_id(name)).collect();
        let here = || server::set_voters(&self.raft, ids.clone());
        let rpc = RaftRpc::SetVoters(ids.clone());
        match self.ask_leader(&rpc, here, self.write_timeout).await {
            Ok(_) => Ok(()),
            Err(last_error) => Err(StoreError::Unavailable {
                seconds: self.write_timeout.as_secs(),
                last_error,
            }),
        }
    }

    /// What only the leader does, asked of whoever leads within `timeout`:
    /// this node's Raft first (`here`, which says who leads if it does
    /// not), then `rpc` to the node it names, following such hints, and
    /// from the start again after a failure. Else the last failure.
    async fn ask_leader<T, F>(
        &self,
        rpc: &RaftRpc,
        here: impl Fn() -> F,
        timeout: Duration,
    ) -> Result<T, String>
    where
        T: serde::de::DeserializeOwned,
        F: std::future::Future<Output = LeaderReply<T>>,
    {
        let mut last_error = String::from("no leader known yet");
        let attempts = async {
            let mut target: Option<BasicNode> = None;
            loop {
                let reply = match &target {
                    None => here().await,
                    Some(node) => {
                        let sent = match &self.tls {
                            Some(tls) => call(&node.addr, tls, rpc).await,
                            None => Err(FrameError::NoIdentity),
                        };
                        sent.unwrap_or_else(|e| LeaderReply::Failed(format!("{}: {e}", node.addr)))
                    }
                };
                match reply {
                    LeaderReply::Done(done) => return done,
                    LeaderReply::NotLeader { leader: Some(node) }
                        if target.as_ref() != Some(&node) =>
                    {
                        target = Some(node);
                    }
                    LeaderReply::NotLeader { .. } => {
                        last_error = "no leader elected".into();
                        target = None;
                        tokio::time::sleep(RETRY).await;
                    }
                    LeaderReply::Failed(why) => {
                        last_error = why;
                        target = None;
                        tokio::time::sleep(RETRY).await;
                    }
                }
            }
        };
        let outcome = tokio::time::timeout(timeout, attempts).await;
        outcome.map_err(|_| last_error)
    }

    /// Confirms, within `timeout`, that this node is in touch with the
    /// store's majority and has applied every change the majority had
    /// committed when this was called: the leader confirms its leadership
    /// with a majority and says how far the log is committed (Raft's read
    /// index), and this node applies that far. What a node's lease rests on.
    pub async fn confirm(&self, timeout: Duration) -> Result<(), StoreError> {
        let started = tokio::time::Instant::now();
        let unavailable = |last_error: String| StoreError::Unavailable {
            seconds: timeout.as_secs(),
            last_error,
        };
        let here = || read_index(&self.raft);
        let index = self
            .ask_leader(&RaftRpc::ReadIndex, here, timeout)
            .await
            .map_err(unavailable)?;
        let left = timeout.saturating_sub(started.elapsed());
        self.raft
            .wait(Some(left))
            .applied_index_at_least(Some(index).filter(|&i| i > 0), "confirm")
            .await
            .map(drop)
            .map_err(|e| unavailable(format!("applying up to index {index}: {e}")))
    }

    /// Where the store stands, as this node sees it.
    pub fn status(&self) -> StoreStatus {
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        StoreStatus {
            id: self.id,
            role: match metrics.state {
                ServerState::Leader => StoreRole::Leader,
                ServerState::Follower => StoreRole::Follower,
                ServerState::Candidate => StoreRole::Candidate,
                ServerState::Learner => StoreRole::Learner,
                ServerState::Shutdown => StoreRole::Stopped,
            },
            term: metrics.current_term,
            leader: metrics.current_leader,
            last_log_index: metrics.last_log_index.unwrap_or(0),
            last_applied: metrics.last_applied.map_or(0, |id| id.index),
            voters: membership.voter_ids().collect(),
            learners: membership.learner_ids().collect(),
        }
    }

    /// Stops taking part in the store; later writes fail. The files keep
    /// everything.
    pub async fn shutdown(&self) {
        let _ = self.stop.send(true);
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!("stopping the configuration store: {e}");
        }
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        for task in tasks {
            let _ = task.await;
        }
    }
}
