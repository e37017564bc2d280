//! What this node shares with its peers: its tails, served by the peer
//! server, its membership (gossip), and its links to the other members.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context};
use backend::link::{HealthConfig, PeerLinks, RemoteTail};
use backend::mirror::MirrorConfig;
use backend::peer::{serve, Clients, Exports};
use backend::route::RouteConfig;
use backend::{Engine, EngineRing, Lease, LocalTail, Tail};
use configdb::TailRef;
use gossip::{ClusterKey, Gossip, GossipConfig, NodeMeta, View};
use identity::NodeIdentity;
use tokio::net::TcpListener;
use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::NodeConfig;

/// Entries of the I/O engine's ring: requests of peers and of this node's
/// cluster vdisks in flight at once before the engine queues them.
const ENGINE_ENTRIES: u32 = 256;

pub struct Cluster {
    pub node: String,
    pub runtime: Handle,
    pub route: RouteConfig,
    /// Whether vdisks get a `/dev/ublkbN` on this node.
    pub devices: bool,
    /// Whether devices on local tails use ublk zero copy where the kernel
    /// has it.
    pub zero_copy: bool,
    pub mirror: MirrorConfig,
    /// Where the dirty maps of the mirrors this node is primary of live.
    pub maps_dir: PathBuf,
    tails: BTreeMap<String, PathBuf>,
    health: HealthConfig,
    /// The peers some vdisk of this node goes to, by name; each follows
    /// the membership view.
    peers: Arc<Mutex<BTreeMap<String, Arc<PeerLinks>>>>,
    gossip: Option<Arc<Gossip>>,
    /// Who this node proves it is to its peers, and whom it trusts.
    identity: Option<NodeIdentity>,
    exports: Arc<Exports>,
    /// This node's right to touch its tails, from the store's majority.
    pub lease: Lease,
    engine: Engine,
}

impl Cluster {
    /// Starts the I/O engine and, with a `[gossip]` section, joins the
    /// cluster announcing `links` (the peer server's addresses): links to
    /// other members follow what gossip says of them, authenticated as
    /// `identity`. Must run inside the tokio runtime that will carry the
    /// links.
    pub async fn start(
        config: &NodeConfig,
        links: Vec<SocketAddr>,
        identity: Option<NodeIdentity>,
        lease: Lease,
    ) -> anyhow::Result<Cluster> {
        let engine = Engine::start(ENGINE_ENTRIES).context("cannot start the io_uring engine")?;
        let gossip = match &config.gossip {
            Some(settings) => {
                let key = ClusterKey::load(&settings.secret_file)?;
                let gossip = Gossip::start(GossipConfig {
                    name: config.node.clone(),
                    bind: settings.bind,
                    seeds: settings.seeds.clone(),
                    timing: settings.timing,
                    key,
                    meta: NodeMeta {
                        links,
                        tails: config.tails.keys().cloned().collect(),
                        version: env!("CARGO_PKG_VERSION").into(),
                    },
                })
                .await?;
                Some(Arc::new(gossip))
            }
            None => None,
        };
        let peers = Arc::new(Mutex::new(BTreeMap::new()));
        let exports = Arc::new(Exports::leased(lease.clone()));
        if let Some(gossip) = &gossip {
            let fence = config.gossip.as_ref().is_some_and(|g| g.fence_non_members);
            let admitted = fence.then(|| exports.clone());
            follow_membership(config.node.clone(), gossip.view(), peers.clone(), admitted);
        }
        Ok(Cluster {
            node: config.node.clone(),
            runtime: Handle::current(),
            route: config.route,
            devices: config.devices,
            zero_copy: config.zero_copy,
            mirror: config.mirror,
            maps_dir: config.data_dir.join("mirror"),
            tails: config.tails.clone(),
            health: config.health,
            peers,
            gossip,
            identity,
            exports,
            lease,
            engine,
        })
    }

    pub fn gossip(&self) -> Option<&Arc<Gossip>> {
        self.gossip.as_ref()
    }

    /// Binds every listen address: a node that cannot take its peers'
    /// requests must say so at start, not later.
    pub async fn bind(addrs: &[std::net::SocketAddr]) -> anyhow::Result<Vec<TcpListener>> {
        let mut listeners = Vec::new();
        for addr in addrs {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen for peers on {addr}"))?;
            listeners.push(listener);
        }
        Ok(listeners)
    }

    /// Serves this node's exported tails on `listeners` to peers that
    /// prove a certificate of the cluster's CA, until `stop` turns true.
    pub fn serve_peers(
        &self,
        listeners: Vec<TcpListener>,
        stop: &watch::Receiver<bool>,
    ) -> anyhow::Result<JoinSet<std::io::Result<()>>> {
        let mut servers = JoinSet::new();
        if listeners.is_empty() {
            return Ok(servers);
        }
        // The configuration refuses listen addresses without an identity.
        let Some(identity) = &self.identity else {
            bail!("this node has no identity to serve peers with: [gossip] or [tls] is needed");
        };
        let tls = identity.server_config()?;
        for listener in &listeners {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(%addr, "serving tails to peers");
            }
        }
        let mut stop = stop.clone();
        let stopped = async move {
            let _ = stop.wait_for(|&stop| stop).await;
        };
        servers.spawn(serve(listeners, self.exports.clone(), tls, stopped));
        Ok(servers)
    }

    /// The tail node `name` serves as `vdisk` (a vdisk's id, or its mirror
    /// copy's), reached over the links to it.
    pub fn remote_tail(&self, name: &str, vdisk: u64) -> anyhow::Result<Arc<dyn Tail>> {
        Ok(Arc::new(RemoteTail::new(self.peer(name)?, vdisk)))
    }

    /// The links to node `name`, reachable while gossip says it is a live
    /// member and one of its links is up. A node not met yet may appear
    /// later: its vdisks wait for it.
    pub fn peer(&self, name: &str) -> anyhow::Result<Arc<PeerLinks>> {
        let gossip = self.membership(name)?;
        let Some(identity) = &self.identity else {
            bail!("this node has no identity to reach node {name} with");
        };
        let mut peers = lock(&self.peers);
        if let Some(peer) = peers.get(name) {
            return Ok(peer.clone());
        }
        let peer = PeerLinks::new(name, self.health, identity.client_config(name)?);
        let member = gossip
            .view()
            .borrow()
            .alive
            .get(name)
            .map(|id| id.meta.links.clone());
        // Entered on the runtime: links are tasks.
        let _runtime = self.runtime.enter();
        peer.set_membership(member.as_deref());
        let peer = Arc::new(peer);
        peers.insert(name.to_owned(), peer.clone());
        Ok(peer)
    }

    /// Whether the path named `path` (a peer's name, or "local") can take
    /// requests now.
    pub fn is_reachable(&self, path: &str) -> bool {
        lock(&self.peers).get(path).is_none_or(|peer| peer.is_up())
    }

    /// Every link to every peer some vdisk uses, with its counters.
    pub fn link_metrics(&self) -> Vec<LinkMetrics> {
        let mut all = Vec::new();
        for (peer, links) in lock(&self.peers).iter() {
            for link in links.links().iter() {
                let c = link.counters();
                let get =
                    |v: &std::sync::atomic::AtomicU64| v.load(std::sync::atomic::Ordering::Relaxed);
                all.push(LinkMetrics {
                    peer: peer.clone(),
                    addr: link.addr(),
                    up: link.is_up(),
                    ups: get(&c.ups),
                    downs: get(&c.downs),
                    renewals: get(&c.renewals),
                    sent_bytes: get(&c.sent_bytes),
                    received_bytes: get(&c.received_bytes),
                    heartbeat_rtt_us: get(&c.heartbeat_rtt_us),
                });
            }
        }
        all
    }

    /// The links of the peer path `path`, each with whether it is up; none
    /// for the local path.
    pub fn links(&self, path: &str) -> Vec<(SocketAddr, bool)> {
        lock(&self.peers).get(path).map_or_else(Vec::new, |peer| {
            peer.links().iter().map(|l| (l.addr(), l.is_up())).collect()
        })
    }

    /// Refuses a tail of another node that is not there: the node must be
    /// a live member announcing it. (This node's own tails are checked
    /// when they are opened.)
    pub fn check_remote_tail(&self, tail: &TailRef) -> anyhow::Result<()> {
        if tail.node == self.node {
            return Ok(());
        }
        let view = self.membership(&tail.node)?.view();
        let view = view.borrow();
        let Some(member) = view.alive.get(&tail.node) else {
            bail!(
                "node {} is not a live member of the cluster (see `ublkvd members`)",
                tail.node
            );
        };
        if !member.meta.tails.contains(&tail.tail) {
            let announced = if member.meta.tails.is_empty() {
                "none".to_owned()
            } else {
                member.meta.tails.join(", ")
            };
            bail!(
                "node {} has no tail named {} (it announces: {announced})",
                tail.node,
                tail.tail
            );
        }
        Ok(())
    }

    /// Gossip, which alone knows other nodes; asked about node `other`.
    /// The live members other than this node, as gossip sees them; `None`
    /// for a node alone.
    pub fn view(&self) -> Option<watch::Receiver<gossip::View>> {
        self.gossip.as_ref().map(|gossip| gossip.view())
    }

    fn membership(&self, other: &str) -> anyhow::Result<&Arc<Gossip>> {
        match &self.gossip {
            Some(gossip) => Ok(gossip),
            None => bail!(
                "unknown node {other}: this node ({}) has no [gossip] section, so it knows no other node",
                self.node
            ),
        }
    }

    /// Opens this node's tail `name` for direct I/O through the engine.
    pub fn open_tail(
        &self,
        name: &str,
        block_size: u32,
        read_only: bool,
    ) -> anyhow::Result<Arc<LocalTail<EngineRing>>> {
        let Some(path) = self.tails.get(name) else {
            bail!("node {} has no tail named {name} in its [tails]", self.node);
        };
        let tail = LocalTail::open(path, block_size, read_only, self.engine.ring())?;
        Ok(Arc::new(tail))
    }

    /// The size of each of this node's tails that can be opened, by name.
    pub fn tail_sizes(&self) -> BTreeMap<String, u64> {
        self.tails
            .keys()
            .filter_map(|name| match self.open_tail(name, 512, true) {
                Ok(tail) => Some((name.clone(), tail.geometry().size_bytes)),
                Err(e) => {
                    tracing::warn!(tail = %name, "cannot open tail: {e:#}");
                    None
                }
            })
            .collect()
    }

    /// Serves a tail or a mirror to peers as vdisk `vdisk` at `epoch`
    /// (older epochs are refused) until the returned handle drops.
    pub fn export(&self, vdisk: u64, epoch: u64, served: Arc<dyn Tail>) -> Export {
        self.exports.insert(vdisk, epoch, served);
        Export {
            exports: self.exports.clone(),
            vdisk,
            alive: Arc::new(AtomicBool::new(true)),
            preparing: None,
        }
    }

    /// Like [`Cluster::export`], to `clients` only, once `ready` has run:
    /// what must be done before peers may use the tail. Dropping the
    /// handle first stops `ready` and serves nothing.
    pub fn export_when(
        &self,
        vdisk: u64,
        epoch: u64,
        served: Arc<dyn Tail>,
        clients: Clients,
        ready: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Export {
        let alive = Arc::new(AtomicBool::new(true));
        let (exports, still) = (self.exports.clone(), alive.clone());
        let preparing = self.runtime.spawn(async move {
            ready.await;
            exports.insert_if(vdisk, epoch, served, clients, || {
                still.load(Ordering::SeqCst)
            });
        });
        Export {
            exports: self.exports.clone(),
            vdisk,
            alive,
            preparing: Some(preparing),
        }
    }
}

/// One link as the metrics endpoint sees it.
pub struct LinkMetrics {
    pub peer: String,
    pub addr: SocketAddr,
    pub up: bool,
    pub ups: u64,
    pub downs: u64,
    pub renewals: u64,
    pub sent_bytes: u64,
    pub received_bytes: u64,
    pub heartbeat_rtt_us: u64,
}

/// A vdisk's tail served to peers; dropping it stops serving it.
pub struct Export {
    exports: Arc<Exports>,
    vdisk: u64,
    /// Cleared when dropped: an export still being prepared is then never
    /// served.
    alive: Arc<AtomicBool>,
    preparing: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Export {
    fn drop(&mut self) {
        self.alive.store(false, Ordering::SeqCst);
        if let Some(preparing) = &self.preparing {
            preparing.abort();
        }
        self.exports.remove(self.vdisk);
    }
}

/// Keeps every peer's links in step with the membership view: a member
/// that goes down is unreachable at once (its pending requests move to
/// another path); one that comes up, or restarts with new link addresses,
/// is reachable again as soon as a link connects. With `fenced` exports,
/// only live members, by the name their certificate proves, may send
/// requests to this node's tails, and this node itself (`me`: a tool run
/// with its key, in its place).
fn follow_membership(
    me: String,
    mut view: watch::Receiver<View>,
    peers: Arc<Mutex<BTreeMap<String, Arc<PeerLinks>>>>,
    fenced: Option<Arc<Exports>>,
) {
    tokio::spawn(async move {
        loop {
            let current = view.borrow_and_update().clone();
            for (name, peer) in lock(&peers).iter() {
                let member = current.alive.get(name).map(|id| id.meta.links.as_slice());
                peer.set_membership(member);
            }
            if let Some(exports) = &fenced {
                let mut admitted: HashSet<String> = current.alive.keys().cloned().collect();
                admitted.insert(me.clone());
                exports.admit_only(Some(admitted));
            }
            if view.changed().await.is_err() {
                return;
            }
        }
    });
}

/// The peer table stays usable after a panic elsewhere: every change to it
/// is a single insert.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
