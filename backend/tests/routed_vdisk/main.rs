//! A routed vdisk over real peer servers on loopback, both serving one
//! shared file (a twin-tailed tail): requests take the preferred path, move
//! to the alternate when it dies, come back when it returns, and fail only
//! when no path answers for the I/O timeout. Reconfiguration: a suspended
//! vdisk drains and holds, a resumed one sends on its new mapping, and a
//! tail on a newer epoch makes it wait for that mapping.

// Helpers outside #[test] functions panic on purpose: a failed step fails the test.
#![allow(clippy::unwrap_used)]

mod failover;
mod reconfiguration;
#[path = "../support/mod.rs"]
mod support;

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use backend::link::{HealthConfig, PeerLinks, RemoteTail};
use backend::peer::{serve, Exports};
use backend::route::{RouteConfig, RoutedVdisk};
use backend::{BlockBackend, Engine, EngineRing, IoError, Lease, LocalTail};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

const VDISK: u64 = 7;
const EPOCH: u64 = 1;
const BLOCK: usize = 4096;

struct Tail {
    _dir: tempfile::TempDir,
    path: PathBuf,
    engine: Engine,
}

impl Tail {
    fn new() -> Tail {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let path = dir.path().join("shared-tail");
        File::create(&path).unwrap().set_len(4 << 20).unwrap();
        Tail {
            _dir: dir,
            path,
            engine: Engine::start(64).unwrap(),
        }
    }

    fn open(&self) -> Arc<LocalTail<EngineRing>> {
        Arc::new(LocalTail::open(&self.path, 4096, false, self.engine.ring()).unwrap())
    }
}

/// A peer server exporting the shared tail, stoppable and restartable on
/// the same address.
struct Server {
    addr: SocketAddr,
    exports: Arc<Exports>,
    stop: Option<(oneshot::Sender<()>, tokio::task::JoinHandle<()>)>,
}

impl Server {
    async fn start(tail: &Tail) -> Server {
        Server::start_at(tail, EPOCH).await
    }

    /// A server whose export of the tail is at `epoch`.
    async fn start_at(tail: &Tail, epoch: u64) -> Server {
        let exports = Arc::new(Exports::new());
        exports.insert(VDISK, epoch, tail.open());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut server = Server {
            addr,
            exports,
            stop: None,
        };
        server.serve(listener);
        server
    }

    fn serve(&mut self, listener: TcpListener) {
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(
            vec![listener],
            self.exports.clone(),
            support::server_tls("server"),
            async {
                let _ = stopped.await;
            },
        ));
        let task = tokio::spawn(async move { task.await.unwrap().unwrap() });
        self.stop = Some((stop, task));
    }

    async fn kill(&mut self) {
        let (stop, task) = self.stop.take().unwrap();
        stop.send(()).unwrap();
        task.await.unwrap();
    }

    async fn restart(&mut self) {
        let listener = TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener);
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn health() -> HealthConfig {
    HealthConfig {
        interval: Duration::from_millis(20),
        allowed_misses: 3,
        ..HealthConfig::default()
    }
}

fn member(name: &str, server: &Server) -> Arc<PeerLinks> {
    let peer = PeerLinks::new(name, health(), support::client_tls("client", "server"));
    peer.set_membership(Some(&[server.addr]));
    Arc::new(peer)
}

/// A path to the other end of a test: a peer's tail, or one of this node.
type TailPath = Arc<dyn backend::Tail>;

fn remote(peer: Arc<PeerLinks>) -> TailPath {
    Arc::new(RemoteTail::new(peer, VDISK))
}

fn peer(name: &str, server: &Server) -> TailPath {
    remote(member(name, server))
}

fn block(seed: u8) -> Vec<u8> {
    (0..BLOCK)
        .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed))
        .collect()
}

async fn write_and_check(vdisk: &RoutedVdisk, index: u64, seed: u8) {
    let offset = index * BLOCK as u64;
    vdisk.write(offset, &block(seed), false).await.unwrap();
    let mut back = vec![0; BLOCK];
    vdisk.read(offset, &mut back).await.unwrap();
    assert_eq!(back, block(seed), "block {index}");
}

fn completed(vdisk: &RoutedVdisk, path: usize) -> u64 {
    vdisk.counters().paths()[path]
        .1
        .completed
        .load(Ordering::Relaxed)
}

fn file_block(path: &Path, index: u64) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let mut out = vec![0; BLOCK];
    File::open(path)
        .unwrap()
        .read_exact_at(&mut out, index * BLOCK as u64)
        .unwrap();
    out
}

/// Vdisk `VDISK` at epoch `EPOCH` routed over `paths`, on the current
/// runtime.
fn routed(paths: Vec<TailPath>, config: RouteConfig) -> RoutedVdisk {
    RoutedVdisk::spawn(
        &tokio::runtime::Handle::current(),
        VDISK,
        EPOCH,
        paths,
        config,
        Lease::unbounded(),
    )
}

/// A peer path whose links are up already, so that its first request is
/// not refused for want of a link.
async fn connected_peer(name: &str, server: &Server) -> TailPath {
    let peer = member(name, server);
    let mut up = peer.watch();
    tokio::time::timeout(Duration::from_secs(5), up.wait_for(|&up| up))
        .await
        .unwrap()
        .unwrap();
    remote(peer)
}

fn failed(vdisk: &RoutedVdisk, path: usize) -> u64 {
    vdisk.counters().paths()[path]
        .1
        .failed
        .load(Ordering::Relaxed)
}

/// Starts a write of block `index` filled from `seed` on its own task.
fn spawn_write(
    vdisk: &Arc<RoutedVdisk>,
    index: u64,
    seed: u8,
) -> tokio::task::JoinHandle<Result<(), IoError>> {
    let vdisk = vdisk.clone();
    tokio::spawn(async move { vdisk.write(index * BLOCK as u64, &block(seed), false).await })
}

/// Lets the spawned writes run up to their submission.
async fn let_them_submit() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}
