//! Gossip agents on loopback UDP: they find each other from one seed, see
//! a stopped member down, a leaving member down at once, a restarted one
//! under a new incarnation, never let in a node with another secret, show
//! an eavesdropper no name, and take no captured datagram twice.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use foca::{AccumulatingRuntime, Foca, NoCustomBroadcast, PostcardCodec};
use gossip::{ClusterKey, Gossip, GossipConfig, MemberState, NodeId, NodeMeta, Timing};
use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::net::UdpSocket;
use tokio::time::{sleep, timeout, Instant};

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
        meta: meta(name),
    }
}

fn meta(name: &str) -> NodeMeta {
    NodeMeta {
        links: vec![SocketAddr::from(([127, 0, 0, 1], 7100))],
        tails: vec![format!("{name}-disk")],
        version: "test".into(),
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

/// Waits until `counter` reaches `count`.
async fn wait_for_count(counter: &AtomicU64, count: u64) {
    timeout(Duration::from_secs(5), async {
        while counter.load(Ordering::Relaxed) < count {
            sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the counter stayed at {counter:?}, short of {count}"));
}

/// A member the test drives by hand: foca's core and the cluster key on a
/// plain socket, so that the test holds every datagram it sends and
/// receives, as an eavesdropper on the path would.
struct HandDriven {
    foca: Foca<NodeId, PostcardCodec, StdRng, NoCustomBroadcast>,
    runtime: AccumulatingRuntime<NodeId>,
    socket: UdpSocket,
    key: ClusterKey,
}

impl HandDriven {
    async fn start(name: &str) -> HandDriven {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let identity = NodeId::new(name.into(), socket.local_addr().unwrap(), meta(name));
        let rng = StdRng::seed_from_u64(7);
        HandDriven {
            foca: Foca::new(identity, timing().foca_config(2), rng, PostcardCodec),
            runtime: AccumulatingRuntime::new(),
            socket,
            key: ClusterKey::from_secret(SECRET),
        }
    }

    /// Announces itself to `seed`, and returns the datagrams it sent.
    async fn announce(&mut self, seed: SocketAddr) -> Vec<Vec<u8>> {
        self.foca
            .announce(NodeId::seed(seed), &mut self.runtime)
            .unwrap();
        let mut sent = Vec::new();
        while let Some((to, packet)) = self.runtime.to_send() {
            let datagram = self.key.seal(&packet, unix_millis()).unwrap();
            self.socket.send_to(&datagram, to.gossip).await.unwrap();
            sent.push(datagram);
        }
        assert!(!sent.is_empty());
        sent
    }

    /// Sends `datagrams` again, as they were captured, to `to`.
    async fn replay(&self, datagrams: &[Vec<u8>], to: SocketAddr) {
        for datagram in datagrams {
            self.socket.send_to(datagram, to).await.unwrap();
        }
    }
}

fn unix_millis() -> u64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    u64::try_from(since.as_millis()).unwrap()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
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

#[tokio::test]
async fn an_eavesdropper_sees_no_name_tail_or_link() {
    let alpha = agent("node-alpha", &[], SECRET).await;
    let mut bravo = HandDriven::start("node-bravo").await;
    let sent = bravo.announce(alpha.local_addr()).await;
    // alpha answers the announce with its own identity and the members it
    // knows: the node's name, its tails and its links.
    let mut answer = vec![0; 65536];
    let (len, from) = timeout(Duration::from_secs(5), bravo.socket.recv_from(&mut answer))
        .await
        .unwrap()
        .unwrap();
    answer.truncate(len);
    assert_eq!(from, alpha.local_addr());
    // Every address in this test is on 127.0.0.1; four given bytes turn up
    // by chance in a few hundred random ones once in millions of runs.
    let loopback = [127, 0, 0, 1];
    for datagram in sent.iter().chain([&answer]) {
        assert!(!contains(datagram, b"node-"), "a name or a tail in clear");
        assert!(!contains(datagram, &loopback), "an address in clear");
    }
    // They are in there, for whoever holds the secret.
    let opened = bravo.key.open(&mut answer).unwrap();
    assert!(contains(opened.packet, b"node-alpha-disk"));
    assert!(contains(opened.packet, &loopback));
}

#[tokio::test]
async fn a_replayed_datagram_is_counted_and_changes_nothing() {
    let alpha = agent("node-alpha", &[], SECRET).await;
    let mut bravo = HandDriven::start("node-bravo").await;
    let captured = bravo.announce(alpha.local_addr()).await;
    wait_for_alive(&alpha, &["node-bravo"], Duration::from_secs(5)).await;
    // bravo answers no probe: alpha soon finds it down.
    wait_for_alive(&alpha, &[], Duration::from_secs(5)).await;
    let number = alpha.view().borrow().config_number;
    let counters = alpha.counters();
    for round in 1..=3 {
        bravo.replay(&captured, alpha.local_addr()).await;
        wait_for_count(&counters.replayed, round * captured.len() as u64).await;
    }
    // Long enough for a datagram let through to have reached the view.
    sleep(Duration::from_millis(200)).await;
    assert_eq!(alpha.view().borrow().config_number, number);
    assert!(alpha.view().borrow().alive.is_empty());
    let members = alpha.members().await.unwrap();
    assert!(
        members
            .iter()
            .any(|m| m.name == "node-bravo" && m.state == MemberState::Down),
        "{members:?}"
    );
    assert_eq!(
        counters.replayed.load(Ordering::Relaxed),
        3 * captured.len() as u64
    );
    assert_eq!(counters.rejected.load(Ordering::Relaxed), 0);
    assert_eq!(counters.stale.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn a_datagram_captured_before_a_node_started_is_refused_by_it() {
    // An eavesdropper's socket on the address charlie will have.
    let eavesdropper = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let charlie_addr = eavesdropper.local_addr().unwrap();
    let mut bravo = HandDriven::start("node-bravo").await;
    bravo.announce(charlie_addr).await;
    let mut captured = vec![0; 65536];
    let (len, _) = eavesdropper.recv_from(&mut captured).await.unwrap();
    captured.truncate(len);
    drop(eavesdropper);
    // The timestamps have millisecond resolution.
    sleep(Duration::from_millis(20)).await;
    let charlie = Gossip::start(config(
        "node-charlie",
        &charlie_addr.to_string(),
        &[],
        SECRET,
    ))
    .await
    .unwrap();
    // Let in, it would make charlie believe bravo is alive, and answer it.
    bravo.replay(&[captured], charlie_addr).await;
    let mut answer = [0; 64];
    let answered = timeout(
        Duration::from_millis(300),
        bravo.socket.recv_from(&mut answer),
    )
    .await;
    assert!(answered.is_err(), "charlie answered a captured announce");
    assert!(charlie.view().borrow().alive.is_empty());
    assert_eq!(charlie.view().borrow().config_number, 0);
    assert_eq!(charlie.members().await.unwrap().len(), 1);
    assert_eq!(charlie.counters().stale.load(Ordering::Relaxed), 1);
}
