//! A deterministic simulation of a cluster's membership: N foca instances in
//! one process, a virtual clock, and a network that delays and loses
//! packets, so that detection times, message rates and false verdicts can
//! be measured for thousands of members in seconds, and rerun exactly.
//!
//! Everything that varies comes from the seed: one random stream for the
//! network (each packet's loss and latency) and one per member for foca.
//! Events that fall at the same instant run in the order they were
//! scheduled, so a run depends on nothing but its [`SimConfig`].

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use foca::{AccumulatingRuntime, Foca, NoCustomBroadcast, OwnedNotification, PostcardCodec, Timer};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::{Change, NodeId, NodeMeta, Timing, View};

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// How many members, all started at once.
    pub nodes: usize,
    /// Seeds every random choice of the run.
    pub seed: u64,
    /// Probability that a packet is lost, each packet independently.
    pub loss: f64,
    /// One-way latency, drawn uniformly in `[min, max]` for each packet.
    pub latency: (Duration, Duration),
    /// The members' timing; each foca gets `timing.foca_config(nodes)`.
    pub timing: Timing,
}

/// The sim's running totals, over all members since the start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Packets handed to the network, lost ones included.
    pub packets: u64,
    /// Their foca bytes (no envelope, no UDP/IP headers).
    pub bytes: u64,
    /// Packets the network lost.
    pub lost: u64,
    /// Times a member removed from its view another member that had not
    /// been killed: one per (observer, identity) verdict.
    pub false_downs: u64,
    /// Times a live member learnt it was declared down and rejoined under
    /// a renewed identity.
    pub rejoins: u64,
    /// Errors foca returned; packets from members that were declared down,
    /// for one, are refused this way.
    pub foca_errors: u64,
}

/// A simulated cluster.
pub struct Sim {
    now: Duration,
    /// Min-heap on (time, sequence number): ties run in scheduling order.
    queue: BinaryHeap<Reverse<Event>>,
    next_seq: u64,
    network: StdRng,
    loss: f64,
    latency: (Duration, Duration),
    nodes: Vec<Node>,
    by_name: HashMap<String, usize>,
    /// Shared by all members: drained after every call into a foca.
    runtime: AccumulatingRuntime<NodeId>,
    /// Live members whose view does not yet count every other live member;
    /// kept up to date so that convergence is checked without a scan.
    incomplete: usize,
    kills: Vec<Kill>,
    counters: Counters,
}

type Member = Foca<NodeId, PostcardCodec, StdRng, NoCustomBroadcast>;

struct Node {
    foca: Member,
    view: View,
    alive: bool,
}

/// A killed member and, once every live member has dropped it from its
/// view, how long that took.
struct Kill {
    node: usize,
    at: Duration,
    detected_after: Option<Duration>,
}

struct Event {
    at: Duration,
    seq: u64,
    node: usize,
    kind: EventKind,
}

enum EventKind {
    /// Members join by announcing themselves to a seed, again every
    /// `ANNOUNCE_RETRY` until they know it: being active is not enough, as
    /// a seed that others joined may yet be apart from the other seeds.
    Announce {
        seed: usize,
    },
    Deliver(Bytes),
    Timer(Timer<NodeId>),
}

impl Ord for Event {
    fn cmp(&self, other: &Event) -> Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

impl PartialOrd for Event {
    fn partial_cmp(&self, other: &Event) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Event {
    fn eq(&self, other: &Event) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Event {}

/// Members announce themselves within this window after the start, so that
/// the seed is not handed a thousand announces in one instant.
const JOIN_WINDOW: Duration = Duration::from_millis(100);

/// How many members the others announce themselves to.
const SEEDS: usize = 3;

/// How long a member waits for an answer to its announce before it sends
/// another.
const ANNOUNCE_RETRY: Duration = Duration::from_secs(1);

/// An incarnation in the range the wall-clock start gives a real node
/// (milliseconds since 1970, late 2026), fixed so that runs repeat and
/// packets have their real size.
const INCARNATION: u64 = 1_795_000_000_000;

impl Sim {
    /// A cluster of `config.nodes` members, each about to announce itself
    /// to one of the first few members (the seeds) at a random instant of
    /// the first 100 ms.
    pub fn new(config: SimConfig) -> Sim {
        let mut seeder = StdRng::seed_from_u64(config.seed);
        let network = StdRng::seed_from_u64(seeder.random());
        let foca_config = config.timing.foca_config(config.nodes);
        let nodes: Vec<Node> = (0..config.nodes)
            .map(|index| Node {
                foca: Foca::new(
                    identity(index),
                    foca_config.clone(),
                    StdRng::seed_from_u64(seeder.random()),
                    PostcardCodec,
                ),
                view: View::default(),
                alive: true,
            })
            .collect();
        let by_name = nodes
            .iter()
            .enumerate()
            .map(|(index, node)| (node.foca.identity().name.clone(), index))
            .collect();
        let mut sim = Sim {
            now: Duration::ZERO,
            queue: BinaryHeap::new(),
            next_seq: 0,
            network,
            loss: config.loss,
            latency: config.latency,
            incomplete: 0,
            nodes,
            by_name,
            runtime: AccumulatingRuntime::new(),
            kills: Vec::new(),
            counters: Counters::default(),
        };
        sim.count_incomplete();
        let seeds = SEEDS.min(config.nodes);
        for node in 1..config.nodes {
            let at = sim.network.random_range(Duration::ZERO..JOIN_WINDOW);
            // Seeds announce to a lower seed, so they all meet.
            let seed = node % seeds.min(node);
            sim.schedule(at, node, EventKind::Announce { seed });
        }
        sim
    }

    /// Virtual time since the start.
    pub fn now(&self) -> Duration {
        self.now
    }

    /// How many members have not been killed.
    pub fn live(&self) -> usize {
        self.nodes.len() - self.kills.len()
    }

    /// The running totals since the start.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Runs every event up to `time`, then sets the clock to it.
    pub fn run_until(&mut self, time: Duration) {
        self.run_while(time, |_| true);
        self.now = self.now.max(time);
    }

    /// Runs until every live member's view counts every other live member,
    /// or until `limit`; returns the time of convergence, if reached.
    pub fn run_until_converged(&mut self, limit: Duration) -> Option<Duration> {
        self.run_while(limit, |sim| sim.incomplete > 0);
        (self.incomplete == 0).then_some(self.now)
    }

    /// Stops member `node`: from now on, packets to it are lost and its
    /// timers are ignored, as for a process killed without warning.
    pub fn kill(&mut self, node: usize) {
        let Some(victim) = self.nodes.get_mut(node) else {
            return;
        };
        if !victim.alive {
            return;
        }
        victim.alive = false;
        self.kills.push(Kill {
            node,
            at: self.now,
            detected_after: None,
        });
        self.count_incomplete();
    }

    /// Runs until every live member has dropped killed member `node` from
    /// its view, or until `limit`; returns how long after the kill that
    /// was, if it was.
    pub fn run_until_detected(&mut self, node: usize, limit: Duration) -> Option<Duration> {
        self.run_while(limit, |sim| sim.detection(node).is_none());
        self.detection(node)
    }

    /// How long after member `node` was killed every live member had
    /// dropped it from its view; `None` if it was not killed or some live
    /// member still counts it.
    pub fn detection(&self, node: usize) -> Option<Duration> {
        self.kills
            .iter()
            .find(|kill| kill.node == node)
            .and_then(|kill| kill.detected_after)
    }

    /// Runs events while `keep_going` holds and the next one is due by
    /// `limit`.
    fn run_while(&mut self, limit: Duration, keep_going: impl Fn(&Sim) -> bool) {
        while keep_going(self) {
            match self.queue.peek() {
                Some(Reverse(event)) if event.at <= limit => {}
                _ => break,
            }
            let Some(Reverse(event)) = self.queue.pop() else {
                break;
            };
            self.now = event.at;
            self.handle(event);
        }
    }

    fn handle(&mut self, event: Event) {
        let Some(node) = self.nodes.get_mut(event.node) else {
            return;
        };
        if !node.alive {
            return;
        }
        let result = match event.kind {
            EventKind::Announce { seed } => {
                let seed_id = identity(seed);
                if node.view.alive.contains_key(&seed_id.name) {
                    return;
                }
                let result = node.foca.announce(seed_id, &mut self.runtime);
                let at = self.now + ANNOUNCE_RETRY;
                self.schedule(at, event.node, EventKind::Announce { seed });
                result
            }
            EventKind::Deliver(data) => node.foca.handle_data(&data, &mut self.runtime),
            EventKind::Timer(timer) => node.foca.handle_timer(timer, &mut self.runtime),
        };
        if result.is_err() {
            self.counters.foca_errors += 1;
        }
        self.drain(event.node);
    }

    /// Carries out what member `from`'s foca asked for: packets onto the
    /// network, timers into the queue, notifications into its view.
    fn drain(&mut self, from: usize) {
        while let Some((to, data)) = self.runtime.to_send() {
            self.counters.packets += 1;
            self.counters.bytes += data.len() as u64;
            // Both draws happen for every packet, so that one packet's fate
            // does not shift the random stream of the ones after it.
            let lost = self.network.random_bool(self.loss);
            let latency = self.network.random_range(self.latency.0..=self.latency.1);
            match self.by_name.get(&to.name) {
                Some(&dst) if !lost => {
                    self.schedule(self.now + latency, dst, EventKind::Deliver(data))
                }
                _ => self.counters.lost += 1,
            }
        }
        while let Some((after, timer)) = self.runtime.to_schedule() {
            self.schedule(self.now + after, from, EventKind::Timer(timer));
        }
        while let Some(notification) = self.runtime.to_notify() {
            self.notify(from, notification);
        }
    }

    fn notify(&mut self, observer: usize, notification: OwnedNotification<NodeId>) {
        let live = self.live();
        let Some(node) = self.nodes.get_mut(observer) else {
            return;
        };
        if let OwnedNotification::Rejoin(_) = notification {
            self.counters.rejoins += 1;
        }
        let complete_before = node.view.alive.len() + 1 == live;
        let change = node.view.apply(notification);
        let complete_after = node.view.alive.len() + 1 == live;
        match (complete_before, complete_after) {
            (false, true) => self.incomplete -= 1,
            (true, false) => self.incomplete += 1,
            _ => {}
        }
        if let Some(Change::Down(id)) = change {
            self.judge_down(&id.name);
        }
    }

    /// Counts a member dropped from a view: a false verdict if it is alive,
    /// else perhaps the last live member learning of a kill.
    fn judge_down(&mut self, name: &str) {
        let Some(&subject) = self.by_name.get(name) else {
            return;
        };
        if self.nodes[subject].alive {
            self.counters.false_downs += 1;
            return;
        }
        let everyone_knows = |nodes: &[Node]| {
            nodes
                .iter()
                .all(|node| !node.alive || !node.view.alive.contains_key(name))
        };
        if let Some(kill) = self
            .kills
            .iter_mut()
            .find(|kill| kill.node == subject && kill.detected_after.is_none())
        {
            if everyone_knows(&self.nodes) {
                kill.detected_after = Some(self.now - kill.at);
            }
        }
    }

    fn count_incomplete(&mut self) {
        let live = self.live();
        self.incomplete = self
            .nodes
            .iter()
            .filter(|node| node.alive && node.view.alive.len() + 1 != live)
            .count();
    }

    fn schedule(&mut self, at: Duration, node: usize, kind: EventKind) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.queue.push(Reverse(Event {
            at,
            seq,
            node,
            kind,
        }));
    }
}

/// Member `index`'s identity, with metadata the size of a real node's: two
/// links and two tails.
fn identity(index: usize) -> NodeId {
    let host = |net: u8| {
        let [_, _, hi, lo] = (index as u32 + 1).to_be_bytes();
        SocketAddr::from(([10, net, hi, lo], 7000))
    };
    let name = format!("node{index:04}");
    NodeId {
        gossip: host(0),
        incarnation: INCARNATION,
        meta: NodeMeta {
            links: vec![host(1), host(2)],
            tails: vec![format!("{name}-disk0"), format!("{name}-disk1")],
            version: "0.1.0".into(),
        },
        name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(seed: u64) -> SimConfig {
        SimConfig {
            nodes: 10,
            seed,
            loss: 0.0,
            latency: (Duration::from_micros(100), Duration::from_millis(1)),
            timing: Timing::default(),
        }
    }

    /// Converges, kills member 3 and waits for everyone to see it; what
    /// the run measured, for comparing runs.
    fn converge_and_kill(seed: u64) -> (Duration, Option<Duration>, Counters) {
        let mut sim = Sim::new(config(seed));
        let converged = sim.run_until_converged(Duration::from_secs(10)).unwrap();
        sim.kill(3);
        let detected = sim.run_until_detected(3, converged + Duration::from_secs(30));
        (converged, detected, sim.counters())
    }

    #[test]
    fn ten_members_converge_within_seconds() {
        let mut sim = Sim::new(config(1));
        let converged = sim.run_until_converged(Duration::from_secs(10));
        assert!(
            converged.is_some_and(|at| at < Duration::from_secs(5)),
            "{converged:?}"
        );
        assert_eq!(sim.live(), 10);
    }

    #[test]
    fn every_live_member_sees_a_killed_one_down_within_the_timing_bound() {
        let timing = Timing::default();
        // Probed within a few periods, suspected at the end of the failed
        // probe's period, down `suspect_to_down` later, then gossiped.
        let bound = timing.probe_period * 3 + timing.suspect_to_down + Duration::from_secs(2);
        let (_, detected, counters) = converge_and_kill(1);
        assert!(
            detected.is_some_and(|after| after <= bound),
            "{detected:?} > {bound:?}"
        );
        assert_eq!(counters.false_downs, 0);
    }

    #[test]
    fn no_member_is_declared_down_without_loss_over_two_minutes() {
        let mut sim = Sim::new(config(2));
        sim.run_until_converged(Duration::from_secs(10)).unwrap();
        sim.run_until(Duration::from_secs(120));
        let counters = sim.counters();
        assert_eq!((counters.false_downs, counters.rejoins), (0, 0));
        assert_eq!(counters.lost, 0);
        assert!(counters.packets > 0);
    }

    #[test]
    fn the_same_seed_gives_the_same_run() {
        assert_eq!(converge_and_kill(7), converge_and_kill(7));
    }

    #[test]
    fn another_seed_gives_another_run() {
        assert_ne!(converge_and_kill(7), converge_and_kill(8));
    }

    #[test]
    fn lost_packets_are_counted() {
        let mut sim = Sim::new(SimConfig {
            loss: 0.5,
            ..config(3)
        });
        sim.run_until(Duration::from_secs(5));
        let counters = sim.counters();
        assert!(counters.lost > counters.packets / 4, "{counters:?}");
        assert!(counters.lost < counters.packets * 3 / 4, "{counters:?}");
    }
}
