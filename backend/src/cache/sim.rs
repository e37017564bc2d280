//! A seeded simulation of the coherence protocol: one root and many
//! holders over a network that delays, reorders and loses messages, with
//! partitions, holders that die and come back empty, and clocks that run
//! at different rates. Every millisecond it checks that each valid copy
//! is one the root counts, at the root's current version; at the end, that
//! every read saw every write acknowledged before it began, and that every
//! request of a live node ended once the faults healed.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use super::{
    Directory, DirectoryAction, Extent, Holder, HolderAction, HolderId, LeaseConfig, Millis,
    Stamped, Up, Version,
};
use crate::xorshift::XorShift;

const CONFIG: LeaseConfig = LeaseConfig {
    ttl_ms: 1_000,
    drift_ppm: 5_000,
    resend_ms: 100,
};

#[derive(Debug, Clone, Copy)]
struct Faults {
    /// How far clock rates stray from real time, each way (ppm).
    drift_ppm: u64,
    /// One message in this many is lost.
    loss_one_in: u64,
    max_delay_ms: u64,
    /// Each millisecond, a holder starts a partition with chance 1 in this.
    partition_one_in: u64,
    /// Each millisecond, a holder dies with chance 1 in this.
    death_one_in: u64,
}

const FAULTS: Faults = Faults {
    drift_ppm: 5_000,
    loss_one_in: 20,
    max_delay_ms: 30,
    partition_one_in: 4_000,
    death_one_in: 15_000,
};

const HOLDERS: u32 = 8;
const EXTENTS: u64 = 4;
const FAULTY_MS: Millis = 30_000;
const HEAL_MS: Millis = 12_000;

enum Msg {
    Up {
        from: HolderId,
        incarnation: u32,
        msg: Up,
    },
    Down {
        to: HolderId,
        incarnation: u32,
        msg: Stamped,
    },
    /// The root's shell finished writing an extent to the tail.
    Applied { extent: Extent },
}

struct Node {
    holder: Holder,
    /// A node that died and came back is a new incarnation: messages of
    /// its old connections never reach the new one (as with TCP).
    incarnation: u32,
    dead_until: Option<Millis>,
    partitioned_until: Millis,
    /// Its clock's rate, in ppm off real time.
    drift: i64,
    offset: Millis,
    /// Requests of this incarnation not yet done.
    open: BTreeSet<u64>,
}

fn clock(drift: i64, offset: Millis, t: Millis) -> Millis {
    let rate = 1_000_000 + drift;
    offset + (i128::from(t) * i128::from(rate) / 1_000_000) as Millis
}

#[derive(Debug, Clone, Copy)]
struct Read {
    extent: Extent,
    began: Millis,
    version: Version,
}

#[derive(Default)]
struct Stats {
    reads: u64,
    hits: u64,
    writes: u64,
    deaths: u64,
    partitions: u64,
}

struct World {
    rng: XorShift,
    faults: Faults,
    config: LeaseConfig,
    t: Millis,
    root: Directory,
    root_drift: i64,
    nodes: Vec<Node>,
    net: BinaryHeap<Reverse<(Millis, u64, usize)>>,
    msgs: Vec<Option<Msg>>,
    order: u64,
    next_id: u64,
    /// Extents being written to the tail.
    applying: BTreeSet<Extent>,
    /// Root-local writes not yet acknowledged.
    local_open: BTreeSet<u64>,
    /// When each acknowledged write was acknowledged, by extent: version.
    acked: BTreeMap<Extent, Vec<(Millis, Version)>>,
    began: BTreeMap<u64, (Extent, Millis)>,
    reads: Vec<Read>,
    stats: Stats,
}

impl World {
    fn new(seed: u64, faults: Faults, config: LeaseConfig) -> World {
        let mut rng = XorShift::new(seed);
        let drift = |rng: &mut XorShift| {
            rng.below(2 * faults.drift_ppm + 1) as i64 - faults.drift_ppm as i64
        };
        let root_drift = drift(&mut rng);
        let nodes = (0..HOLDERS)
            .map(|_| Node {
                holder: Holder::new(config),
                incarnation: 0,
                dead_until: None,
                partitioned_until: 0,
                drift: drift(&mut rng),
                offset: rng.below(1_000_000),
                open: BTreeSet::new(),
            })
            .collect();
        World {
            rng,
            faults,
            config,
            t: 0,
            root: Directory::new(1, config),
            root_drift,
            nodes,
            net: BinaryHeap::new(),
            msgs: Vec::new(),
            order: 0,
            next_id: 1,
            applying: BTreeSet::new(),
            local_open: BTreeSet::new(),
            acked: BTreeMap::new(),
            began: BTreeMap::new(),
            reads: Vec::new(),
            stats: Stats::default(),
        }
    }

    fn root_now(&self) -> Millis {
        clock(self.root_drift, 0, self.t)
    }

    fn now(&self, h: HolderId) -> Millis {
        let node = &self.nodes[h as usize];
        clock(node.drift, node.offset, self.t)
    }

    fn reachable(&self, h: HolderId) -> bool {
        let node = &self.nodes[h as usize];
        node.dead_until.is_none() && node.partitioned_until <= self.t
    }

    /// Puts `msg` on the network, unless it is lost.
    fn post(&mut self, msg: Msg, faulty: bool, delay: Millis) {
        if faulty && self.rng.one_in(self.faults.loss_one_in) {
            return;
        }
        self.order += 1;
        self.msgs.push(Some(msg));
        self.net
            .push(Reverse((self.t + delay, self.order, self.msgs.len() - 1)));
    }

    fn delay(&mut self) -> Millis {
        1 + self.rng.below(self.faults.max_delay_ms)
    }

    /// Carries out the root's actions. `reply`: the holder and incarnation
    /// whose message they answer: answers go back on the connection the
    /// question came on, which is gone with the process that opened it.
    fn root_actions(
        &mut self,
        actions: Vec<DirectoryAction>,
        faulty: bool,
        reply: Option<(HolderId, u32)>,
    ) {
        for action in actions {
            match action {
                DirectoryAction::Send { to, msg } => {
                    if !self.reachable(to) {
                        continue;
                    }
                    let incarnation = match reply {
                        Some((asker, incarnation)) if asker == to => incarnation,
                        _ => self.nodes[to as usize].incarnation,
                    };
                    let delay = self.delay();
                    self.post(
                        Msg::Down {
                            to,
                            incarnation,
                            msg,
                        },
                        faulty,
                        delay,
                    );
                }
                DirectoryAction::Apply { extent, writer } => {
                    assert!(
                        self.applying.insert(extent),
                        "two writes of extent {extent} applied at once ({writer:?})"
                    );
                    let delay = self.rng.below(5);
                    self.post(Msg::Applied { extent }, false, delay);
                }
                DirectoryAction::LocalWritten { id, version } => {
                    self.local_open.remove(&id);
                    self.ack(id, version);
                }
            }
        }
    }

    fn holder_actions(&mut self, h: HolderId, actions: Vec<HolderAction>, faulty: bool) {
        for action in actions {
            match action {
                HolderAction::Send(msg) => {
                    if !self.reachable(h) {
                        continue;
                    }
                    let incarnation = self.nodes[h as usize].incarnation;
                    let delay = self.delay();
                    self.post(
                        Msg::Up {
                            from: h,
                            incarnation,
                            msg,
                        },
                        faulty,
                        delay,
                    );
                }
                HolderAction::ReadDone { id, version, hit } => {
                    self.nodes[h as usize].open.remove(&id);
                    let (extent, began) = self.began[&id];
                    self.reads.push(Read {
                        extent,
                        began,
                        version,
                    });
                    self.stats.reads += 1;
                    self.stats.hits += u64::from(hit);
                    assert!(
                        version <= self.root.version(extent),
                        "read {id} saw version {version} of extent {extent}, which the root never wrote"
                    );
                }
                HolderAction::WriteDone { id, version } => {
                    self.nodes[h as usize].open.remove(&id);
                    self.ack(id, version);
                }
            }
        }
    }

    fn ack(&mut self, id: u64, version: Version) {
        let (extent, _) = self.began[&id];
        self.acked
            .entry(extent)
            .or_default()
            .push((self.t, version));
        self.stats.writes += 1;
    }

    fn deliver(&mut self, faulty: bool) {
        while let Some(&Reverse((at, _, index))) = self.net.peek() {
            if at > self.t {
                break;
            }
            self.net.pop();
            let Some(msg) = self.msgs[index].take() else {
                continue;
            };
            match msg {
                Msg::Applied { extent } => {
                    self.applying.remove(&extent);
                    let actions = self.root.applied(self.root_now(), extent);
                    self.root_actions(actions, faulty, None);
                }
                Msg::Up {
                    from,
                    incarnation,
                    msg,
                } => {
                    // A partition cuts both ways; a dead node's messages
                    // already sent may still arrive, as over a real network.
                    if self.nodes[from as usize].partitioned_until > self.t
                        && self.nodes[from as usize].incarnation == incarnation
                    {
                        continue;
                    }
                    let actions = self.root.receive(self.root_now(), from, msg);
                    self.root_actions(actions, faulty, Some((from, incarnation)));
                }
                Msg::Down {
                    to,
                    incarnation,
                    msg,
                } => {
                    if !self.reachable(to) || self.nodes[to as usize].incarnation != incarnation {
                        continue;
                    }
                    let now = self.now(to);
                    let actions = self.nodes[to as usize].holder.receive(now, msg);
                    self.holder_actions(to, actions, faulty);
                }
            }
        }
    }

    /// The dead whose time is up come back empty: a new process, with
    /// new connections.
    fn return_the_dead(&mut self) {
        for node in &mut self.nodes {
            if node.dead_until.is_some_and(|until| self.t >= until) {
                node.dead_until = None;
                node.incarnation += 1;
                node.holder = Holder::new(self.config);
            }
        }
    }

    fn faults(&mut self) {
        self.return_the_dead();
        for h in 0..HOLDERS {
            if self.nodes[h as usize].dead_until.is_some() {
                continue;
            }
            if self.rng.one_in(self.faults.death_one_in) {
                let down = 100 + self.rng.below(2_000);
                let node = &mut self.nodes[h as usize];
                node.dead_until = Some(self.t + down);
                // The requests die with the process that made them.
                node.open.clear();
                self.stats.deaths += 1;
            } else if self.rng.one_in(self.faults.partition_one_in) {
                let cut = 50 + self.rng.below(3_000);
                self.nodes[h as usize].partitioned_until = self.t + cut;
                self.stats.partitions += 1;
            }
        }
    }

    fn workload(&mut self) {
        if !self.rng.one_in(10) {
            return;
        }
        let extent = self.rng.below(EXTENTS);
        let write = self.rng.one_in(4);
        let id = self.next_id;
        self.next_id += 1;
        self.began.insert(id, (extent, self.t));
        let who = self.rng.below(u64::from(HOLDERS) + 1);
        if who == u64::from(HOLDERS) {
            if write {
                self.local_open.insert(id);
                let actions = self.root.write_local(self.root_now(), id, extent);
                self.root_actions(actions, true, None);
            } else {
                let version = self.root.version(extent);
                self.reads.push(Read {
                    extent,
                    began: self.t,
                    version,
                });
            }
            return;
        }
        let h = who as HolderId;
        if self.nodes[h as usize].dead_until.is_some() {
            return;
        }
        let now = self.now(h);
        self.nodes[h as usize].open.insert(id);
        let actions = match write {
            true => self.nodes[h as usize].holder.write(now, id, extent),
            false => self.nodes[h as usize].holder.read(now, id, extent),
        };
        self.holder_actions(h, actions, true);
    }

    fn tick(&mut self, faulty: bool) {
        let actions = self.root.tick(self.root_now());
        self.root_actions(actions, faulty, None);
        for h in 0..HOLDERS {
            if self.nodes[h as usize].dead_until.is_some() {
                continue;
            }
            let now = self.now(h);
            let actions = self.nodes[h as usize].holder.tick(now);
            self.holder_actions(h, actions, faulty);
        }
    }

    /// Every valid copy is one the root counts, at its current version.
    fn check_copies(&self) {
        for h in 0..HOLDERS {
            if self.nodes[h as usize].dead_until.is_some() {
                continue;
            }
            for extent in 0..EXTENTS {
                let Some(version) = self.nodes[h as usize].holder.copy(self.now(h), extent) else {
                    continue;
                };
                assert!(
                    self.root.may_hold(h, extent),
                    "t={} holder {h} holds extent {extent} (version {version}) that the root no longer counts",
                    self.t
                );
                assert_eq!(
                    version,
                    self.root.version(extent),
                    "t={} holder {h}'s copy of extent {extent} is stale",
                    self.t
                );
            }
        }
    }

    /// Every read saw every write acknowledged before it began.
    fn check_reads(&self) {
        for read in &self.reads {
            let newest = self
                .acked
                .get(&read.extent)
                .into_iter()
                .flatten()
                .filter(|(at, _)| *at < read.began)
                .map(|(_, version)| *version)
                .max()
                .unwrap_or(0);
            assert!(
                read.version >= newest,
                "a read of extent {} begun at {} saw version {} after version {newest} was acknowledged",
                read.extent,
                read.began,
                read.version
            );
        }
    }

    fn run(&mut self) {
        while self.t < FAULTY_MS {
            self.deliver(true);
            self.faults();
            self.tick(true);
            self.workload();
            self.check_copies();
            self.t += 1;
        }
        // Heal: no new faults or requests; partitions end, the dead return.
        for node in &mut self.nodes {
            node.partitioned_until = 0;
        }
        while self.t < FAULTY_MS + HEAL_MS {
            self.deliver(false);
            self.return_the_dead();
            self.tick(false);
            self.check_copies();
            self.t += 1;
        }
        self.check_reads();
        for (h, node) in self.nodes.iter().enumerate() {
            assert!(
                node.open.is_empty() && !node.holder.waiting(),
                "holder {h}'s requests {:?} never ended",
                node.open
            );
        }
        assert!(self.local_open.is_empty(), "root writes never ended");
        assert!(self.applying.is_empty());
    }
}

#[test]
fn copies_stay_current_and_every_request_ends_under_faults() {
    for seed in 0..24 {
        let mut world = World::new(seed, FAULTS, CONFIG);
        world.run();
        let s = &world.stats;
        assert!(
            s.reads > 1_000 && s.writes > 300,
            "seed {seed}: too little load"
        );
        assert!(
            s.hits > 0 && s.deaths + s.partitions > 0,
            "seed {seed}: no hits or no faults"
        );
    }
}

/// The mutation the simulation must catch: holders that count their lease
/// as long as the root does, with no margin for clocks that drift 2%.
#[test]
fn a_lease_without_a_drift_margin_is_caught_outliving_the_root_s_count() {
    let faults = Faults {
        drift_ppm: 20_000,
        ..FAULTS
    };
    let margined = LeaseConfig {
        drift_ppm: 20_000,
        ..CONFIG
    };
    World::new(1, faults, margined).run();
    let unmargined = LeaseConfig {
        drift_ppm: 0,
        ..CONFIG
    };
    let caught = (0..24).any(|seed| {
        let run = std::panic::catch_unwind(|| World::new(seed, faults, unmargined).run());
        run.is_err_and(|why| {
            why.downcast_ref::<String>()
                .is_some_and(|s| s.contains("the root no longer counts"))
        })
    });
    assert!(caught, "no seed caught a lease outliving the root's count");
}
