//! Only the cluster touches the data, between real daemons in network
//! namespaces: a tail's server answers a node that proves, with a
//! certificate of the cluster's CA, that it is a live member, and nobody
//! else, wherever it connects from. Needs root, as CI is.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::fs::File;
use std::process::Stdio;
use std::time::Duration;

use support::lab::{self, wait_all, Lab, NodeDaemon};
use support::CLUSTER_SECRET;

/// The blocks the drivers write: the vdisk's first 256 KiB.
const BLOCKS: u64 = 64;

/// Runs `vdisk-io` in `from`'s namespace as node `name` (certificate of
/// the CA `secret` derives) against a's tail of vdisk v for two seconds;
/// returns its last report.
fn drive(lab: &Lab, from: &str, name: &str, secret: &str) -> serde_json::Value {
    drive_vdisk(lab, "v", from, name, secret)
}

/// [`drive`] on vdisk `vdisk`.
fn drive_vdisk(lab: &Lab, vdisk: &str, from: &str, name: &str, secret: &str) -> serde_json::Value {
    let links = lab.links("a");
    let mut driver = lab.vdisk_io_as(from, name, secret);
    driver
        .args(["--vdisk", vdisk, "--blocks", &BLOCKS.to_string()])
        .args(["--depth", "2", "--io-timeout-ms", "1500"])
        .args(["--peer", &format!("a={},{}", links[0], links[1])]);
    lab::drive(driver, Duration::from_secs(2))
}

#[test]
fn only_a_member_proving_its_name_reads_or_writes_a_tail() {
    let lab = Lab::new(&["a", "b", "c"]);
    let tail = lab.dir.path().join("a-disk0.img");
    File::create(&tail).unwrap().set_len(4 << 20).unwrap();
    std::fs::write(&tail, vec![0x5a; 4 << 20]).unwrap();
    let a_config = lab.config("a", false, &[("disk0", &tail)], CLUSTER_SECRET);
    let a = NodeDaemon::start(&lab, "a", a_config);
    let b = NodeDaemon::start(&lab, "b", lab.config("b", false, &[], CLUSTER_SECRET));
    wait_all(&[&a], "b", "alive", Duration::from_secs(15));
    let add = a.client(&["add", "v", "--size", "1M", "--primary", "a:disk0"]);
    assert!(add.status.success(), "{add:?}");
    let before = std::fs::read(&tail).unwrap();

    // c holds the cluster secret but is no member: a proves nothing to it.
    let outsider = drive(&lab, "c", "c", CLUSTER_SECRET);
    // c claims to be b, with another cluster's CA: the handshake fails.
    let impostor = drive(&lab, "c", "b", "another cluster's secret, 0600");
    for (who, report) in [("a non-member", &outsider), ("an impostor", &impostor)] {
        // Not one request, read or write, completed.
        assert_eq!(report["completed"]["a"], 0, "{who} was served: {report}");
        assert_eq!(report["writes"], 0, "{who} wrote: {report}");
        assert!(report["errors"].as_u64().unwrap() >= 1, "{who}: {report}");
    }
    assert!(std::fs::read(&tail).unwrap() == before, "the tail changed");
    let log = std::fs::read_to_string(lab.dir.path().join("a").join("daemon.log")).unwrap();
    assert!(log.contains("TLS handshake failed"), "{log}");

    // The control: b, a member proving its name, reads and writes.
    let member = drive(&lab, "b", "b", CLUSTER_SECRET);
    assert!(member["writes"].as_u64().unwrap() > 0, "{member}");
    assert!(member["completed"]["a"].as_u64().unwrap() > 0, "{member}");
    assert_eq!(member["errors"], 0, "{member}");
    assert_eq!(member["mismatches"], 0, "{member}");
    assert!(
        std::fs::read(&tail).unwrap() != before,
        "b's writes missing"
    );
    drop(b);
}

/// Resident memory of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Starts `flood` in c's namespace against a's first link.
fn flood(lab: &Lab, mode: &str, connections: usize) -> std::process::Child {
    let links = lab.links("a");
    lab.command("c", env!("CARGO_BIN_EXE_flood").as_ref())
        .args(["--addr", &links[0], "--mode", mode, "--hold-secs", "8"])
        .args(["--connections", &connections.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn report(child: std::process::Child) -> serde_json::Value {
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{output:?}");
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn floods_without_credentials_leave_memory_bounded_and_members_served() {
    let lab = Lab::new(&["a", "b", "c"]);
    let tail = lab.dir.path().join("a-disk0.img");
    File::create(&tail).unwrap().set_len(4 << 20).unwrap();
    let a_config = lab.config("a", false, &[("disk0", &tail)], CLUSTER_SECRET);
    let a = NodeDaemon::start(&lab, "a", a_config);
    let _b = NodeDaemon::start(&lab, "b", lab.config("b", false, &[], CLUSTER_SECRET));
    wait_all(&[&a], "b", "alive", Duration::from_secs(15));
    let add = a.client(&["add", "v", "--size", "1M", "--primary", "a:disk0"]);
    assert!(add.status.success(), "{add:?}");
    // Warmed up by a member's I/O first.
    let before = drive(&lab, "b", "b", CLUSTER_SECRET);
    assert_eq!(before["errors"], 0, "{before}");
    let rss_before = rss_kib(a.pid());

    let idle = flood(&lab, "idle", 10_000);
    let slow = flood(&lab, "slowloris", 2_000);
    std::thread::sleep(Duration::from_secs(1));
    // A member connecting afresh in the middle of the flood is served.
    let during = drive(&lab, "b", "b", CLUSTER_SECRET);
    let mut rss_max = rss_kib(a.pid());
    for _ in 0..20 {
        rss_max = rss_max.max(rss_kib(a.pid()));
        std::thread::sleep(Duration::from_millis(200));
    }
    let (idle, slow) = (report(idle), report(slow));
    eprintln!(
        "a's RSS {rss_before} KiB before, {rss_max} KiB at most; idle {idle}; slowloris {slow}"
    );

    assert_eq!(during["errors"], 0, "{during}");
    assert_eq!(during["mismatches"], 0, "{during}");
    assert!(during["completed"]["a"].as_u64().unwrap() > 0, "{during}");
    // Every connection that sent a handshake's first bytes and no more was
    // closed within the hold. (Of the silent ones, those the kernel's full
    // accept queue dropped after a SYN cookie look open to the flooder,
    // but this node holds nothing for them.)
    assert_eq!(slow["connected"], slow["closed_by_server"], "{slow}");
    assert!(idle["closed_by_server"].as_u64().unwrap() > 0, "{idle}");
    assert!(
        rss_max < rss_before + 128 * 1024,
        "a grew from {rss_before} KiB to {rss_max} KiB"
    );
    assert!(a.client(&["list"]).status.success());
}

#[test]
fn a_capture_shows_no_written_byte_and_no_vdisk_name() {
    let started = std::time::Instant::now();
    let lab = Lab::new(&["a", "b", "c"]);
    let tail = lab.dir.path().join("a-disk0.img");
    File::create(&tail).unwrap().set_len(4 << 20).unwrap();
    let voters = ["a", "b", "c"];
    let a_config = lab.config_with_store("a", false, &[("disk0", &tail)], &voters);
    let a = NodeDaemon::start(&lab, "a", a_config);
    let b = NodeDaemon::start(&lab, "b", lab.config_with_store("b", false, &[], &voters));
    let c = NodeDaemon::start(&lab, "c", lab.config_with_store("c", false, &[], &voters));
    wait_all(&[&a, &b, &c], "a", "alive", Duration::from_secs(15));
    eprintln!("{:?}: the store's voters are up", started.elapsed());
    // Everything a sends or receives, on both networks.
    let capture = lab.dir.path().join("a.pcap");
    let mut tcpdump = lab
        .command("a", "/usr/bin/tcpdump".as_ref())
        .args(["-i", "any", "-U", "-s", "0", "-w"])
        .arg(&capture)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    // The name crosses the store: added on c, committed by the voters.
    let name = "payroll-db-7f3a";
    let add = c.client(&["add", name, "--size", "1M", "--primary", "a:disk0"]);
    assert!(add.status.success(), "{add:?}");
    eprintln!("{:?}: {name} added", started.elapsed());
    let report = drive_vdisk(&lab, name, "b", "b", CLUSTER_SECRET);
    assert!(report["writes"].as_u64().unwrap() > 0, "{report}");
    eprintln!("{:?}: b's driver done: {report}", started.elapsed());
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: kill has no memory effects; SIGINT makes tcpdump flush.
    unsafe { libc::kill(tcpdump.id() as i32, libc::SIGINT) };
    tcpdump.wait().unwrap();

    let captured = std::fs::read(&capture).unwrap();
    let written = std::fs::read(&tail).unwrap();
    let blocks: Vec<&[u8]> = written[..BLOCKS as usize * 4096]
        .chunks(4096)
        .filter(|block| block.iter().any(|&b| b != 0))
        .collect();
    assert!(!blocks.is_empty(), "b wrote nothing to the tail");
    // The data did cross a's interfaces: more bytes than were written.
    let crossed: usize = blocks.len() * 4096;
    assert!(
        captured.len() > crossed,
        "{} bytes captured",
        captured.len()
    );
    let shows = |needle: &[u8]| captured.windows(needle.len()).any(|w| w == needle);
    // 32 bytes from every 512 of each block written, looked for at every
    // offset of the capture in one pass.
    let pieces: std::collections::HashSet<&[u8]> = blocks
        .iter()
        .flat_map(|block| block.chunks(512).map(|piece| &piece[..32]))
        .collect();
    let clear = captured.windows(32).filter(|w| pieces.contains(w)).count();
    assert_eq!(clear, 0, "written bytes in the clear");
    assert!(!shows(name.as_bytes()), "the vdisk's name in the clear");
    assert!(!shows(b"disk0"), "a tail's name in the clear");

    // The client side of a captured store session, played back to a's
    // store port: nothing of it is applied.
    let store_port = lab.store("a").rsplit(':').next().unwrap().parse().unwrap();
    let sessions = client_streams(&captured, store_port);
    let (_, session) = sessions
        .iter()
        .max_by_key(|(_, bytes)| bytes.len())
        .expect("store sessions in the capture");
    let replayed = lab.dir.path().join("replayed");
    std::fs::write(&replayed, session).unwrap();
    let state = |daemon: &NodeDaemon| {
        let store = daemon.client(&["store", "--json"]);
        let store: serde_json::Value = serde_json::from_slice(&store.stdout).unwrap();
        (
            store["generation"].clone(),
            daemon.client(&["list", "--json"]).stdout,
        )
    };
    std::thread::sleep(Duration::from_secs(1));
    let before = state(&a);
    let replay = lab
        .command("c", env!("CARGO_BIN_EXE_flood").as_ref())
        .args(["--addr", &lab.store("a"), "--replay"])
        .arg(&replayed)
        .output()
        .unwrap();
    assert!(replay.status.success(), "{replay:?}");
    eprintln!(
        "replayed {} bytes: {}",
        session.len(),
        String::from_utf8_lossy(&replay.stdout)
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        state(&a),
        before,
        "a replayed store session changed the store"
    );
}

/// The bytes each client sent to `port` in a pcap capture (Ethernet or
/// Linux cooked link layers, IPv4, TCP), by client address and port, in
/// capture order; a retransmitted segment is taken once.
fn client_streams(pcap: &[u8], port: u16) -> std::collections::HashMap<(u32, u16), Vec<u8>> {
    let u16_be = |b: &[u8], at: usize| u16::from_be_bytes([b[at], b[at + 1]]);
    let u32_be = |b: &[u8], at: usize| u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    let u32_le = |b: &[u8], at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    let link_header = match u32_le(pcap, 20) {
        1 => 14,   // Ethernet
        113 => 16, // Linux cooked v1
        276 => 20, // Linux cooked v2
        other => panic!("link type {other}"),
    };
    let mut streams: std::collections::HashMap<(u32, u16), (u32, Vec<u8>)> = Default::default();
    let mut at = 24;
    while at + 16 <= pcap.len() {
        let len = u32_le(pcap, at + 8) as usize;
        let packet = &pcap[at + 16..(at + 16 + len).min(pcap.len())];
        at += 16 + len;
        let Some(ip) = packet.get(link_header..) else {
            continue;
        };
        if ip.len() < 20 || ip[0] >> 4 != 4 || ip[9] != 6 {
            continue;
        }
        let tcp = &ip[usize::from(ip[0] & 0xf) * 4..];
        if tcp.len() < 20 || u16_be(tcp, 2) != port {
            continue;
        }
        let payload = &tcp[usize::from(tcp[12] >> 4) * 4..];
        let ip_total = usize::from(u16_be(ip, 2));
        let payload = &payload[..payload
            .len()
            .min(ip_total.saturating_sub(ip.len() - payload.len()))];
        if payload.is_empty() {
            continue;
        }
        let seq = u32_be(tcp, 4);
        let key = (u32_be(ip, 12), u16_be(tcp, 0));
        let (next, bytes) = streams.entry(key).or_insert((seq, Vec::new()));
        if seq == *next {
            bytes.extend_from_slice(payload);
            *next = seq.wrapping_add(payload.len() as u32);
        }
    }
    streams
        .into_iter()
        .map(|(key, (_, bytes))| (key, bytes))
        .collect()
}
