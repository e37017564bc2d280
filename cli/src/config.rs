//! The node's configuration: embedded defaults, overridden by a TOML file,
//! overridden by command-line flags.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

pub const DEFAULT_DATA_DIR: &str = "/var/lib/ublkvd";
pub const DEFAULT_SOCKET: &str = "/run/ublkvd/ublkvd.sock";

/// The config file as written. Every field is optional: what is missing
/// keeps its default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// This node's name in the cluster.
    pub node: Option<String>,
    /// Where the node keeps its state (the vdisk catalog).
    pub data_dir: Option<PathBuf>,
    /// The Unix socket the `ublkvd` client talks to.
    pub control_socket: Option<PathBuf>,
}

impl ConfigFile {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
    }
}

/// The configuration the daemon runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    pub node: String,
    pub data_dir: PathBuf,
    pub control_socket: PathBuf,
}

impl NodeConfig {
    /// Layers the file over the defaults and the flags over both.
    pub fn resolve(
        file: ConfigFile,
        data_dir: Option<PathBuf>,
        control_socket: Option<PathBuf>,
    ) -> Self {
        NodeConfig {
            node: file.node.unwrap_or_else(default_node_name),
            data_dir: data_dir
                .or(file.data_dir)
                .unwrap_or_else(|| DEFAULT_DATA_DIR.into()),
            control_socket: control_socket
                .or(file.control_socket)
                .unwrap_or_else(|| DEFAULT_SOCKET.into()),
        }
    }
}

fn default_node_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_apply_without_file_or_flags() {
        let config = NodeConfig::resolve(ConfigFile::default(), None, None);
        assert_eq!(config.data_dir, Path::new(DEFAULT_DATA_DIR));
        assert_eq!(config.control_socket, Path::new(DEFAULT_SOCKET));
        assert!(!config.node.is_empty());
    }

    #[test]
    fn file_overrides_defaults_and_flags_override_the_file() {
        let file: ConfigFile = toml::from_str(
            "node = \"a\"\ndata_dir = \"/srv/a\"\ncontrol_socket = \"/run/a.sock\"\n",
        )
        .unwrap();
        let config = NodeConfig::resolve(file, Some("/flag/dir".into()), None);
        assert_eq!(config.node, "a");
        assert_eq!(config.data_dir, Path::new("/flag/dir"));
        assert_eq!(config.control_socket, Path::new("/run/a.sock"));
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(toml::from_str::<ConfigFile>("data_dri = \"/x\"\n").is_err());
    }
}
