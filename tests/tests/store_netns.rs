//! The replicated configuration store between real daemons in network
//! namespaces: three voters (a, b, c) and a learner (d) keep one mapping
//! through a leader killed during an add, a minority partition, a restart
//! of everyone and a move; a request with the old epoch never reaches the
//! tail afterwards; a dead primary's vdisk moves to its secondary. Needs
//! root, as CI is.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::lab::{self, wait_all, Lab, NodeDaemon};
use support::ublkvd_bin;

const NODES: [&str; 4] = ["a", "b", "c", "d"];
const VOTERS: [&str; 3] = ["a", "b", "c"];

/// What every node must agree on: the store's fields of each vdisk,
/// without what this node runs for it.
fn mapping(daemon: &NodeDaemon) -> serde_json::Value {
    let output = daemon.client(&["list", "--json"]);
    assert!(output.status.success(), "{}: {output:?}", daemon.node);
    let mut list: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    for vdisk in list.as_array_mut().unwrap() {
        let vdisk = vdisk.as_object_mut().unwrap();
        for local in ["device", "state", "paths"] {
            vdisk.remove(local);
        }
    }
    list
}

/// Waits until every daemon lists the same mapping; returns it.
fn agreed(daemons: &[&NodeDaemon], within: Duration) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let mappings: Vec<serde_json::Value> = daemons.iter().map(|d| mapping(d)).collect();
        if mappings.iter().all(|m| *m == mappings[0]) {
            return mappings[0].clone();
        }
        assert!(
            start.elapsed() < within,
            "no agreement after {within:?}: {mappings:#?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn vdisk<'a>(mapping: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    mapping
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == name)
}

/// A vdisk's owner, group and mode.
fn access(vdisk: &serde_json::Value) -> (Option<u64>, Option<u64>, Option<u64>) {
    let field = |name: &str| vdisk[name].as_u64();
    (field("owner"), field("group"), field("mode"))
}

fn store(daemon: &NodeDaemon) -> serde_json::Value {
    let output = daemon.client(&["store", "--json"]);
    assert!(output.status.success(), "{}: {output:?}", daemon.node);
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Waits until every daemon knows the same leader; returns its name.
fn leader(daemons: &[&NodeDaemon]) -> String {
    let start = Instant::now();
    loop {
        let leaders: Vec<serde_json::Value> =
            daemons.iter().map(|d| store(d)["leader"].clone()).collect();
        if leaders[0].is_string() && leaders.iter().all(|l| *l == leaders[0]) {
            return leaders[0].as_str().unwrap().to_owned();
        }
        assert!(start.elapsed() < Duration::from_secs(20), "{leaders:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn image(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    let file = std::fs::File::create(&path).unwrap();
    file.set_len(16 << 20).unwrap();
    path
}

fn succeeds(output: std::process::Output) -> String {
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).unwrap()
}

fn fails(output: std::process::Output) -> String {
    assert!(!output.status.success(), "succeeded: {output:?}");
    String::from_utf8(output.stderr).unwrap()
}

#[test]
fn three_voters_and_a_learner_keep_one_configuration_through_failures() {
    let lab = Lab::new(&NODES);
    let shared = image(lab.dir.path(), "shared.img");
    let a1 = image(lab.dir.path(), "a1.img");
    let c0 = image(lab.dir.path(), "c0.img");
    let tails: [Vec<(&str, &Path)>; 4] = [
        vec![("disk0", &shared), ("disk1", &a1)],
        vec![("disk0", &shared)],
        vec![("disk0", &c0)],
        vec![],
    ];
    let mut daemons: Vec<NodeDaemon> = NODES
        .iter()
        .zip(&tails)
        .map(|(node, tails)| {
            let config = lab.config_with_store(node, false, tails, &VOTERS);
            NodeDaemon::start(&lab, node, config)
        })
        .collect();
    for member in NODES {
        let observers: Vec<&NodeDaemon> = daemons.iter().filter(|d| d.node != member).collect();
        wait_all(&observers, member, "alive", Duration::from_secs(15));
    }
    leader(&daemons.iter().collect::<Vec<_>>());
    let within = Duration::from_secs(15);

    // Added on the learner, with its permissions: everyone has it.
    succeeds(daemons[3].client(&[
        "add",
        "v1",
        "--size",
        "4M",
        "--primary",
        "a:disk0",
        "--secondary",
        "b:disk0",
        "--owner",
        "1000",
        "--group",
        "100",
        "--mode",
        "0640",
    ]));
    let refs: Vec<&NodeDaemon> = daemons.iter().collect();
    let m = agreed(&refs, within);
    let v1 = vdisk(&m, "v1").unwrap();
    assert_eq!(access(v1), (Some(1000), Some(100), Some(0o640)));
    assert_eq!(v1["epoch"], 1);
    let list: serde_json::Value =
        serde_json::from_str(&succeeds(daemons[0].client(&["list", "--json"]))).unwrap();
    assert_eq!(list[0]["state"], "exported", "a serves its tail: {list}");

    // `set` on a voter changes them everywhere; what is not given stays.
    succeeds(daemons[2].client(&["set", "v1", "--owner", "2000", "--mode", "600"]));
    let m = agreed(&refs, within);
    let v1 = vdisk(&m, "v1").unwrap();
    assert_eq!(access(v1), (Some(2000), Some(100), Some(0o600)));

    // The leader killed while an add is on its way: afterwards the vdisk
    // is on every node or on none, and on all if the client was told yes.
    let killed = leader(&refs);
    let socket = lab.dir.path().join("d").join("ublkvd.sock");
    let add = Command::new(ublkvd_bin())
        .arg("--socket")
        .arg(&socket)
        .args(["add", "v2", "--size", "4M", "--primary", "c:disk0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(5));
    let k = NODES.iter().position(|n| *n == killed).unwrap();
    daemons[k].kill();
    let told = add.wait_with_output().unwrap();
    let survivors: Vec<&NodeDaemon> = daemons.iter().filter(|d| d.node != killed).collect();
    let after_kill = agreed(&survivors, within);
    if told.status.success() {
        assert!(vdisk(&after_kill, "v2").is_some(), "{after_kill}");
    }
    eprintln!(
        "add during the kill of leader {killed}: client {}, vdisk {}",
        if told.status.success() {
            "succeeded"
        } else {
            "failed"
        },
        if vdisk(&after_kill, "v2").is_some() {
            "everywhere"
        } else {
            "nowhere"
        },
    );
    daemons[k].spawn(&lab);
    let refs: Vec<&NodeDaemon> = daemons.iter().collect();
    assert_eq!(agreed(&refs, within), after_kill);

    // A voter cut off from both networks: its change fails, the
    // majority's goes through, and after healing everyone has the latter.
    lab.set_link("c", 1, false);
    lab.set_link("c", 2, false);
    let refused = fails(daemons[2].client(&["add", "v3", "--size", "4M", "--primary", "c:disk0"]));
    assert!(refused.contains("majority"), "{refused}");
    succeeds(daemons[0].client(&["add", "v4", "--size", "4M", "--primary", "a:disk1"]));
    lab.set_link("c", 1, true);
    lab.set_link("c", 2, true);
    let healed = agreed(&refs, Duration::from_secs(30));
    assert!(vdisk(&healed, "v3").is_none(), "{healed}");
    assert!(vdisk(&healed, "v4").is_some(), "{healed}");

    // Everyone restarted: the same configuration.
    for daemon in &mut daemons {
        assert!(daemon.terminate(), "{} did not stop cleanly", daemon.node);
    }
    for daemon in &mut daemons {
        daemon.spawn(&lab);
    }
    let refs: Vec<&NodeDaemon> = daemons.iter().collect();
    assert_eq!(agreed(&refs, within), healed);

    // A move: every node suspends and acknowledges, the mapping takes the
    // next epoch everywhere.
    leader(&refs);
    succeeds(daemons[3].client(&[
        "move",
        "v1",
        "--primary",
        "b:disk0",
        "--secondary",
        "a:disk0",
    ]));
    let moved = agreed(&refs, within);
    let v1 = vdisk(&moved, "v1").unwrap();
    assert_eq!(
        (v1["epoch"].as_u64(), v1["primary"].as_str()),
        (Some(2), Some("b:disk0"))
    );

    // A writer still at epoch 1 is refused by the tail, which keeps its
    // bytes: it learns of epoch 2 and, never given the new mapping, fails.
    let before = std::fs::read(&shared).unwrap();
    let b = lab.links("b");
    let mut writer = lab.vdisk_io("d");
    writer
        .args([
            "--vdisk", "v1", "--blocks", "16", "--depth", "1", "--epoch", "1",
        ])
        .args(["--io-timeout-ms", "500"])
        .args(["--peer", &format!("b={},{}", b[0], b[1])]);
    let last = lab::drive(writer, Duration::from_millis(1500));
    let report = last.to_string();
    assert_eq!(last["writes"], 0, "{report}");
    assert!(last["errors"].as_u64().unwrap_or(0) >= 1, "{report}");
    assert!(
        last["first_error"]
            .as_str()
            .unwrap_or("")
            .contains("no path"),
        "{report}"
    );
    assert!(
        std::fs::read(&shared).unwrap() == before,
        "the tail changed"
    );

    // The primary's node dies: the store's leader moves the vdisk to its
    // secondary, at the next epoch; back, the node serves as secondary.
    let b = NODES.iter().position(|n| *n == "b").unwrap();
    daemons[b].kill();
    let survivors: Vec<&NodeDaemon> = daemons.iter().filter(|d| d.node != "b").collect();
    let start = Instant::now();
    let failed_over = loop {
        let m = agreed(&survivors, within);
        if vdisk(&m, "v1").unwrap()["epoch"] == 3 {
            break m;
        }
        assert!(start.elapsed() < within, "v1 never moved off b: {m}");
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!("v1 moved off its dead primary in {:?}", start.elapsed());
    let v1 = vdisk(&failed_over, "v1").unwrap();
    assert_eq!(
        (v1["primary"].as_str(), v1["secondary"].as_str()),
        (Some("a:disk0"), Some("b:disk0"))
    );
    daemons[b].spawn(&lab);
    let refs: Vec<&NodeDaemon> = daemons.iter().collect();
    assert_eq!(agreed(&refs, within), failed_over);
}

/// The cut-off local writer: a primary cut off from the store's majority
/// (and from gossip) stops touching its tail once its lease runs out, and
/// the majority hands the vdisk to the secondary only after that. Asked by
/// its own node (a driver in its namespace, with its name), it writes
/// nothing to the shared tail from then on.
#[test]
fn a_primary_cut_off_from_the_majority_writes_nothing_once_its_secondary_took_over() {
    const TRIO: [&str; 3] = ["a", "b", "c"];
    let lab = Lab::new(&TRIO);
    let shared = image(lab.dir.path(), "shared.img");
    let tails: [Vec<(&str, &Path)>; 3] =
        [vec![("disk0", &shared)], vec![("disk0", &shared)], vec![]];
    let daemons: Vec<NodeDaemon> = TRIO
        .iter()
        .zip(&tails)
        .map(|(node, tails)| {
            let config = lab.config_with_store(node, false, tails, &TRIO);
            NodeDaemon::start(&lab, node, config)
        })
        .collect();
    for member in TRIO {
        let observers: Vec<&NodeDaemon> = daemons.iter().filter(|d| d.node != member).collect();
        wait_all(&observers, member, "alive", Duration::from_secs(15));
    }
    leader(&daemons.iter().collect::<Vec<_>>());
    succeeds(daemons[2].client(&[
        "add",
        "v",
        "--size",
        "16M",
        "--primary",
        "a:disk0",
        "--secondary",
        "b:disk0",
    ]));
    let within = Duration::from_secs(30);
    agreed(&daemons.iter().collect::<Vec<_>>(), within);

    for net in [1, 2] {
        lab.set_link("a", net, false);
    }
    let rest: Vec<&NodeDaemon> = daemons.iter().filter(|d| d.node != "a").collect();
    let start = Instant::now();
    loop {
        let m = agreed(&rest, within);
        if vdisk(&m, "v").unwrap()["primary"] == "b:disk0" {
            break;
        }
        assert!(start.elapsed() < within, "v never moved off a: {m}");
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("v moved off its cut-off primary in {:?}", start.elapsed());

    let before = std::fs::read(&shared).unwrap();
    let links = lab.links("a");
    let mut driver = lab.vdisk_io("a");
    driver
        .args(["--vdisk", "v", "--blocks", "1024", "--depth", "4"])
        .args(["--epoch", "1", "--io-timeout-ms", "2000"])
        .args(["--peer", &format!("a={},{}", links[0], links[1])]);
    let report = lab::drive(driver, Duration::from_millis(1500));
    eprintln!("the cut-off primary's own driver: {report}");
    assert_eq!(report["writes"], 0, "the cut-off primary wrote: {report}");
    assert!(
        std::fs::read(&shared).unwrap() == before,
        "the shared tail changed under the secondary"
    );
    assert!(
        daemons[0]
            .log()
            .contains("lease from the store's majority lost"),
        "{}",
        daemons[0].log()
    );
}

/// Waits until `daemon`'s store has exactly `voters`; returns its view.
fn voters_become(daemon: &NodeDaemon, voters: &[&str]) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let view = store(daemon);
        if view["voters"] == serde_json::json!(voters) {
            return view;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "{}: {view:#}",
            daemon.node
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The quickstart's node grows into a cluster: started alone, then with a
/// `[store]` naming three voters, it keeps its store; the two new nodes
/// join that store instead of seeding one of their own; `status` says the
/// file and the store differ until `store set-voters` makes all three
/// voters, after which a change made on any node is everywhere.
#[test]
fn a_node_first_run_alone_grows_into_a_three_voter_store() {
    let lab = Lab::new(&VOTERS);
    let own = image(lab.dir.path(), "own.img");
    let config = lab.config("a", false, &[], support::CLUSTER_SECRET);
    let mut a = NodeDaemon::start(&lab, "a", config);
    succeeds(a.client(&["add", "v0", "--size", "4M", "--tail", own.to_str().unwrap()]));
    assert!(a.terminate());

    // The same file, now naming three voters; b and c start afresh.
    lab.config_with_store("a", false, &[], &VOTERS);
    a.spawn(&lab);
    let mut daemons = vec![a];
    for node in ["b", "c"] {
        let config = lab.config_with_store(node, false, &[], &VOTERS);
        daemons.push(NodeDaemon::start(&lab, node, config));
    }
    let all: Vec<&NodeDaemon> = daemons.iter().collect();
    let mapping = agreed(&all, Duration::from_secs(15));
    assert!(vdisk(&mapping, "v0").is_some(), "{mapping:#}");
    for daemon in &daemons {
        let view = voters_become(daemon, &["a"]);
        assert_eq!(view["leader"], "a", "{view:#}");
    }
    let status = succeeds(daemons[0].client(&["status"]));
    assert!(
        status.contains("[store] voters (a, b, c) are not the store's voters (a)"),
        "{status}"
    );

    let grown = succeeds(daemons[2].client(&["store", "set-voters", "a", "b", "c"]));
    assert!(grown.contains("voters      a, b, c"), "{grown}");
    for daemon in &daemons {
        voters_become(daemon, &VOTERS);
    }
    let status = succeeds(daemons[0].client(&["status"]));
    assert!(!status.contains("[store] voters"), "{status}");
    let b_own = image(lab.dir.path(), "b-own.img");
    succeeds(daemons[1].client(&[
        "add",
        "v1",
        "--size",
        "4M",
        "--tail",
        b_own.to_str().unwrap(),
    ]));
    let mapping = agreed(&all, Duration::from_secs(15));
    assert!(vdisk(&mapping, "v1").is_some(), "{mapping:#}");
}
