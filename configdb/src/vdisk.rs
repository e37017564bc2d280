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
        let hash = self.0.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        hash.max(1)
    }
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
    /// A file or block device of this node, used by this node alone.
    Local { tail: PathBuf },
    /// Tails of cluster nodes: requests go to the primary, and to the
    /// secondary when the primary cannot take them. Both may be the same
    /// disk seen from two nodes (twin-tailed).
    Cluster {
        primary: TailRef,
        secondary: Option<TailRef>,
    },
}

impl Placement {
    /// Which of the vdisk's tails is on `node`, if any.
    pub fn tail_on(&self, node: &str) -> Option<&TailRef> {
        match self {
            Placement::Local { .. } => None,
            Placement::Cluster { primary, secondary } => std::iter::once(primary)
                .chain(secondary)
                .find(|t| t.node == node),
        }
    }
}

/// Everything needed to bring a vdisk's device back after a restart.
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
    /// The ublk device number it was given, asked for again on restart so
    /// that `/dev/ublkbN` stays the same.
    pub device_id: Option<u32>,
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
