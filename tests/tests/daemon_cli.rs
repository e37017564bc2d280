//! The daemon and CLI on the host, where the kernel has no ublk: everything
//! that must be refused before a device is made, the control socket, the
//! config layering and clean shutdown. Device-making paths run in the VM
//! suite (`tests/vm/e2e.sh`).

// Helpers outside #[test] functions panic on purpose: a failed step fails the test.
#![allow(clippy::unwrap_used)]

use std::fs::File;
use std::process::Command;

mod support;

use support::{assert_one_line_error, ublkvd_bin, Daemon, Outcome};

/// A usage error: exit status 2, `needle` in what the parser says, and
/// where to look next. Returns what it said.
fn assert_usage_error(output: std::process::Output, needle: &str) -> String {
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains(needle), "{stderr:?} lacks {needle:?}");
    assert!(
        stderr.contains("try '--help'"),
        "no pointer to help: {stderr:?}"
    );
    stderr
}

#[test]
fn a_usage_error_names_what_is_wrong_and_shows_the_usage() {
    let missing = Command::new(ublkvd_bin())
        .args(["add", "x"])
        .output()
        .unwrap();
    let said = assert_usage_error(missing, "--size <SIZE>");
    assert!(said.contains("Usage: ublkvd add"), "{said:?}");
    let typo = Command::new(ublkvd_bin()).arg("lsit").output().unwrap();
    let said = assert_usage_error(typo, "unrecognized subcommand 'lsit'");
    assert!(
        said.contains("tip: some similar subcommands exist"),
        "{said:?}"
    );
    assert!(said.contains("'list'"), "{said:?}");
}

fn tail(daemon: &Daemon, name: &str, len: u64) -> String {
    let path = daemon.dir.path().join(name);
    File::create(&path).unwrap().set_len(len).unwrap();
    path.display().to_string()
}

#[test]
fn list_of_a_new_daemon_is_empty_in_table_and_json() {
    let daemon = Daemon::start();
    let table = Outcome::from(daemon.client(&["list"]));
    assert!(table.success);
    assert_eq!(
        table.stdout.trim(),
        "NAME  SIZE  DEVICE  TAIL  EPOCH  ACCESS  STATE"
    );
    let json = Outcome::from(daemon.client(&["list", "--json"]));
    let parsed: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(parsed, serde_json::json!([]));
}

#[test]
fn client_without_daemon_says_so_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(ublkvd_bin())
        .arg("--socket")
        .arg(dir.path().join("absent.sock"))
        .arg("list")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(3), "{output:?}");
    assert_one_line_error(output, "is `ublkvd serve` running?");
}

#[test]
fn del_of_an_unknown_vdisk_is_refused() {
    let daemon = Daemon::start();
    let output = daemon.client(&["del", "nosuch"]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert_one_line_error(output, "no vdisk named nosuch");
}

/// What scripts use: `--json` on every change, and the exit status.
#[test]
fn set_move_and_del_answer_in_json_and_refusals_exit_1() {
    let daemon = Daemon::start_with_config(Some("devices = false\n"));
    let tail = tail(&daemon, "t.img", 1 << 20);
    let added = Outcome::from(daemon.client(&["add", "v", "--size", "1M", "--tail", &tail]));
    assert!(added.success, "{}", added.stderr);
    let set = Outcome::from(daemon.client(&["set", "v", "--mode", "0600", "--json"]));
    assert!(set.success, "{}", set.stderr);
    let set: serde_json::Value = serde_json::from_str(&set.stdout).unwrap();
    assert_eq!(
        (set["name"].as_str(), set["mode"].as_u64()),
        (Some("v"), Some(0o600))
    );
    // A local vdisk has no tails to move between: refused, status 1.
    let moved = daemon.client(&["move", "v", "--primary", "a:disk0", "--json"]);
    assert_eq!(moved.status.code(), Some(1), "{moved:?}");
    let deleted = Outcome::from(daemon.client(&["del", "v", "--json"]));
    assert!(deleted.success, "{}", deleted.stderr);
    let deleted: serde_json::Value = serde_json::from_str(&deleted.stdout).unwrap();
    assert_eq!(deleted["state"], "deleted");
    assert_eq!(deleted["tail"].as_str(), Some(tail.as_str()));
    assert_eq!(deleted["device"], serde_json::Value::Null);
    let again = daemon.client(&["del", "v", "--json"]);
    assert_eq!(again.status.code(), Some(1), "{again:?}");
    // A node that makes no devices has none to detach.
    let added = Outcome::from(daemon.client(&["add", "w", "--size", "1M", "--tail", &tail]));
    assert!(added.success, "{}", added.stderr);
    assert_one_line_error(
        daemon.client(&["detach", "w"]),
        "vdisk w has no device on this node",
    );
    assert_one_line_error(daemon.client(&["attach", "w"]), "vdisk w is not detached");
    assert_one_line_error(
        daemon.client(&["detach", "nosuch"]),
        "no vdisk named nosuch",
    );
    // `verify` of a vdisk that is not mirrored is refused, not "differs".
    let verify = daemon.client(&["verify", "nosuch"]);
    assert_eq!(verify.status.code(), Some(1), "{verify:?}");
}

#[test]
fn add_refuses_a_missing_tail() {
    let daemon = Daemon::start();
    let missing = daemon.dir.path().join("missing.img");
    assert_one_line_error(
        daemon.client(&[
            "add",
            "a",
            "--size",
            "1M",
            "--tail",
            missing.to_str().unwrap(),
        ]),
        "cannot open tail",
    );
}

#[test]
fn add_refuses_a_size_larger_than_the_tail() {
    let daemon = Daemon::start();
    let tail = tail(&daemon, "small.img", 1 << 20);
    assert_one_line_error(
        daemon.client(&["add", "a", "--size", "2M", "--tail", &tail]),
        "is larger than tail",
    );
}

#[test]
fn add_refuses_a_size_that_is_not_whole_blocks() {
    let daemon = Daemon::start();
    let tail = tail(&daemon, "t.img", 1 << 20);
    assert_one_line_error(
        daemon.client(&["add", "a", "--size", "6144", "--tail", &tail]),
        "not a positive multiple of the block size 4096",
    );
    assert_one_line_error(
        daemon.client(&["add", "a", "--size", "0", "--tail", &tail]),
        "not a positive multiple",
    );
}

#[test]
fn add_refuses_unparseable_sizes_and_bad_names() {
    let daemon = Daemon::start();
    let tail = tail(&daemon, "t.img", 1 << 20);
    assert_usage_error(
        daemon.client(&["add", "a", "--size", "12Q", "--tail", &tail]),
        "invalid size \"12Q\"",
    );
    assert_one_line_error(
        daemon.client(&["add", "../a", "--size", "1M", "--tail", &tail]),
        "invalid vdisk name",
    );
    assert_usage_error(
        daemon.client(&[
            "add",
            "a",
            "--size",
            "1M",
            "--tail",
            &tail,
            "--block-size",
            "1000",
        ]),
        "block size must be 512 or 4096",
    );
}

#[test]
fn refused_adds_leave_nothing_behind() {
    let daemon = Daemon::start();
    let tail = tail(&daemon, "t.img", 1 << 20);
    let _ = daemon.client(&["add", "a", "--size", "2M", "--tail", &tail]);
    let _ = daemon.client(&["add", "b", "--size", "1M", "--tail", &tail]);
    let list = Outcome::from(daemon.client(&["list", "--json"]));
    assert_eq!(list.stdout.trim(), "[]");
}

#[test]
fn second_daemon_on_the_same_socket_is_refused() {
    let daemon = Daemon::start();
    let output = Command::new(ublkvd_bin())
        .args(["serve", "--data-dir"])
        .arg(daemon.dir.path().join("other"))
        .arg("--socket")
        .arg(&daemon.socket)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("another ublkvd daemon is serving"));
    assert!(daemon.client(&["list"]).status.success());
}

#[test]
fn sigterm_stops_the_daemon_cleanly_and_removes_its_socket() {
    let mut daemon = Daemon::start();
    let (status, log) = daemon.terminate();
    assert!(status.success(), "exit {status}: {log}");
    assert!(log.contains("SIGTERM received"), "{log}");
    assert!(!daemon.socket.exists());
}

#[test]
fn malformed_requests_get_an_error_reply_and_the_daemon_lives_on() {
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::net::UnixStream;
    let daemon = Daemon::start();
    let mut stream = UnixStream::connect(&daemon.socket).unwrap();
    stream
        .write_all(b"{\"op\":\"format\"}\nnot json\n")
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    for _ in 0..2 {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let reply: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(reply["status"], "error", "{line}");
        assert!(reply["message"]
            .as_str()
            .unwrap()
            .contains("malformed request"));
    }
    let huge = vec![b'x'; 70 * 1024];
    stream.write_all(&huge).unwrap();
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.contains("request longer than"), "{line}");
    assert!(daemon.client(&["list"]).status.success());
}

#[test]
fn config_file_sets_the_socket_for_daemon_and_clients_and_flags_override_the_file() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let file_socket = dir.path().join("from-file.sock");
    let flag_data = dir.path().join("flag-data");
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        format!(
            "node = \"a\"\ndata_dir = \"{}\"\ncontrol_socket = \"{}\"\n",
            dir.path().join("file-data").display(),
            file_socket.display()
        ),
    )
    .unwrap();
    let mut child = Command::new(ublkvd_bin())
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(&flag_data)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !flag_data.join("store-log.redb").exists() || !file_socket.exists() {
        assert!(std::time::Instant::now() < deadline, "daemon did not start");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(!dir.path().join("file-data").exists());
    // The client commands find the daemon the config names, the option
    // before or after the command; --socket still wins.
    for args in [["--config", "F", "list"], ["list", "--config", "F"]] {
        let args = args.map(|arg| match arg {
            "F" => config.as_os_str(),
            arg => std::ffi::OsStr::new(arg),
        });
        let listed = Command::new(ublkvd_bin()).args(args).output().unwrap();
        assert!(listed.status.success(), "{listed:?}");
    }
    let elsewhere = Command::new(ublkvd_bin())
        .arg("--config")
        .arg(&config)
        .arg("--socket")
        .arg(dir.path().join("absent.sock"))
        .arg("list")
        .output()
        .unwrap();
    assert_one_line_error(elsewhere, "is `ublkvd serve` running?");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn invalid_config_file_is_refused_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "data_dri = \"/x\"\n").unwrap();
    let output = Command::new(ublkvd_bin())
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("invalid config file"), "{stderr}");
    assert!(stderr.contains("data_dri"), "{stderr}");
}

#[test]
fn the_default_log_has_the_daemons_own_lines_not_the_stores_internals() {
    let mut daemon = Daemon::start();
    let (_, log) = daemon.terminate();
    assert!(log.contains("ublkvd serving"), "{log}");
    assert!(!log.contains("openraft"), "{log}");
}

#[test]
fn a_metrics_address_off_loopback_is_warned_of_at_start() {
    let warning = "is not a loopback address: /metrics has no authentication";
    let mut exposed = Daemon::start_with_config(Some("metrics_listen = \"0.0.0.0:0\"\n"));
    let (_, log) = exposed.terminate();
    assert!(
        log.contains(&format!("metrics_listen 0.0.0.0:0 {warning}")),
        "{log}"
    );
    let mut loopback = Daemon::start_with_config(Some("metrics_listen = \"127.0.0.1:0\"\n"));
    let (_, log) = loopback.terminate();
    assert!(log.contains("serving metrics"), "{log}");
    assert!(!log.contains(warning), "{log}");
}

#[test]
fn store_set_voters_takes_one_three_or_five_nodes_of_the_store_and_says_why_not() {
    let daemon = Daemon::start();
    let two = daemon.client(&["store", "set-voters", "a", "b"]);
    assert_one_line_error(two, "2 voters named: name 3 or 5");
    let stranger = daemon.client(&["store", "set-voters", "ghost"]);
    assert_one_line_error(stranger, "not in the store yet: ghost");
    let missing = daemon.client(&["store", "set-voters"]);
    assert_usage_error(missing, "<NODES>...");
    // The node alone is its store's one voter: naming it changes nothing.
    let name = Outcome::from(daemon.client(&["store", "--json"]));
    let voters: serde_json::Value = serde_json::from_str(&name.stdout).unwrap();
    let me = voters["voters"][0].as_str().unwrap().to_owned();
    let same = Outcome::from(daemon.client(&["store", "set-voters", &me, "--json"]));
    assert!(same.success, "{}", same.stderr);
    let after: serde_json::Value = serde_json::from_str(&same.stdout).unwrap();
    assert_eq!(after["voters"], serde_json::json!([me]));
    assert_eq!(after["configured_voters"], serde_json::json!([]));
}

#[test]
fn man_writes_a_page_for_every_command_with_the_exit_statuses() {
    let dir = tempfile::tempdir().unwrap();
    let pages = dir.path().join("man1");
    let output = Command::new(ublkvd_bin())
        .args(["man", "--dir"])
        .arg(&pages)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    for page in [
        "ublkvd.1",
        "ublkvd-serve.1",
        "ublkvd-add.1",
        "ublkvd-store-set-voters.1",
        "ublkvd-ca-issue.1",
    ] {
        let text = std::fs::read_to_string(pages.join(page)).unwrap();
        assert!(text.contains(".TH"), "{page}: {text}");
    }
    let top = std::fs::read_to_string(pages.join("ublkvd.1")).unwrap();
    assert!(top.contains("3 no daemon to ask"), "{top}");
}
