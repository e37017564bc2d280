//! The node's configuration: embedded defaults, overridden by a TOML file,
//! overridden by command-line flags.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use backend::link::HealthConfig;
use backend::mirror::{MirrorConfig, PacerConfig};
use backend::route::RouteConfig;
use serde::{Deserialize, Serialize};

use crate::client::size::parse_size;
use crate::daemon::access::{ControlGroups, Group};

pub const DEFAULT_DATA_DIR: &str = "/var/lib/ublkvd";
pub const DEFAULT_SOCKET: &str = "/run/ublkvd/ublkvd.sock";
pub const DEFAULT_DEVICE_LINKS: &str = "/dev/ublkvd";

/// The config file as written. Every field is optional: what is missing
/// keeps its default.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// This node's name in the cluster.
    pub node: Option<String>,
    /// Where the node keeps its state (the configuration store's files).
    pub data_dir: Option<PathBuf>,
    /// The Unix socket the `ublkvd` client talks to.
    pub control_socket: Option<PathBuf>,
    /// A group whose members may do on the control socket all that root
    /// may. Default: none (root only).
    pub admin_group: Option<String>,
    /// A group whose members may send the control socket's read requests
    /// (list, status, members, store, resync without --full). Default: none.
    pub read_group: Option<String>,
    /// Addresses the peer server listens on for other nodes' requests, one
    /// per redundant network. Default: none (the node serves no peer).
    pub listen: Option<Vec<SocketAddr>>,
    /// Whether vdisks get a `/dev/ublkbN` on this node. Default true; a
    /// storage-only node sets false and only serves its tails to peers.
    pub devices: Option<bool>,
    /// Where each device running here gets a link named after its vdisk,
    /// the same on every node: `/dev/ublkvd/NAME` → `/dev/ublkbN`. Default
    /// /dev/ublkvd; "" for none.
    pub device_links: Option<PathBuf>,
    /// This node's tails, by name: `disk0 = "/dev/vdb"`. Vdisks name them
    /// as `NODE:TAIL`.
    pub tails: Option<BTreeMap<String, PathBuf>>,
    /// Where Prometheus scrapes `/metrics` (e.g. "127.0.0.1:9477"). Default:
    /// no metrics endpoint.
    pub metrics_listen: Option<SocketAddr>,
    /// Whether the links' TLS records are sealed by the kernel (kTLS) where
    /// it can (its `tls` module is loaded). Default true; false keeps them
    /// in rustls.
    pub kernel_tls: Option<bool>,
    /// Whether the devices of vdisks on this node's own tails use ublk zero
    /// copy where the kernel has it (Linux 6.16: the request's pages go
    /// between the kernel and the tail with no copy). Default true; false
    /// keeps the driver's copy (for comparing the two).
    pub zero_copy: Option<bool>,
    /// Cluster membership. Without it the node is alone: it serves its own
    /// vdisks and knows no other node.
    pub gossip: Option<GossipFile>,
    /// The replicated configuration store. Without it the node alone is
    /// its own store.
    pub store: Option<StoreFile>,
    /// How often an idle link is probed. Default 80.
    pub heartbeat_interval_ms: Option<u64>,
    /// Probes a link may miss before it is down. Default 3.
    pub heartbeat_misses: Option<u32>,
    /// A request unanswered this long on one path is resent on another.
    /// Default 5000.
    pub request_timeout_ms: Option<u64>,
    /// The application sees an I/O error only when no path has answered a
    /// request for this long. Default 30000 (the SCSI disk default).
    pub io_timeout_ms: Option<u64>,
    /// A device kept by `serve --keep-devices` that no daemon has taken
    /// over after this long is deleted, failing the I/O held for it (EIO)
    /// rather than leaving it waiting for ever. Default 120000; 0 never.
    pub kept_device_timeout_ms: Option<u64>,
    /// How the mirrored vdisks this node is primary of resync.
    pub mirror: Option<MirrorFile>,
    /// This node's certificate, from an admin's CA. Without it, a node
    /// with a `[gossip]` section proves who it is with a certificate of
    /// the CA the cluster secret derives.
    pub tls: Option<TlsFile>,
}

/// The `[tls]` section: PEM files of the cluster's CA, of this node's
/// certificate (naming this node) and of its key (mode 600).
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl TlsFile {
    fn resolve(self) -> anyhow::Result<TlsSettings> {
        match (self.ca, self.cert, self.key) {
            (Some(ca), Some(cert), Some(key)) => Ok(TlsSettings { ca, cert, key }),
            _ => bail!("[tls] needs ca, cert and key (see `ublkvd ca init` and `ublkvd ca issue`)"),
        }
    }
}

/// Where this node's identity comes from, when an admin's CA issued it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The `[mirror]` section: the resync's pace.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorFile {
    /// The resync's cap per vdisk, a size per second ("200M"). Default 200M.
    pub resync_rate_max: Option<String>,
    /// The resync's floor, so that it ends under any load. Default 4M.
    pub resync_rate_min: Option<String>,
    /// The foreground latency the resync slows down to keep. Default 20.
    pub resync_latency_target_ms: Option<u64>,
}

impl MirrorFile {
    fn resolve(self, route: RouteConfig) -> anyhow::Result<MirrorConfig> {
        let default = MirrorConfig::default();
        let rate = |text: Option<String>, default: u64| match text {
            Some(text) => parse_size(&text).map_err(|e| anyhow::anyhow!("[mirror] {e}")),
            None => Ok(default),
        };
        let pacer = PacerConfig {
            rate_max: rate(self.resync_rate_max, default.pacer.rate_max)?,
            rate_min: rate(self.resync_rate_min, default.pacer.rate_min)?,
            latency_target: self
                .resync_latency_target_ms
                .map_or(default.pacer.latency_target, Duration::from_millis),
        };
        if pacer.rate_min == 0 || pacer.rate_min > pacer.rate_max {
            bail!("[mirror] resync_rate_min must be above 0 and at most resync_rate_max");
        }
        Ok(MirrorConfig {
            // A side silent for as long as a path would be is lost.
            request_timeout: route.request_timeout,
            pacer,
            ..default
        })
    }
}

/// The `[gossip]` section: where this node gossips, whom it asks to join,
/// the cluster secret, and timing.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GossipFile {
    /// The UDP address this node gossips on (a specific address: others
    /// reach it there).
    pub bind: Option<SocketAddr>,
    /// Gossip addresses of a few members; any live one lets this node in.
    /// Other nodes, their links and tails are learnt from gossip.
    pub seeds: Option<Vec<SocketAddr>>,
    /// A file only root can read holding the cluster secret (16 bytes or
    /// more); every gossip packet is authenticated with it.
    pub secret_file: Option<PathBuf>,
    /// How often each member probes another. Default 500.
    pub probe_period_ms: Option<u64>,
    /// How long a probe waits before others are asked to probe. Default 200.
    pub probe_rtt_ms: Option<u64>,
    /// How long a suspect member has to refute before it is down.
    /// Default 2000.
    pub suspect_to_down_ms: Option<u64>,
    /// How often news is passed on besides probes. Default 100.
    pub gossip_interval_ms: Option<u64>,
    /// Whether this node's tails refuse requests from nodes that are not
    /// live members (by the name their certificate proves). Default true;
    /// false serves any holder of a cluster certificate, such as test
    /// tools outside the membership.
    pub fence_non_members: Option<bool>,
}

/// The `[store]` section: the voters of the configuration store and where
/// this node answers it.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StoreFile {
    /// Where this node answers store RPCs (a specific address). A voter's
    /// must be its address in `voters`.
    pub listen: Option<SocketAddr>,
    /// The 3 or 5 nodes that vote, by name, with their store addresses;
    /// the same on every node. Others follow the store as learners.
    pub voters: Option<BTreeMap<String, SocketAddr>>,
    /// How long a change may wait for a majority of the voters. Default
    /// 5000.
    pub write_timeout_ms: Option<u64>,
    /// How long a move waits for every live node to suspend the vdisk's
    /// I/O before it is cancelled. Default 5000.
    pub move_timeout_ms: Option<u64>,
    /// A vdisk whose primary's node has been down this long while its
    /// secondary's is alive is moved by the store's leader: the secondary
    /// becomes the primary, at a new epoch. Default 10000; 0 never.
    pub failover_move_ms: Option<u64>,
}

/// Store settings the daemon runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreSettings {
    /// `None` for a node that is its own store.
    pub listen: Option<SocketAddr>,
    pub voters: BTreeMap<String, SocketAddr>,
    pub write_timeout: Duration,
    pub move_timeout: Duration,
    /// `None`: primaries are never moved on their own.
    pub failover_move: Option<Duration>,
}

impl StoreFile {
    fn resolve(self, node: &str) -> anyhow::Result<StoreSettings> {
        let voters = self.voters.unwrap_or_default();
        let Some(listen) = self.listen else {
            bail!("[store] needs listen, the address this node answers the store on");
        };
        if listen.ip().is_unspecified() {
            bail!("[store] listen {listen} must be a specific address: other nodes reach this one there");
        }
        if !matches!(voters.len(), 1 | 3 | 5) {
            bail!(
                "[store] voters names {} nodes: name 3 or 5 (1 for a test cluster), so that a majority survives a failure",
                voters.len()
            );
        }
        if let Some(own) = voters.get(node) {
            if *own != listen {
                bail!("[store] this node ({node}) votes at {own} but listens on {listen}");
            }
        }
        let ms = Duration::from_millis;
        Ok(StoreSettings {
            listen: Some(listen),
            voters,
            write_timeout: ms(self.write_timeout_ms.unwrap_or(5000)),
            move_timeout: ms(self.move_timeout_ms.unwrap_or(5000)),
            failover_move: match self.failover_move_ms.unwrap_or(10_000) {
                0 => None,
                after => Some(ms(after)),
            },
        })
    }
}

impl Default for StoreSettings {
    /// A node alone: its own store's only voter, on no network.
    fn default() -> Self {
        StoreSettings {
            listen: None,
            voters: BTreeMap::new(),
            write_timeout: Duration::from_secs(5),
            move_timeout: Duration::from_secs(5),
            failover_move: None,
        }
    }
}

/// Membership settings the daemon runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GossipSettings {
    pub bind: SocketAddr,
    pub seeds: Vec<SocketAddr>,
    pub secret_file: PathBuf,
    pub timing: gossip::Timing,
    pub fence_non_members: bool,
}

impl GossipFile {
    fn resolve(self) -> anyhow::Result<GossipSettings> {
        let Some(bind) = self.bind else {
            bail!("[gossip] needs bind, the address this node gossips on");
        };
        let Some(secret_file) = self.secret_file else {
            bail!("[gossip] needs secret_file: gossip is authenticated with the cluster secret");
        };
        let default = gossip::Timing::default();
        let ms = Duration::from_millis;
        let timing = gossip::Timing {
            probe_period: self.probe_period_ms.map_or(default.probe_period, ms),
            probe_rtt: self.probe_rtt_ms.map_or(default.probe_rtt, ms),
            suspect_to_down: self.suspect_to_down_ms.map_or(default.suspect_to_down, ms),
            gossip_interval: self.gossip_interval_ms.map_or(default.gossip_interval, ms),
        };
        timing.check()?;
        Ok(GossipSettings {
            bind,
            seeds: self.seeds.unwrap_or_default(),
            secret_file,
            timing,
            fence_non_members: self.fence_non_members.unwrap_or(true),
        })
    }
}

impl ConfigFile {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
    }

    /// The daemon's control socket: the flag's, else this file's, else the
    /// default. The daemon listens on it and the client commands dial it.
    pub fn control_socket(&self, flag: Option<PathBuf>) -> PathBuf {
        flag.or_else(|| self.control_socket.clone())
            .unwrap_or_else(|| DEFAULT_SOCKET.into())
    }
}

/// The configuration the daemon runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    pub node: String,
    pub data_dir: PathBuf,
    pub control_socket: PathBuf,
    /// Who besides root may use the control socket.
    pub control_groups: ControlGroups,
    pub listen: Vec<SocketAddr>,
    pub devices: bool,
    /// `None`: no device links.
    pub device_links: Option<PathBuf>,
    pub tails: BTreeMap<String, PathBuf>,
    pub gossip: Option<GossipSettings>,
    pub store: StoreSettings,
    pub metrics_listen: Option<SocketAddr>,
    pub kernel_tls: bool,
    pub zero_copy: bool,
    pub health: HealthConfig,
    pub route: RouteConfig,
    pub mirror: MirrorConfig,
    pub tls: Option<TlsSettings>,
    /// `None`: kept devices wait for a daemon for ever.
    pub kept_device_timeout: Option<Duration>,
}

impl NodeConfig {
    /// Layers the file over the defaults and the flags over both, and
    /// checks what the layers cannot: names, and timings that make sense.
    pub fn resolve(
        file: ConfigFile,
        data_dir: Option<PathBuf>,
        control_socket: Option<PathBuf>,
    ) -> anyhow::Result<Self> {
        let health_default = HealthConfig::default();
        let route_default = RouteConfig::default();
        let ms = Duration::from_millis;
        let control_socket = file.control_socket(control_socket);
        let node = file.node.unwrap_or_else(default_node_name);
        let store = match file.store {
            Some(store) => store.resolve(&node)?,
            None => StoreSettings::default(),
        };
        let route = RouteConfig {
            request_timeout: file
                .request_timeout_ms
                .map_or(route_default.request_timeout, ms),
            io_timeout: file.io_timeout_ms.map_or(route_default.io_timeout, ms),
            ..route_default
        };
        let mirror = file.mirror.unwrap_or_default().resolve(route)?;
        let config = NodeConfig {
            node,
            store,
            data_dir: data_dir
                .or(file.data_dir)
                .unwrap_or_else(|| DEFAULT_DATA_DIR.into()),
            control_socket,
            control_groups: ControlGroups {
                admin: file
                    .admin_group
                    .map(|name| lookup_group("admin_group", name))
                    .transpose()?,
                read: file
                    .read_group
                    .map(|name| lookup_group("read_group", name))
                    .transpose()?,
            },
            listen: file.listen.unwrap_or_default(),
            devices: file.devices.unwrap_or(true),
            kept_device_timeout: match file.kept_device_timeout_ms.unwrap_or(120_000) {
                0 => None,
                after => Some(ms(after)),
            },
            device_links: match file.device_links {
                None => Some(PathBuf::from(DEFAULT_DEVICE_LINKS)),
                Some(dir) if dir.as_os_str().is_empty() => None,
                Some(dir) => Some(dir),
            },
            tails: file.tails.unwrap_or_default(),
            gossip: file.gossip.map(GossipFile::resolve).transpose()?,
            metrics_listen: file.metrics_listen,
            kernel_tls: file.kernel_tls.unwrap_or(true),
            zero_copy: file.zero_copy.unwrap_or(true),
            health: HealthConfig {
                interval: file
                    .heartbeat_interval_ms
                    .map_or(health_default.interval, ms),
                allowed_misses: file
                    .heartbeat_misses
                    .unwrap_or(health_default.allowed_misses),
                ..health_default
            },
            route,
            mirror,
            tls: file.tls.map(TlsFile::resolve).transpose()?,
        };
        config.check()?;
        Ok(config)
    }

    /// Who this node proves it is to its peers: the `[tls]` section's
    /// certificate, else one issued at start by the CA the cluster secret
    /// derives; `None` for a node alone (no `[gossip]`, no `[tls]`), which
    /// talks to no peer.
    pub fn identity(&self) -> anyhow::Result<Option<identity::NodeIdentity>> {
        if let Some(tls) = &self.tls {
            let identity = identity::NodeIdentity::load(&self.node, &tls.ca, &tls.cert, &tls.key)
                .context("[tls]")?;
            return Ok(Some(identity));
        }
        let Some(gossip) = &self.gossip else {
            return Ok(None);
        };
        let secret = gossip::read_secret(&gossip.secret_file)?;
        let identity = identity::NodeIdentity::from_secret(&self.node, &secret)
            .context("cannot derive this node's certificate from the cluster secret")?;
        Ok(Some(identity))
    }

    fn check(&self) -> anyhow::Result<()> {
        let name_ok = configdb::is_safe_name;
        if !name_ok(&self.node) {
            bail!(
                "node name {:?} must be 1 to 64 letters, digits, '.', '_' or '-'",
                self.node
            );
        }
        for tail in self.tails.keys() {
            if !name_ok(tail) {
                bail!("tail name {tail:?} must be 1 to 64 letters, digits, '.', '_' or '-'");
            }
        }
        if let Some(gossip) = &self.gossip {
            if gossip.bind.ip().is_unspecified() {
                bail!(
                    "[gossip] bind {} must be a specific address: other nodes reach this one there",
                    gossip.bind
                );
            }
            // The listen addresses are announced as this node's links.
            if let Some(addr) = self.listen.iter().find(|a| a.ip().is_unspecified()) {
                bail!("listen address {addr} must be a specific address: it is announced to the cluster as a link");
            }
        }
        if !self.listen.is_empty() && self.gossip.is_none() && self.tls.is_none() {
            bail!("listen needs [gossip] (its cluster secret) or [tls]: peers must prove they are of the cluster");
        }
        if self.store.listen.is_some() && self.gossip.is_none() {
            bail!("[store] needs [gossip]: store messages are signed with the cluster secret, and members are found by gossip");
        }
        if self.health.interval.is_zero() || self.health.allowed_misses == 0 {
            bail!("heartbeat_interval_ms and heartbeat_misses must be positive");
        }
        if self.route.request_timeout.is_zero() || self.route.io_timeout.is_zero() {
            bail!("request_timeout_ms and io_timeout_ms must be positive");
        }
        Ok(())
    }
}

/// The group a config key names. An unknown one is refused at start,
/// rather than found out when its members are refused.
fn lookup_group(key: &str, name: String) -> anyhow::Result<Group> {
    match uzers::get_group_by_name(&name) {
        Some(group) => Ok(Group {
            gid: group.gid(),
            name,
        }),
        None => bail!("{key} {name:?} is not a group on this host (see getent group)"),
    }
}

/// The hostname, when it is a valid node name; a machine without one
/// (a bare VM says "(none)") is "localhost".
fn default_node_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .ok()
        .filter(|name| configdb::is_safe_name(name))
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests;
