//! The store as the daemon uses it: writes from any node, voters and a
//! learner over TCP on the loopback, and a node alone.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use configdb::{Command, Store, StoreConfig, StoreError};
use tempfile::TempDir;
use tokio::net::TcpListener;

mod support;

use support::{raft_config, spec, tls, TIMEOUT};

struct Member {
    store: Store,
    _dir: TempDir,
}

async fn open(
    node: &str,
    voters: &BTreeMap<String, std::net::SocketAddr>,
    listen: Option<TcpListener>,
) -> Member {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(StoreConfig {
        node: node.into(),
        dir: dir.path().into(),
        voters: voters.clone(),
        listen,
        tls: Some(tls(node)),
        raft: raft_config(),
        write_timeout: Duration::from_secs(3),
    })
    .await
    .unwrap();
    Member { store, _dir: dir }
}

/// Voters a, b, c and learner d, each on its own loopback port.
async fn cluster() -> BTreeMap<String, Member> {
    let mut listeners = BTreeMap::new();
    for name in ["a", "b", "c", "d"] {
        listeners.insert(
            name.to_owned(),
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
        );
    }
    let voters: BTreeMap<String, std::net::SocketAddr> = listeners
        .iter()
        .filter(|(name, _)| name.as_str() != "d")
        .map(|(name, l)| (name.clone(), l.local_addr().unwrap()))
        .collect();
    let mut members = BTreeMap::new();
    for (name, listener) in listeners {
        let member = open(&name, &voters, Some(listener)).await;
        members.insert(name, member);
    }
    members
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_from_a_learner_is_forwarded_and_applied_on_every_node() {
    let members = cluster().await;
    let response = members["d"]
        .store
        .write(Command::AddVdisk(spec("x", 1 << 20)))
        .await
        .unwrap();
    let record = response.vdisk.unwrap();
    assert_eq!((record.id, record.epoch), (0, 1));
    for (name, member) in &members {
        assert!(
            member
                .store
                .wait_applied(response.generation, TIMEOUT)
                .await,
            "{name} never applied generation {}",
            response.generation
        );
        let configuration = member.store.configuration();
        assert_eq!(configuration.vdisks[&record.spec.name], record, "{name}");
    }
    let status = members["a"].store.status();
    assert_eq!(status.voters.len(), 3);
    assert_eq!(status.learners.len(), 1, "{status:?}");
    for member in members.into_values() {
        member.store.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_change_says_why_on_any_node_and_changes_nothing() {
    let members = cluster().await;
    let added = members["b"]
        .store
        .write(Command::AddVdisk(spec("x", 1 << 20)))
        .await
        .unwrap();
    assert!(
        members["b"]
            .store
            .wait_applied(added.generation, TIMEOUT)
            .await
    );
    // The generation also counts the learner's joining: compare vdisks.
    let before = members["b"].store.configuration().vdisks.clone();
    let again = members["c"]
        .store
        .write(Command::AddVdisk(spec("x", 1 << 20)))
        .await;
    match again {
        Err(StoreError::Refused(why)) => assert_eq!(why, "vdisk x already exists"),
        other => panic!("{other:?}"),
    }
    assert_eq!(members["b"].store.configuration().vdisks, before);
    for member in members.into_values() {
        member.store.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_majority_a_write_is_given_up_with_a_clear_error() {
    let mut members = cluster().await;
    let added = members["a"]
        .store
        .write(Command::AddVdisk(spec("x", 1 << 20)))
        .await
        .unwrap();
    assert!(
        members["c"]
            .store
            .wait_applied(added.generation, TIMEOUT)
            .await
    );
    for name in ["a", "b"] {
        members.remove(name).unwrap().store.shutdown().await;
    }
    let refused = members["c"]
        .store
        .write(Command::DeleteVdisk {
            name: "x".parse().unwrap(),
        })
        .await;
    match refused {
        Err(e @ StoreError::Unavailable { .. }) => {
            assert!(e.to_string().contains("majority"), "{e}")
        }
        other => panic!("{other:?}"),
    }
    assert!(members["c"]
        .store
        .configuration()
        .vdisks
        .contains_key(&"x".parse().unwrap()));
    for member in members.into_values() {
        member.store.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_alone_is_its_own_store_and_keeps_it_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let config = || StoreConfig {
        node: "solo".into(),
        dir: dir.path().into(),
        voters: BTreeMap::new(),
        listen: None,
        tls: None,
        raft: raft_config(),
        write_timeout: Duration::from_secs(3),
    };
    let store = Store::open(config()).await.unwrap();
    store
        .write(Command::AddVdisk(spec("x", 4096)))
        .await
        .unwrap();
    store.shutdown().await;
    drop(store);
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    let store = loop {
        // The files are let go of once the stopped store's tasks end.
        match Store::open(config()).await {
            Ok(store) => break store,
            Err(e) if tokio::time::Instant::now() < deadline => {
                assert!(e.to_string().contains("already open"), "{e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert!(store
        .configuration()
        .vdisks
        .contains_key(&"x".parse().unwrap()));
    store
        .write(Command::AddVdisk(spec("y", 4096)))
        .await
        .unwrap();
    store.shutdown().await;
}

/// What a node's lease rests on: a confirmation from the majority that
/// also brings every committed change, on a learner as on the leader; and
/// no confirmation at all for a node without a majority.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirmation_brings_every_committed_change_and_needs_a_majority() {
    let mut members = cluster().await;
    let added = members["a"]
        .store
        .write(Command::AddVdisk(spec("x", 1 << 20)))
        .await
        .unwrap();
    for name in ["a", "b", "c", "d"] {
        members[name].store.confirm(TIMEOUT).await.unwrap();
        let applied = members[name].store.configuration().generation;
        assert!(applied >= added.generation, "{name} confirmed at {applied}");
    }
    for name in ["a", "b"] {
        members.remove(name).unwrap().store.shutdown().await;
    }
    for name in ["c", "d"] {
        let unconfirmed = members[name].store.confirm(Duration::from_secs(2)).await;
        assert!(
            matches!(unconfirmed, Err(StoreError::Unavailable { .. })),
            "{name}: {unconfirmed:?}"
        );
    }
    for member in members.into_values() {
        member.store.shutdown().await;
    }
}

/// Opens node `name`'s store from `dir`, retrying while the files of its
/// stopped life are still held.
async fn reopen(
    name: &str,
    dir: &std::path::Path,
    voters: &BTreeMap<String, std::net::SocketAddr>,
    listen: Option<TcpListener>,
) -> Store {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    let addr = listen.as_ref().map(|l| l.local_addr().unwrap());
    let mut listen = listen;
    loop {
        let config = StoreConfig {
            node: name.into(),
            dir: dir.into(),
            voters: voters.clone(),
            listen: listen.take(),
            tls: (!voters.is_empty()).then(|| tls(name)),
            raft: raft_config(),
            write_timeout: Duration::from_secs(3),
        };
        match Store::open(config).await {
            Ok(store) => return store,
            Err(e) if tokio::time::Instant::now() < deadline => {
                assert!(e.to_string().contains("already open"), "{e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
                // The listener went with the failed attempt: bind again.
                if let Some(addr) = addr {
                    listen = Some(TcpListener::bind(addr).await.unwrap());
                }
            }
            Err(e) => panic!("{e}"),
        }
    }
}

/// Waits until `store` has applied a change that added vdisk `name`.
async fn wait_for_vdisk(store: &Store, name: &str) -> bool {
    let name = name.parse().unwrap();
    let mut changes = store.subscribe();
    let seen = changes.wait_for(|c| c.vdisks.contains_key(&name));
    tokio::time::timeout(TIMEOUT, seen)
        .await
        .is_ok_and(|r| r.is_ok())
}

/// Waits until `store` sees exactly the voters `names`.
async fn wait_for_voters(store: &Store, names: &[&str]) -> bool {
    let wanted: std::collections::BTreeSet<u64> =
        names.iter().map(|n| configdb::node_id(n)).collect();
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while tokio::time::Instant::now() < deadline {
        if store.status().voters == wanted {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// The quickstart's node grows into a cluster: its store, alone until now,
/// is joined by the nodes a new `[store] voters` names (rather than each
/// seeding a store of its own beside it), and `set_voters` makes them
/// voters; later a dead voter is replaced by a learner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_store_grows_to_three_voters_and_a_dead_voter_is_replaced() {
    let dirs: BTreeMap<&str, TempDir> = ["a", "b", "c", "d"]
        .into_iter()
        .map(|n| (n, tempfile::tempdir().unwrap()))
        .collect();
    let alone = reopen("a", dirs["a"].path(), &BTreeMap::new(), None).await;
    alone
        .write(Command::AddVdisk(spec("x", 4096)))
        .await
        .unwrap();
    alone.shutdown().await;
    drop(alone);

    let mut listeners = BTreeMap::new();
    for name in ["a", "b", "c", "d"] {
        listeners.insert(name, TcpListener::bind("127.0.0.1:0").await.unwrap());
    }
    let voters: BTreeMap<String, std::net::SocketAddr> = ["a", "b", "c"]
        .iter()
        .map(|n| (n.to_string(), listeners[n].local_addr().unwrap()))
        .collect();
    let mut stores = BTreeMap::new();
    for name in ["a", "b", "c"] {
        let listener = listeners.remove(name);
        let store = reopen(name, dirs[name].path(), &voters, listener).await;
        stores.insert(name, store);
    }
    for name in ["b", "c"] {
        assert!(
            wait_for_vdisk(&stores[name], "x").await,
            "{name} did not join the store that already ran on a"
        );
    }
    // The file does not make voters of a running store.
    assert!(wait_for_voters(&stores["b"], &["a"]).await);

    let refused = stores["b"]
        .set_voters(&["a", "b"].map(String::from).into())
        .await;
    assert!(
        matches!(&refused, Err(StoreError::Refused(why)) if why.contains("name 3 or 5")),
        "{refused:?}"
    );
    let refused = stores["b"]
        .set_voters(&["a", "b", "ghost"].map(String::from).into())
        .await;
    assert!(
        matches!(&refused, Err(StoreError::Refused(why)) if why.contains("not in the store yet: ghost")),
        "{refused:?}"
    );

    stores["c"]
        .set_voters(&["a", "b", "c"].map(String::from).into())
        .await
        .unwrap();
    for (name, store) in &stores {
        assert!(
            wait_for_voters(store, &["a", "b", "c"]).await,
            "{name}: {:?}",
            store.status()
        );
    }
    stores["c"]
        .write(Command::AddVdisk(spec("y", 4096)))
        .await
        .unwrap();
    for (name, store) in &stores {
        assert!(wait_for_vdisk(store, "y").await, "{name}");
    }

    // Voter c dies; d, a learner, takes its place, and the store keeps
    // taking changes with a and b.
    stores.remove("c").unwrap().shutdown().await;
    let d = reopen("d", dirs["d"].path(), &voters, listeners.remove("d")).await;
    assert!(wait_for_vdisk(&d, "y").await, "d did not join as a learner");
    stores["a"]
        .set_voters(&["a", "b", "d"].map(String::from).into())
        .await
        .unwrap();
    assert!(
        wait_for_voters(&d, &["a", "b", "d"]).await,
        "{:?}",
        d.status()
    );
    d.write(Command::AddVdisk(spec("z", 4096))).await.unwrap();
    for store in stores.values() {
        assert!(wait_for_vdisk(store, "z").await);
    }
    d.shutdown().await;
    for store in stores.into_values() {
        store.shutdown().await;
    }
}
