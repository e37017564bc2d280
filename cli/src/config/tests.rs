use super::*;

#[test]
fn defaults_apply_without_file_or_flags() {
    let config = NodeConfig::resolve(ConfigFile::default(), None, None).unwrap();
    assert_eq!(config.data_dir, Path::new(DEFAULT_DATA_DIR));
    assert!(config.devices);
    assert!(config.listen.is_empty() && config.gossip.is_none());
    assert_eq!(config.route, RouteConfig::default());
    assert_eq!(config.control_socket, Path::new(DEFAULT_SOCKET));
    assert!(config.control_groups.is_empty());
    assert!(!config.node.is_empty());
}

#[test]
fn file_overrides_defaults_and_flags_override_the_file() {
    let file: ConfigFile =
        toml::from_str("node = \"a\"\ndata_dir = \"/srv/a\"\ncontrol_socket = \"/run/a.sock\"\n")
            .unwrap();
    let config = NodeConfig::resolve(file, Some("/flag/dir".into()), None).unwrap();
    assert_eq!(config.node, "a");
    assert_eq!(config.data_dir, Path::new("/flag/dir"));
    assert_eq!(config.control_socket, Path::new("/run/a.sock"));
}

#[test]
fn a_cluster_config_names_listen_addresses_tails_and_seeds() {
    let file: ConfigFile = toml::from_str(
        r#"
        node = "a"
        listen = ["10.1.0.1:7100", "10.2.0.1:7100"]
        heartbeat_interval_ms = 50
        io_timeout_ms = 10000
        [tails]
        disk0 = "/dev/vdb"
        [gossip]
        bind = "10.1.0.1:7000"
        seeds = ["10.1.0.2:7000"]
        secret_file = "/etc/ublkvd/cluster.key"
        suspect_to_down_ms = 3000
        "#,
    )
    .unwrap();
    let config = NodeConfig::resolve(file, None, None).unwrap();
    assert_eq!(config.listen.len(), 2);
    assert_eq!(config.tails["disk0"], Path::new("/dev/vdb"));
    let gossip = config.gossip.unwrap();
    assert_eq!(gossip.seeds[0].to_string(), "10.1.0.2:7000");
    assert_eq!(gossip.timing.suspect_to_down, Duration::from_secs(3));
    assert_eq!(
        gossip.timing.probe_period,
        gossip::Timing::default().probe_period
    );
    assert_eq!(config.health.interval, Duration::from_millis(50));
    assert_eq!(config.health.allowed_misses, 3);
    assert_eq!(config.route.io_timeout, Duration::from_secs(10));
}

#[test]
fn inconsistent_cluster_configs_are_refused_with_the_reason() {
    let refused = |text: &str| {
        let file: ConfigFile = toml::from_str(text).unwrap();
        NodeConfig::resolve(file, None, None)
            .unwrap_err()
            .to_string()
    };
    let secret = "secret_file = \"/k\"\n";
    assert!(refused("[gossip]\nbind = \"10.0.0.1:7000\"\n").contains("secret_file"));
    // Peers must prove they are of the cluster: no identity, no peers.
    assert!(refused("listen = [\"10.0.0.1:7100\"]\n").contains("[gossip]"));
    assert!(refused("[tls]\nca = \"/ca.pem\"\ncert = \"/a.pem\"\n").contains("ca, cert and key"));
    assert!(refused(&format!("[gossip]\n{secret}")).contains("bind"));
    assert!(refused(&format!("[gossip]\nbind = \"0.0.0.0:7000\"\n{secret}")).contains("specific"));
    assert!(refused(&format!(
        "listen = [\"0.0.0.0:7100\"]\n[gossip]\nbind = \"10.0.0.1:7000\"\n{secret}"
    ))
    .contains("announced"));
    assert!(refused(&format!(
        "[gossip]\nbind = \"10.0.0.1:7000\"\n{secret}probe_rtt_ms = 400\n"
    ))
    .contains("probe_period"));
    assert!(refused("[tails]\n\"a/b\" = \"/x\"").contains("tail name"));
    let store = "[store]\nlisten = \"10.0.0.1:7200\"\n";
    assert!(refused(&format!(
        "{store}voters = {{ a = \"10.0.0.1:7200\", b = \"10.0.0.2:7200\" }}"
    ))
    .contains("3 or 5"));
    assert!(refused(&format!("{store}voters = {{ a = \"10.0.0.1:7200\" }}")).contains("[gossip]"));
    assert!(refused(&format!(
        "node = \"a\"\n[gossip]\nbind = \"10.0.0.1:7000\"\n{secret}{store}voters = {{ a = \"10.0.0.1:7201\" }}"
    ))
    .contains("votes at"));
    assert!(refused("io_timeout_ms = 0").contains("positive"));
}

/// docs/config.md's reference is a valid config that sets every key: a
/// key added, renamed or removed here fails until it is documented.
#[test]
fn the_config_reference_sets_every_key() {
    let reference = include_str!("../../../docs/config.md");
    let block = &reference[reference.find("```toml\n").unwrap() + 8..];
    let block = &block[..block.find("```").unwrap()];
    let file: ConfigFile = toml::from_str(block).unwrap();
    let json = serde_json::to_value(&file).unwrap();
    let gossip = json["gossip"].as_object().unwrap().clone();
    let store = json["store"].as_object().unwrap().clone();
    let mirror = json["mirror"].as_object().unwrap().clone();
    let tls = json["tls"].as_object().unwrap().clone();
    let keys = json
        .as_object()
        .unwrap()
        .iter()
        .chain(gossip.iter())
        .chain(store.iter())
        .chain(mirror.iter())
        .chain(tls.iter());
    for (key, value) in keys {
        assert!(!value.is_null(), "docs/config.md's reference lacks {key}");
    }
}

#[test]
fn control_groups_are_looked_up_by_name_and_unknown_ones_refused() {
    let file: ConfigFile = toml::from_str("admin_group = \"root\"\n").unwrap();
    let config = NodeConfig::resolve(file, None, None).unwrap();
    assert_eq!(
        config.control_groups,
        ControlGroups {
            admin: Some(Group {
                name: "root".into(),
                gid: 0
            }),
            read: None,
        }
    );
    let file: ConfigFile = toml::from_str("read_group = \"ublkvd-no-such-group\"\n").unwrap();
    let refused = NodeConfig::resolve(file, None, None).unwrap_err();
    assert_eq!(
        refused.to_string(),
        "read_group \"ublkvd-no-such-group\" is not a group on this host (see getent group)"
    );
}

#[test]
fn unknown_keys_are_refused() {
    assert!(toml::from_str::<ConfigFile>("data_dri = \"/x\"\n").is_err());
}
