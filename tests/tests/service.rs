//! Running ublkvd as a service: the unit file systemd accepts, the
//! readiness notice a `Type=notify` unit waits for, shell completions.

// Helpers outside #[test] functions panic on purpose: a failed step fails the test.
#![allow(clippy::unwrap_used)]

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::Duration;

mod support;

use support::ublkvd_bin;

#[test]
fn the_unit_file_passes_systemd_analyze_verify() {
    let unit = include_str!("../../dist/ublkvd.service");
    let dir = tempfile::tempdir().unwrap();
    // The unit names the installed binary; verify checks it exists.
    let unit = unit.replace("/usr/local/bin/ublkvd", &ublkvd_bin().display().to_string());
    let path = dir.path().join("ublkvd.service");
    std::fs::write(&path, unit).unwrap();
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (package systemd) is needed to check the unit");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(!stderr.contains("ublkvd.service"), "{stderr}");
}

#[test]
fn the_daemon_tells_systemd_it_is_ready_once_it_serves() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let notify = dir.path().join("notify.sock");
    let listener = UnixDatagram::bind(&notify).unwrap();
    listener
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let socket = dir.path().join("ublkvd.sock");
    let mut daemon = Command::new(ublkvd_bin())
        .arg("serve")
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--socket")
        .arg(&socket)
        .env("NOTIFY_SOCKET", &notify)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut message = [0u8; 256];
    let received = listener.recv(&mut message);
    // By the time it says ready, it answers.
    let answered = Command::new(ublkvd_bin())
        .arg("--socket")
        .arg(&socket)
        .arg("list")
        .output()
        .unwrap();
    daemon.kill().unwrap();
    daemon.wait().unwrap();
    let len = received.expect("no readiness notice within 10 s");
    assert_eq!(&message[..len], b"READY=1\n");
    assert!(answered.status.success(), "{answered:?}");
}

#[test]
fn completions_cover_every_command() {
    for shell in ["bash", "zsh", "fish"] {
        let output = Command::new(ublkvd_bin())
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(output.status.success(), "{shell}: {output:?}");
        let script = String::from_utf8_lossy(&output.stdout);
        for command in ["serve", "add", "del", "list", "members"] {
            assert!(script.contains(command), "{shell} lacks {command}");
        }
    }
}
