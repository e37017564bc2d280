//! Support for the host integration tests: a daemon in a temporary data
//! dir, driven through the real binary.

// Test support: a failed step is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

pub mod lab;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The `ublkvd` binary, built once per test process.
pub fn ublkvd_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "-p", "ublkvd"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build -p ublkvd failed");
        // CARGO_TARGET_TMPDIR is <target>/tmp.
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("../debug/ublkvd")
    })
}

/// A running `ublkvd serve` with its own socket and data dir.
pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    config: Option<PathBuf>,
    child: Option<Child>,
}

impl Daemon {
    pub fn start() -> Daemon {
        Daemon::start_with_config(None)
    }

    /// Starts with a config file of `toml` (the data dir and socket still
    /// come from flags).
    pub fn start_with_config(toml: Option<&str>) -> Daemon {
        Daemon::start_with_config_in(Path::new(env!("CARGO_TARGET_TMPDIR")), toml)
    }

    /// The same, with the daemon's directory (its socket, data and config)
    /// made in `parent`.
    pub fn start_with_config_in(parent: &Path, toml: Option<&str>) -> Daemon {
        let dir = tempfile::tempdir_in(parent).unwrap();
        let socket = dir.path().join("ublkvd.sock");
        let config = toml.map(|text| {
            let path = dir.path().join("ublkvd.toml");
            std::fs::write(&path, text).unwrap();
            path
        });
        let mut daemon = Daemon {
            socket,
            config,
            child: None,
            dir,
        };
        daemon.spawn();
        daemon
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Starts `serve` on this daemon's socket and data dir, and waits until
    /// it answers.
    pub fn spawn(&mut self) {
        let mut command = Command::new(ublkvd_bin());
        // The log a user gets by default.
        command.arg("serve").env_remove("RUST_LOG");
        if let Some(config) = &self.config {
            command.arg("--config").arg(config);
        }
        let child = command
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--socket")
            .arg(&self.socket)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.client(&["list"]).status.success() {
            assert!(Instant::now() < deadline, "daemon did not answer");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs a client command against this daemon.
    pub fn client(&self, args: &[&str]) -> Output {
        Command::new(ublkvd_bin())
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .unwrap()
    }

    /// Sends SIGTERM and returns the daemon's exit status and log.
    pub fn terminate(&mut self) -> (std::process::ExitStatus, String) {
        let child = self.child.take().expect("daemon running");
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let output = child.wait_with_output().unwrap();
        (
            output.status,
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A command's outcome as the tests read it.
pub struct Outcome {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Outcome {
    fn from(output: Output) -> Self {
        Outcome {
            success: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

/// Asserts a command failed with exactly one line on stderr containing
/// `needle`.
pub fn assert_one_line_error(output: Output, needle: &str) {
    let outcome = Outcome::from(output);
    assert!(!outcome.success, "succeeded: {}", outcome.stdout);
    assert_eq!(
        outcome.stderr.trim_end().lines().count(),
        1,
        "not one line: {:?}",
        outcome.stderr
    );
    assert!(
        outcome.stderr.contains(needle),
        "{:?} does not contain {needle:?}",
        outcome.stderr
    );
}

/// The secret every test cluster shares.
pub const CLUSTER_SECRET: &str = "ublkvd test cluster secret, 0600";

/// A `[gossip]` section gossiping on `bind` and joining through `seeds`,
/// with the cluster secret in a private file in `dir` (`secret` to give a
/// node another cluster's secret) and fast timing, so that a test waits
/// seconds for a verdict.
pub fn gossip_section(dir: &Path, bind: &str, seeds: &[String], secret: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    let key = dir.join("cluster.key");
    std::fs::write(&key, secret).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let seeds: Vec<String> = seeds.iter().map(|s| format!("\"{s}\"")).collect();
    format!(
        "[gossip]\nbind = \"{bind}\"\nseeds = [{}]\nsecret_file = \"{}\"\n\
         probe_period_ms = 200\nprobe_rtt_ms = 80\nsuspect_to_down_ms = 600\ngossip_interval_ms = 100\n",
        seeds.join(", "),
        key.display()
    )
}

/// A daemon's view of the membership (`members --json`).
pub fn members(daemon: &Daemon) -> serde_json::Value {
    let output = daemon.client(&["members", "--json"]);
    assert!(output.status.success(), "{output:?}");
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Waits until `daemon` sees `name` in state `state`.
pub fn wait_for_member(daemon: &Daemon, name: &str, state: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let view = members(daemon);
        let found = view["members"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == name && m["state"] == state);
        if found {
            return;
        }
        assert!(Instant::now() < deadline, "{name} never {state}: {view}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
