//! A mirrored vdisk over two real peer servers on loopback, each serving
//! its own temp-file tail: writes land on both files; with one server
//! stopped, writes still complete on the survivor, their regions are
//! durably dirty, and reads come from the survivor; when it returns, the
//! dirty regions (only) are copied and the files end identical; a verify
//! finds a region changed behind the mirror's back; and a primary whose
//! store cannot record the loss of its mirror fails requests.

// Helpers outside #[test] functions panic on purpose: a failed step fails the test.
#![allow(clippy::unwrap_used)]

mod recovery;
mod sides;
#[path = "../support/mod.rs"]
mod support;

use std::fs::File;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backend::link::{HealthConfig, PeerLinks, RemoteTail};
use backend::mirror::{
    CopyRecorder, DirtyGeometry, DirtyMapFile, MirrorConfig, MirrorSetup, MirrorStatus,
    MirroredVdisk, PacerConfig, RecordFuture, Recorded, ReplicaConfig, Side, SideState,
};
use backend::peer::{serve, Exports};
use backend::{AlignedBuf, BlockOp, Engine, LocalTail, Tail, TailError};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

const VDISK: u64 = 7;
const EPOCH: u64 = 1;
const BLOCK: usize = 4096;
const SIZE: u64 = 4 << 20;
const REGION: u64 = 64 << 10;
/// How often the activity log is swept: often, so that tests of a mirror in
/// sync need not wait.
const SWEEP: Duration = Duration::from_millis(100);

/// The last byte of the next side's loopback address.
static NEXT_HOST: AtomicU8 = AtomicU8::new(1);

/// A temp file served by its own peer server, stoppable.
struct TestSide {
    _dir: tempfile::TempDir,
    path: PathBuf,
    engine: Engine,
    addr: SocketAddr,
    /// Where the mirror dials it: `addr`, or a cable laid to it.
    dial: SocketAddr,
    stop: Option<(oneshot::Sender<()>, tokio::task::JoinHandle<()>)>,
}

impl TestSide {
    async fn start() -> TestSide {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let path = dir.path().join("tail");
        File::create(&path).unwrap().set_len(SIZE).unwrap();
        // An address of its own: a side stopped and restarted keeps its
        // port, which another test's listener must not take meanwhile.
        let host = NEXT_HOST.fetch_add(1, Ordering::Relaxed);
        let ip = std::net::Ipv4Addr::new(127, 0, 1, host);
        let listener = TcpListener::bind((ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut side = TestSide {
            addr,
            dial: addr,
            _dir: dir,
            path,
            engine: Engine::start(64).unwrap(),
            stop: None,
        };
        side.serve(listener);
        side
    }

    fn serve(&mut self, listener: TcpListener) {
        let tail = LocalTail::open(&self.path, 4096, false, self.engine.ring()).unwrap();
        let exports = Arc::new(Exports::new());
        exports.insert(VDISK, EPOCH, Arc::new(tail));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(
            vec![listener],
            exports,
            support::server_tls("side"),
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

    /// Serves the same file on the same address again.
    async fn restart(&mut self) {
        let listener = TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener);
    }

    /// A peer path to this side whose links are up already.
    async fn path(&self, name: &str) -> Arc<dyn Tail> {
        // A stopped server closes its connections at once; heartbeats
        // only need to outlast a loaded machine's pauses.
        let health = HealthConfig {
            interval: Duration::from_millis(50),
            allowed_misses: 10,
            ..HealthConfig::default()
        };
        let peer = PeerLinks::new(name, health, support::client_tls("primary", "side"));
        peer.set_membership(Some(&[self.dial]));
        let mut up = peer.watch();
        tokio::time::timeout(Duration::from_secs(5), up.wait_for(|&up| up))
            .await
            .unwrap()
            .unwrap();
        Arc::new(RemoteTail::new(Arc::new(peer), VDISK))
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

/// The store's part, as a test sees it: every record asked for, in order,
/// answered as `accept` says.
#[derive(Default)]
struct TestStore {
    records: Mutex<Vec<bool>>,
    refuse: Mutex<bool>,
}

impl CopyRecorder for TestStore {
    fn record(&self, current: bool) -> RecordFuture {
        self.records.lock().unwrap().push(current);
        let refused = *self.refuse.lock().unwrap();
        Box::pin(async move {
            match refused {
                true => Err("no majority".to_owned()),
                false => Ok(()),
            }
        })
    }
}

struct Mirror {
    vdisk: MirroredVdisk,
    map_path: PathBuf,
    store: Arc<TestStore>,
    _map_dir: tempfile::TempDir,
}

impl Mirror {
    fn status(&self) -> MirrorStatus {
        *self.vdisk.status().borrow()
    }

    /// Waits until the status satisfies `done`.
    async fn wait(&self, what: &str, done: impl Fn(&MirrorStatus) -> bool) -> MirrorStatus {
        let mut status = self.vdisk.status();
        let waited = tokio::time::timeout(Duration::from_secs(10), status.wait_for(|s| done(s)))
            .await
            .map(|seen| seen.map(|s| *s));
        match waited {
            Ok(Ok(status)) => status,
            _ => panic!("{what}: still {:?}", self.status()),
        }
    }

    async fn write(&self, offset: u64, data: &[u8]) -> Result<(), TailError> {
        let mut payload = AlignedBuf::new(data.len()).unwrap();
        payload.copy_from_slice(data);
        let op = BlockOp::Write {
            offset,
            len: data.len() as u32,
            fua: false,
        };
        let payload = Some(Arc::new(payload));
        self.vdisk.execute(EPOCH, op, payload).await.map(drop)
    }

    async fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), TailError> {
        let op = BlockOp::Read {
            offset,
            len: buf.len() as u32,
        };
        let data = self.vdisk.execute(EPOCH, op, None).await?.unwrap();
        buf.copy_from_slice(&data);
        Ok(())
    }

    async fn flush(&self) -> Result<(), TailError> {
        self.vdisk
            .execute(EPOCH, BlockOp::Flush, None)
            .await
            .map(drop)
    }

    fn durable_regions(&self) -> u64 {
        durable_regions(&self.map_path)
    }

    /// Waits until the sweep has cleared the map on disk.
    async fn swept(&self) {
        let start = std::time::Instant::now();
        while self.durable_regions() > 0 {
            assert!(start.elapsed() < Duration::from_secs(10), "never swept");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn records(&self) -> Vec<bool> {
        self.store.records.lock().unwrap().clone()
    }
}

async fn mirror(a: &TestSide, b: &TestSide) -> Mirror {
    mirror_from(a, b, [SideState::InSync; 2], false).await
}

/// A mirror of `a` (side A) to `b` (side B, tracked by a test store),
/// started in `states`; `full` marks every region dirty.
async fn mirror_from(a: &TestSide, b: &TestSide, states: [SideState; 2], full: bool) -> Mirror {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let map_path = dir.path().join("dirty");
    DirtyMapFile::create(&map_path, geometry()).unwrap();
    let store_current = states[1] == SideState::InSync;
    mirror_on(a, b, dir, states, store_current, full, SWEEP).await
}

/// A mirror of `a` to `b` from the dirty map in `dir`, as a restart finds
/// it: in `states`, the store calling b current or not.
async fn mirror_on(
    a: &TestSide,
    b: &TestSide,
    dir: tempfile::TempDir,
    states: [SideState; 2],
    store_current: bool,
    full: bool,
    activity_sweep: Duration,
) -> Mirror {
    let map_path = dir.path().join("dirty");
    let store = Arc::new(TestStore::default());
    let vdisk = MirroredVdisk::spawn(
        &tokio::runtime::Handle::current(),
        MirrorSetup {
            vdisk: VDISK,
            epoch: EPOCH,
            sides: [a.path("a").await, b.path("b").await],
            dirty: DirtyMapFile::open(&map_path, geometry()).unwrap(),
            states,
            store_current,
            replica: ReplicaConfig {
                read_from: Side::A,
                tracked: Some(Side::B),
                required: None,
            },
            config: MirrorConfig {
                request_timeout: Duration::from_secs(2),
                probe_interval: Duration::from_millis(50),
                activity_sweep,
                pacer: PacerConfig {
                    rate_max: 1 << 30,
                    rate_min: 64 << 20,
                    latency_target: Duration::from_millis(50),
                },
            },
            recorder: Some(store.clone()),
            full,
        },
    );
    Mirror {
        vdisk,
        map_path,
        store,
        _map_dir: dir,
    }
}

/// The regions the dirty map at `path` holds on disk.
fn durable_regions(path: &Path) -> u64 {
    // A read racing a write of the map may fail its checks: try again.
    loop {
        if let Ok(map) = DirtyMapFile::open(path, geometry()) {
            return map.regions().count();
        }
    }
}

fn same_files(a: &TestSide, b: &TestSide) -> bool {
    std::fs::read(&a.path).unwrap() == std::fs::read(&b.path).unwrap()
}

async fn write_regions(m: &Mirror, regions: std::ops::RangeInclusive<u64>, seed: u8) {
    for r in regions {
        m.write(region_block(r) * BLOCK as u64, &block(r as u8 ^ seed))
            .await
            .unwrap();
    }
}
