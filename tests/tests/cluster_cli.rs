//! Cluster vdisks through the daemon and CLI on the host: what `add` refuses
//! before any device or export is made, and a storage-only node (devices =
//! false) that exports its tail and keeps it across restarts.

// Helpers outside #[test] functions panic on purpose: a failed step fails the test.
#![allow(clippy::unwrap_used)]

use std::fs::File;

mod support;

use support::{
    assert_one_line_error, gossip_section, members, wait_for_member, Daemon, Outcome,
    CLUSTER_SECRET,
};

/// A storage-only node `name` on loopback with tail `disk0` (a 16 MiB file
/// in `dir`), joining the cluster through `seeds`.
fn storage_daemon(name: &str, dir: &std::path::Path, seeds: &[String]) -> Daemon {
    storage_daemon_with(name, dir, seeds, "")
}

/// The same, with `extra` top-level settings.
fn storage_daemon_with(name: &str, dir: &std::path::Path, seeds: &[String], extra: &str) -> Daemon {
    let tail = dir.join(format!("{name}-disk0.img"));
    File::create(&tail).unwrap().set_len(16 << 20).unwrap();
    let gossip = gossip_section(dir, "127.0.0.1:0", seeds, CLUSTER_SECRET);
    Daemon::start_with_config(Some(&format!(
        "node = \"{name}\"\nlisten = [\"127.0.0.1:0\"]\ndevices = false\n{extra}\n\
         [tails]\ndisk0 = \"{}\"\n{gossip}",
        tail.display()
    )))
}

/// Storage-only node `a` and its peer `b`, which found `a` by gossip; both
/// hold a tail `disk0`.
fn storage_node() -> (Daemon, Daemon, tempfile::TempDir) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let a = storage_daemon("a", dir.path(), &[]);
    let seed = members(&a)["members"][0]["gossip"]
        .as_str()
        .unwrap()
        .to_owned();
    let b = storage_daemon("b", dir.path(), &[seed]);
    wait_for_member(&a, "b", "alive");
    (a, b, dir)
}

fn add(daemon: &Daemon, args: &[&str]) -> std::process::Output {
    let mut all = vec!["add", "vd", "--size", "8M"];
    all.extend_from_slice(args);
    daemon.client(&all)
}

#[test]
fn a_tail_on_a_node_that_is_not_a_member_is_refused() {
    let (daemon, _b, _tails) = storage_node();
    assert_one_line_error(
        add(&daemon, &["--primary", "a:disk0", "--secondary", "z:disk0"]),
        "node z is not a live member",
    );
}

#[test]
fn a_tail_a_member_does_not_announce_is_refused() {
    let (daemon, _b, _tails) = storage_node();
    assert_one_line_error(
        add(&daemon, &["--primary", "a:disk0", "--secondary", "b:nope"]),
        "node b has no tail named nope (it announces: disk0)",
    );
}

#[test]
fn a_node_without_gossip_knows_no_other_node() {
    let daemon = Daemon::start();
    assert_one_line_error(add(&daemon, &["--primary", "z:disk0"]), "unknown node z");
    assert_one_line_error(daemon.client(&["members"]), "no [gossip] section");
}

#[test]
fn members_shows_both_nodes_alive_with_what_they_announce() {
    let (a, _b, _tails) = storage_node();
    let view = members(&a);
    let members = view["members"].as_array().unwrap();
    assert_eq!(members.len(), 2, "{view}");
    assert_eq!(members[0]["name"], "a");
    assert_eq!(members[0]["is_self"], true);
    assert_eq!(members[1]["name"], "b");
    assert_eq!(members[1]["state"], "alive");
    assert_eq!(members[1]["tails"][0], "disk0");
    // b announces the address its peer server actually bound.
    let link = members[1]["links"][0].as_str().unwrap();
    assert!(!link.ends_with(":0"), "{link}");
    assert!(view["config_number"].as_u64().unwrap() >= 1);
    let status = Outcome::from(a.client(&["status"]));
    assert!(
        status
            .stdout
            .starts_with("node a: 2 members alive, 0 suspect, 0 down"),
        "{}",
        status.stdout
    );
    assert!(status.stdout.ends_with("healthy\n"), "{}", status.stdout);
    let table = Outcome::from(a.client(&["members"]));
    assert!(table.stdout.contains("a (this node)"), "{}", table.stdout);
    assert!(
        table.stdout.contains("configuration number"),
        "{}",
        table.stdout
    );
}

#[test]
fn an_unknown_tail_of_this_node_is_refused() {
    let (daemon, _b, _tails) = storage_node();
    assert_one_line_error(
        add(&daemon, &["--primary", "a:nope", "--secondary", "b:disk0"]),
        "node a has no tail named nope",
    );
}

#[test]
fn primary_and_secondary_on_one_node_are_refused() {
    let (daemon, _b, _tails) = storage_node();
    assert_one_line_error(
        add(&daemon, &["--primary", "a:disk0", "--secondary", "a:disk1"]),
        "different nodes",
    );
}

#[test]
fn a_storage_only_node_records_a_vdisk_it_holds_no_tail_of_and_runs_nothing_for_it() {
    let (daemon, _b, _tails) = storage_node();
    let added = add(&daemon, &["--primary", "b:disk0"]);
    assert!(added.status.success(), "{added:?}");
    let list = Outcome::from(daemon.client(&["list", "--json"]));
    let list: serde_json::Value = serde_json::from_str(&list.stdout).unwrap();
    assert_eq!(list[0]["name"], "vd");
    assert_eq!(list[0]["state"], "not here", "{list}");
    assert!(list[0]["device"].is_null());
}

#[test]
fn a_vdisk_larger_than_this_nodes_tail_is_refused() {
    let (daemon, _b, _tails) = storage_node();
    let output = daemon.client(&["add", "vd", "--size", "32M", "--primary", "a:disk0"]);
    assert_one_line_error(output, "is larger than tail a:disk0");
}

#[test]
fn a_storage_only_node_exports_its_tail_once_and_keeps_it_across_restarts() {
    let (mut daemon, _b, _tails) = storage_node();
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
    let gossip = gossip_section(dir.path(), "127.0.0.1:0", &[], CLUSTER_SECRET);
    let stderr = failed_start(
        dir.path(),
        "node",
        &format!("listen = [\"{addr}\"]\n{gossip}"),
    );
    assert!(
        stderr.contains(&format!("cannot listen for peers on {addr}")),
        "{stderr}"
    );
}

/// GET `path` from `addr`; returns the status line and the body.
fn http_get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_owned(), body.to_owned())
}

/// The value of the sample whose name and labels start with `prefix`.
fn sample(body: &str, prefix: &str) -> f64 {
    let line = body
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix} in:\n{body}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

#[test]
fn the_metrics_endpoint_serves_prometheus_text_whose_counters_move() {
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = free.local_addr().unwrap();
    drop(free);
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let a = storage_daemon_with(
        "a",
        dir.path(),
        &[],
        &format!("metrics_listen = \"{addr}\""),
    );
    let seed = members(&a)["members"][0]["gossip"]
        .as_str()
        .unwrap()
        .to_owned();
    let _b = storage_daemon("b", dir.path(), &[seed]);
    wait_for_member(&a, "b", "alive");
    assert!(add(&a, &["--primary", "a:disk0", "--secondary", "b:disk0"])
        .status
        .success());

    let (status, body) = http_get(addr, "/metrics");
    assert!(status.contains("200"), "{status}");
    // OpenMetrics text: HELP/TYPE/UNIT comments, samples, and the end mark.
    assert!(body.ends_with("# EOF\n"), "{body}");
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = line.rsplit_once(' ').unwrap();
        assert!(value.parse::<f64>().is_ok(), "{line}");
        let name = series.split('{').next().unwrap();
        assert!(name.starts_with("ublkvd_"), "{line}");
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{line}"
        );
    }
    assert_eq!(sample(&body, "ublkvd_members_alive "), 2.0);
    assert!(sample(&body, "ublkvd_membership_config_number ") >= 1.0);
    assert_eq!(
        sample(
            &body,
            "ublkvd_vdisk_requests_total{vdisk=\"vd\",op=\"write\"}"
        ),
        0.0
    );
    let sent = sample(&body, "ublkvd_gossip_datagrams_total{direction=\"sent\"}");
    std::thread::sleep(std::time::Duration::from_millis(500));
    let (_, later) = http_get(addr, "/metrics");
    assert!(sample(&later, "ublkvd_gossip_datagrams_total{direction=\"sent\"}") > sent);
    // a's links to b (its vdisk's secondary) come up and answer heartbeats.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (_, now) = http_get(addr, "/metrics");
        let up = sample(&now, "ublkvd_link_up{peer=\"b\"") == 1.0;
        if up && sample(&now, "ublkvd_link_heartbeat_rtt_microseconds{peer=\"b\"") > 0.0 {
            assert!(sample(&now, "ublkvd_link_sent_bytes_total{peer=\"b\"") > 0.0);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "link to b never up:\n{now}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(http_get(addr, "/other").0.contains("404"));
}

/// `ublkvd ca` in `dir`: its output, asserted successful.
fn ca(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(support::ublkvd_bin())
        .arg("ca")
        .args(args)
        .arg("--dir")
        .arg(dir)
        .output()
        .unwrap()
}

#[test]
fn an_admins_ca_issues_the_certificate_a_node_proves_and_a_wrong_one_stops_it() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let pki = dir.path().join("ca");
    assert!(ca(&pki, &["init"]).status.success());
    let again = ca(&pki, &["init"]);
    assert!(!again.status.success(), "a second init replaced the CA");
    for node in ["a", "b"] {
        let issued = ca(&pki, &["issue", node]);
        assert!(issued.status.success(), "{issued:?}");
    }
    let tls = |node: &str, cert: &str| {
        format!(
            "[tls]\nca = \"{0}/ca.pem\"\ncert = \"{0}/{cert}.pem\"\nkey = \"{0}/{cert}.key\"\n",
            pki.display()
        ) + &format!("# node {node}\n")
    };
    let gossip = gossip_section(dir.path(), "127.0.0.1:0", &[], CLUSTER_SECRET);
    let config = |node: &str, cert: &str| {
        format!(
            "node = \"{node}\"\nlisten = [\"127.0.0.1:0\"]\ndevices = false\n{}{gossip}",
            tls(node, cert)
        )
    };
    let a = Daemon::start_with_config(Some(&config("a", "a")));
    assert_eq!(members(&a)["members"][0]["name"], "a");

    // b's certificate on node c: refused at start, with the reason.
    let stderr = failed_start(dir.path(), "c", &config("c", "b"));
    assert!(stderr.contains("names node \"b\""), "{stderr}");
}

/// Starts a daemon with `config` (files named after `name` in `dir`),
/// which must refuse to start; returns what it said.
fn failed_start(dir: &std::path::Path, name: &str, config: &str) -> String {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, config).unwrap();
    let output = std::process::Command::new(support::ublkvd_bin())
        .arg("serve")
        .arg("--config")
        .arg(&path)
        .arg("--data-dir")
        .arg(dir.join(format!("{name}-data")))
        .arg("--socket")
        .arg(dir.join(format!("{name}.sock")))
        .output()
        .unwrap();
    assert!(!output.status.success(), "the daemon started");
    String::from_utf8_lossy(&output.stderr).into_owned()
}
