//! A cached vdisk's tree over real links: three nodes in one process, each
//! with its own peer server, TLS identity and links to the others, the
//! root over a real tail file, the others over real cache files. A
//! grandchild reads through its parent, the parent then reads its own
//! copy, and a write at either end is seen at the other once
//! acknowledged.

// Helpers outside #[test] functions panic on purpose: a failed step fails the test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use backend::cache::{CacheNode, CacheRoot, ExtentStore, LeaseConfig};
use backend::cached::{CacheRole, LinkTransport, Peers};
use backend::link::{HealthConfig, PeerLinks};
use backend::peer::{serve, Exports};
use backend::{Engine, LocalTail, Tail};
use tokio::net::TcpListener;

const VDISK: u64 = 11;
const EXTENT: u64 = 64 << 10;
const SIZE: u64 = 2 << 20;
const CACHE: u64 = 8 * EXTENT;
const CONFIG: LeaseConfig = LeaseConfig {
    ttl_ms: 1_000,
    drift_ppm: 5_000,
    resend_ms: 100,
};

struct Links(HashMap<String, Arc<PeerLinks>>);

impl Peers for Links {
    fn get(&self, name: &str) -> Option<Arc<PeerLinks>> {
        self.0.get(name).cloned()
    }
}

/// Bytes that say where they are: the tail's first contents.
fn pattern(offset: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| ((offset + i) / 4096 * 13 + (offset + i) % 241) as u8)
        .collect()
}

struct Tree {
    root: Arc<CacheRoot>,
    /// "a", the root's child, and "b", a's.
    a: Arc<CacheNode>,
    b: Arc<CacheNode>,
    _engine: Engine,
    _dir: tempfile::TempDir,
}

impl Tree {
    async fn start() -> Tree {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let engine = Engine::start(64).unwrap();
        let names = ["root", "a", "b"];
        let mut addrs = HashMap::new();
        let mut exports = HashMap::new();
        for name in names {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            addrs.insert(name, listener.local_addr().unwrap());
            let served = Arc::new(Exports::new());
            exports.insert(name, served.clone());
            tokio::spawn(serve(
                vec![listener],
                served,
                support::server_tls(name),
                std::future::pending(),
            ));
        }
        // Every node's links to the two others.
        let peers = |me: &str| -> Arc<dyn Peers> {
            let links = names
                .iter()
                .filter(|&&peer| peer != me)
                .map(|&peer| {
                    let links = PeerLinks::new(
                        peer,
                        HealthConfig::default(),
                        support::client_tls(me, peer),
                    );
                    links.set_membership(Some(&[addrs[peer]]));
                    (peer.to_owned(), Arc::new(links))
                })
                .collect();
            Arc::new(Links(links))
        };
        let tail_path = dir.path().join("tail");
        File::create(&tail_path)
            .unwrap()
            .write_all(&pattern(0, SIZE as usize))
            .unwrap();
        let tail: Arc<dyn Tail> =
            Arc::new(LocalTail::open(&tail_path, 4096, false, engine.ring()).unwrap());
        let transport = LinkTransport::new(VDISK, None, peers("root"));
        let root = CacheRoot::new(tail, 1, EXTENT, CONFIG, transport.clone());
        exports["root"].insert_cache(
            VDISK,
            Arc::new(CacheRole::Root {
                root: root.clone(),
                transport,
            }),
        );
        let node = |me: &str, parent: &str| {
            let path = dir.path().join(format!("cache-{me}"));
            File::create(&path).unwrap().set_len(CACHE).unwrap();
            let file = LocalTail::open(&path, 4096, false, engine.ring()).unwrap();
            let store = ExtentStore::new(file, CACHE, EXTENT).unwrap();
            let transport = LinkTransport::new(VDISK, Some(parent), peers(me));
            let node = CacheNode::new(store, EXTENT, CONFIG, transport.clone());
            let role = CacheRole::Node {
                node: node.clone(),
                transport,
            };
            exports[me].insert_cache(VDISK, Arc::new(role));
            node
        };
        let (a, b) = (node("a", "root"), node("b", "a"));
        let (ticked_root, ticked_a, ticked_b) = (root.clone(), a.clone(), b.clone());
        tokio::spawn(async move {
            loop {
                ticked_root.tick();
                ticked_a.tick();
                ticked_b.tick();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        let tree = Tree {
            root,
            a,
            b,
            _engine: engine,
            _dir: dir,
        };
        // The links come up, and each node gets its lease (b's nested in
        // a's): from then on what they read is cached.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        tree
    }
}

async fn read(node: &Arc<CacheNode>, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0; len];
    tokio::time::timeout(Duration::from_secs(10), node.read(offset, &mut buf))
        .await
        .expect("a read did not end")
        .unwrap();
    buf
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tree_over_real_links_caches_reads_and_carries_writes_both_ways() {
    let tree = Tree::start().await;
    let at = 3 * EXTENT + 4096;
    // b reads through a, which keeps the extent, and then reads it itself
    // from its own copy.
    assert_eq!(read(&tree.b, at, 8192).await, pattern(at, 8192));
    assert_eq!(read(&tree.b, at, 8192).await, pattern(at, 8192));
    assert_eq!(
        tree.b.counters().hits.load(Ordering::Relaxed),
        1,
        "b's re-read missed"
    );
    assert_eq!(read(&tree.a, at, 4096).await, pattern(at, 4096));
    assert_eq!(
        tree.a.counters().hits.load(Ordering::Relaxed),
        1,
        "a did not keep what it relayed"
    );
    // The root writes into the extent both hold: both copies are recalled
    // before the write is acknowledged.
    let written = vec![0x3d; 4096];
    tree.root.write(at, &written).await.unwrap();
    assert_eq!(read(&tree.b, at, 4096).await, written);
    assert_eq!(read(&tree.a, at, 4096).await, written);
    // And b's write, through a to the root, is seen by a.
    let from_b = vec![0xb0; 4096];
    tokio::time::timeout(Duration::from_secs(10), tree.b.write(at + 4096, &from_b))
        .await
        .expect("b's write did not end")
        .unwrap();
    assert_eq!(read(&tree.a, at + 4096, 4096).await, from_b);
}
