//! A routed vdisk over real peer servers on loopback, both serving one
//! shared file (a twin-tailed tail): requests take the preferred path, move
//! to the alternate when it dies, come back when it returns, and fail only
//! when no path answers for the I/O timeout. Reconfiguration: a suspended
//! vdisk drains and holds, a resumed one sends on its new mapping, and a
//! tail on a newer epoch makes it wait for that mapping.

// Helpers outside #[test] functions panic on purpose: a failed step fails the test.
#![allow(clippy::unwrap_used)]

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
    vdisk.write(offset, &block(seed)).await.unwrap();
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

#[test]
fn requests_fail_over_to_the_secondary_and_return_to_the_primary() {
    runtime().block_on(async {
        let tail = Tail::new();
        let mut primary = Server::start(&tail).await;
        let secondary = Server::start(&tail).await;
        // Both reachable before the first request: else it goes wherever
        // a link came up first.
        let paths = vec![
            connected_peer("a", &primary).await,
            connected_peer("b", &secondary).await,
        ];
        let vdisk = routed(paths, RouteConfig::default());
        write_and_check(&vdisk, 0, 1).await;
        assert!(completed(&vdisk, 0) >= 1, "the primary serves first");
        assert_eq!(completed(&vdisk, 1), 0);

        primary.kill().await;
        for i in 1..20 {
            write_and_check(&vdisk, i, i as u8).await;
        }
        assert!(completed(&vdisk, 1) >= 38, "the secondary took over");

        primary.restart().await;
        let before = completed(&vdisk, 0);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while completed(&vdisk, 0) == before {
            assert!(
                tokio::time::Instant::now() < deadline,
                "primary not used again"
            );
            write_and_check(&vdisk, 30, 99).await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for i in 1..20 {
            assert_eq!(file_block(&tail.path, i), block(i as u8));
        }
        assert_eq!(vdisk.counters().errors.load(Ordering::Relaxed), 0);
    });
}

#[test]
fn a_peer_declared_down_by_membership_gets_no_requests_though_its_links_are_up() {
    runtime().block_on(async {
        let tail = Tail::new();
        let primary_server = Server::start(&tail).await;
        let secondary = Server::start(&tail).await;
        let primary = member("a", &primary_server);
        let vdisk = routed(
            vec![remote(primary.clone()), peer("b", &secondary)],
            RouteConfig::default(),
        );
        write_and_check(&vdisk, 0, 1).await;
        assert!(completed(&vdisk, 0) >= 1);

        primary.set_membership(None);
        assert!(!primary.is_up(), "down at once, not after a heartbeat");
        assert!(primary.links().iter().all(|link| link.is_up()));
        let before = completed(&vdisk, 0);
        for i in 1..10 {
            write_and_check(&vdisk, i, i as u8).await;
        }
        assert_eq!(completed(&vdisk, 0), before, "a down member is not used");
        assert!(completed(&vdisk, 1) >= 18);

        primary.set_membership(Some(&[primary_server.addr]));
        assert!(primary.is_up(), "its links stayed up: usable at once");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while completed(&vdisk, 0) == before {
            assert!(
                tokio::time::Instant::now() < deadline,
                "primary not used again"
            );
            write_and_check(&vdisk, 20, 5).await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(vdisk.counters().errors.load(Ordering::Relaxed), 0);
    });
}

#[test]
fn a_local_tail_is_preferred_over_a_peer() {
    runtime().block_on(async {
        let tail = Tail::new();
        let server = Server::start(&tail).await;
        let vdisk = routed(
            vec![tail.open(), peer("b", &server)],
            RouteConfig::default(),
        );
        write_and_check(&vdisk, 3, 7).await;
        assert_eq!(completed(&vdisk, 0), 2);
        assert_eq!(completed(&vdisk, 1), 0);
    });
}

#[test]
fn with_every_path_gone_a_request_fails_after_the_io_timeout_and_not_before() {
    runtime().block_on(async {
        let tail = Tail::new();
        let mut only = Server::start(&tail).await;
        let config = RouteConfig {
            io_timeout: Duration::from_millis(600),
            ..RouteConfig::default()
        };
        let vdisk = routed(vec![peer("a", &only)], config);
        write_and_check(&vdisk, 0, 1).await;
        only.kill().await;
        let started = tokio::time::Instant::now();
        let mut buf = vec![0; BLOCK];
        let result = vdisk.read(0, &mut buf).await;
        assert!(
            matches!(result, Err(IoError::Unreachable { .. })),
            "{result:?}"
        );
        assert!(started.elapsed() >= Duration::from_millis(600));
        assert_eq!(vdisk.counters().errors.load(Ordering::Relaxed), 1);
    });
}

#[test]
fn a_path_that_returns_within_the_io_timeout_completes_the_waiting_request() {
    runtime().block_on(async {
        let tail = Tail::new();
        let mut only = Server::start(&tail).await;
        let vdisk = routed(vec![peer("a", &only)], RouteConfig::default());
        write_and_check(&vdisk, 2, 5).await;
        only.kill().await;
        let restart = async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            only.restart().await;
        };
        let mut buf = vec![0; BLOCK];
        let (read, ()) = tokio::join!(vdisk.read(2 * BLOCK as u64, &mut buf), restart);
        read.unwrap();
        assert_eq!(buf, block(5));
    });
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
    tokio::spawn(async move { vdisk.write(index * BLOCK as u64, &block(seed)).await })
}

/// Lets the spawned writes run up to their submission.
async fn let_them_submit() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[test]
fn suspend_resolves_once_requests_in_flight_are_done_and_holds_new_ones_until_resume() {
    runtime().block_on(async {
        let tail = Tail::new();
        let server = Server::start(&tail).await;
        let vdisk = Arc::new(routed(vec![peer("a", &server)], RouteConfig::default()));
        write_and_check(&vdisk, 0, 1).await;
        let writes: Vec<_> = (1..=16).map(|i| spawn_write(&vdisk, i, i as u8)).collect();
        // Submitted, and (as a rule: the replies need the server's turn on
        // this thread) not answered yet.
        let_them_submit().await;

        vdisk.suspend().await;
        // Every write submitted before the suspension has landed.
        assert_eq!(completed(&vdisk, 0), 2 + 16);
        for i in 1..=16 {
            assert_eq!(file_block(&tail.path, i), block(i as u8));
        }
        let held = spawn_write(&vdisk, 20, 20);
        // Suspensions overlap harmlessly.
        vdisk.suspend().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!held.is_finished(), "a held write went out");
        assert_eq!(file_block(&tail.path, 20), vec![0; BLOCK]);

        vdisk.resume(None);
        held.await.unwrap().unwrap();
        assert_eq!(file_block(&tail.path, 20), block(20));
        for write in writes {
            write.await.unwrap().unwrap();
        }
        assert_eq!(vdisk.counters().errors.load(Ordering::Relaxed), 0);
    });
}

#[test]
fn resume_with_a_new_mapping_sends_held_requests_on_the_new_path_under_the_new_epoch() {
    runtime().block_on(async {
        let tail = Tail::new();
        let old = Server::start_at(&tail, 1).await;
        let new = Server::start_at(&tail, 2).await;
        let vdisk = Arc::new(routed(
            vec![connected_peer("old", &old).await],
            RouteConfig::default(),
        ));
        write_and_check(&vdisk, 0, 1).await;
        let old_paths = vdisk.counters().paths();
        vdisk.suspend().await;
        let held = spawn_write(&vdisk, 1, 2);
        let_them_submit().await;

        vdisk.resume(Some((2, vec![connected_peer("new", &new).await])));
        held.await.unwrap().unwrap();
        assert_eq!(file_block(&tail.path, 1), block(2));
        write_and_check(&vdisk, 2, 3).await;

        // The new server refuses epoch 1 and holds a later one: the
        // requests carried epoch 2 exactly.
        assert_eq!(new.exports.get(VDISK).unwrap().1, 2);
        let paths = vdisk.counters().paths();
        assert_eq!(paths.len(), 1);
        assert_eq!(paths[0].0, "new");
        assert_eq!(paths[0].1.completed.load(Ordering::Relaxed), 3);
        assert_eq!(paths[0].1.failed.load(Ordering::Relaxed), 0);
        // The old path got nothing more.
        assert_eq!(old_paths[0].1.completed.load(Ordering::Relaxed), 2);
        assert_eq!(old_paths[0].1.failed.load(Ordering::Relaxed), 0);
        assert_eq!(old.exports.get(VDISK).unwrap().1, 1);
        // The held request was sent once, on the new path: no resend.
        assert_eq!(vdisk.counters().resends.load(Ordering::Relaxed), 0);
    });
}

#[test]
fn a_tail_on_a_newer_epoch_parks_the_request_until_resume_brings_that_epoch() {
    runtime().block_on(async {
        let tail = Tail::new();
        let server = Server::start_at(&tail, 1).await;
        let vdisk = Arc::new(routed(
            vec![connected_peer("a", &server).await],
            RouteConfig::default(),
        ));
        write_and_check(&vdisk, 0, 1).await;
        let mut stale = vdisk.stale();
        assert_eq!(*stale.borrow(), 1);

        server.exports.set_epoch(VDISK, 2);
        let parked = spawn_write(&vdisk, 1, 5);
        tokio::time::timeout(Duration::from_secs(5), stale.wait_for(|&e| e == 2))
            .await
            .unwrap()
            .unwrap();
        // New requests are held too, not sent to be refused.
        let held = spawn_write(&vdisk, 2, 6);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!parked.is_finished() && !held.is_finished());
        assert_eq!(file_block(&tail.path, 1), vec![0; BLOCK]);
        assert_eq!(failed(&vdisk, 0), 0, "a stale epoch is no path failure");

        vdisk.resume(Some((2, vec![connected_peer("a", &server).await])));
        parked.await.unwrap().unwrap();
        held.await.unwrap().unwrap();
        assert_eq!(file_block(&tail.path, 1), block(5));
        assert_eq!(file_block(&tail.path, 2), block(6));
        assert_eq!(*vdisk.stale().borrow(), 2);
        assert_eq!(vdisk.counters().errors.load(Ordering::Relaxed), 0);
    });
}

#[test]
fn a_request_held_for_the_io_timeout_fails_as_unreachable() {
    runtime().block_on(async {
        let tail = Tail::new();
        let server = Server::start(&tail).await;
        let config = RouteConfig {
            io_timeout: Duration::from_millis(300),
            ..RouteConfig::default()
        };
        let vdisk = routed(vec![peer("a", &server)], config);
        write_and_check(&vdisk, 0, 1).await;
        vdisk.suspend().await;
        let started = tokio::time::Instant::now();
        let result = vdisk.write(BLOCK as u64, &block(2)).await;
        assert!(
            matches!(result, Err(IoError::Unreachable { .. })),
            "{result:?}"
        );
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert_eq!(file_block(&tail.path, 1), vec![0; BLOCK]);
        assert_eq!(vdisk.counters().errors.load(Ordering::Relaxed), 1);
    });
}

#[test]
fn a_request_parked_on_a_stale_epoch_fails_if_the_new_mapping_never_comes() {
    runtime().block_on(async {
        let tail = Tail::new();
        let server = Server::start_at(&tail, 3).await;
        let config = RouteConfig {
            io_timeout: Duration::from_millis(300),
            ..RouteConfig::default()
        };
        let vdisk = routed(vec![peer("a", &server)], config);
        let result = vdisk.write(0, &block(2)).await;
        assert!(
            matches!(result, Err(IoError::Unreachable { .. })),
            "{result:?}"
        );
        assert_eq!(*vdisk.stale().borrow(), 3);
        assert_eq!(file_block(&tail.path, 0), vec![0; BLOCK]);
        assert_eq!(vdisk.counters().errors.load(Ordering::Relaxed), 1);
    });
}

/// The resend-overlap hole of a twin-tailed tail: a write resent on the
/// secondary after its request timeout must not complete while its first
/// attempt may still land on the primary, or a newer write to the block,
/// made once the first completed, would be undone by that attempt landing
/// late. Here the primary holds the attempt because its store lags (as a
/// slow disk would), and lands it when it catches up.
#[test]
fn a_resent_write_completes_only_once_its_first_attempt_can_no_longer_land() {
    runtime().block_on(async {
        let tail = Tail::new();
        let lagging = Server::start_at(&tail, 1).await;
        let current = Server::start_at(&tail, 2).await;
        let config = RouteConfig {
            request_timeout: Duration::from_millis(200),
            ..RouteConfig::default()
        };
        let paths = vec![
            connected_peer("a", &lagging).await,
            connected_peer("b", &current).await,
        ];
        let handle = tokio::runtime::Handle::current();
        let vdisk = Arc::new(RoutedVdisk::spawn(
            &handle,
            VDISK,
            2,
            paths,
            config,
            Lease::unbounded(),
        ));
        // Another writer of the vdisk, through the secondary only.
        let other = RoutedVdisk::spawn(
            &handle,
            VDISK,
            2,
            vec![connected_peer("b", &current).await],
            config,
            Lease::unbounded(),
        );

        let first = spawn_write(&vdisk, 0, 1);
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(file_block(&tail.path, 0), block(1), "resent on b");
        let completed_early = first.is_finished();
        if completed_early {
            // What the application may do once the write completed.
            other.write(0, &block(2)).await.unwrap();
        }
        // The primary's store catches up: the held attempt runs.
        lagging.exports.set_epoch(VDISK, 2);
        first.await.unwrap().unwrap();
        if !completed_early {
            other.write(0, &block(2)).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            file_block(&tail.path, 0) == block(2),
            "an old attempt landed over a newer write"
        );
        assert!(!completed_early, "completed while an attempt could land");
        assert_eq!(vdisk.counters().errors.load(Ordering::Relaxed), 0);
    });
}

/// The cut-off local writer: a node without its lease from the store's
/// majority does not touch its own tail, though it is attached to it.
#[test]
fn the_local_tail_takes_requests_only_while_the_node_holds_its_lease() {
    runtime().block_on(async {
        let tail = Tail::new();
        let lease = Lease::expired();
        let vdisk = Arc::new(RoutedVdisk::spawn(
            &tokio::runtime::Handle::current(),
            VDISK,
            EPOCH,
            vec![tail.open()],
            RouteConfig::default(),
            lease.clone(),
        ));
        let write = spawn_write(&vdisk, 0, 3);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!write.is_finished());
        assert_eq!(file_block(&tail.path, 0), vec![0; BLOCK]);
        assert!(failed(&vdisk, 0) > 0, "refused, and tried again");

        lease.confirmed(std::time::Instant::now());
        write.await.unwrap().unwrap();
        assert_eq!(file_block(&tail.path, 0), block(3));
        assert_eq!(vdisk.counters().errors.load(Ordering::Relaxed), 0);
    });
}

/// A request the tail refuses for what it is (here: past the tail's end,
/// EINVAL) would be refused by every path, now and later: it fails at once
/// with that error, not after the I/O timeout as EIO.
#[test]
fn a_request_the_tail_refuses_for_good_fails_at_once_with_its_errno() {
    runtime().block_on(async {
        let tail = Tail::new();
        let server = Server::start(&tail).await;
        let vdisk = routed(vec![peer("a", &server)], RouteConfig::default());
        write_and_check(&vdisk, 0, 1).await;
        let started = tokio::time::Instant::now();
        let mut buf = vec![0; BLOCK];
        let past_the_end = 4 << 20;
        let result = vdisk.read(past_the_end, &mut buf).await;
        let errno = result.as_ref().map_err(IoError::errno).err();
        assert_eq!(errno, Some(-libc::EINVAL), "{result:?}");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "took {:?}",
            started.elapsed()
        );
        // The path did nothing wrong: it stays in use.
        write_and_check(&vdisk, 1, 2).await;
    });
}
