//! A cluster lab on one machine: network namespaces for the nodes, joined
//! by two bridged networks (two veth links per node), with real `ublkvd`
//! daemons in them. Needs root, as CI is.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ublkvd_tests::netns::{Layout, NETWORKS};

use super::{gossip_section, ublkvd_bin};

/// The port every node's peer server listens on, on both networks.
pub const PEER_PORT: u16 = 7100;
/// The port every node gossips on, on network 1.
pub const GOSSIP_PORT: u16 = 7000;
/// The port every node answers the configuration store on, on network 1.
pub const STORE_PORT: u16 = 7200;

pub struct Lab {
    layout: Layout,
    pub dir: tempfile::TempDir,
}

/// Numbers the labs of one test process.
static NEXT_LAB: AtomicUsize = AtomicUsize::new(0);

impl Lab {
    /// The lab's network ([`Layout`]) for `nodes`.
    pub fn new(nodes: &[&str]) -> Lab {
        // SAFETY: geteuid has no preconditions.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "the cluster lab needs root for network namespaces"
        );
        // Unique per lab: tests of one binary run side by side.
        let prefix = format!(
            "uvd{}-{}",
            std::process::id(),
            NEXT_LAB.fetch_add(1, Ordering::Relaxed)
        );
        let lab = Lab {
            layout: Layout::new(&prefix, nodes),
            dir: tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap(),
        };
        lab.layout.up().unwrap();
        lab
    }

    pub fn ns(&self, node: &str) -> String {
        self.layout.ns(node)
    }

    /// `node`'s address on network `net`.
    fn addr(&self, node: &str, net: u8) -> std::net::Ipv4Addr {
        self.layout.addr(node, net).unwrap()
    }

    /// `node`'s peer addresses, network 1 first.
    pub fn links(&self, node: &str) -> [String; 2] {
        NETWORKS.map(|net| format!("{}:{PEER_PORT}", self.addr(node, net)))
    }

    /// Cuts (`up == false`) or restores `node`'s cable to network `net`:
    /// the switch side goes down, so packets vanish without a reset, as
    /// with a pulled cable.
    pub fn set_link(&self, node: &str, net: u8, up: bool) {
        self.layout.set_link(node, net, up).unwrap();
    }

    /// `node`'s gossip address.
    pub fn gossip(&self, node: &str) -> String {
        format!("{}:{GOSSIP_PORT}", self.addr(node, 1))
    }

    /// The `vdisk-io` driver in `node`'s namespace, proving it is `node`
    /// with a certificate of the lab's cluster secret.
    pub fn vdisk_io(&self, node: &str) -> Command {
        self.vdisk_io_as(node, node, super::CLUSTER_SECRET)
    }

    /// The `vdisk-io` driver in `node`'s namespace, claiming to be node
    /// `name` with a certificate of the CA `secret` derives.
    pub fn vdisk_io_as(&self, node: &str, name: &str, secret: &str) -> Command {
        use std::os::unix::fs::PermissionsExt;
        let key = self.dir.path().join(format!("vdisk-io-{node}-{name}.key"));
        std::fs::write(&key, secret).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut command = self.command(node, env!("CARGO_BIN_EXE_vdisk-io").as_ref());
        command
            .arg("--name")
            .arg(name)
            .arg("--secret-file")
            .arg(&key);
        command
    }

    /// A node config: listens on both networks, gossips on network 1 with
    /// `secret` and the lab's first two nodes as seeds, and has the given
    /// tails.
    pub fn config(
        &self,
        node: &str,
        devices: bool,
        tails: &[(&str, &Path)],
        secret: &str,
    ) -> PathBuf {
        let dir = self.dir.path().join(node);
        std::fs::create_dir_all(&dir).unwrap();
        let [l1, l2] = self.links(node);
        let mut text = format!(
            "node = \"{node}\"\ndata_dir = \"{}\"\ncontrol_socket = \"{}\"\n\
             listen = [\"{l1}\", \"{l2}\"]\ndevices = {devices}\n[tails]\n",
            dir.join("data").display(),
            dir.join("ublkvd.sock").display(),
        );
        for (name, path) in tails {
            text += &format!("{name} = \"{}\"\n", path.display());
        }
        let seeds: Vec<String> = self
            .layout
            .nodes()
            .iter()
            .take(2)
            .map(|n| self.gossip(n))
            .collect();
        text += &gossip_section(&dir, &self.gossip(node), &seeds, secret);
        let path = dir.join("ublkvd.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    /// `node`'s store address.
    pub fn store(&self, node: &str) -> String {
        format!("{}:{STORE_PORT}", self.addr(node, 1))
    }

    /// [`Lab::config`] plus a `[store]` section whose voters are `voters`,
    /// with short timeouts so that a refused change fails fast and a dead
    /// primary is moved away within a second.
    pub fn config_with_store(
        &self,
        node: &str,
        devices: bool,
        tails: &[(&str, &Path)],
        voters: &[&str],
    ) -> PathBuf {
        let path = self.config(node, devices, tails, super::CLUSTER_SECRET);
        let voters: Vec<String> = voters
            .iter()
            .map(|v| format!("{v} = \"{}\"", self.store(v)))
            .collect();
        let mut text = std::fs::read_to_string(&path).unwrap();
        text += &format!(
            "[store]\nlisten = \"{}\"\nvoters = {{ {} }}\nwrite_timeout_ms = 3000\nmove_timeout_ms = 3000\nfailover_move_ms = 1000\n",
            self.store(node),
            voters.join(", ")
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Runs `program args` inside `node`'s namespace.
    pub fn command(&self, node: &str, program: &Path) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.ns(node)]).arg(program);
        command
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.layout.down();
    }
}

/// A `ublkvd serve` in a node's namespace.
pub struct NodeDaemon {
    pub node: String,
    config: PathBuf,
    socket: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl NodeDaemon {
    pub fn start(lab: &Lab, node: &str, config: PathBuf) -> NodeDaemon {
        let dir = config.parent().unwrap();
        let mut daemon = NodeDaemon {
            node: node.to_owned(),
            socket: dir.join("ublkvd.sock"),
            log: dir.join("daemon.log"),
            config,
            child: None,
        };
        daemon.spawn(lab);
        daemon
    }

    pub fn spawn(&mut self, lab: &Lab) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = lab
            .command(&self.node, ublkvd_bin())
            .arg("serve")
            .arg("--config")
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.client(&["list"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "daemon {} did not answer: {}",
                self.node,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The daemon's process id (`ip netns exec` execs it in place).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap()
    }

    pub fn client(&self, args: &[&str]) -> std::process::Output {
        Command::new(ublkvd_bin())
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .unwrap()
    }

    /// SIGTERM: the daemon stops its devices, says goodbye to the cluster
    /// and exits; returns whether it exited cleanly.
    pub fn terminate(&mut self) -> bool {
        let mut child = self.child.take().expect("daemon running");
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        child.wait().unwrap().success()
    }

    /// Its view of the membership (`members --json`).
    pub fn members(&self) -> serde_json::Value {
        let output = self.client(&["members", "--json"]);
        assert!(output.status.success(), "{}: {output:?}", self.node);
        serde_json::from_slice(&output.stdout).unwrap()
    }

    /// The state it sees `member` in ("alive", "suspect", "down"), with
    /// that member's incarnation.
    pub fn member_state(&self, member: &str) -> Option<(String, u64)> {
        let view = self.members();
        view["members"]
            .as_array()?
            .iter()
            .find(|m| m["name"] == member)
            .map(|m| {
                (
                    m["state"].as_str().unwrap_or_default().to_owned(),
                    m["incarnation"].as_u64().unwrap_or(0),
                )
            })
    }

    /// `kill -9`: the process dies at once; its sockets are reset.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("daemon running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for NodeDaemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs `driver` (a `vdisk-io` command) for `run`, then closes its input,
/// which stops it: it reads back what it wrote and reports. Returns its
/// last report.
pub fn drive(mut driver: Command, run: Duration) -> serde_json::Value {
    let mut driver = driver
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(run);
    drop(driver.stdin.take());
    let output = driver.wait_with_output().unwrap();
    let report = String::from_utf8(output.stdout).unwrap();
    serde_json::from_str(report.lines().last().unwrap_or("{}")).unwrap()
}

/// Waits until every daemon in `observers` sees `member` in `state`;
/// returns how long the slowest took.
pub fn wait_all(
    observers: &[&NodeDaemon],
    member: &str,
    state: &str,
    within: Duration,
) -> Duration {
    let start = Instant::now();
    for observer in observers {
        while observer
            .member_state(member)
            .is_none_or(|(seen, _)| seen != state)
        {
            assert!(
                start.elapsed() < within,
                "{} does not see {member} {state} after {:?}: {}",
                observer.node,
                start.elapsed(),
                observer.members()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    start.elapsed()
}
