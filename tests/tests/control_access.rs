//! The control socket admits each request by its peer's credentials: the
//! real client, run by setpriv as nobody (uid and gid 65534) with no other
//! group or in a configured one, against a real daemon.
//!
//! The configured groups are Debian's base groups `staff` (the admin group)
//! and `users` (the read group), on every machine the suite runs on, so no
//! test creates or changes a group; nobody's own group, nogroup, is neither.

// Helpers outside #[test] functions panic on purpose: a failed step fails the test.
#![allow(clippy::unwrap_used)]

use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod support;

use support::{assert_one_line_error, gossip_section, ublkvd_bin, Daemon, Outcome, CLUSTER_SECRET};

const NOBODY: &str = "65534";
const GROUPS: &str = "admin_group = \"staff\"\nread_group = \"users\"\n";

/// A storage-only node `a` with a 16 MiB tail `disk0`: it records and
/// exports a vdisk without ublk. Its socket and a copy of the client are
/// in /tmp, in a directory any user may pass through, whatever the
/// checkout's own directories let other users reach.
struct Node {
    daemon: Daemon,
    client: PathBuf,
    _files: tempfile::TempDir,
}

impl Node {
    /// Starts the node with `groups`, lines of its config.
    fn start(groups: &str) -> Node {
        let files = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let tail = files.path().join("disk0.img");
        File::create(&tail).unwrap().set_len(16 << 20).unwrap();
        let gossip = gossip_section(files.path(), "127.0.0.1:0", &[], CLUSTER_SECRET);
        let config = format!(
            "node = \"a\"\nlisten = [\"127.0.0.1:0\"]\ndevices = false\n{groups}\
             [tails]\ndisk0 = \"{}\"\n{gossip}",
            tail.display()
        );
        let daemon = Daemon::start_with_config_in(&std::env::temp_dir(), Some(&config));
        std::fs::set_permissions(daemon.dir.path(), std::fs::Permissions::from_mode(0o711))
            .unwrap();
        let client = daemon.dir.path().join("ublkvd");
        if std::fs::hard_link(ublkvd_bin(), &client).is_err() {
            std::fs::copy(ublkvd_bin(), &client).unwrap();
        }
        Node {
            daemon,
            client,
            _files: files,
        }
    }

    /// Runs the client as root.
    fn as_root(&self, args: &[&str]) -> Output {
        self.daemon.client(args)
    }

    /// Runs the client as nobody in `groups` (setpriv's comma-separated
    /// list), or in no group but its own when that is empty.
    fn as_nobody(&self, groups: &str, args: &[&str]) -> Output {
        let mut command = Command::new("setpriv");
        command.args(["--reuid", NOBODY, "--regid", NOBODY]);
        if groups.is_empty() {
            command.arg("--clear-groups");
        } else {
            command.args(["--groups", groups]);
        }
        command
            .arg(&self.client)
            .arg("--socket")
            .arg(&self.daemon.socket)
            .args(args)
            .output()
            .unwrap()
    }

    /// The vdisks' names, as root lists them.
    fn vdisks(&self) -> Vec<String> {
        let list = Outcome::from(self.as_root(&["list", "--json"]));
        assert!(list.success, "{}", list.stderr);
        let list: serde_json::Value = serde_json::from_str(&list.stdout).unwrap();
        let names = list.as_array().unwrap().iter();
        names
            .map(|v| v["name"].as_str().unwrap().to_owned())
            .collect()
    }
}

fn succeeded(output: Output) {
    let outcome = Outcome::from(output);
    assert!(outcome.success, "{}", outcome.stderr);
}

const ADD: [&str; 6] = ["add", "vd", "--size", "8M", "--primary", "a:disk0"];

fn socket_mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn a_user_in_no_configured_group_may_not_list_nor_add() {
    let node = Node::start(GROUPS);
    // Anyone may connect: the credentials decide.
    assert_eq!(socket_mode(&node.daemon.socket), 0o666);
    assert_one_line_error(
        node.as_nobody("", &["list"]),
        "ublkvd: error: uid 65534 may not read this node's state: root, group staff or group users only",
    );
    assert_one_line_error(
        node.as_nobody("", &ADD),
        "ublkvd: error: uid 65534 may not change vdisks: root or group staff only",
    );
    assert!(node.vdisks().is_empty());
}

#[test]
fn a_read_group_member_may_list_but_not_add_del_or_verify() {
    let node = Node::start(GROUPS);
    succeeded(node.as_root(&ADD));
    // More groups than the daemon's first guess: it asks again for all.
    let many: Vec<String> = (2000..2040).map(|gid| gid.to_string()).collect();
    let reader = format!("{},users", many.join(","));
    let list = Outcome::from(node.as_nobody(&reader, &["list", "--json"]));
    assert!(list.success, "{}", list.stderr);
    assert!(list.stdout.contains("\"name\": \"vd\""), "{}", list.stdout);
    succeeded(node.as_nobody(&reader, &["status"]));
    succeeded(node.as_nobody(&reader, &["store"]));
    let refusal = "uid 65534 may not change vdisks: root or group staff only";
    assert_one_line_error(
        node.as_nobody(
            &reader,
            &["add", "other", "--size", "8M", "--primary", "a:disk0"],
        ),
        refusal,
    );
    assert_one_line_error(node.as_nobody(&reader, &["del", "vd"]), refusal);
    assert_one_line_error(
        node.as_nobody(&reader, &["verify", "vd"]),
        "uid 65534 may not verify vdisks: root or group staff only",
    );
    assert_eq!(node.vdisks(), ["vd"]);
}

#[test]
fn an_admin_group_member_and_root_may_add_list_and_del() {
    let node = Node::start(GROUPS);
    succeeded(node.as_nobody("staff", &ADD));
    succeeded(node.as_nobody("staff", &["list"]));
    assert_eq!(node.vdisks(), ["vd"]);
    succeeded(node.as_nobody("staff", &["del", "vd"]));
    assert!(node.vdisks().is_empty());
    succeeded(node.as_root(&ADD));
    assert_eq!(node.vdisks(), ["vd"]);
    succeeded(node.as_root(&["del", "vd"]));
    assert!(node.vdisks().is_empty());
}

#[test]
fn without_groups_the_socket_is_root_only() {
    let node = Node::start("");
    assert_eq!(socket_mode(&node.daemon.socket), 0o600);
    assert_one_line_error(
        node.as_nobody("", &["list"]),
        "permission denied (root only, unless the daemon's config names admin_group or read_group)",
    );
    assert_one_line_error(node.as_nobody("", &ADD), "permission denied");
    succeeded(node.as_root(&ADD));
    assert_eq!(node.vdisks(), ["vd"]);
}

#[test]
fn an_unknown_group_is_refused_at_start() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let config = dir.path().join("node.toml");
    std::fs::write(&config, "admin_group = \"ublkvd-no-such-group\"\n").unwrap();
    let output = Command::new(ublkvd_bin())
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--socket")
        .arg(dir.path().join("ublkvd.sock"))
        .output()
        .unwrap();
    assert_one_line_error(
        output,
        "admin_group \"ublkvd-no-such-group\" is not a group on this host",
    );
    assert!(!dir.path().join("ublkvd.sock").exists());
}

/// Sockets connected to `socket` as nobody, held open by a `sleep` that
/// inherits them, until it is killed.
fn hold_connections_as_nobody(socket: &Path, count: usize) -> std::process::Child {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::process::CommandExt;
    let path = std::ffi::CString::new(socket.as_os_str().as_bytes()).unwrap();
    let mut command = Command::new("sleep");
    command.arg("60");
    // SAFETY: between fork and exec the closure makes only system calls,
    // on memory allocated before the fork.
    unsafe {
        command.pre_exec(move || {
            let nobody = 65534;
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(nobody) != 0
                || libc::setuid(nobody) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            let mut addr: libc::sockaddr_un = std::mem::zeroed();
            addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
            for (slot, byte) in addr.sun_path.iter_mut().zip(path.as_bytes()) {
                *slot = *byte as libc::c_char;
            }
            let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
            for _ in 0..count {
                let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
                let target = (&addr as *const libc::sockaddr_un).cast::<libc::sockaddr>();
                if fd < 0 || libc::connect(fd, target, len) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    command.spawn().unwrap()
}

#[test]
fn one_user_cannot_take_every_control_connection() {
    let node = Node::start(GROUPS);
    let mut holder = hold_connections_as_nobody(&node.daemon.socket, 40);
    // The daemon takes the connections in order; give it a moment.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let crowded = Outcome::from(node.as_nobody("users", &["list"]));
    assert!(!crowded.success, "{}", crowded.stdout);
    assert!(
        crowded
            .stderr
            .contains("too many control connections of uid 65534"),
        "{}",
        crowded.stderr
    );
    // Root still gets in, and so does nobody once the holder is gone.
    succeeded(node.as_root(&["list"]));
    holder.kill().unwrap();
    holder.wait().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    succeeded(node.as_nobody("users", &["list"]));
}
