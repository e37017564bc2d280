//! The cluster lab's network for the VM suites (`vm/lab.sh`), as the host
//! tests build it (`ublkvd_tests::netns`):
//!   netns-lab up PREFIX NODE...            makes it; prints "NODE ADDR1 ADDR2"
//!   netns-lab down PREFIX NODE...          removes it
//!   netns-lab link PREFIX NODE NET up|down cuts or restores a cable

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use ublkvd_tests::netns::{Layout, NETWORKS};

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    command: Action,
}

#[derive(Subcommand)]
enum Action {
    /// Makes the namespaces; prints each node's addresses, network 1 first
    Up { prefix: String, nodes: Vec<String> },
    /// Removes the namespaces
    Down { prefix: String, nodes: Vec<String> },
    /// Cuts (down) or restores (up) NODE's cable to network NET
    Link {
        prefix: String,
        node: String,
        net: u8,
        state: String,
    },
}

fn main() -> anyhow::Result<()> {
    match Args::parse().command {
        Action::Up { prefix, nodes } => {
            let layout = Layout::new(&prefix, &nodes);
            layout.up().map_err(anyhow::Error::msg)?;
            for node in layout.nodes() {
                let addrs = NETWORKS
                    .iter()
                    .map(|&net| layout.addr(node, net).map(|a| a.to_string()))
                    .collect::<Option<Vec<_>>>()
                    .context("a node without an address")?;
                println!("{node} {}", addrs.join(" "));
            }
        }
        Action::Down { prefix, nodes } => Layout::new(&prefix, &nodes).down(),
        Action::Link {
            prefix,
            node,
            net,
            state,
        } => {
            let up = match state.as_str() {
                "up" => true,
                "down" => false,
                other => bail!("a link is up or down, not {other:?}"),
            };
            let layout = Layout::new(&prefix, &[&node]);
            layout
                .set_link(&node, net, up)
                .map_err(anyhow::Error::msg)?;
        }
    }
    Ok(())
}
