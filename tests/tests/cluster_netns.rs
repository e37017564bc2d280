//! Remote tails across real networks: three nodes in network namespaces,
//! two bridged networks between them. `a` and `b` are real daemons attached
//! to one shared file (a twin-tailed tail), serving it to peers; `c` holds
//! no tail and drives verified random I/O through the backend API (links,
//! pending-request table, failover) while links are cut and `a` is killed.
//! No request may fail and every byte must read back as last written.

// Helpers outside #[test] functions panic on purpose: a failed step fails the test.
#![allow(clippy::unwrap_used)]

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod support;

use support::lab::{wait_all, Lab, NodeDaemon};
use support::CLUSTER_SECRET;

const VDISK: &str = "vd";
const BLOCKS: u64 = 4096;

/// The `vdisk-io` driver in node `c`, and its latest report.
struct Driver {
    child: Child,
    latest: Arc<Mutex<serde_json::Value>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Driver {
    /// A failed test must not leave the driver running.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    fn start(lab: &Lab) -> Driver {
        let [a1, a2] = lab.links("a");
        let [b1, b2] = lab.links("b");
        let mut child = lab
            .vdisk_io("c")
            .args(["--vdisk", VDISK, "--blocks", &BLOCKS.to_string()])
            .args(["--peer", &format!("a={a1},{a2}")])
            .args(["--peer", &format!("b={b1},{b2}")])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let latest = Arc::new(Mutex::new(serde_json::Value::Null));
        let sink = latest.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let line = line.unwrap();
                *sink.lock().unwrap() = serde_json::from_str(&line).unwrap();
            }
        });
        Driver {
            child,
            latest,
            reader: Some(reader),
        }
    }

    fn report(&self) -> serde_json::Value {
        self.latest.lock().unwrap().clone()
    }

    fn completed(&self, path: &str) -> u64 {
        self.report()["completed"][path].as_u64().unwrap_or(0)
    }

    fn assert_no_error(&self, when: &str) {
        let report = self.report();
        assert_eq!(report["errors"], 0, "{when}: {report}");
        assert_eq!(report["mismatches"], 0, "{when}: {report}");
    }

    /// Waits until `path` has completed `more` requests beyond now.
    fn wait_for_progress(&self, path: &str, more: u64, when: &str) {
        let start = self.completed(path);
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.completed(path) < start + more {
            assert!(
                Instant::now() < deadline,
                "{when}: path {path} made no progress: {}",
                self.report()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.assert_no_error(when);
    }

    /// Closes stdin: the driver stops, reads back every block it wrote and
    /// prints its final report.
    fn finish(mut self) -> serde_json::Value {
        drop(self.child.stdin.take());
        let status = self.child.wait().unwrap();
        if let Some(reader) = self.reader.take() {
            reader.join().unwrap();
        }
        let report = self.report();
        assert!(status.success(), "vdisk-io failed: {report}");
        report
    }
}

#[test]
fn io_from_a_tailless_node_survives_link_cuts_and_a_primary_kill_without_error() {
    let lab = Lab::new(&["a", "b", "c"]);
    let shared = lab.dir.path().join("shared.img");
    File::create(&shared)
        .unwrap()
        .set_len(BLOCKS * 4096)
        .unwrap();
    let mut daemons: Vec<NodeDaemon> = ["a", "b"]
        .iter()
        .map(|node| {
            let config = lab.config(node, false, &[("disk0", &shared)], CLUSTER_SECRET);
            // The driver in c is no member: a and b must take its requests.
            let mut text = std::fs::read_to_string(&config).unwrap();
            text += "fence_non_members = false\n";
            std::fs::write(&config, text).unwrap();
            NodeDaemon::start(&lab, node, config)
        })
        .collect();
    // Each checks the other's tail against what it announces.
    let within = Duration::from_secs(15);
    wait_all(&[&daemons[0]], "b", "alive", within);
    wait_all(&[&daemons[1]], "a", "alive", within);
    for daemon in &daemons {
        let add = daemon.client(&[
            "add",
            VDISK,
            "--size",
            "16M",
            "--primary",
            "a:disk0",
            "--secondary",
            "b:disk0",
        ]);
        assert!(add.status.success(), "{add:?}");
        let list = daemon.client(&["list", "--json"]);
        let list: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
        assert_eq!(list[0]["state"], "exported", "{list}");
    }

    let driver = Driver::start(&lab);
    // Until c's links to a are up, the first requests go to b, and may
    // complete there a while after a took over.
    driver.wait_for_progress("a", 300, "start");
    let on_b = driver.completed("b");
    driver.wait_for_progress("a", 200, "requests go to the primary");
    assert_eq!(
        driver.completed("b"),
        on_b,
        "the secondary idles while a serves"
    );

    // One cable of the primary cut: its other link carries on.
    lab.set_link("a", 1, false);
    std::thread::sleep(Duration::from_millis(800));
    driver.wait_for_progress("a", 200, "one link of a cut");
    lab.set_link("a", 1, true);

    // Both cables of the primary cut: requests fail over to b.
    lab.set_link("a", 1, false);
    lab.set_link("a", 2, false);
    driver.wait_for_progress("b", 200, "both links of a cut");
    let on_a = driver.completed("a");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        driver.completed("a"),
        on_a,
        "a is cut off, yet completed requests"
    );
    // Healed: new requests use the primary again.
    lab.set_link("a", 1, true);
    lab.set_link("a", 2, true);
    driver.wait_for_progress("a", 200, "links of a restored");

    // kill -9 of the primary: b takes over; a restarted takes its place back.
    daemons[0].kill();
    driver.wait_for_progress("b", 200, "a killed");
    daemons[0].spawn(&lab);
    driver.wait_for_progress("a", 200, "a restarted");

    let report = driver.finish();
    assert_eq!(report["done"], true, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    assert_eq!(report["mismatches"], 0, "{report}");
    let written = report["verified_blocks"].as_u64().unwrap();
    assert!(
        written > 500,
        "too few blocks written to mean much: {report}"
    );
    eprintln!("vdisk-io final report: {report}");
    eprintln!("a's log:\n{}", daemons[0].log());
}
