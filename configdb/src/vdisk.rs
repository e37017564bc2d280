use std::collections::BTreeSet;
use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A vdisk's name: 1 to 64 of `[A-Za-z0-9._-]`, not starting with `.` or
/// `-`, so that it is safe in a path, a log line and a command line.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct VdiskName(String);

#[derive(Debug, thiserror::Error)]
#[error(
    "invalid vdisk name {0:?}: use 1 to 64 letters, digits, '.', '_' or '-', \
     not starting with '.' or '-'"
)]
pub struct VdiskNameError(String);

impl VdiskName {
    pub const MAX_LEN: usize = 64;

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id that names this vdisk on the wire: the same on every node, so
    /// that a vdisk added on several nodes under one name is one vdisk.
    /// FNV-1a over the name; never 0, which heartbeats use.
    pub fn id(&self) -> u64 {
        fnv1a(&self.0).max(1)
    }
}

/// FNV-1a of `text`: a hash that is the same on every node and in every
/// build, for ids derived from names.
pub(crate) fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Whether `name` is safe as a vdisk, node or tail name: 1 to 64 of
/// `[A-Za-z0-9._-]`, not starting with `.` or `-`.
pub fn is_safe_name(name: &str) -> bool {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    !name.is_empty()
        && name.len() <= VdiskName::MAX_LEN
        && name.chars().all(allowed)
        && !name.starts_with(['.', '-'])
}

impl TryFrom<String> for VdiskName {
    type Error = VdiskNameError;

    fn try_from(name: String) -> Result<Self, Self::Error> {
        if is_safe_name(&name) {
            Ok(VdiskName(name))
        } else {
            Err(VdiskNameError(name))
        }
    }
}

impl std::str::FromStr for VdiskName {
    type Err = VdiskNameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        VdiskName::try_from(s.to_owned())
    }
}

impl From<VdiskName> for String {
    fn from(name: VdiskName) -> String {
        name.0
    }
}

impl fmt::Display for VdiskName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A tail of the cluster: a node's name and the name of one of the tails
/// in that node's config, written `node:tail`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TailRef {
    pub node: String,
    pub tail: String,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid tail {0:?}: write NODE:TAIL, each 1 to 64 letters, digits, '.', '_' or '-'")]
pub struct TailRefError(String);

impl TryFrom<String> for TailRef {
    type Error = TailRefError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        match text.split_once(':') {
            Some((node, tail)) if is_safe_name(node) && is_safe_name(tail) => Ok(TailRef {
                node: node.to_owned(),
                tail: tail.to_owned(),
            }),
            _ => Err(TailRefError(text)),
        }
    }
}

impl std::str::FromStr for TailRef {
    type Err = TailRefError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TailRef::try_from(s.to_owned())
    }
}

impl From<TailRef> for String {
    fn from(tail: TailRef) -> String {
        tail.to_string()
    }
}

impl fmt::Display for TailRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.node, self.tail)
    }
}

/// Where a vdisk's data lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Placement {
    /// A file or block device of one node, used by that node alone: only
    /// `node` has a device for it.
    Local { node: String, tail: PathBuf },
    /// Tails of cluster nodes: requests go to the primary, and to the
    /// secondary when the primary cannot take them. Both may be the same
    /// disk seen from two nodes (twin-tailed).
    Cluster {
        primary: TailRef,
        secondary: Option<TailRef>,
    },
    /// Two copies on tails of two nodes (seed 001): requests go to the
    /// primary, which writes each block to its own tail and to the
    /// mirror's, and acknowledges once both have it. The mirror's node
    /// takes over when the primary's fails, if its copy is current (see
    /// [`MirrorCopy`]). The primary records the regions the mirror misses
    /// while it is unreachable in a map of `region_size`-byte regions.
    Mirror {
        primary: TailRef,
        mirror: TailRef,
        region_size: u32,
    },
}

impl Placement {
    /// Which of the vdisk's cluster tails is on `node`, if any.
    pub fn tail_on(&self, node: &str) -> Option<&TailRef> {
        self.cluster_tails().find(|t| t.node == node)
    }

    /// The cluster tails, primary first; none for a local placement.
    pub fn cluster_tails(&self) -> impl Iterator<Item = &TailRef> {
        let (primary, secondary) = match self {
            Placement::Local { .. } => (None, None),
            Placement::Cluster { primary, secondary } => (Some(primary), secondary.as_ref()),
            Placement::Mirror {
                primary, mirror, ..
            } => (Some(primary), Some(mirror)),
        };
        primary.into_iter().chain(secondary)
    }

    /// Whether `node` has a device for the vdisk: every node for a cluster
    /// vdisk, the owner alone for a local one.
    pub fn has_device_on(&self, node: &str) -> bool {
        match self {
            Placement::Local { node: owner, .. } => owner == node,
            Placement::Cluster { .. } | Placement::Mirror { .. } => true,
        }
    }

    /// A mirror with its primary and its mirror switched: what a takeover
    /// makes of it. Any other placement stays as it is.
    pub fn switched_over(&self) -> Placement {
        match self {
            Placement::Mirror {
                primary,
                mirror,
                region_size,
            } => Placement::Mirror {
                primary: mirror.clone(),
                mirror: primary.clone(),
                region_size: *region_size,
            },
            other => other.clone(),
        }
    }

    /// Whether two placements name a common tail: the same cluster tail, or
    /// the same path on the same node.
    pub fn shares_a_tail_with(&self, other: &Placement) -> bool {
        match (self, other) {
            (Placement::Local { node: a, tail: ta }, Placement::Local { node: b, tail: tb }) => {
                a == b && ta == tb
            }
            _ => self
                .cluster_tails()
                .any(|t| other.cluster_tails().any(|o| o == t)),
        }
    }
}

impl fmt::Display for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Placement::Local { node, tail } => write!(f, "{node}:{}", tail.display()),
            Placement::Cluster {
                primary,
                secondary: Some(secondary),
            } => write!(f, "{primary},{secondary}"),
            Placement::Cluster { primary, .. } => write!(f, "{primary}"),
            Placement::Mirror {
                primary, mirror, ..
            } => write!(f, "{primary}<->{mirror}"),
        }
    }
}

/// Who may open a vdisk's device: the owner, group and mode its device
/// node carries on every node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permissions {
    pub owner: u32,
    pub group: u32,
    /// The permission bits (at most 0o7777).
    pub mode: u32,
}

impl Default for Permissions {
    /// As a disk is by default: root, group `disk` (6 on Debian and
    /// Fedora), mode 0660.
    fn default() -> Self {
        Permissions {
            owner: 0,
            group: 6,
            mode: 0o660,
        }
    }
}

/// What an admin asks for when adding a vdisk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VdiskSpec {
    pub name: VdiskName,
    pub size_bytes: u64,
    /// The tails that hold the data.
    pub placement: Placement,
    /// Logical block size of the device: 512 or 4096.
    pub block_size: u32,
    pub queues: u16,
    pub queue_depth: u16,
    pub read_only: bool,
    pub permissions: Permissions,
    /// Every node's device takes writes (a cluster filesystem's vdisk);
    /// otherwise one node at a time holds the write role
    /// ([`VdiskRecord::writer`]).
    #[serde(default)]
    pub multi_writer: bool,
}

/// A vdisk as the store holds it: what was asked for, and what the
/// cluster gave it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VdiskRecord {
    pub spec: VdiskSpec,
    /// Unique in the cluster: the ublk device number every node asks for,
    /// so that the vdisk is `/dev/ublkb<id>` everywhere it can be.
    pub id: u32,
    /// Grows by one each time the mapping changes; data requests carry it,
    /// and tails refuse older ones.
    pub epoch: u64,
    /// A reconfiguration under way.
    pub moving: Option<PendingMove>,
    /// For a mirrored vdisk, whether the mirror's copy is current; the
    /// primary's always is.
    #[serde(default)]
    pub mirror_copy: MirrorCopy,
    /// The node whose device may write, unless the vdisk is multi-writer:
    /// the first to write takes the role, until it releases it (or, down,
    /// has it taken over).
    #[serde(default)]
    pub writer: Option<String>,
}

/// What the store knows of a mirrored vdisk's second copy. Only a current
/// copy may take over: the primary records the mirror stale before it
/// acknowledges a write the mirror missed, so a primary cut off from the
/// store's majority cannot acknowledge such a write, and a mirror whose
/// copy the store calls current has every acknowledged write.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MirrorCopy {
    /// Holds every acknowledged write.
    #[default]
    Current,
    /// Lacks the writes of the regions the primary's dirty map records.
    Stale,
    /// Never synced (a new vdisk): lacks anything, a full resync is owed.
    Blank,
}

impl fmt::Display for MirrorCopy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MirrorCopy::Current => "current",
            MirrorCopy::Stale => "stale",
            MirrorCopy::Blank => "blank",
        })
    }
}

/// A move between its start and its end: the new placement, and which
/// nodes have suspended their I/O to the vdisk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingMove {
    /// The generation at which the move began: names this move.
    pub id: u64,
    pub to: Placement,
    /// The node that runs the move.
    pub coordinator: String,
    /// The nodes that must suspend before the move can commit.
    pub waiting_for: BTreeSet<String>,
    /// Those that have suspended and drained.
    pub acked: BTreeSet<String>,
}

impl PendingMove {
    pub fn all_acked(&self) -> bool {
        self.waiting_for.is_subset(&self.acked)
    }
}

/// A node as the store knows it: where its peers reach it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub name: String,
    /// Its peer server's addresses, one per network.
    pub links: Vec<std::net::SocketAddr>,
    /// Its tails: name → size in bytes.
    pub tails: std::collections::BTreeMap<String, u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_with_safe_characters_are_accepted() {
        for name in ["a", "disk0", "db.data-1_x", &"x".repeat(64)] {
            assert!(name.parse::<VdiskName>().is_ok(), "{name}");
        }
    }

    #[test]
    fn names_unsafe_in_paths_or_flags_are_refused() {
        for name in ["", "-rf", ".hidden", "a/b", "a b", "é", &"x".repeat(65)] {
            assert!(name.parse::<VdiskName>().is_err(), "{name}");
        }
    }

    #[test]
    fn vdisk_ids_are_stable_and_distinct() {
        let id = |name: &str| name.parse::<VdiskName>().unwrap().id();
        assert_eq!(id("db"), id("db"));
        assert_ne!(id("db"), id("dc"));
        // FNV-1a of "a", a fixed value: ids must not change between builds.
        assert_eq!(id("a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn tail_refs_parse_and_print_as_node_colon_tail() {
        let tail: TailRef = "b:disk0".parse().unwrap();
        assert_eq!((tail.node.as_str(), tail.tail.as_str()), ("b", "disk0"));
        assert_eq!(tail.to_string(), "b:disk0");
        for bad in ["b", ":disk0", "b:", "b:/dev/vdb", "b:disk0:x", "-b:d"] {
            assert!(bad.parse::<TailRef>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_placement_knows_which_tail_a_node_holds() {
        let placement = Placement::Cluster {
            primary: "a:disk0".parse().unwrap(),
            secondary: Some("b:disk1".parse().unwrap()),
        };
        assert_eq!(placement.tail_on("b").unwrap().tail, "disk1");
        assert!(placement.tail_on("c").is_none());
        assert!(placement.has_device_on("c"));
    }

    #[test]
    fn placements_share_a_tail_only_on_the_same_node() {
        let cluster = |p: &str, s: Option<&str>| Placement::Cluster {
            primary: p.parse().unwrap(),
            secondary: s.map(|s| s.parse().unwrap()),
        };
        let local = |node: &str, tail: &str| Placement::Local {
            node: node.into(),
            tail: tail.into(),
        };
        assert!(cluster("a:d0", Some("b:d1")).shares_a_tail_with(&cluster("b:d1", None)));
        assert!(!cluster("a:d0", Some("b:d1")).shares_a_tail_with(&cluster("a:d1", None)));
        assert!(local("a", "/x").shares_a_tail_with(&local("a", "/x")));
        assert!(!local("a", "/x").shares_a_tail_with(&local("b", "/x")));
        assert!(!local("a", "/x").shares_a_tail_with(&cluster("a:d0", None)));
        assert!(!local("a", "/x").has_device_on("b"));
    }

    #[test]
    fn name_deserialisation_validates() {
        assert!(serde_json::from_str::<VdiskName>("\"../etc\"").is_err());
        assert_eq!(
            serde_json::from_str::<VdiskName>("\"ok\"")
                .unwrap()
                .as_str(),
            "ok"
        );
    }
}
