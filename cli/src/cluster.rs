//! What this node shares with its peers: its tails, served by the peer
//! server, and its links to every other node.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use backend::link::{HealthConfig, PeerLinks};
use backend::peer::{serve, Exports};
use backend::route::RouteConfig;
use backend::{Engine, EngineRing, LocalTail};
use tokio::net::TcpListener;
use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::NodeConfig;

/// Entries of the I/O engine's ring: requests of peers and of this node's
/// cluster vdisks in flight at once before the engine queues them.
const ENGINE_ENTRIES: u32 = 256;

/// Until the replicated store gives vdisks epochs, every node serves and
/// requests under this one.
pub const EPOCH: u64 = 1;

pub struct Cluster {
    pub node: String,
    pub runtime: Handle,
    pub route: RouteConfig,
    /// Whether vdisks get a `/dev/ublkbN` on this node.
    pub devices: bool,
    tails: BTreeMap<String, PathBuf>,
    peers: BTreeMap<String, Arc<PeerLinks>>,
    exports: Arc<Exports>,
    engine: Engine,
}

impl Cluster {
    /// Starts the I/O engine and a link task per peer address. Must run
    /// inside the tokio runtime that will carry the links.
    pub fn start(config: &NodeConfig) -> anyhow::Result<Cluster> {
        let engine = Engine::start(ENGINE_ENTRIES).context("cannot start the io_uring engine")?;
        let health: HealthConfig = config.health;
        let peers = config
            .peers
            .iter()
            .map(|peer| {
                let links = PeerLinks::spawn(&peer.name, &peer.links, health);
                (peer.name.clone(), Arc::new(links))
            })
            .collect();
        Ok(Cluster {
            node: config.node.clone(),
            runtime: Handle::current(),
            route: config.route,
            devices: config.devices,
            tails: config.tails.clone(),
            peers,
            exports: Arc::new(Exports::new(EPOCH)),
            engine,
        })
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

    /// Serves this node's exported tails on `listeners` until `stop` turns
    /// true.
    pub fn serve_peers(
        &self,
        listeners: Vec<TcpListener>,
        stop: &watch::Receiver<bool>,
    ) -> JoinSet<std::io::Result<()>> {
        let mut servers = JoinSet::new();
        for listener in listeners {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(%addr, "serving tails to peers");
            }
            let mut stop = stop.clone();
            let stopped = async move {
                let _ = stop.wait_for(|&stop| stop).await;
            };
            servers.spawn(serve(listener, self.exports.clone(), stopped));
        }
        servers
    }

    pub fn peer(&self, name: &str) -> anyhow::Result<Arc<PeerLinks>> {
        match self.peers.get(name) {
            Some(peer) => Ok(peer.clone()),
            None => bail!(
                "unknown node {name}: neither this node ({}) nor a [[peer]] of its config",
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

    /// Serves `tail` to peers as vdisk `vdisk` until the returned handle
    /// drops.
    pub fn export(&self, vdisk: u64, tail: Arc<LocalTail<EngineRing>>) -> Export {
        self.exports.insert(vdisk, tail);
        Export {
            exports: self.exports.clone(),
            vdisk,
        }
    }
}

/// A vdisk's tail served to peers; dropping it stops serving it.
pub struct Export {
    exports: Arc<Exports>,
    vdisk: u64,
}

impl Drop for Export {
    fn drop(&mut self) {
        self.exports.remove(self.vdisk);
    }
}
