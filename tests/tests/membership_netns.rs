//! Membership across real networks: five `ublkvd` daemons in network
//! namespaces find each other from two seeds, see a killed node down
//! within the bound their timing sets, see it rejoin under a new
//! incarnation, see a node that leaves (SIGTERM) down at once, and never
//! let in a node that lacks the cluster secret.

// Helpers outside #[test] functions panic on purpose: a failed step fails the test.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

mod support;

use support::lab::{wait_all, Lab, NodeDaemon};
use support::CLUSTER_SECRET;

const NODES: [&str; 5] = ["a", "b", "c", "d", "e"];

/// The timing of `support::gossip_section`: probe every 200 ms, 80 ms
/// round trip, 600 ms of suspicion. A dead node is probed within a few
/// periods (each member probes every other in turn), suspected, declared
/// down after the suspicion, and the verdict spreads in a few gossip
/// rounds; the slack covers a loaded CI machine.
const DETECTION_BOUND: Duration = Duration::from_millis(4 * 200 + 600 + 2000);

#[test]
fn five_daemons_detect_a_kill_a_rejoin_and_a_leave_and_keep_out_a_stranger() {
    let mut all = NODES.to_vec();
    all.push("x");
    let lab = Lab::new(&all);
    let mut daemons: Vec<NodeDaemon> = NODES
        .iter()
        .map(|node| NodeDaemon::start(&lab, node, lab.config(node, false, &[], CLUSTER_SECRET)))
        .collect();
    // x has another cluster's secret and a and b as seeds, like the rest.
    let stranger_config = lab.config("x", false, &[], "not this cluster's secret at all");
    let stranger = NodeDaemon::start(&lab, "x", stranger_config);

    // Everyone finds everyone from the two seeds.
    for node in NODES {
        let others: Vec<&NodeDaemon> = daemons.iter().filter(|d| d.node != node).collect();
        wait_all(&others, node, "alive", Duration::from_secs(20));
    }
    for daemon in &daemons {
        assert!(daemon.members()["config_number"].as_u64().unwrap() >= 4);
    }

    // kill -9 of c: no goodbye, only silence.
    let (_, first_life) = daemons[0].member_state("c").unwrap();
    daemons[2].kill();
    let observers: Vec<&NodeDaemon> = daemons.iter().filter(|d| d.node != "c").collect();
    let detection = wait_all(&observers, "c", "down", DETECTION_BOUND);
    eprintln!("kill -9 of c seen down by all 4 others in {detection:?}");

    // c comes back on the same address, under a new incarnation.
    daemons[2].spawn(&lab);
    let observers: Vec<&NodeDaemon> = daemons.iter().filter(|d| d.node != "c").collect();
    wait_all(&observers, "c", "alive", Duration::from_secs(20));
    for observer in &observers {
        let (_, incarnation) = observer.member_state("c").unwrap();
        assert!(
            incarnation > first_life,
            "{}: {incarnation} <= {first_life}",
            observer.node
        );
    }

    // SIGTERM of d: it says goodbye, so nobody waits for a suspicion.
    assert!(daemons[3].terminate(), "{}", daemons[3].log());
    let observers: Vec<&NodeDaemon> = daemons.iter().filter(|d| d.node != "d").collect();
    let leave = wait_all(&observers, "d", "down", DETECTION_BOUND);
    eprintln!("SIGTERM of d seen down by all 4 others in {leave:?}");

    // The stranger was refused all along.
    for daemon in daemons.iter().filter(|d| d.node != "d") {
        let view = daemon.members();
        let names: Vec<&str> = view["members"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|m| m["name"].as_str())
            .collect();
        assert!(!names.contains(&"x"), "{}: {view}", daemon.node);
    }
    let seed_view = daemons[0].members();
    assert!(
        seed_view["rejected_packets"].as_u64().unwrap() > 0,
        "a never saw x's packets: {seed_view}"
    );
    let stranger_view = stranger.members();
    assert_eq!(
        stranger_view["members"].as_array().unwrap().len(),
        1,
        "{stranger_view}"
    );
}
