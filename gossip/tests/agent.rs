//! Gossip agents on loopback UDP: they find each other from one seed, see
//! a stopped member down, a leaving member down at once, a restarted one
//! under a new incarnation, and never let in a node with another secret.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use gossip::{ClusterKey, Gossip, GossipConfig, MemberState, NodeMeta, Timing};
use tokio::time::{timeout, Instant};

const SECRET: &[u8] = b"the secret of the test cluster";

/// Fast timing, so that a test takes seconds.
fn timing() -> Timing {
    Timing {
        probe_period: Duration::from_millis(100),
        probe_rtt: Duration::from_millis(40),
        suspect_to_down: Duration::from_millis(300),
        gossip_interval: Duration::from_millis(50),
    }
}

fn config(name: &str, bind: &str, seeds: &[SocketAddr], secret: &[u8]) -> GossipConfig {
    GossipConfig {
        name: name.into(),
        bind: bind.parse().unwrap(),
        seeds: seeds.to_vec(),
        timing: timing(),
        key: ClusterKey::from_secret(secret),
        meta: NodeMeta {
            links: vec![SocketAddr::from(([127, 0, 0, 1], 7100))],
            tails: vec![format!("{name}-disk")],
            version: "test".into(),
        },
    }
}

async fn agent(name: &str, seeds: &[SocketAddr], secret: &[u8]) -> Gossip {
    Gossip::start(config(name, "127.0.0.1:0", seeds, secret))
        .await
        .unwrap()
}

/// a, then b and c seeded with a.
async fn trio() -> (Gossip, Gossip, Gossip) {
    let a = agent("a", &[], SECRET).await;
    let seed = [a.local_addr()];
    let b = agent("b", &seed, SECRET).await;
    let c = agent("c", &seed, SECRET).await;
    (a, b, c)
}

/// Waits until `agent` sees exactly `names` alive besides itself.
async fn wait_for_alive(agent: &Gossip, names: &[&str], within: Duration) -> Duration {
    let start = Instant::now();
    let mut view = agent.view();
    let wanted: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    timeout(within, async {
        loop {
            let alive: Vec<String> = view.borrow_and_update().alive.keys().cloned().collect();
            if alive == wanted {
                return;
            }
            view.changed().await.unwrap();
        }
    })
    .await
    .unwrap_or_else(|_| panic!("alive set never became {names:?}"));
    start.elapsed()
}

#[tokio::test]
async fn members_meet_through_one_seed_and_learn_each_others_metadata() {
    let (a, b, c) = trio().await;
    let within = Duration::from_secs(10);
    wait_for_alive(&a, &["b", "c"], within).await;
    wait_for_alive(&b, &["a", "c"], within).await;
    wait_for_alive(&c, &["a", "b"], within).await;
    // b learnt c's links and tails without being told by a config.
    let view = b.view().borrow().clone();
    assert_eq!(view.alive["c"].meta.tails, vec!["c-disk".to_string()]);
    assert!(view.config_number >= 2);
    let members = b.members().await.unwrap();
    assert!(members[0].is_self && members[0].name == "b");
    assert!(members.iter().all(|m| m.state == MemberState::Alive));
    assert_eq!(members.len(), 3);
}

#[tokio::test]
async fn a_stopped_member_is_seen_down_and_a_restarted_one_rejoins_newer() {
    let (a, b, c) = trio().await;
    let seed = [a.local_addr()];
    wait_for_alive(&a, &["b", "c"], Duration::from_secs(10)).await;
    let c_addr = c.local_addr();
    let first_life = a.view().borrow().alive["c"].incarnation;
    let number = a.view().borrow().config_number;
    drop(c); // a crash: no goodbye
             // Probed within a period or two, suspect, then down: well under 2 s.
    let took = wait_for_alive(&a, &["b"], Duration::from_secs(5)).await;
    wait_for_alive(&b, &["a"], Duration::from_secs(5)).await;
    assert!(took < Duration::from_secs(2), "detection took {took:?}");
    assert!(a.view().borrow().config_number > number);
    let down = a.members().await.unwrap();
    assert!(down
        .iter()
        .any(|m| m.name == "c" && m.state == MemberState::Down));
    // The same node on the same address comes back under a new incarnation.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let bind = c_addr.to_string();
    let c = Gossip::start(config("c", &bind, &seed, SECRET))
        .await
        .unwrap();
    wait_for_alive(&a, &["b", "c"], Duration::from_secs(10)).await;
    let second_life = a.view().borrow().alive["c"].incarnation;
    assert!(second_life > first_life);
    drop(c);
}

#[tokio::test]
async fn a_leaving_member_is_down_at_once() {
    let a = agent("a", &[], SECRET).await;
    let b = agent("b", &[a.local_addr()], SECRET).await;
    wait_for_alive(&a, &["b"], Duration::from_secs(10)).await;
    // b says goodbye to the members it knows: it must know a.
    wait_for_alive(&b, &["a"], Duration::from_secs(10)).await;
    b.leave().await;
    // Faster than any suspicion could make it: the goodbye says so.
    let took = wait_for_alive(&a, &[], Duration::from_secs(5)).await;
    assert!(took < timing().suspect_to_down, "took {took:?}");
}

#[tokio::test]
async fn a_node_without_the_secret_never_joins_and_its_packets_are_counted() {
    let a = agent("a", &[], SECRET).await;
    let b = agent("b", &[a.local_addr()], SECRET).await;
    let intruder = agent(
        "intruder",
        &[a.local_addr(), b.local_addr()],
        b"not the cluster secret!!",
    )
    .await;
    wait_for_alive(&a, &["b"], Duration::from_secs(10)).await;
    // Several reseed rounds of the intruder.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for agent in [&a, &b] {
        let members = agent.members().await.unwrap();
        assert!(members.iter().all(|m| m.name != "intruder"), "{members:?}");
    }
    let rejected = a
        .counters()
        .rejected
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(rejected > 0);
    assert!(intruder.view().borrow().alive.is_empty());
}

#[tokio::test]
async fn an_unspecified_bind_address_is_refused() {
    let config = config("a", "0.0.0.0:7000", &[], SECRET);
    let error = Gossip::start(config).await.err().unwrap();
    assert!(error.to_string().contains("unspecified"), "{error}");
}
