//! The cluster lab's network, defined once for the host tests
//! (`tests/support/lab.rs`) and the VM suites (`vm/lab.sh`, through the
//! `netns-lab` binary): namespace `PREFIX-sw` holds two bridges, one per
//! network; node number i (from 1) of the list has its own namespace
//! `PREFIX-NODE` with 10.1.0.i on network 1 and 10.2.0.i on network 2, each
//! on a veth whose switch end is `NODEns` (n: the network).

use std::net::Ipv4Addr;
use std::process::Command;

/// The networks every node is on.
pub const NETWORKS: [u8; 2] = [1, 2];

pub struct Layout {
    prefix: String,
    nodes: Vec<String>,
}

impl Layout {
    pub fn new(prefix: &str, nodes: &[impl AsRef<str>]) -> Layout {
        Layout {
            prefix: prefix.to_owned(),
            nodes: nodes.iter().map(|n| n.as_ref().to_owned()).collect(),
        }
    }

    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }

    /// The namespace of `node` (or of the switch, "sw").
    pub fn ns(&self, node: &str) -> String {
        format!("{}-{node}", self.prefix)
    }

    /// `node`'s address on network `net`; `None` for a node not in the lab.
    pub fn addr(&self, node: &str, net: u8) -> Option<Ipv4Addr> {
        let i = self.nodes.iter().position(|n| n == node)?;
        Some(Ipv4Addr::new(10, net, 0, u8::try_from(i + 1).ok()?))
    }

    fn switch_port(node: &str, net: u8) -> String {
        format!("{node}{net}s")
    }

    /// Makes the namespaces, bridges and cables.
    pub fn up(&self) -> Result<(), String> {
        let sw = self.ns("sw");
        ip(&["netns", "add", &sw])?;
        ip(&["-n", &sw, "link", "set", "lo", "up"])?;
        for net in NETWORKS {
            let bridge = format!("br{net}");
            ip(&["-n", &sw, "link", "add", &bridge, "type", "bridge"])?;
            ip(&["-n", &sw, "link", "set", &bridge, "up"])?;
        }
        for node in &self.nodes {
            let ns = self.ns(node);
            ip(&["netns", "add", &ns])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            for net in NETWORKS {
                let (end, port) = (format!("{node}{net}"), Self::switch_port(node, net));
                ip(&[
                    "link", "add", &end, "netns", &ns, "type", "veth", "peer", "name", &port,
                    "netns", &sw,
                ])?;
                let addr = self.addr(node, net).ok_or("more than 254 nodes")?;
                ip(&["-n", &ns, "addr", "add", &format!("{addr}/24"), "dev", &end])?;
                ip(&["-n", &ns, "link", "set", &end, "up"])?;
                ip(&[
                    "-n",
                    &sw,
                    "link",
                    "set",
                    &port,
                    "master",
                    &format!("br{net}"),
                ])?;
                ip(&["-n", &sw, "link", "set", &port, "up"])?;
            }
        }
        Ok(())
    }

    /// Removes the namespaces, whatever is left of them.
    pub fn down(&self) {
        for node in self.nodes.iter().map(String::as_str).chain(["sw"]) {
            let _ = ip(&["netns", "del", &self.ns(node)]);
        }
    }

    /// Cuts (`up == false`) or restores `node`'s cable to network `net`:
    /// the switch side goes down, so packets vanish without a reset, as
    /// with a pulled cable.
    pub fn set_link(&self, node: &str, net: u8, up: bool) -> Result<(), String> {
        let state = if up { "up" } else { "down" };
        let port = Self::switch_port(node, net);
        ip(&["-n", &self.ns("sw"), "link", "set", &port, state])
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    match output.status.success() {
        true => Ok(()),
        false => Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        )),
    }
}
