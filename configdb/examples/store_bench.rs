//! Commit latency of the configuration store: three voters on the
//! loopback, each with its redb files in a temporary directory of the
//! current file system (fsync included), take `--writes` adds one after
//! another, from the leader and then from a follower (which forwards to
//! the leader). Prints the median, p90, p99 and max per origin, in ms.
//!
//! `cargo run --release -p configdb --example store_bench -- --writes 300`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use configdb::raft::StoreTls;
use configdb::store::lan_raft_config;
use configdb::{Command, Permissions, Placement, Store, StoreConfig, VdiskSpec};
use tokio::net::TcpListener;

fn spec(i: usize) -> VdiskSpec {
    VdiskSpec {
        name: format!("v{i}").parse().unwrap(),
        size_bytes: 1 << 30,
        placement: Placement::Cluster {
            primary: format!("a:disk{i}").parse().unwrap(),
            secondary: Some(format!("b:disk{i}").parse().unwrap()),
        },
        block_size: 4096,
        queues: 1,
        queue_depth: 128,
        read_only: false,
        permissions: Permissions::default(),
        multi_writer: false,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let writes: usize = std::env::args()
        .skip_while(|a| a != "--writes")
        .nth(1)
        .map_or(200, |n| n.parse().expect("--writes N"));
    let dir = tempfile::tempdir_in(".").unwrap();
    let mut listeners = BTreeMap::new();
    for name in ["a", "b", "c"] {
        listeners.insert(name, TcpListener::bind("127.0.0.1:0").await.unwrap());
    }
    let voters: BTreeMap<String, std::net::SocketAddr> = listeners
        .iter()
        .map(|(n, l)| (n.to_string(), l.local_addr().unwrap()))
        .collect();
    let mut stores = BTreeMap::new();
    for (name, listener) in listeners {
        let store = Store::open(StoreConfig {
            node: name.into(),
            dir: dir.path().join(name),
            voters: voters.clone(),
            listen: Some(listener),
            tls: Some(
                identity::NodeIdentity::from_secret(name, b"store bench secret")
                    .and_then(|identity| StoreTls::new(&identity))
                    .expect("an identity from a fixed secret"),
            ),
            raft: lan_raft_config(),
            write_timeout: Duration::from_secs(5),
        })
        .await
        .unwrap();
        stores.insert(name, store);
    }
    // The first write waits for the election.
    stores["a"].write(Command::AddVdisk(spec(0))).await.unwrap();
    let leader = stores["a"].status().leader.unwrap();
    let (leader_name, follower_name) = if configdb::node_id("a") == leader {
        ("a", "b")
    } else if configdb::node_id("b") == leader {
        ("b", "c")
    } else {
        ("c", "a")
    };
    println!(
        "3 voters on the loopback, files in {}",
        dir.path().display()
    );
    println!("origin    writes  median_ms  p90_ms  p99_ms  max_ms");
    let mut next = 1;
    for (origin, name) in [("leader", leader_name), ("follower", follower_name)] {
        let mut latencies = Vec::with_capacity(writes);
        for _ in 0..writes {
            let started = Instant::now();
            stores[name]
                .write(Command::AddVdisk(spec(next)))
                .await
                .unwrap();
            latencies.push(started.elapsed());
            next += 1;
        }
        latencies.sort();
        println!(
            "{origin:<9} {writes:>6}  {:>9.2}  {:>6.2}  {:>6.2}  {:>6.2}",
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.9),
            percentile(&latencies, 0.99),
            percentile(&latencies, 1.0),
        );
    }
    for store in stores.into_values() {
        store.shutdown().await;
    }
}
