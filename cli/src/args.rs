//! The command line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use configdb::TailRef;

use crate::client::size::parse_size;

#[derive(Debug, Parser)]
#[command(
    name = "ublkvd",
    version,
    about = "Cluster virtual disks as /dev/ublkbN",
    after_long_help = EXIT_STATUS
)]
pub struct Cli {
    /// The daemon's control socket [default: the config file's
    /// control_socket, else /run/ublkvd/ublkvd.sock]
    #[arg(long, global = true, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// TOML config file: `serve` runs by it (its settings override the
    /// embedded defaults); the other commands find the daemon's control
    /// socket in it
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

/// What `--help` and the manual page say of the exit status (exit.rs).
const EXIT_STATUS: &str = "Exit status: 0 done; 1 refused or failed (the message says why); \
2 bad usage; 3 no daemon to ask at the control socket (or not this user's to reach); \
4 `verify` found copies that differ. Scripts read --json, not the tables.";

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the node daemon in the foreground
    Serve(ServeArgs),
    /// Create a vdisk on a local tail or on cluster tails, and print its device path
    Add(AddArgs),
    /// Remove a vdisk from the cluster (its device on every node); the
    /// data stays in its tails
    Del {
        /// The vdisk's name
        name: String,
        /// Print the deleted vdisk as a JSON object (state "deleted")
        #[arg(long)]
        json: bool,
    },
    /// Change who may open a vdisk's device, on every node
    Set(SetArgs),
    /// Take down this node's device for a vdisk, and only it: the cluster
    /// keeps the vdisk, the other nodes their devices, this node what it
    /// serves to them. Refused while the device is in use; kept across
    /// restarts until `attach`
    Detach {
        /// The vdisk's name
        name: String,
        /// Print the vdisk as a JSON object
        #[arg(long)]
        json: bool,
    },
    /// Give up this node's write role for a vdisk (one node at a time
    /// writes, unless it was added with --multi-writer): another node's
    /// device may then write. Unmount it here first
    Release {
        /// The vdisk's name
        name: String,
        /// Print the vdisk as a JSON object
        #[arg(long)]
        json: bool,
    },
    /// Bring back this node's device for a vdisk `detach` took down
    Attach {
        /// The vdisk's name
        name: String,
        /// Print the vdisk as a JSON object instead of its device path
        #[arg(long)]
        json: bool,
    },
    /// Move a cluster vdisk to other tails while its I/O runs: every node
    /// suspends and drains it, the new mapping is committed, and I/O
    /// resumes on it
    Move(MoveArgs),
    /// Show every vdisk: name, size, device, tail, state
    List {
        /// Print a JSON array instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Show the configuration store: this node's role, the leader, the
    /// generation, voters and learners; or change its voters
    Store {
        /// Print JSON instead of text
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        change: Option<StoreCommand>,
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
    /// Show how a mirrored vdisk's copies stand: in sync, degraded, or
    /// resyncing (progress, rate, ETA). Run on the vdisk's primary node
    Resync {
        /// The vdisk's name
        name: String,
        /// Print JSON instead of text
        #[arg(long, conflicts_with = "watch")]
        json: bool,
        /// Show a live progress bar until the copies are in sync
        #[arg(long)]
        watch: bool,
        /// Copy the whole device to the mirror: after its disk was
        /// replaced, which ublkvd cannot tell from the one it knew
        #[arg(long)]
        full: bool,
    },
    /// Compare both copies of a mirrored vdisk online, region by region
    /// (CRC32C); exits non-zero if any differ. Run on its primary node
    Verify {
        /// The vdisk's name
        name: String,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// A cluster certificate authority for admins without a PKI: `ca init`
    /// once, then `ca issue NODE` for each node's `[tls]` section
    #[command(subcommand)]
    Ca(CaCommand),
    /// Print a shell completion script (e.g. `ublkvd completions bash >
    /// /etc/bash_completion.d/ublkvd`)
    Completions {
        /// The shell to complete for
        shell: clap_complete::Shell,
    },
    /// What `serve --keep-devices` leaves behind: deletes the kept devices
    /// IDS that no daemon took over within AFTER_MS, failing their held
    /// I/O
    #[command(hide = true)]
    KeptWatch {
        #[arg(long)]
        after_ms: u64,
        /// The daemon that kept them, maybe still exiting
        #[arg(long)]
        left_by: i32,
        #[arg(required = true)]
        ids: Vec<u32>,
    },
    /// Write the manual pages, ublkvd.1 and one per command
    /// (ublkvd-add.1, ...), into DIR (e.g. /usr/local/share/man/man1)
    Man {
        /// Where the pages go; made if missing
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Make exactly these nodes the store's voters (1, 3 or 5)
    ///
    /// On any node: to grow a store, replace a dead voter or retire one. Each
    /// must have joined the store first (started once with this cluster's
    /// `[store]`; `ublkvd store` lists it as a learner); voters left out
    /// become learners. A majority of the old voters and of the new must
    /// be up. `[store] voters` in the files only seeds a new store: edit
    /// it to match, for nodes started later
    SetVoters {
        /// The nodes' names
        #[arg(required = true, num_args = 1..)]
        nodes: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Make the cluster's CA: DIR/ca.pem (give it to every node) and
    /// DIR/ca.key (keep it off the nodes); refuses to replace one
    Init {
        /// Where the CA's files go
        #[arg(long, default_value = DEFAULT_CA_DIR, value_name = "DIR")]
        dir: PathBuf,
        /// The cluster's name, in the CA's certificate
        #[arg(long, default_value = "ublkvd")]
        cluster: String,
    },
    /// Issue node NODE a certificate naming it: DIR/NODE.pem and
    /// DIR/NODE.key (mode 600), for that node's `[tls]` cert and key
    Issue {
        /// The node's name, as its config's `node`
        node: String,
        /// Where the CA's files are, and the node's go
        #[arg(long, default_value = DEFAULT_CA_DIR, value_name = "DIR")]
        dir: PathBuf,
        /// Days the certificate is valid
        #[arg(long, default_value_t = identity::DEFAULT_NODE_DAYS)]
        days: u32,
    },
}

/// Where `ca init` and `ca issue` keep the CA's files by default.
pub const DEFAULT_CA_DIR: &str = "/etc/ublkvd/ca";

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Where the node keeps its configuration store [default: /var/lib/ublkvd]
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
    /// The same data through another node: requests go there when the
    /// primary cannot take them. Both tails must be one shared disk
    /// (twin-tailed: a dual-ported disk, a SAN LUN); nothing is copied. For
    /// a second copy on another node's own disk, use --mirror
    #[arg(long, value_name = "NODE:TAIL", requires = "primary")]
    pub secondary: Option<TailRef>,
    /// A tail of another node that keeps a second copy: each write
    /// completes once both copies have it, and the mirror takes over if
    /// the primary's node fails
    #[arg(
        long,
        value_name = "NODE:TAIL",
        requires = "primary",
        conflicts_with = "secondary"
    )]
    pub mirror: Option<TailRef>,
    /// A mirror's dirty-region size (64K to 4M, a power of two): what one
    /// write costs to resync
    #[arg(long, value_name = "SIZE", value_parser = parse_region_size, requires = "mirror")]
    pub region_size: Option<u32>,
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
    /// Let every node's device write at once, for a cluster filesystem
    /// (GFS2, OCFS2) or an application that coordinates its writers. By
    /// default one node at a time writes: the first to write holds the
    /// role until `ublkvd release`; the others' writes fail (a reservation
    /// conflict, EBADE)
    #[arg(long)]
    pub multi_writer: bool,
    #[command(flatten)]
    pub permissions: PermissionArgs,
    /// Print a JSON object (name, size_bytes, device, ...) instead of the path
    #[arg(long)]
    pub json: bool,
}

/// Who may open a vdisk's device: its device node carries these on every
/// node.
#[derive(Debug, Args)]
pub struct PermissionArgs {
    /// The device's owner: a user name or uid [default at add: root]
    #[arg(long, value_name = "USER", value_parser = parse_user)]
    pub owner: Option<u32>,
    /// The device's group: a group name or gid [default at add: disk]
    #[arg(long, value_name = "GROUP", value_parser = parse_group)]
    pub group: Option<u32>,
    /// The device's permission bits, in octal [default at add: 0660]
    #[arg(long, value_name = "OCTAL", value_parser = parse_mode)]
    pub mode: Option<u32>,
}

#[derive(Debug, Args)]
pub struct SetArgs {
    /// The vdisk's name
    pub name: String,
    #[command(flatten)]
    pub permissions: PermissionArgs,
    /// Print the vdisk as a JSON object instead of a table
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct MoveArgs {
    /// The vdisk's name
    pub name: String,
    /// The tail requests go to first from now on
    #[arg(long, value_name = "NODE:TAIL")]
    pub primary: TailRef,
    /// The tail requests go to when the primary cannot take them (none if
    /// not given)
    #[arg(long, value_name = "NODE:TAIL")]
    pub secondary: Option<TailRef>,
    /// Print the vdisk as a JSON object instead of a table
    #[arg(long)]
    pub json: bool,
}

/// A uid, or a user name of this host.
fn parse_user(text: &str) -> Result<u32, String> {
    match text.parse() {
        Ok(uid) => Ok(uid),
        Err(_) => uzers::get_user_by_name(text)
            .map(|user| user.uid())
            .ok_or_else(|| format!("no user named {text:?} on this host")),
    }
}

/// A gid, or a group name of this host.
fn parse_group(text: &str) -> Result<u32, String> {
    match text.parse() {
        Ok(gid) => Ok(gid),
        Err(_) => uzers::get_group_by_name(text)
            .map(|group| group.gid())
            .ok_or_else(|| format!("no group named {text:?} on this host")),
    }
}

/// Permission bits in octal, as chmod takes them: 660, 0660, 0o660.
fn parse_mode(text: &str) -> Result<u32, String> {
    let digits = text.strip_prefix("0o").unwrap_or(text);
    match u32::from_str_radix(digits, 8) {
        Ok(mode) if mode <= 0o7777 => Ok(mode),
        _ => Err(format!(
            "mode must be octal permission bits up to 7777, not {text:?}"
        )),
    }
}

fn parse_block_size(text: &str) -> Result<u32, String> {
    match text {
        "512" => Ok(512),
        "4096" => Ok(4096),
        _ => Err(format!("block size must be 512 or 4096, not {text:?}")),
    }
}

/// A mirror's region size: a size within the dirty map's bounds.
fn parse_region_size(text: &str) -> Result<u32, String> {
    use backend::mirror::{MAX_REGION_SIZE, MIN_REGION_SIZE};
    let size = parse_size(text)?;
    if !(MIN_REGION_SIZE..=MAX_REGION_SIZE).contains(&size) || !size.is_power_of_two() {
        return Err(format!(
            "{text}: a region is a power of two from {} KiB to {} MiB",
            MIN_REGION_SIZE >> 10,
            MAX_REGION_SIZE >> 20
        ));
    }
    u32::try_from(size).map_err(|e| e.to_string())
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
