//! Cluster vdisks through the daemon and CLI on the host: what `add` refuses
//! before any device or export is made, and a storage-only node (devices =
//! false) that exports its tail and keeps it across restarts.

// Helpers outside #[test] functions panic on purpose: a failed step fails the test.
#![allow(clippy::unwrap_used)]

use std::fs::File;

mod support;

use support::{assert_one_line_error, Daemon, Outcome};

/// Storage-only node `a` with tail `disk0` (a 16 MiB file in the returned directory)
/// and peer `b`.
fn storage_node() -> (Daemon, tempfile::TempDir) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let tail = dir.path().join("disk0.img");
    File::create(&tail).unwrap().set_len(16 << 20).unwrap();
    let daemon = Daemon::start_with_config(Some(&format!(
        "node = \"a\"\nlisten = [\"127.0.0.1:0\"]\ndevices = false\n\
         [tails]\ndisk0 = \"{}\"\n[[peer]]\nname = \"b\"\nlinks = [\"127.0.0.1:9\"]\n",
        tail.display()
    )));
    (daemon, dir)
}

fn add(daemon: &Daemon, args: &[&str]) -> std::process::Output {
    let mut all = vec!["add", "vd", "--size", "8M"];
    all.extend_from_slice(args);
    daemon.client(&all)
}

#[test]
fn a_tail_on_an_unknown_node_is_refused() {
    let (daemon, _tails) = storage_node();
    assert_one_line_error(add(&daemon, &["--primary", "z:disk0"]), "unknown node z");
}

#[test]
fn an_unknown_tail_of_this_node_is_refused() {
    let (daemon, _tails) = storage_node();
    assert_one_line_error(
        add(&daemon, &["--primary", "a:nope", "--secondary", "b:disk0"]),
        "node a has no tail named nope",
    );
}

#[test]
fn primary_and_secondary_on_one_node_are_refused() {
    let (daemon, _tails) = storage_node();
    assert_one_line_error(
        add(&daemon, &["--primary", "a:disk0", "--secondary", "a:disk1"]),
        "different nodes",
    );
}

#[test]
fn a_storage_only_node_refuses_a_vdisk_it_holds_no_tail_of() {
    let (daemon, _tails) = storage_node();
    assert_one_line_error(
        add(&daemon, &["--primary", "b:disk0"]),
        "has nothing to serve",
    );
    let list = Outcome::from(daemon.client(&["list", "--json"]));
    assert_eq!(list.stdout.trim(), "[]");
}

#[test]
fn a_vdisk_larger_than_this_nodes_tail_is_refused() {
    let (daemon, _tails) = storage_node();
    let output = daemon.client(&["add", "vd", "--size", "32M", "--primary", "a:disk0"]);
    assert_one_line_error(output, "is larger than tail a:disk0");
}

#[test]
fn a_storage_only_node_exports_its_tail_once_and_keeps_it_across_restarts() {
    let (mut daemon, _tails) = storage_node();
    let added = add(&daemon, &["--primary", "a:disk0", "--secondary", "b:disk0"]);
    assert!(added.status.success(), "{added:?}");
    assert_one_line_error(
        daemon.client(&[
            "add",
            "other",
            "--size",
            "8M",
            "--primary",
            "b:disk0",
            "--secondary",
            "a:disk0",
        ]),
        "already used by vdisk vd",
    );
    let (status, _) = daemon.terminate();
    assert!(status.success());
    daemon.spawn();
    let list: serde_json::Value =
        serde_json::from_slice(&daemon.client(&["list", "--json"]).stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["state"], "exported");
    assert_eq!(list[0]["primary"], "a:disk0");
    assert_eq!(list[0]["secondary"], "b:disk0");
    assert_eq!(list[0]["device"], serde_json::Value::Null);
    let table = Outcome::from(daemon.client(&["list"]));
    assert!(table.stdout.contains("a:disk0,b:disk0"), "{}", table.stdout);
}

#[test]
fn a_listen_address_already_taken_stops_the_daemon_at_start_with_the_reason() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("node.toml");
    std::fs::write(&config, format!("listen = [\"{addr}\"]\n")).unwrap();
    let output = std::process::Command::new(support::ublkvd_bin())
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--socket")
        .arg(dir.path().join("s.sock"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("cannot listen for peers on {addr}")),
        "{stderr}"
    );
}
