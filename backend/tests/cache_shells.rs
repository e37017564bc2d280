//! The cache's shells with real files (the root's tail, each node's cache
//! file, real io_uring and `O_DIRECT`) and the messages carried between
//! them in this process, as the links will carry them between nodes:
//! copies are read back from the cache file, a write anywhere is seen by
//! every reader once acknowledged, and a relay answers its children from
//! its own copy.

// Helpers outside #[test] functions panic on purpose: a failed step fails the test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use backend::cache::{
    CacheNode, CacheRoot, CacheTransport, ExtentStore, HolderId, LeaseConfig, Stamped, Up,
};
use backend::{AlignedBuf, Engine, LocalTail, Tail};

const EXTENT: u64 = 64 << 10;
const VDISK: u64 = 4 << 20;
const CACHE: u64 = 16 * EXTENT;
const EPOCH: u64 = 1;
const CONFIG: LeaseConfig = LeaseConfig {
    ttl_ms: 1_000,
    drift_ppm: 5_000,
    resend_ms: 100,
};

#[derive(Clone, Copy)]
enum Parent {
    Root,
    Node(usize),
}

/// Carries messages between the shells of one process, each on a task of
/// its own after a delay of up to 8 ms, so they may pass each other as on
/// a network, and a copy recalled but not yet dropped can be read.
struct Hub {
    parents: Vec<Parent>,
    root: OnceLock<Arc<CacheRoot>>,
    nodes: OnceLock<Vec<Arc<CacheNode>>>,
    /// Reads that reached the root.
    root_gets: AtomicU64,
    sent: AtomicU64,
}

struct Port {
    hub: Arc<Hub>,
    /// None: the root.
    node: Option<usize>,
}

impl Hub {
    fn root(&self) -> &Arc<CacheRoot> {
        self.root.get().unwrap()
    }

    fn node(&self, n: usize) -> &Arc<CacheNode> {
        &self.nodes.get().unwrap()[n]
    }

    /// A message's time on the network: 0 to 8 ms, spread by a hash of
    /// its number.
    fn delay(&self) -> Duration {
        let n = self.sent.fetch_add(1, Ordering::Relaxed);
        let spread = n.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 61;
        Duration::from_millis(spread)
    }
}

impl CacheTransport for Port {
    fn to_parent(&self, msg: Up, at: u32, data: Option<Arc<AlignedBuf>>) {
        let (hub, me) = (self.hub.clone(), self.node.unwrap());
        tokio::spawn(async move {
            tokio::time::sleep(hub.delay()).await;
            match hub.parents[me] {
                Parent::Root => {
                    if matches!(msg, Up::Get { .. }) {
                        hub.root_gets.fetch_add(1, Ordering::Relaxed);
                    }
                    hub.root().receive(me as HolderId, msg, at, data);
                }
                Parent::Node(p) => hub
                    .node(p)
                    .receive_from_child(me as HolderId, msg, at, data),
            }
        });
    }

    fn to_child(&self, child: HolderId, msg: Stamped, data: Option<Arc<AlignedBuf>>) {
        let hub = self.hub.clone();
        tokio::spawn(async move {
            tokio::time::sleep(hub.delay()).await;
            hub.node(child as usize)
                .receive_from_parent(msg, data)
                .await
        });
    }
}

/// A root over a real tail file and nodes with real cache files, under
/// `parents`, ticked every 5 ms.
struct Cluster {
    hub: Arc<Hub>,
    tail_path: std::path::PathBuf,
    _dir: tempfile::TempDir,
    _engine: Engine,
}

impl Cluster {
    async fn start(parents: Vec<Parent>) -> Cluster {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let tail_path = dir.path().join("tail");
        let mut tail_file = File::create(&tail_path).unwrap();
        tail_file.write_all(&pattern(0, VDISK as usize)).unwrap();
        let engine = Engine::start(64).unwrap();
        let hub = Arc::new(Hub {
            parents: parents.clone(),
            root: OnceLock::new(),
            nodes: OnceLock::new(),
            root_gets: AtomicU64::new(0),
            sent: AtomicU64::new(0),
        });
        let port = |node| {
            Arc::new(Port {
                hub: hub.clone(),
                node,
            })
        };
        let tail: Arc<dyn Tail> =
            Arc::new(LocalTail::open(&tail_path, 4096, false, engine.ring()).unwrap());
        let _ = hub
            .root
            .set(CacheRoot::new(tail, EPOCH, EXTENT, CONFIG, port(None)));
        let nodes = (0..parents.len())
            .map(|n| {
                let path = dir.path().join(format!("cache{n}"));
                File::create(&path).unwrap().set_len(CACHE).unwrap();
                let file = LocalTail::open(&path, 4096, false, engine.ring()).unwrap();
                let store = ExtentStore::new(file, CACHE, EXTENT).unwrap();
                CacheNode::new(store, EXTENT, CONFIG, port(Some(n)))
            })
            .collect();
        let _ = hub.nodes.set(nodes);
        let ticked = hub.clone();
        tokio::spawn(async move {
            loop {
                ticked.root().tick();
                for node in ticked.nodes.get().unwrap() {
                    node.tick();
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        // Every node holds a lease (the first renewals go out at the
        // first tick), so that what it reads is cached.
        tokio::time::sleep(Duration::from_millis(100)).await;
        Cluster {
            hub,
            tail_path,
            _dir: dir,
            _engine: engine,
        }
    }

    fn node(&self, n: usize) -> &Arc<CacheNode> {
        self.hub.node(n)
    }

    async fn read(&self, n: usize, offset: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0; len];
        let read = self.node(n).read(offset, &mut buf);
        tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .expect("a read did not end")
            .unwrap();
        buf
    }

    async fn write(&self, n: usize, offset: u64, data: &[u8]) {
        let write = self.node(n).write(offset, data);
        tokio::time::timeout(Duration::from_secs(10), write)
            .await
            .expect("a write did not end")
            .unwrap();
    }

    fn hits(&self, n: usize) -> u64 {
        self.node(n).counters().hits.load(Ordering::Relaxed)
    }

    fn tail_bytes(&self, offset: u64, len: usize) -> Vec<u8> {
        let mut file = File::open(&self.tail_path).unwrap();
        file.seek(SeekFrom::Start(offset)).unwrap();
        let mut out = vec![0; len];
        file.read_exact(&mut out).unwrap();
        out
    }
}

/// Bytes that say where they are: the tail's first contents.
fn pattern(offset: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| ((offset + i) / 4096 * 7 + (offset + i) % 251) as u8)
        .collect()
}

#[tokio::test]
async fn readers_hit_their_copies_and_see_every_acknowledged_write() {
    let cluster = Cluster::start(vec![Parent::Root; 3]).await;
    let at = 2 * EXTENT + 8192;
    for n in 0..3 {
        assert_eq!(cluster.read(n, at, 16384).await, pattern(at, 16384));
        assert_eq!(cluster.hits(n), 0);
        // Read again: from the node's cache file.
        assert_eq!(cluster.read(n, at, 16384).await, pattern(at, 16384));
        assert_eq!(
            cluster.hits(n),
            1,
            "node {n} read its copy again from above"
        );
    }
    // Node 0 writes into the extent every node holds.
    let written = vec![0xee; 4096];
    cluster.write(0, at + 4096, &written).await;
    assert_eq!(
        cluster.tail_bytes(at + 4096, 4096),
        written,
        "acknowledged before it landed"
    );
    let mut expected = pattern(at, 16384);
    expected[4096..8192].copy_from_slice(&written);
    for n in 0..3 {
        assert_eq!(
            cluster.read(n, at, 16384).await,
            expected,
            "node {n} read an old copy"
        );
    }
    // The root's own write is recalled from every copy the same way.
    let root_written = vec![0x5a; 8192];
    let root = cluster.hub.root().clone();
    root.write(at, &root_written).await.unwrap();
    expected[..8192].copy_from_slice(&root_written);
    for n in 0..3 {
        assert_eq!(
            cluster.read(n, at, 16384).await,
            expected,
            "node {n} missed the root's write"
        );
    }
}

#[tokio::test]
async fn a_relay_answers_its_children_from_its_own_copy() {
    let cluster = Cluster::start(vec![Parent::Root, Parent::Node(0), Parent::Node(0)]).await;
    let at = 3 * EXTENT;
    assert_eq!(cluster.read(1, at, 4096).await, pattern(at, 4096));
    // Whatever the first read sent is delivered by now.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let asked = cluster.hub.root_gets.load(Ordering::Relaxed);
    assert!(asked >= 1);
    assert_eq!(
        cluster.read(2, at + 4096, 4096).await,
        pattern(at + 4096, 4096)
    );
    assert_eq!(
        cluster.hub.root_gets.load(Ordering::Relaxed),
        asked,
        "the relay asked the root again for an extent it holds"
    );
    // A write by one child is recalled from the other through the relay.
    let written = vec![0x77; 4096];
    cluster.write(2, at, &written).await;
    assert_eq!(cluster.read(1, at, 4096).await, written);
    assert_eq!(cluster.read(0, at, 4096).await, written);
}

/// Writers on every node stamp an extent with a counter; once a write is
/// acknowledged, every node reads that stamp or a later one.
#[tokio::test]
async fn no_node_reads_older_than_an_acknowledged_write() {
    let cluster = Arc::new(
        Cluster::start(vec![
            Parent::Root,
            Parent::Root,
            Parent::Node(0),
            Parent::Node(0),
            Parent::Node(1),
        ])
        .await,
    );
    let stamp_of = |bytes: &[u8]| u64::from_le_bytes(bytes[..8].try_into().unwrap());
    let acked = Arc::new(AtomicU64::new(0));
    let at = 5 * EXTENT;
    // Stamp 0 is the tail's pattern: start from a known first stamp.
    cluster.write(0, at, &stamp(1)).await;
    acked.store(1, Ordering::SeqCst);
    let mut readers = Vec::new();
    for n in 0..5 {
        let (cluster, acked) = (cluster.clone(), acked.clone());
        readers.push(tokio::spawn(async move {
            for _ in 0..40 {
                let floor = acked.load(Ordering::SeqCst);
                let seen = stamp_of(&cluster.read(n, at, 4096).await);
                assert!(
                    seen >= floor,
                    "node {n} read stamp {seen} after {floor} was acknowledged"
                );
            }
        }));
    }
    for round in 2..=20u64 {
        cluster.write((round % 5) as usize, at, &stamp(round)).await;
        acked.store(round, Ordering::SeqCst);
    }
    for reader in readers {
        reader.await.unwrap();
    }
}

fn stamp(n: u64) -> Vec<u8> {
    let mut block = vec![0; 4096];
    block[..8].copy_from_slice(&n.to_le_bytes());
    block
}
