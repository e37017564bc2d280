//! The admin guide's walkthrough, run as written: every code block of
//! `docs/admin-guide.md` marked with nodes (```` ```sh on=a,b ````, or
//! ```` ```toml file=PATH on=a ````) runs, in order, on three network
//! namespaces that have the guide's addresses (node i is 10.1.0.i and
//! 10.2.0.i). Each node sees its own `/etc/ublkvd`, `/var/lib/ublkvd` and
//! `/run/ublkvd` (bind mounts in a mount namespace of its own), so the
//! guide's paths and the client's default socket are used as they are.
//!
//! What stands in for the machines: `systemctl` runs the `ExecStart` of
//! `dist/ublkvd.service` (and stops it with SIGTERM, as systemd does);
//! `scp` copies into the named node's directories. The host kernel has no
//! ublk: every config gets `devices = false`, and blocks marked `device`
//! only have their shell syntax checked (the VM runs devices). Needs root,
//! as CI is.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::lab::Lab;
use support::ublkvd_bin;

const NODES: [&str; 3] = ["a", "b", "c"];

/// The guide's directories, each bound to the node's own.
const BOUND: [(&str, &str); 3] = [
    ("/etc/ublkvd", "etc"),
    ("/var/lib/ublkvd", "var"),
    ("/run/ublkvd", "run"),
];

/// One code block the walkthrough runs.
#[derive(Debug)]
struct Block {
    /// Its first line in the guide, for messages.
    line: usize,
    nodes: Vec<String>,
    /// Where a `toml` block is written; `None` for a shell block.
    file: Option<String>,
    /// Needs a kernel with ublk_drv.
    device: bool,
    text: String,
}

/// The blocks of `markdown` that name nodes, in order.
fn blocks(markdown: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut open: Option<Block> = None;
    for (number, line) in markdown.lines().enumerate() {
        let Some(fence) = line.strip_prefix("```") else {
            if let Some(block) = &mut open {
                block.text += line;
                block.text.push('\n');
            }
            continue;
        };
        if let Some(block) = open.take() {
            if !block.nodes.is_empty() {
                blocks.push(block);
            }
            continue;
        }
        let mut block = Block {
            line: number + 1,
            nodes: Vec::new(),
            file: None,
            device: false,
            text: String::new(),
        };
        for word in fence.split_whitespace().skip(1) {
            match word.split_once('=') {
                Some(("on", nodes)) => block.nodes = nodes.split(',').map(str::to_owned).collect(),
                Some(("file", path)) => block.file = Some(path.to_owned()),
                None if word == "device" => block.device = true,
                _ => panic!("line {}: unknown block attribute {word:?}", number + 1),
            }
        }
        open = Some(block);
    }
    assert!(open.is_none(), "an unclosed code block");
    blocks
}

/// The machine around the walkthrough: the lab, each node's directories,
/// and the stand-ins for systemctl and scp.
struct Walkthrough {
    lab: Lab,
    shims: PathBuf,
}

impl Walkthrough {
    fn new() -> Walkthrough {
        let lab = Lab::new(&NODES);
        for (guide, _) in BOUND {
            // Mount points only; each node's view is bound over them.
            std::fs::create_dir_all(guide).unwrap();
        }
        for node in NODES {
            for (_, own) in BOUND {
                std::fs::create_dir_all(lab.dir.path().join(node).join(own)).unwrap();
            }
        }
        let shims = lab.dir.path().join("bin");
        std::fs::create_dir_all(&shims).unwrap();
        std::os::unix::fs::symlink(ublkvd_bin(), shims.join("ublkvd")).unwrap();
        let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/ublkvd.service");
        write_script(&shims.join("systemctl"), &systemctl(&unit));
        write_script(&shims.join("scp"), SCP);
        Walkthrough { lab, shims }
    }

    /// Runs `script` with bash on `node`, in its namespace and its view of
    /// the guide's directories; returns what it printed.
    fn run(&self, node: &str, script: &str, line: usize) -> String {
        let mut binds = String::new();
        for (guide, own) in BOUND {
            let own = self.lab.dir.path().join(node).join(own);
            binds += &format!("mount --bind '{}' '{guide}'\n", own.display());
        }
        let path = format!(
            "{}:{}",
            self.shims.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let output = Command::new("timeout")
            .arg("300")
            .args(["ip", "netns", "exec", &self.lab.ns(node)])
            .args(["unshare", "--mount", "--propagation", "private"])
            .args([
                "bash",
                "-c",
                &format!("set -e\n{binds}exec bash -euo pipefail -c \"$0\""),
            ])
            .arg(script)
            .env("PATH", path)
            .env("WALKTHROUGH_LAB", self.lab.dir.path())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "the guide's block at line {line} failed on {node} ({}):\n{script}\nstdout:\n{stdout}\nstderr:\n{}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr),
            NODES.map(|n| format!("{n}'s daemon log:\n{}\n", self.daemon_log(n))).concat()
        );
        stdout
    }

    fn daemon_log(&self, node: &str) -> String {
        let log = self.lab.dir.path().join(node).join("var/daemon.log");
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Where node `node`'s copy of the guide's `path` is.
    fn own_path(&self, node: &str, path: &str) -> PathBuf {
        for (guide, own) in BOUND {
            if let Some(rest) = path.strip_prefix(guide) {
                let rest = rest.trim_start_matches('/');
                return self.lab.dir.path().join(node).join(own).join(rest);
            }
        }
        panic!("{path} is outside the guide's directories");
    }
}

impl Drop for Walkthrough {
    fn drop(&mut self) {
        for node in NODES {
            let pid = self.lab.dir.path().join(node).join("run/daemon.pid");
            if let Ok(pid) = std::fs::read_to_string(pid) {
                if let Ok(pid) = pid.trim().parse::<i32>() {
                    // SAFETY: plain kill(2) of the daemon this test started.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
    }
}

fn write_script(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// `systemctl enable --now|start|stop|restart ublkvd` for one node: the
/// unit's `ExecStart` (its program from PATH), ready once the control
/// socket answers (the unit is Type=notify), stopped by SIGTERM.
fn systemctl(unit: &Path) -> String {
    let unit = std::fs::read_to_string(unit).unwrap();
    let exec_start = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("the unit has an ExecStart");
    let (program, args) = exec_start.split_once(' ').unwrap();
    let program = Path::new(program).file_name().unwrap().to_str().unwrap();
    format!(
        r#"#!/usr/bin/env bash
set -euo pipefail
pidfile=/run/ublkvd/daemon.pid
start() {{
    setsid {program} {args} >>/var/lib/ublkvd/daemon.log 2>&1 </dev/null &
    echo $! >"$pidfile"
    for _ in $(seq 300); do
        ublkvd list >/dev/null 2>&1 && return 0
        kill -0 "$(cat "$pidfile")" 2>/dev/null || break
        sleep 0.1
    done
    echo "systemctl: ublkvd did not start" >&2; tail -5 /var/lib/ublkvd/daemon.log >&2; return 1
}}
stop() {{
    local pid
    pid=$(cat "$pidfile" 2>/dev/null) || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || {{ rm -f "$pidfile"; return 0; }}; sleep 0.1; done
    echo "systemctl: ublkvd did not stop" >&2; return 1
}}
case "$1 ${{2:-}}" in
    "enable --now"*) start ;;
    "start "*) start ;;
    "stop "*) stop ;;
    "restart "*) stop; start ;;
    *) echo "systemctl: not in the walkthrough: $*" >&2; exit 1 ;;
esac
"#
    )
}

/// `scp [-p] FILE NODE:PATH`: into that node's own directories.
const SCP: &str = r#"#!/usr/bin/env bash
set -euo pipefail
[ "$1" = -p ] && shift
src=$1 node=${2%%:*} dst=${2#*:}
case "$dst" in
    /etc/ublkvd*) own=$WALKTHROUGH_LAB/$node/etc${dst#/etc/ublkvd} ;;
    /var/lib/ublkvd*) own=$WALKTHROUGH_LAB/$node/var${dst#/var/lib/ublkvd} ;;
    *) echo "scp: $dst is outside the guide's directories" >&2; exit 1 ;;
esac
cp -p "$src" "$own"
"#;

#[test]
fn the_admin_guide_walkthrough_runs_as_written() {
    let guide_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/admin-guide.md");
    let guide = std::fs::read_to_string(guide_path).unwrap();
    let blocks = blocks(&guide);
    assert!(blocks.len() > 10, "the guide's blocks: {blocks:?}");
    let walk = Walkthrough::new();
    for block in &blocks {
        for node in &block.nodes {
            assert!(
                NODES.contains(&node.as_str()),
                "line {}: node {node}",
                block.line
            );
            if let Some(file) = &block.file {
                // The host has no ublk_drv: devices are the VM's part.
                let text = format!("devices = false\n{}", block.text);
                std::fs::write(walk.own_path(node, file), text).unwrap();
            } else if block.device {
                let syntax = Command::new("bash")
                    .args(["-n", "-c", &block.text])
                    .status()
                    .unwrap();
                assert!(syntax.success(), "line {}: {}", block.line, block.text);
            } else {
                walk.run(node, &block.text, block.line);
            }
        }
    }
    // Where the walkthrough ends: the drill's new primary, all healthy.
    let status = walk.run("c", "ublkvd status", 0);
    assert!(status.contains("healthy"), "{status}");
    let list = walk.run("c", "ublkvd list --json", 0);
    assert_eq!(list.trim(), "[]", "vol1 was deleted: {list}");
}
