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
}

impl TryFrom<String> for VdiskName {
    type Error = VdiskNameError;

    fn try_from(name: String) -> Result<Self, Self::Error> {
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        let valid = !name.is_empty()
            && name.len() <= Self::MAX_LEN
            && name.chars().all(allowed)
            && !name.starts_with(['.', '-']);
        if valid {
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

/// Everything needed to bring a vdisk's device back after a restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VdiskSpec {
    pub name: VdiskName,
    pub size_bytes: u64,
    /// The local file or block device that holds the data.
    pub tail: PathBuf,
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
