//! The command line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use configdb::TailRef;

use crate::size::parse_size;

#[derive(Debug, Parser)]
#[command(
    name = "ublkvd",
    version,
    about = "Cluster virtual disks as /dev/ublkbN"
)]
pub struct Cli {
    /// The daemon's control socket [default: the config's, else /run/ublkvd/ublkvd.sock]
    #[arg(long, global = true, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the node daemon in the foreground
    Serve(ServeArgs),
    /// Create a vdisk on a local tail or on cluster tails, and print its device path
    Add(AddArgs),
    /// Remove a vdisk's device; the data stays in its tail
    Del {
        /// The vdisk's name
        name: String,
    },
    /// Show every vdisk: name, size, device, tail, state
    List {
        /// Print a JSON array instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Show the cluster's members as this node sees them, and its
    /// configuration number
    Members {
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// One screen on this node's health: members, each vdisk's active
    /// path and links, and anything degraded
    Status {
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script (e.g. `ublkvd completions bash >
    /// /etc/bash_completion.d/ublkvd`)
    Completions {
        /// The shell to complete for
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML config file; its settings override the embedded defaults
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Where the node keeps its vdisk catalog [default: /var/lib/ublkvd]
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// On SIGTERM, leave every device in place with its I/O held, for the
    /// next `ublkvd serve` to take over (restarts and upgrades under a
    /// mounted filesystem). Without it, SIGTERM removes the devices.
    #[arg(long)]
    pub keep_devices: bool,
}

#[derive(Debug, Args)]
pub struct AddArgs {
    /// The vdisk's name: letters, digits, '.', '_', '-'
    pub name: String,
    /// Size: bytes, or with a binary suffix (512M, 1G, 1GiB)
    #[arg(long, value_parser = parse_size)]
    pub size: u64,
    /// A local file or block device that holds the data, for this node alone
    #[arg(
        long,
        value_name = "PATH",
        required_unless_present = "primary",
        conflicts_with = "primary"
    )]
    pub tail: Option<PathBuf>,
    /// The cluster tail requests go to first: a node and a tail of its config
    #[arg(long, value_name = "NODE:TAIL")]
    pub primary: Option<TailRef>,
    /// The cluster tail requests go to when the primary cannot take them
    #[arg(long, value_name = "NODE:TAIL", requires = "primary")]
    pub secondary: Option<TailRef>,
    /// Logical block size of the device
    #[arg(long, default_value_t = 4096, value_parser = parse_block_size)]
    pub block_size: u32,
    /// Hardware queues, each served by a thread
    #[arg(long, default_value_t = 1)]
    pub queues: u16,
    /// Requests in flight per queue
    #[arg(long, default_value_t = 128)]
    pub queue_depth: u16,
    /// Expose the device read-only
    #[arg(long)]
    pub read_only: bool,
    /// Print a JSON object (name, size_bytes, device, ...) instead of the path
    #[arg(long)]
    pub json: bool,
}

fn parse_block_size(text: &str) -> Result<u32, String> {
    match text {
        "512" => Ok(512),
        "4096" => Ok(4096),
        _ => Err(format!("block size must be 512 or 4096, not {text:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn socket_is_accepted_before_and_after_the_subcommand() {
        let before = Cli::try_parse_from(["ublkvd", "--socket", "/s", "list"]).unwrap();
        let after = Cli::try_parse_from(["ublkvd", "list", "--socket", "/s"]).unwrap();
        assert_eq!(before.socket, Some("/s".into()));
        assert_eq!(after.socket, Some("/s".into()));
    }

    #[test]
    fn add_takes_a_local_tail_or_cluster_tails_but_not_both() {
        let cli = Cli::try_parse_from([
            "ublkvd",
            "add",
            "a",
            "--size",
            "1G",
            "--primary",
            "a:disk0",
            "--secondary",
            "b:disk0",
        ])
        .unwrap();
        let Command::Add(add) = cli.command else {
            panic!("not add");
        };
        assert_eq!(add.primary.unwrap().to_string(), "a:disk0");
        assert_eq!(add.secondary.unwrap().node, "b");
        let refused = |args: &[&str]| {
            let mut all = vec!["ublkvd", "add", "a", "--size", "1G"];
            all.extend_from_slice(args);
            Cli::try_parse_from(all).is_err()
        };
        assert!(refused(&[]));
        assert!(refused(&["--tail", "/t", "--primary", "a:d"]));
        assert!(refused(&["--secondary", "b:d"]));
        assert!(refused(&["--primary", "a"]));
    }

    #[test]
    fn add_parses_sizes_and_refuses_bad_ones() {
        let cli =
            Cli::try_parse_from(["ublkvd", "add", "a", "--size", "1GiB", "--tail", "/t"]).unwrap();
        let Command::Add(add) = cli.command else {
            panic!("not add");
        };
        assert_eq!(add.size, 1 << 30);
        assert_eq!(add.block_size, 4096);
        assert!(
            Cli::try_parse_from(["ublkvd", "add", "a", "--size", "1Q", "--tail", "/t"]).is_err()
        );
        assert!(Cli::try_parse_from([
            "ublkvd",
            "add",
            "a",
            "--size",
            "1G",
            "--tail",
            "/t",
            "--block-size",
            "1024"
        ])
        .is_err());
    }
}
