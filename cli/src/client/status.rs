//! `ublkvd status`: the one screen an admin reads first. Built by the
//! client from `list`, `members` and `store`: which path each vdisk uses
//! now, link health, the store, and everything degraded, in plain words.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::control::{MembersInfo, StoreInfo, VdiskInfo};

#[derive(Debug, Serialize)]
pub struct Status {
    /// This node's name, when it is part of a cluster.
    pub node: Option<String>,
    pub config_number: Option<u64>,
    pub members_alive: usize,
    pub members_suspect: usize,
    pub members_down: usize,
    /// The store's leader, as this node knows it.
    pub store_leader: Option<String>,
    pub store_generation: Option<u64>,
    pub vdisks: Vec<VdiskStatus>,
    /// What is not as it should be, one sentence each; empty when healthy.
    pub problems: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct VdiskStatus {
    pub name: String,
    pub state: String,
    pub device: Option<String>,
    /// Where new requests go: "local", "primary NODE" or "secondary NODE";
    /// none while no path is reachable.
    pub active_path: Option<String>,
    /// Links up over links, per peer path: "b 2/2".
    pub links: Vec<String>,
    /// A mirrored vdisk's copies: on its primary, how the resync stands;
    /// elsewhere, what the store says of the mirror's copy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mirror: Option<String>,
}

/// The gossip datagrams this node dropped, one sentence per reason, each
/// with what likely sends them; none when nothing was dropped.
pub fn gossip_drops(members: &MembersInfo) -> Vec<String> {
    let skew_s = gossip::MAX_SKEW_MS / 1000;
    [
        (
            members.rejected_packets,
            "rejected: sent without the cluster secret, or altered on the way".to_owned(),
        ),
        (
            members.stale_packets,
            format!("stale: sent more than {skew_s} s off this node's clock (check NTP on every node), or old ones played back"),
        ),
        (
            members.replayed_packets,
            "replayed: copies of datagrams received already, played back by someone on the network or duplicated by it".to_owned(),
        ),
    ]
    .into_iter()
    .filter(|(count, _)| *count > 0)
    .map(|(count, why)| format!("{count} gossip datagrams {why}"))
    .collect()
}

/// When this node's `[store] voters` are not the store's voters, what to
/// do about it: the file only seeds a new store.
pub fn configured_voters_differ(store: &StoreInfo) -> Option<String> {
    let named: BTreeSet<&String> = store.configured_voters.iter().collect();
    let voting: BTreeSet<&String> = store.voters.iter().collect();
    if named.is_empty() || named == voting {
        return None;
    }
    Some(format!(
        "this node's [store] voters ({}) are not the store's voters ({}): \
         `ublkvd store set-voters` changes the store's, or edit the file to match",
        store.configured_voters.join(", "),
        store.voters.join(", ")
    ))
}

/// Composes the status; `members` is `None` on a node without gossip.
pub fn summarize(
    vdisks: &[VdiskInfo],
    members: Option<&MembersInfo>,
    store: Option<&StoreInfo>,
) -> Status {
    let mut problems = Vec::new();
    if let Some(store) = store {
        if store.leader.is_none() {
            problems.push(
                "the configuration store has no leader: no change can be made until a majority of its voters are reachable"
                    .to_owned(),
            );
        }
    }
    if let Some(differ) = store.and_then(configured_voters_differ) {
        problems.push(differ);
    }
    let count = |state: gossip::MemberState| {
        members.map_or(0, |m| m.members.iter().filter(|x| x.state == state).count())
    };
    if let Some(members) = members {
        for member in members.members.iter().filter(|m| !m.is_self) {
            match member.state {
                gossip::MemberState::Alive => {}
                gossip::MemberState::Suspect => {
                    problems.push(format!("member {} is suspected down", member.name))
                }
                gossip::MemberState::Down => {
                    problems.push(format!("member {} is down", member.name))
                }
            }
        }
        problems.extend(gossip_drops(members));
    }
    let vdisks = vdisks
        .iter()
        .map(|v| vdisk_status(v, &mut problems))
        .collect();
    Status {
        node: members.and_then(|m| m.members.iter().find(|x| x.is_self).map(|x| x.name.clone())),
        config_number: members.map(|m| m.config_number),
        members_alive: count(gossip::MemberState::Alive),
        members_suspect: count(gossip::MemberState::Suspect),
        members_down: count(gossip::MemberState::Down),
        store_leader: store.and_then(|s| s.leader.clone()),
        store_generation: store.map(|s| s.generation),
        vdisks,
        problems,
    }
}

fn vdisk_status(v: &VdiskInfo, problems: &mut Vec<String>) -> VdiskStatus {
    if v.state.starts_with("failed") {
        problems.push(format!("vdisk {} is {}", v.name, v.state));
    }
    let role = |path: &str| {
        if path == "local" {
            "local".to_owned()
        } else if v.primary.as_ref().is_some_and(|p| p.node == path) {
            format!("primary {path}")
        } else {
            format!("secondary {path}")
        }
    };
    let active = v.paths.iter().find(|p| p.reachable).map(|p| role(&p.name));
    for path in v.paths.iter().filter(|p| !p.reachable) {
        problems.push(format!(
            "vdisk {}: {} is unreachable",
            v.name,
            role(&path.name)
        ));
    }
    if !v.paths.is_empty() && active.is_none() {
        problems.push(format!(
            "vdisk {}: no path can take requests: its I/O waits",
            v.name
        ));
    }
    let mut links = Vec::new();
    for path in v.paths.iter().filter(|p| !p.links.is_empty()) {
        let up = path.links.iter().filter(|l| l.up).count();
        links.push(format!("{} {up}/{}", path.name, path.links.len()));
        if path.reachable && up < path.links.len() {
            problems.push(format!(
                "vdisk {}: {} has {} of {} links down",
                v.name,
                role(&path.name),
                path.links.len() - up,
                path.links.len()
            ));
        }
    }
    let mirror = match (&v.resync, &v.mirror, &v.mirror_copy) {
        (Some(resync), _, _) => {
            match resync.state.as_str() {
                "degraded" => problems.push(format!(
                    "vdisk {}: its mirror {} is unreachable: it runs on one copy",
                    v.name, resync.mirror
                )),
                "fenced" => problems.push(format!(
                    "vdisk {}: the store cannot be told its mirror is lost: it takes no requests",
                    v.name
                )),
                _ => {}
            }
            Some(crate::client::mirror::describe(resync))
        }
        (None, Some(mirror), Some(copy)) => Some(format!(
            "mirror {mirror}, copy {copy} (its primary shows the resync)"
        )),
        _ => None,
    };
    if v.mirror_copy.as_deref().is_some_and(|c| c != "current") {
        problems.push(format!(
            "vdisk {}: its mirror's copy is not current: it cannot take over until resynced",
            v.name
        ));
    }
    VdiskStatus {
        mirror,
        name: v.name.clone(),
        state: v.state.clone(),
        device: v.device.as_ref().map(|d| d.display().to_string()),
        active_path: active.or_else(|| v.tail.as_ref().map(|_| "local".to_owned())),
        links,
    }
}

/// The screen.
pub fn render(status: &Status) -> String {
    let mut out = String::new();
    match (&status.node, status.config_number) {
        (Some(node), Some(number)) => {
            out += &format!(
            "node {node}: {} members alive, {} suspect, {} down (configuration number {number})\n",
            status.members_alive, status.members_suspect, status.members_down
        )
        }
        _ => out += "a single node (no [gossip] section)\n",
    }
    if let Some(generation) = status.store_generation {
        let leader = status.store_leader.as_deref().unwrap_or("none");
        out += &format!("store: leader {leader}, generation {generation}\n");
    }
    for v in &status.vdisks {
        let device = v.device.as_deref().unwrap_or("-");
        let path = v.active_path.as_deref().unwrap_or("no path");
        out += &format!("  {:<16} {:<10} {device:<14} via {path}", v.name, v.state);
        if !v.links.is_empty() {
            out += &format!("  links {}", v.links.join(", "));
        }
        out += "\n";
        if let Some(mirror) = &v.mirror {
            out += &format!("    {mirror}\n");
        }
    }
    if status.problems.is_empty() {
        out += "healthy\n";
    } else {
        out += &format!("{} problem(s):\n", status.problems.len());
        for problem in &status.problems {
            out += &format!("  - {problem}\n");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{LinkInfo, PathInfo};

    fn path(name: &str, reachable: bool, links_up: &[bool]) -> PathInfo {
        PathInfo {
            name: name.into(),
            reachable,
            completed: 0,
            links: links_up
                .iter()
                .enumerate()
                .map(|(i, &up)| LinkInfo {
                    addr: std::net::SocketAddr::from(([10, i as u8 + 1, 0, 1], 7100)),
                    up,
                })
                .collect(),
        }
    }

    fn vdisk(paths: Vec<PathInfo>) -> VdiskInfo {
        VdiskInfo {
            name: "vd".into(),
            id: 0,
            epoch: 1,
            size_bytes: 1 << 30,
            device: Some("/dev/ublkb0".into()),
            zero_copy: false,
            node: None,
            tail: None,
            primary: Some("a:disk0".parse().unwrap()),
            secondary: Some("b:disk0".parse().unwrap()),
            mirror: None,
            mirror_copy: None,
            resync: None,
            block_size: 4096,
            read_only: false,
            owner: 0,
            group: 6,
            mode: 0o660,
            state: "running".into(),
            writer: None,
            multi_writer: false,
            moving_to: None,
            paths,
        }
    }

    #[test]
    fn a_healthy_vdisk_uses_its_primary_and_reports_nothing() {
        let status = summarize(
            &[vdisk(vec![
                path("a", true, &[true, true]),
                path("b", true, &[true, true]),
            ])],
            None,
            None,
        );
        assert_eq!(status.vdisks[0].active_path.as_deref(), Some("primary a"));
        assert_eq!(status.vdisks[0].links, vec!["a 2/2", "b 2/2"]);
        assert!(status.problems.is_empty(), "{:?}", status.problems);
        assert!(render(&status).ends_with("healthy\n"));
    }

    #[test]
    fn a_failover_says_which_path_serves_and_what_is_missing() {
        let status = summarize(
            &[vdisk(vec![
                path("a", false, &[false, false]),
                path("b", true, &[true, false]),
            ])],
            None,
            None,
        );
        assert_eq!(status.vdisks[0].active_path.as_deref(), Some("secondary b"));
        assert_eq!(
            status.problems,
            vec![
                "vdisk vd: primary a is unreachable".to_owned(),
                "vdisk vd: secondary b has 1 of 2 links down".to_owned()
            ]
        );
    }

    #[test]
    fn no_path_at_all_is_said_plainly() {
        let status = summarize(
            &[vdisk(vec![path("a", false, &[]), path("b", false, &[])])],
            None,
            None,
        );
        assert_eq!(status.vdisks[0].active_path, None);
        assert!(status.problems.iter().any(|p| p.contains("its I/O waits")));
    }

    #[test]
    fn down_members_and_dropped_gossip_datagrams_are_problems() {
        let member = |name: &str, state, is_self| gossip::MemberStatus {
            name: name.into(),
            gossip: "10.1.0.1:7000".parse().unwrap(),
            links: Vec::new(),
            tails: Vec::new(),
            version: "0.1.0".into(),
            state,
            incarnation: 1,
            is_self,
        };
        let members = MembersInfo {
            config_number: 4,
            rejected_packets: 3,
            stale_packets: 2,
            replayed_packets: 0,
            members: vec![
                member("a", gossip::MemberState::Alive, true),
                member("b", gossip::MemberState::Down, false),
            ],
        };
        let status = summarize(&[], Some(&members), None);
        assert_eq!(status.node.as_deref(), Some("a"));
        assert_eq!((status.members_alive, status.members_down), (1, 1));
        assert_eq!(status.problems.len(), 3, "{:?}", status.problems);
        assert!(status.problems[1].starts_with("3 gossip datagrams rejected"));
        assert!(status.problems[2].starts_with("2 gossip datagrams stale: sent more than 30 s off"));
        assert!(render(&status)
            .starts_with("node a: 1 members alive, 0 suspect, 1 down (configuration number 4)"));
    }

    #[test]
    fn a_store_without_a_leader_is_a_problem_and_its_leader_is_shown() {
        let store = |leader: Option<&str>| StoreInfo {
            role: configdb::StoreRole::Follower,
            term: 3,
            leader: leader.map(str::to_owned),
            generation: 12,
            last_log_index: 20,
            last_applied: 20,
            voters: vec!["a".into(), "b".into(), "c".into()],
            learners: Vec::new(),
            configured_voters: vec!["a".into(), "b".into(), "c".into()],
        };
        let led = summarize(&[], None, Some(&store(Some("b"))));
        assert!(led.problems.is_empty());
        assert!(render(&led).contains("store: leader b, generation 12\n"));
        let leaderless = summarize(&[], None, Some(&store(None)));
        assert!(leaderless.problems[0].contains("no leader"));
        // The quickstart's node, its file since edited to name three.
        let grown = StoreInfo {
            voters: vec!["a".into()],
            learners: vec!["b".into(), "c".into()],
            ..store(Some("a"))
        };
        let status = summarize(&[], None, Some(&grown));
        assert_eq!(
            status.problems,
            [
                "this node's [store] voters (a, b, c) are not the store's voters (a): \
              `ublkvd store set-voters` changes the store's, or edit the file to match"
            ]
        );
        // A node alone names no voters.
        let alone = StoreInfo {
            voters: vec!["solo".into()],
            configured_voters: Vec::new(),
            ..store(Some("solo"))
        };
        assert!(summarize(&[], None, Some(&alone)).problems.is_empty());
    }
}
