//! A mirrored vdisk over two real peer servers on loopback, each serving
//! its own temp-file tail: writes land on both files; with one server
//! stopped, writes still complete on the survivor, their regions are
//! durably dirty, and reads come from the survivor.

// Helpers outside #[test] functions panic on purpose: a failed step fails the test.
#![allow(clippy::unwrap_used)]

use std::fs::File;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use backend::link::{HealthConfig, PeerLinks};
use backend::mirror::{DirtyGeometry, DirtyMapFile, MirroredVdisk, ReplicaConfig, Side, SideState};
use backend::peer::{serve, Exports};
use backend::route::TailPath;
use backend::{BlockBackend, Engine, LocalTail};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

const VDISK: u64 = 7;
const EPOCH: u64 = 1;
const BLOCK: usize = 4096;
const SIZE: u64 = 4 << 20;
const REGION: u64 = 64 << 10;

/// A temp file served by its own peer server, stoppable.
struct TestSide {
    _dir: tempfile::TempDir,
    path: PathBuf,
    _engine: Engine,
    addr: SocketAddr,
    stop: Option<(oneshot::Sender<()>, tokio::task::JoinHandle<()>)>,
}

impl TestSide {
    async fn start() -> TestSide {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let path = dir.path().join("tail");
        File::create(&path).unwrap().set_len(SIZE).unwrap();
        let engine = Engine::start(64).unwrap();
        let tail = LocalTail::open(&path, 4096, false, engine.ring()).unwrap();
        let exports = Arc::new(Exports::new());
        exports.insert(VDISK, EPOCH, Arc::new(tail));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, exports, async {
            let _ = stopped.await;
        }));
        let task = tokio::spawn(async move { task.await.unwrap().unwrap() });
        TestSide {
            _dir: dir,
            path,
            _engine: engine,
            addr,
            stop: Some((stop, task)),
        }
    }

    async fn kill(&mut self) {
        let (stop, task) = self.stop.take().unwrap();
        stop.send(()).unwrap();
        task.await.unwrap();
    }

    /// A peer path to this side whose links are up already.
    async fn path(&self, name: &str) -> TailPath {
        let health = HealthConfig {
            interval: Duration::from_millis(20),
            allowed_misses: 3,
        };
        let peer = PeerLinks::new(name, health);
        peer.set_membership(Some(&[self.addr]));
        let mut up = peer.watch();
        tokio::time::timeout(Duration::from_secs(5), up.wait_for(|&up| up))
            .await
            .unwrap()
            .unwrap();
        TailPath::Peer(Arc::new(peer))
    }

    fn block(&self, index: u64) -> Vec<u8> {
        file_block(&self.path, index)
    }
}

fn file_block(path: &Path, index: u64) -> Vec<u8> {
    let mut out = vec![0; BLOCK];
    File::open(path)
        .unwrap()
        .read_exact_at(&mut out, index * BLOCK as u64)
        .unwrap();
    out
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn block(seed: u8) -> Vec<u8> {
    (0..BLOCK)
        .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed))
        .collect()
}

/// The first block of region `region`: one write per region.
fn region_block(region: u64) -> u64 {
    region * REGION / BLOCK as u64
}

fn geometry() -> DirtyGeometry {
    DirtyGeometry::new(SIZE, REGION).unwrap()
}

struct Mirror {
    vdisk: MirroredVdisk,
    map_path: PathBuf,
    _map_dir: tempfile::TempDir,
}

async fn mirror(a: &TestSide, b: &TestSide) -> Mirror {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let map_path = dir.path().join("dirty");
    let map = DirtyMapFile::create(&map_path, geometry()).unwrap();
    let vdisk = MirroredVdisk::spawn(
        &tokio::runtime::Handle::current(),
        VDISK,
        EPOCH,
        [a.path("a").await, b.path("b").await],
        map,
        ReplicaConfig { read_from: Side::A },
    );
    Mirror {
        vdisk,
        map_path,
        _map_dir: dir,
    }
}

#[test]
fn writes_land_on_both_tails_and_leave_no_dirty_region() {
    runtime().block_on(async {
        let (a, b) = (TestSide::start().await, TestSide::start().await);
        let m = mirror(&a, &b).await;
        for r in 0..16 {
            m.vdisk
                .write(region_block(r) * BLOCK as u64, &block(r as u8))
                .await
                .unwrap();
        }
        m.vdisk.flush().await.unwrap();
        for r in 0..16 {
            assert_eq!(a.block(region_block(r)), block(r as u8), "a, region {r}");
            assert_eq!(b.block(region_block(r)), block(r as u8), "b, region {r}");
        }
        assert_eq!(
            std::fs::read(&a.path).unwrap(),
            std::fs::read(&b.path).unwrap()
        );
        let status = *m.vdisk.status().borrow();
        assert_eq!(status.sides, [SideState::InSync; 2]);
        assert_eq!(status.dirty_regions, 0);
    });
}

#[test]
fn with_one_side_stopped_writes_complete_on_the_survivor_and_their_regions_are_durably_dirty() {
    runtime().block_on(async {
        let (mut a, b) = (TestSide::start().await, TestSide::start().await);
        let m = mirror(&a, &b).await;
        m.vdisk.write(0, &block(1)).await.unwrap();

        a.kill().await;
        for r in 1..=10 {
            m.vdisk
                .write(region_block(r) * BLOCK as u64, &block(r as u8 + 100))
                .await
                .unwrap();
        }
        m.vdisk.flush().await.unwrap();
        let status = *m.vdisk.status().borrow();
        assert_eq!(status.sides, [SideState::Down, SideState::InSync]);
        // Every region written while degraded, and only those (the first
        // write landed on both sides before the failure).
        assert_eq!(status.dirty_regions, 10);
        let durable = DirtyMapFile::open(&m.map_path, geometry()).unwrap();
        assert_eq!(
            durable.regions().iter().collect::<Vec<_>>(),
            (1..=10).collect::<Vec<_>>()
        );

        for r in 1..=10 {
            assert_eq!(a.block(region_block(r)), vec![0; BLOCK], "a has region {r}");
            assert_eq!(b.block(region_block(r)), block(r as u8 + 100));
        }
        // Reads, though side A is preferred, come from the survivor.
        for r in 0..=10 {
            let mut back = vec![0; BLOCK];
            m.vdisk
                .read(region_block(r) * BLOCK as u64, &mut back)
                .await
                .unwrap();
            let expected = if r == 0 {
                block(1)
            } else {
                block(r as u8 + 100)
            };
            assert_eq!(back, expected, "region {r}");
        }
    });
}
