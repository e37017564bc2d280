//! A mirrored vdisk over two real peer servers on loopback, each serving
//! its own temp-file tail: writes land on both files; with one server
//! stopped, writes still complete on the survivor, their regions are
//! durably dirty, and reads come from the survivor; when it returns, the
//! dirty regions (only) are copied and the files end identical; a verify
//! finds a region changed behind the mirror's back; and a primary whose
//! store cannot record the loss of its mirror fails requests.

// Helpers outside #[test] functions panic on purpose: a failed step fails the test.
#![allow(clippy::unwrap_used)]

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
#[test]
fn writes_land_on_both_tails_and_leave_no_dirty_region() {
    runtime().block_on(async {
        let (a, b) = (TestSide::start().await, TestSide::start().await);
        let m = mirror(&a, &b).await;
        for r in 0..16 {
            m.write(region_block(r) * BLOCK as u64, &block(r as u8))
                .await
                .unwrap();
        }
        m.flush().await.unwrap();
        for r in 0..16 {
            assert_eq!(a.block(region_block(r)), block(r as u8), "a, region {r}");
            assert_eq!(b.block(region_block(r)), block(r as u8), "b, region {r}");
        }
        assert_eq!(
            std::fs::read(&a.path).unwrap(),
            std::fs::read(&b.path).unwrap()
        );
        // Written regions stay in the map until swept: a crash now would
        // resync them. In sync, nothing is left to copy.
        assert_eq!(m.durable_regions(), 16);
        assert_eq!(m.status().dirty_bytes, 0);
        m.swept().await;
        let status = m.status();
        assert_eq!(status.sides, [SideState::InSync; 2]);
        assert_eq!(m.records(), [], "nothing to tell the store");
    });
}

#[test]
fn with_one_side_stopped_writes_complete_on_the_survivor_and_their_regions_are_durably_dirty() {
    runtime().block_on(async {
        let (mut a, b) = (TestSide::start().await, TestSide::start().await);
        let m = mirror(&a, &b).await;
        m.write(0, &block(1)).await.unwrap();
        m.swept().await;

        a.kill().await;
        for r in 1..=10 {
            m.write(region_block(r) * BLOCK as u64, &block(r as u8 + 100))
                .await
                .unwrap();
        }
        m.flush().await.unwrap();
        let status = m.status();
        assert_eq!(status.sides, [SideState::Down, SideState::InSync]);
        // Every region written while degraded, and only those (the first
        // write landed on both sides before the failure).
        assert_eq!(status.dirty_bytes, 10 * REGION);
        assert_eq!(m.records(), [], "A is not the side the store tracks");
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
            m.read(region_block(r) * BLOCK as u64, &mut back)
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

#[test]
fn a_returning_side_gets_exactly_the_dirty_regions_and_is_recorded_current_after_stale() {
    runtime().block_on(async {
        let (a, mut b) = (TestSide::start().await, TestSide::start().await);
        let m = mirror(&a, &b).await;
        write_regions(&m, 0..=63, 0).await;
        m.swept().await;
        b.kill().await;
        write_regions(&m, 5..=12, 0x55).await;
        m.flush().await.unwrap();
        assert_eq!(
            m.records(),
            [false],
            "the loss is recorded before a write completes"
        );
        assert_eq!(m.status().recorded, Recorded::Stale);
        assert!(!same_files(&a, &b));

        b.restart().await;
        let done = m
            .wait("resynced", |s| {
                s.sides == [SideState::InSync; 2] && s.recorded == Recorded::Current
            })
            .await;
        assert_eq!(
            done.resynced_bytes,
            8 * REGION,
            "only the regions written while b was away"
        );
        assert_eq!(done.dirty_bytes, 0);
        assert_eq!(m.records(), [false, true]);
        assert!(same_files(&a, &b));
        // Cleared for good: a restart would copy nothing.
        let durable = DirtyMapFile::open(&m.map_path, geometry()).unwrap();
        assert_eq!(durable.regions().count(), 0);
    });
}

#[test]
fn a_full_resync_copies_everything_while_writes_go_on() {
    runtime().block_on(async {
        let (a, b) = (TestSide::start().await, TestSide::start().await);
        std::fs::write(
            &a.path,
            (0..SIZE).map(|i| (i % 251) as u8).collect::<Vec<_>>(),
        )
        .unwrap();
        let m = mirror_from(&a, &b, [SideState::InSync, SideState::Stale], true).await;
        assert!(m.status().full);
        // Foreground writes during the resync reach both sides.
        write_regions(&m, 0..=63, 0x33).await;
        let done = m
            .wait("resynced", |s| s.sides == [SideState::InSync; 2] && !s.full)
            .await;
        // A write marks its region again (a crash would leave it half
        // done): one written after its copy is copied once more.
        assert!(done.resynced_bytes >= SIZE, "{done:?}");
        assert!(same_files(&a, &b));
        let report = m.vdisk.verify().await.unwrap();
        assert_eq!((report.regions, report.differing.len()), (SIZE / REGION, 0));
    });
}

#[test]
fn verify_finds_a_region_changed_behind_the_mirror_and_needs_both_sides() {
    runtime().block_on(async {
        let (a, mut b) = (TestSide::start().await, TestSide::start().await);
        let m = mirror(&a, &b).await;
        write_regions(&m, 0..=63, 7).await;
        let clean = m.vdisk.verify().await.unwrap();
        assert_eq!(clean.differing, Vec::<u64>::new());
        assert_eq!(clean.skipped_dirty, 0);

        // A bit flips on b's disk, unknown to the mirror.
        File::options()
            .write(true)
            .open(&b.path)
            .unwrap()
            .write_all_at(&[0xff], 9 * REGION + 17)
            .unwrap();
        assert_eq!(m.vdisk.verify().await.unwrap().differing, [9]);

        // With b away, verify refuses: it compares both copies.
        b.kill().await;
        write_regions(&m, 20..=21, 1).await;
        assert!(m.vdisk.verify().await.is_err());
    });
}

#[test]
fn a_primary_whose_store_cannot_record_the_loss_fails_requests_until_it_can() {
    runtime().block_on(async {
        let (a, mut b) = (TestSide::start().await, TestSide::start().await);
        let m = mirror(&a, &b).await;
        write_regions(&m, 0..=3, 0).await;
        *m.store.refuse.lock().unwrap() = true;
        b.kill().await;
        let refused = m.write(0, &block(9)).await;
        assert!(
            refused.is_err(),
            "acknowledged while the store calls b current"
        );
        let mut back = vec![0; BLOCK];
        assert!(m.read(0, &mut back).await.is_err(), "a read, too");
        assert_eq!(m.status().recorded, Recorded::Unrecordable);

        // The store is back: the retried record goes through.
        *m.store.refuse.lock().unwrap() = false;
        m.wait("recorded", |s| s.recorded == Recorded::Stale).await;
        m.write(0, &block(9)).await.unwrap();
        assert_eq!(a.block(0), block(9));
        assert_eq!(b.block(0), block(0), "b missed it");
        assert!(m.records().len() >= 2 && m.records().iter().all(|&current| !current));
    });
}

#[test]
fn a_former_primary_takes_back_exactly_its_dirty_regions_from_the_new_one() {
    runtime().block_on(async {
        let (new_primary, old_primary) = (TestSide::start().await, TestSide::start().await);
        std::fs::write(&new_primary.path, vec![0x5a; SIZE as usize]).unwrap();
        // The old primary wrote regions 3 and 9 alone before it lost its
        // place; the rest of its copy differs too, but is not its to fix.
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let mut map = DirtyMapFile::create(&dir.path().join("dirty"), geometry()).unwrap();
        map.mark_durable(3 * REGION + 4096, 4096).unwrap();
        map.mark_durable(9 * REGION, 2 * 4096).unwrap();
        let engine = Engine::start(8).unwrap();
        let own = LocalTail::open(&old_primary.path, 4096, false, engine.ring()).unwrap();
        let copied = backend::mirror::pull_dirty(
            new_primary.path("new").await,
            Arc::new(own),
            EPOCH,
            &mut map,
            Duration::from_secs(2),
        )
        .await
        .unwrap();
        assert_eq!(copied, 2 * REGION);
        assert_eq!(map.regions().count(), 0);
        let old = std::fs::read(&old_primary.path).unwrap();
        for region in 0..SIZE / REGION {
            let bytes = &old[(region * REGION) as usize..((region + 1) * REGION) as usize];
            let expected = if region == 3 || region == 9 { 0x5a } else { 0 };
            assert!(bytes.iter().all(|&b| b == expected), "region {region}");
        }
        let durable = DirtyMapFile::open(&dir.path().join("dirty"), geometry()).unwrap();
        assert_eq!(durable.regions().count(), 0, "the clears are durable");
    });
}

#[test]
fn a_full_resync_asked_for_a_replaced_disk_copies_it_whole_and_tells_the_store_first() {
    runtime().block_on(async {
        let (a, b) = (TestSide::start().await, TestSide::start().await);
        let m = mirror(&a, &b).await;
        write_regions(&m, 0..=63, 0x21).await;
        // b's disk replaced by a blank one, unknown to the mirror.
        std::fs::write(&b.path, vec![0; SIZE as usize]).unwrap();
        m.vdisk.full_resync(Side::B).await.unwrap();
        let done = m
            .wait("resynced", |s| {
                s.sides == [SideState::InSync; 2] && s.recorded == Recorded::Current && !s.full
            })
            .await;
        assert_eq!(done.resynced_bytes, SIZE);
        assert_eq!(
            m.records(),
            [false, true],
            "stale before the copy, current after"
        );
        assert!(same_files(&a, &b));
    });
}

#[test]
fn regions_being_written_when_the_primary_stops_are_resynced_at_its_next_start() {
    runtime().block_on(async {
        let (a, b) = (TestSide::start().await, TestSide::start().await);
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let map_path = dir.path().join("dirty");
        // A crash with writes to regions 2 and 7 half done: they landed on
        // a, not b, and the activity log has them.
        let mut map = DirtyMapFile::create(&map_path, geometry()).unwrap();
        map.mark_durable(2 * REGION, 4096).unwrap();
        map.mark_durable(7 * REGION, 4096).unwrap();
        drop(map);
        for region in [2, 7] {
            File::options()
                .write(true)
                .open(&a.path)
                .unwrap()
                .write_all_at(&block(0x77), region * REGION)
                .unwrap();
        }
        // Restarted: the store still calls b current, yet b lacks them.
        let states = [SideState::InSync, SideState::Stale];
        let m = mirror_on(&a, &b, dir, states, true, false, SWEEP).await;
        let done = m
            .wait("resynced", |s| s.sides == [SideState::InSync; 2])
            .await;
        assert_eq!(done.resynced_bytes, 2 * REGION);
        assert!(same_files(&a, &b));
        assert_eq!(m.records(), [], "the store never called b stale");
    });
}

#[test]
fn a_resync_ends_while_the_regions_it_copies_are_written_all_along() {
    runtime().block_on(async {
        let (a, mut b) = (TestSide::start().await, TestSide::start().await);
        let m = Arc::new(mirror(&a, &b).await);
        write_regions(&m, 0..=15, 1).await;
        b.kill().await;
        write_regions(&m, 0..=15, 2).await;
        // A writer that never leaves the dirty regions alone.
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (m, stop) = (m.clone(), stop.clone());
            tokio::spawn(async move {
                let mut round = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let r = round % 16;
                    let data = block(round as u8);
                    m.write(region_block(r) * BLOCK as u64, &data)
                        .await
                        .unwrap();
                    round += 1;
                }
                round
            })
        };
        b.restart().await;
        m.wait("resynced under load", |s| {
            s.sides == [SideState::InSync; 2] && s.recorded == Recorded::Current
        })
        .await;
        stop.store(true, Ordering::Relaxed);
        let rounds = writer.await.unwrap();
        assert!(rounds > 16, "the writer ran through the resync: {rounds}");
        m.flush().await.unwrap();
        assert!(same_files(&a, &b));
    });
}

/// A write sent to side B and held in the network while B is resynced
/// without it must not land afterwards, over the newer data the resync
/// copied: B is taken back only once nothing sent there before can still
/// land (its server closes a connection silent for `wire::SILENCE`, and
/// runs nothing of a closed one).
#[test]
fn a_write_held_in_the_network_never_lands_after_its_region_was_resynced() {
    runtime().block_on(async {
        let a = TestSide::start().await;
        let mut b = TestSide::start().await;
        let cable = support::Cable::lay(b.addr).await;
        b.dial = cable.addr;
        let m = mirror(&a, &b).await;
        let offset = region_block(3) * BLOCK as u64;

        cable.hold();
        m.write(offset, &block(1)).await.unwrap();
        assert_ne!(m.status().sides[1], SideState::InSync, "b lost a write");
        m.write(offset, &block(2)).await.unwrap();
        m.wait("b resynced on a new connection", |s| {
            s.sides == [SideState::InSync; 2]
        })
        .await;
        assert!(b.block(region_block(3)) == block(2), "b resynced");

        cable.release();
        // Time for the held write to land, if anything would run it.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            b.block(region_block(3)) == block(2),
            "the held write landed over the resynced data"
        );
        assert!(same_files(&a, &b));
    });
}

#[test]
fn a_clean_stop_in_sync_leaves_nothing_to_resync() {
    runtime().block_on(async {
        let (a, b) = (TestSide::start().await, TestSide::start().await);
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        DirtyMapFile::create(&dir.path().join("dirty"), geometry()).unwrap();
        // No sweep in the test's time: only the stop may clear the log.
        let states = [SideState::InSync; 2];
        let m = mirror_on(&a, &b, dir, states, true, false, Duration::from_secs(3600)).await;
        write_regions(&m, 0..=3, 1).await;
        assert_eq!(m.durable_regions(), 4, "the activity log holds them");
        let Mirror {
            vdisk,
            map_path,
            _map_dir,
            ..
        } = m;
        drop(vdisk);
        let start = std::time::Instant::now();
        while durable_regions(&map_path) > 0 {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "a clean stop left the log as it was"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(same_files(&a, &b));
    });
}
