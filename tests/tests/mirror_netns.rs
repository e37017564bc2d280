//! Mirrored vdisks between real daemons in network namespaces, devices
//! off: a client (`vdisk-io` on c) writes through the primary a, which
//! mirrors to b. A new mirror is fully synced; with b killed the writes go
//! on, the store calls b's copy stale and only the written regions are
//! resynced when it returns; with a killed the store's leader switches b
//! in; a primary cut off from the majority refuses writes and, healed,
//! takes back from the new primary what it wrote alone. After each
//! resync both tail files are byte-identical and `verify` agrees. Needs
//! root, as CI is.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use support::lab::{self, wait_all, Lab, NodeDaemon};

const NODES: [&str; 3] = ["a", "b", "c"];
const SIZE: u64 = 16 << 20;
const REGION: u64 = 64 << 10;
/// The blocks `vdisk-io` writes: the first 4 MiB of the vdisk.
const BLOCKS: u64 = 1024;
const WITHIN: Duration = Duration::from_secs(20);

fn json(output: Output) -> serde_json::Value {
    assert!(output.status.success(), "{output:?}");
    serde_json::from_slice(&output.stdout).unwrap()
}

fn fails(output: Output) -> String {
    assert!(!output.status.success(), "succeeded: {output:?}");
    String::from_utf8(output.stderr).unwrap()
}

/// What `resync --json` says on the primary.
fn resync(primary: &NodeDaemon) -> serde_json::Value {
    json(primary.client(&["resync", "v", "--json"]))
}

/// Waits until the primary (`daemons[primary]`) says both copies are in
/// sync and every node's store calls the mirror's copy current.
fn in_sync(daemons: &[NodeDaemon], primary: usize) -> serde_json::Value {
    let (all, primary) = (daemons, &daemons[primary]);
    let start = Instant::now();
    loop {
        let status = primary.client(&["resync", "v", "--json"]);
        let copies: Vec<serde_json::Value> = all
            .iter()
            .map(|d| json(d.client(&["list", "--json"]))[0]["mirror_copy"].clone())
            .collect();
        if status.status.success() {
            let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
            if status["state"] == "in sync" && copies.iter().all(|c| c == "current") {
                return status;
            }
        }
        assert!(
            start.elapsed() < WITHIN,
            "not in sync: {status:?}, copies {copies:?}\n{}",
            primary.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until every node lists `field` of the vdisk as `value`.
fn agreed(all: &[&NodeDaemon], field: &str, value: serde_json::Value) {
    let start = Instant::now();
    loop {
        let seen: Vec<serde_json::Value> = all
            .iter()
            .map(|d| json(d.client(&["list", "--json"]))[0][field].clone())
            .collect();
        if seen.iter().all(|s| *s == value) {
            return;
        }
        assert!(start.elapsed() < WITHIN, "{field}: {seen:?}, not {value}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn tail(dir: &Path, name: &str, fill: u8) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, vec![fill; SIZE as usize]).unwrap();
    path
}

/// Writes `block` at `offset` of the file at `path`; returns what was there.
fn change_block(path: &Path, offset: u64, block: &[u8]) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut old = vec![0; block.len()];
    file.read_exact_at(&mut old, offset).unwrap();
    file.write_all_at(block, offset).unwrap();
    file.sync_all().unwrap();
    old
}

fn identical(a: &Path, b: &Path) -> bool {
    std::fs::read(a).unwrap() == std::fs::read(b).unwrap()
}

/// Runs `vdisk-io` in `from`'s namespace against `to`'s service of the
/// vdisk at `epoch` for `run`; returns its last report.
fn write_through(lab: &Lab, from: &str, to: &str, epoch: u64, run: Duration) -> serde_json::Value {
    drive_through(lab, from, to, epoch, run, &[])
}

/// What `vdisk-io --read-only` in `from`'s namespace got through node `to`.
fn read_through(lab: &Lab, from: &str, to: &str, epoch: u64, run: Duration) -> serde_json::Value {
    drive_through(lab, from, to, epoch, run, &["--read-only"])
}

fn drive_through(
    lab: &Lab,
    from: &str,
    to: &str,
    epoch: u64,
    run: Duration,
    extra: &[&str],
) -> serde_json::Value {
    let links = lab.links(to);
    let mut driver = lab.vdisk_io(from);
    driver
        .args(extra)
        .args([
            "--vdisk",
            "v",
            "--blocks",
            &BLOCKS.to_string(),
            "--depth",
            "4",
        ])
        .args(["--epoch", &epoch.to_string(), "--io-timeout-ms", "4000"])
        .args(["--peer", &format!("{to}={},{}", links[0], links[1])]);
    lab::drive(driver, run)
}

fn verify_clean(primary: &NodeDaemon) {
    let report = json(primary.client(&["verify", "v", "--json"]));
    assert_eq!(report["differing"], serde_json::json!([]), "{report}");
    assert_eq!(report["regions"], SIZE / REGION);
}

#[test]
fn a_mirror_survives_either_side_and_resyncs_only_what_changed() {
    let lab = Lab::new(&NODES);
    // Different garbage on each side: a new mirror copies all of a's.
    let a_tail = tail(lab.dir.path(), "a-m0.img", 0xa5);
    let b_tail = tail(lab.dir.path(), "b-m1.img", 0);
    let tails: [Vec<(&str, &Path)>; 3] = [vec![("m0", &a_tail)], vec![("m1", &b_tail)], vec![]];
    let mut daemons: Vec<NodeDaemon> = NODES
        .iter()
        .zip(&tails)
        .map(|(node, tails)| {
            let config = lab.config_with_store(node, false, tails, &NODES);
            NodeDaemon::start(&lab, node, config)
        })
        .collect();
    for member in NODES {
        let observers: Vec<&NodeDaemon> = daemons.iter().filter(|d| d.node != member).collect();
        wait_all(&observers, member, "alive", Duration::from_secs(15));
    }
    let refused = fails(daemons[2].client(&[
        "add",
        "w",
        "--size",
        "16M",
        "--primary",
        "a:m0",
        "--mirror",
        "a:m0",
    ]));
    assert!(refused.contains("different nodes"), "{refused}");
    json(daemons[2].client(&[
        "add",
        "v",
        "--size",
        "16M",
        "--primary",
        "a:m0",
        "--mirror",
        "b:m1",
        "--region-size",
        "64K",
        "--json",
    ]));
    let full = in_sync(&daemons, 0);
    assert_eq!(
        full["resynced_bytes"], SIZE,
        "a new mirror is copied whole: {full}"
    );
    assert!(identical(&a_tail, &b_tail));
    let elsewhere = fails(daemons[1].client(&["resync", "v"]));
    assert!(elsewhere.contains("node a"), "{elsewhere}");

    // Protocol C: what c wrote through a is on both tails.
    let report = write_through(&lab, "c", "a", 1, Duration::from_millis(1500));
    assert_eq!(report["errors"], 0, "{report}");
    assert!(report["writes"].as_u64().unwrap() > 0, "{report}");
    assert!(identical(&a_tail, &b_tail));
    verify_clean(&daemons[0]);

    // One block of b's copy changed behind the mirror's back (region 100,
    // past what vdisk-io writes): `verify` names its region and exits 4.
    let offset = 100 * REGION + 4096;
    let kept = change_block(&b_tail, offset, &[0x5a; 4096]);
    let found = daemons[0].client(&["verify", "v", "--json"]);
    assert_eq!(found.status.code(), Some(4), "{found:?}");
    let report: serde_json::Value = serde_json::from_slice(&found.stdout).unwrap();
    assert_eq!(report["differing"], serde_json::json!([100]), "{report}");
    change_block(&b_tail, offset, &kept);
    verify_clean(&daemons[0]);

    // b dies: c's writes go on, the store hears b's copy is stale.
    daemons[1].kill();
    let report = write_through(&lab, "c", "a", 1, Duration::from_millis(1500));
    assert_eq!(report["errors"], 0, "{report}");
    let survivors: Vec<&NodeDaemon> = daemons.iter().filter(|d| d.node != "b").collect();
    agreed(&survivors, "mirror_copy", "stale".into());
    let degraded = resync(&daemons[0]);
    assert_eq!(degraded["state"], "degraded", "{degraded}");
    let dirty = degraded["dirty_bytes"].as_u64().unwrap();
    assert!(dirty > 0 && dirty <= BLOCKS * 4096, "{degraded}");
    let status = String::from_utf8(daemons[0].client(&["status"]).stdout).unwrap();
    assert!(status.contains("v: degraded"), "{status}");
    assert!(
        status.contains("its mirror b:m1 is unreachable"),
        "{status}"
    );
    let status = String::from_utf8(daemons[2].client(&["status"]).stdout).unwrap();
    assert!(status.contains("mirror b:m1, copy stale"), "{status}");

    // b returns: only the dirty regions are copied.
    daemons[1].spawn(&lab);
    let back = in_sync(&daemons, 0);
    let delta = back["resynced_bytes"].as_u64().unwrap() - SIZE;
    assert_eq!(delta, dirty, "{back}");
    assert!(identical(&a_tail, &b_tail));
    verify_clean(&daemons[0]);

    // a dies: b's copy is current, so the leader switches b in.
    daemons[0].kill();
    let survivors: Vec<&NodeDaemon> = daemons.iter().filter(|d| d.node != "a").collect();
    agreed(&survivors, "epoch", 2.into());
    agreed(&survivors, "primary", "b:m1".into());
    let report = write_through(&lab, "c", "b", 2, Duration::from_millis(1500));
    assert_eq!(report["errors"], 0, "{report}");
    agreed(&survivors, "mirror_copy", "stale".into());
    daemons[0].spawn(&lab);
    let back = in_sync(&daemons, 1);
    assert!(
        back["resynced_bytes"].as_u64().unwrap() <= BLOCKS * 4096,
        "{back}"
    );
    assert!(identical(&a_tail, &b_tail));
    verify_clean(&daemons[1]);

    // The primary b cut off from a and c: the majority switches a in,
    // b's own writes fail, c writes through a.
    for net in [1, 2] {
        lab.set_link("b", net, false);
    }
    let rest: Vec<&NodeDaemon> = daemons.iter().filter(|d| d.node != "b").collect();
    agreed(&rest, "epoch", 3.into());
    agreed(&rest, "primary", "a:m0".into());
    // The deposed primary, which has had no write to fail yet, serves no
    // stale read either: its lease from the majority ran out before the
    // majority switched a in.
    let stale = read_through(&lab, "b", "b", 2, Duration::from_millis(1500));
    assert_eq!(
        stale["reads"], 0,
        "the deposed primary served reads: {stale}"
    );
    assert!(
        daemons[1]
            .log()
            .contains("lease from the store's majority lost"),
        "{}",
        daemons[1].log()
    );
    let cut_off = write_through(&lab, "b", "b", 2, Duration::from_millis(1500));
    let report = write_through(&lab, "c", "a", 3, Duration::from_millis(1500));
    assert_eq!(report["errors"], 0, "{report}");
    assert_eq!(
        cut_off["writes"], 0,
        "the cut-off primary acknowledged: {cut_off}"
    );
    assert!(cut_off["errors"].as_u64().unwrap_or(0) > 0, "{cut_off}");

    assert!(
        daemons[1]
            .log()
            .contains("the store cannot record the mirror stale"),
        "b refused for another reason:\n{}",
        daemons[1].log()
    );
    // Healed: b takes back what it wrote alone, then a resyncs it.
    for net in [1, 2] {
        lab.set_link("b", net, true);
    }
    let healed = in_sync(&daemons, 0);
    assert!(identical(&a_tail, &b_tail), "{}", daemons[1].log());
    eprintln!("full sync {SIZE} B; delta after b's death {dirty} B of {SIZE}; healed: {healed}");
    verify_clean(&daemons[0]);
}
