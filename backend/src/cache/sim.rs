//! A seeded simulation of the coherence protocol: one root and many
//! caching nodes, flat under the root or as a tree of relays, over a
//! network that delays, reorders and loses messages, with nodes cut off
//! from their parent (a whole subtree with them), caches that let extents
//! go, nodes that die and come back empty, children that move to the root when their parent is lost
//! and back when it returns, and clocks that run at different rates.
//! Every millisecond it checks that each valid copy is at the root's
//! current version and counted by its holder's parent; at the end, that
//! every read saw every write acknowledged before it began, and that every
//! request of a live node ended once the faults healed.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use super::{
    Directory, DirectoryAction, Extent, HolderId, LeaseConfig, Millis, Relay, RelayAction, Stamped,
    Up, Version,
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
    /// Each millisecond, a node is cut off from its parent with chance 1
    /// in this.
    cut_one_in: u64,
    /// Each millisecond, a node dies with chance 1 in this.
    death_one_in: u64,
    /// Each millisecond, a node's cache lets an extent go with chance 1
    /// in this.
    evict_one_in: u64,
}

const FAULTS: Faults = Faults {
    drift_ppm: 5_000,
    loss_one_in: 20,
    max_delay_ms: 30,
    cut_one_in: 4_000,
    death_one_in: 15_000,
    evict_one_in: 500,
};

const EXTENTS: u64 = 4;
/// How often the shells tick the cores (messages and requests are handled
/// as they come, every millisecond).
const TICK_MS: Millis = 5;
const FAULTY_MS: Millis = 30_000;
const HEAL_MS: Millis = 12_000;
/// How long a node stays with a parent that died before it moves to the
/// root (the shell learns it from the link's heartbeats).
const LOST_PARENT_MS: Millis = 200;
/// How long a node goes without a lease before it leaves a parent that
/// is alive but cannot renew it (cut off above).
const UNLEASED_MS: Millis = 2_000;
/// How long a node stays at the root before it goes back to its own
/// parent, once that parent holds a lease again.
const BACK_HOME_MS: Millis = 3_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Parent {
    Root,
    Node(usize),
}

/// A connection from a node to its parent: gone with the process at
/// either end (as with TCP), and replaced when the node moves.
#[derive(Debug, Clone, Copy)]
struct Session {
    child: usize,
    child_incarnation: u32,
    parent: Parent,
    parent_incarnation: u32,
}

/// A holder is a process: a node that dies and comes back is a new
/// holder to its parent, whose request numbers start again.
fn holder_id(node: usize, incarnation: u32) -> HolderId {
    (node as HolderId) << 16 | (incarnation & 0xffff)
}

enum Msg {
    Up {
        session: usize,
        msg: Up,
    },
    Down {
        session: usize,
        msg: Stamped,
    },
    /// The shell of the root of `epoch` finished writing an extent to the
    /// tail.
    Applied {
        extent: Extent,
        epoch: u64,
    },
}

struct Node {
    relay: Relay,
    /// Its parent in the tree.
    home: Parent,
    session: usize,
    /// A node that died and came back is a new incarnation, with new
    /// connections.
    incarnation: u32,
    dead_until: Option<Millis>,
    /// Cut off from its parent (its subtree with it) until then.
    cut_until: Millis,
    /// Its clock's rate, in ppm off real time.
    drift: i64,
    offset: Millis,
    /// Requests of this incarnation not yet done.
    open: BTreeSet<u64>,
    attached_at: Millis,
    lost_parent_since: Option<Millis>,
    unleased_since: Option<Millis>,
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
    cuts: u64,
    moves: u64,
    /// Hits on a copy held under a relay.
    nested_hits: u64,
    takeovers: u64,
}

struct World {
    rng: XorShift,
    faults: Faults,
    config: LeaseConfig,
    t: Millis,
    root: Directory,
    root_epoch: u64,
    root_drift: i64,
    /// When the root dies, if it does: the second root takes over.
    root_dies_at: Option<Millis>,
    /// Dead until then, when the second root takes over.
    root_down_until: Option<Millis>,
    /// How long the second root waits, on its own clock.
    takeover_wait_ms: Millis,
    nodes: Vec<Node>,
    sessions: Vec<Session>,
    net: BinaryHeap<Reverse<(Millis, u64, usize)>>,
    msgs: Vec<Option<Msg>>,
    order: u64,
    next_id: u64,
    /// Extents being written to the tail.
    applying: BTreeSet<Extent>,
    /// Root-local writes not yet acknowledged.
    local_open: BTreeSet<u64>,
    /// When each acknowledged write was acknowledged, by extent: version
    /// (versions grow across roots too).
    acked: BTreeMap<Extent, Vec<(Millis, Version)>>,
    began: BTreeMap<u64, (Extent, Millis)>,
    reads: Vec<Read>,
    stats: Stats,
}

/// Every node a child of the root.
fn flat(nodes: usize) -> Vec<Parent> {
    vec![Parent::Root; nodes]
}

/// A binary tree of `levels` levels under the root: two children of the
/// root, two of each of those, and so on.
fn binary_tree(levels: u32) -> Vec<Parent> {
    let nodes = (1..=levels).map(|level| 1 << level).sum();
    (0..nodes)
        .map(|n| match n {
            0 | 1 => Parent::Root,
            _ => Parent::Node((n - 2) / 2),
        })
        .collect()
}

impl World {
    fn new(seed: u64, faults: Faults, config: LeaseConfig, homes: &[Parent]) -> World {
        let mut rng = XorShift::new(seed);
        let drift = |rng: &mut XorShift| {
            rng.below(2 * faults.drift_ppm + 1) as i64 - faults.drift_ppm as i64
        };
        let root_drift = drift(&mut rng);
        let nodes = homes
            .iter()
            .map(|&home| Node {
                relay: Relay::new(config),
                home,
                session: 0,
                incarnation: 0,
                dead_until: None,
                cut_until: 0,
                drift: drift(&mut rng),
                offset: rng.below(1_000_000),
                open: BTreeSet::new(),
                attached_at: 0,
                lost_parent_since: None,
                unleased_since: None,
            })
            .collect();
        let mut world = World {
            rng,
            faults,
            config,
            t: 0,
            root: Directory::new(1, config),
            root_epoch: 1,
            root_drift,
            root_dies_at: None,
            root_down_until: None,
            takeover_wait_ms: config.takeover_after_ms(),
            nodes,
            sessions: Vec::new(),
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
        };
        for (n, &home) in homes.iter().enumerate() {
            world.connect(n, home);
        }
        world
    }

    fn root_now(&self) -> Millis {
        clock(self.root_drift, 0, self.t)
    }

    fn now(&self, n: usize) -> Millis {
        let node = &self.nodes[n];
        clock(node.drift, node.offset, self.t)
    }

    fn alive(&self, n: usize) -> bool {
        self.nodes[n].dead_until.is_none()
    }

    /// Opens a new connection from `n` to `parent`.
    fn connect(&mut self, n: usize, parent: Parent) {
        let parent_incarnation = match parent {
            Parent::Root => self.root_epoch as u32,
            Parent::Node(p) => self.nodes[p].incarnation,
        };
        self.sessions.push(Session {
            child: n,
            child_incarnation: self.nodes[n].incarnation,
            parent,
            parent_incarnation,
        });
        let node = &mut self.nodes[n];
        node.session = self.sessions.len() - 1;
        node.attached_at = self.t;
        node.lost_parent_since = None;
        node.unleased_since = None;
    }

    /// The parent end of `session` is the process that accepted it.
    fn parent_there(&self, session: &Session) -> bool {
        match session.parent {
            Parent::Root => {
                self.root_down_until.is_none()
                    && session.parent_incarnation == self.root_epoch as u32
            }
            Parent::Node(p) => {
                self.alive(p) && self.nodes[p].incarnation == session.parent_incarnation
            }
        }
    }

    /// Whether a message on `session` gets through now: both ends are the
    /// processes that opened it, and the child is not cut off.
    fn open_session(&self, session: usize) -> bool {
        let s = self.sessions[session];
        let child = &self.nodes[s.child];
        child.session == session
            && child.dead_until.is_none()
            && child.cut_until <= self.t
            && self.parent_there(&s)
    }

    /// Puts `msg` on the network, unless it is lost.
    fn post(&mut self, msg: Msg, faulty: bool) {
        if faulty && self.rng.one_in(self.faults.loss_one_in) {
            return;
        }
        let delay = 1 + self.rng.below(self.faults.max_delay_ms);
        self.order += 1;
        self.msgs.push(Some(msg));
        self.net
            .push(Reverse((self.t + delay, self.order, self.msgs.len() - 1)));
    }

    /// Sends `msg` from `parent` to `to` on `to`'s connection, if it is
    /// one to `parent`.
    fn send_down(&mut self, parent: Parent, to: HolderId, msg: Stamped, faulty: bool) {
        let node = &self.nodes[(to >> 16) as usize];
        if holder_id(to as usize >> 16, node.incarnation) != to {
            return;
        }
        let session = node.session;
        if self.sessions[session].parent == parent && self.open_session(session) {
            self.post(Msg::Down { session, msg }, faulty);
        }
    }

    fn root_actions(&mut self, actions: Vec<DirectoryAction>, faulty: bool) {
        for action in actions {
            match action {
                DirectoryAction::Send { to, msg } => self.send_down(Parent::Root, to, msg, faulty),
                DirectoryAction::Apply { extent, writer } => {
                    assert!(
                        self.applying.insert(extent),
                        "two writes of extent {extent} applied at once ({writer:?})"
                    );
                    self.order += 1;
                    let epoch = self.root_epoch;
                    self.msgs.push(Some(Msg::Applied { extent, epoch }));
                    let at = self.t + self.rng.below(5);
                    self.net
                        .push(Reverse((at, self.order, self.msgs.len() - 1)));
                }
                DirectoryAction::LocalWritten { id, version } => {
                    self.local_open.remove(&id);
                    self.ack(id, version);
                }
            }
        }
    }

    fn relay_actions(&mut self, n: usize, actions: Vec<RelayAction>, faulty: bool) {
        for action in actions {
            match action {
                RelayAction::Up(msg) => {
                    let session = self.nodes[n].session;
                    if self.open_session(session) {
                        self.post(Msg::Up { session, msg }, faulty);
                    }
                }
                RelayAction::Down { to, msg } => self.send_down(Parent::Node(n), to, msg, faulty),
                RelayAction::ReadDone { id, version, hit } => {
                    self.nodes[n].open.remove(&id);
                    let (extent, began) = self.began[&id];
                    self.reads.push(Read {
                        extent,
                        began,
                        version,
                    });
                    self.stats.reads += 1;
                    self.stats.hits += u64::from(hit);
                    let parent = self.sessions[self.nodes[n].session].parent;
                    self.stats.nested_hits += u64::from(hit && parent != Parent::Root);
                    assert!(
                        version <= self.root.version(extent),
                        "read {id} saw version {version} of extent {extent}, which no root wrote"
                    );
                }
                RelayAction::WriteDone { id, version } => {
                    self.nodes[n].open.remove(&id);
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
                Msg::Applied { extent, epoch } => {
                    // A dead root's shell is gone with it.
                    if epoch != self.root_epoch || self.root_down_until.is_some() {
                        continue;
                    }
                    self.applying.remove(&extent);
                    let actions = self.root.applied(self.root_now(), extent);
                    self.root_actions(actions, faulty);
                }
                Msg::Up { session, msg } => {
                    // A message already on its way arrives even if its
                    // sender has died since, as over a real network; not
                    // across a cut, nor to a process that is gone.
                    let s = self.sessions[session];
                    let child = &self.nodes[s.child];
                    if child.session != session
                        || child.cut_until > self.t
                        || !self.parent_there(&s)
                    {
                        continue;
                    }
                    let from = holder_id(s.child, s.child_incarnation);
                    match s.parent {
                        Parent::Root => {
                            let actions = self.root.receive(self.root_now(), from, msg);
                            self.root_actions(actions, faulty);
                        }
                        Parent::Node(p) => {
                            let now = self.now(p);
                            let actions = self.nodes[p].relay.receive_down(now, from, msg);
                            self.relay_actions(p, actions, faulty);
                        }
                    }
                }
                Msg::Down { session, msg } => {
                    if !self.open_session(session) {
                        continue;
                    }
                    let n = self.sessions[session].child;
                    let now = self.now(n);
                    let actions = self.nodes[n].relay.receive_up(now, msg);
                    self.relay_actions(n, actions, faulty);
                }
            }
        }
    }

    /// The dead whose time is up come back empty, a new process with new
    /// connections, under their own parent.
    fn return_the_dead(&mut self) {
        for n in 0..self.nodes.len() {
            if self.nodes[n]
                .dead_until
                .is_some_and(|until| self.t >= until)
            {
                let node = &mut self.nodes[n];
                node.dead_until = None;
                node.incarnation += 1;
                node.relay = Relay::new(self.config);
                let home = node.home;
                self.connect(n, home);
            }
        }
    }

    /// Nodes leave a parent that died, or one that cannot renew their
    /// lease, for the root; and go back to their own parent once it is
    /// back in the tree.
    fn move_nodes(&mut self, faulty: bool) {
        for n in 0..self.nodes.len() {
            if !self.alive(n) {
                continue;
            }
            let now = self.now(n);
            let session = self.sessions[self.nodes[n].session];
            let leased = self.nodes[n].relay.leased(now);
            let parent_there = self.parent_there(&session);
            let node = &mut self.nodes[n];
            node.lost_parent_since = match parent_there {
                true => None,
                false => node.lost_parent_since.or(Some(self.t)),
            };
            node.unleased_since = match leased {
                true => None,
                false => node.unleased_since.or(Some(self.t)),
            };
            let root_up = self.root_down_until.is_none();
            let lost = node
                .lost_parent_since
                .is_some_and(|since| self.t >= since + LOST_PARENT_MS);
            let stuck = node.cut_until <= self.t
                && node
                    .unleased_since
                    .is_some_and(|since| self.t >= since + UNLEASED_MS);
            let (home, attached_at) = (node.home, node.attached_at);
            let to = match (session.parent, home) {
                // Its relay died, or cannot renew it (cut off above).
                (Parent::Node(_), _) => (root_up && (lost || stuck)).then_some(Parent::Root),
                // The root died: the second root, once it has taken over.
                (Parent::Root, _) if lost => root_up.then_some(Parent::Root),
                // Back to its own relay once that holds a lease again.
                (Parent::Root, Parent::Node(home)) => {
                    let settled = self.t >= attached_at + BACK_HOME_MS;
                    let home_ok = self.alive(home)
                        && self.nodes[home].cut_until <= self.t
                        && self.nodes[home].relay.leased(self.now(home));
                    (settled && home_ok).then_some(Parent::Node(home))
                }
                (Parent::Root, Parent::Root) => None,
            };
            if let Some(parent) = to {
                self.stats.moves += 1;
                self.connect(n, parent);
                let actions = self.nodes[n].relay.reattach(now);
                self.relay_actions(n, actions, faulty);
            }
        }
    }

    /// The root dies when it is due to; the second root takes over once
    /// its own clock says every lease the first one granted has ended.
    fn roots(&mut self) {
        if self.root_dies_at == Some(self.t) {
            // The second root's clock, which counts the wait.
            self.root_drift =
                self.rng.below(2 * self.faults.drift_ppm + 1) as i64 - self.faults.drift_ppm as i64;
            let wait = u128::from(self.takeover_wait_ms);
            let rate = (1_000_000 + self.root_drift) as u128;
            let real = (wait * 1_000_000).div_ceil(rate) as Millis;
            self.root_down_until = Some(self.t + real);
            // Its own requests die with it.
            self.local_open.clear();
        }
        if self.root_down_until.is_some_and(|until| self.t >= until) {
            self.root_down_until = None;
            self.root_epoch += 1;
            self.root = Directory::new(self.root_epoch, self.config);
            self.applying.clear();
            self.stats.takeovers += 1;
        }
    }

    fn faults(&mut self) {
        for n in 0..self.nodes.len() {
            if !self.alive(n) {
                continue;
            }
            if self.rng.one_in(self.faults.death_one_in) {
                let down = 100 + self.rng.below(2_000);
                let node = &mut self.nodes[n];
                node.dead_until = Some(self.t + down);
                // The requests die with the process that made them.
                node.open.clear();
                self.stats.deaths += 1;
            } else if self.rng.one_in(self.faults.cut_one_in) {
                let cut = 50 + self.rng.below(3_000);
                self.nodes[n].cut_until = self.t + cut;
                self.stats.cuts += 1;
            } else if self.rng.one_in(self.faults.evict_one_in) {
                let extent = self.rng.below(EXTENTS);
                let now = self.now(n);
                let actions = self.nodes[n].relay.evict(now, extent);
                self.relay_actions(n, actions, true);
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
        let who = self.rng.below(self.nodes.len() as u64 + 1) as usize;
        if who == self.nodes.len() {
            if self.root_down_until.is_some() {
                return;
            }
            if write {
                self.local_open.insert(id);
                let actions = self.root.write_local(self.root_now(), id, extent);
                self.root_actions(actions, true);
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
        if !self.alive(who) {
            return;
        }
        let now = self.now(who);
        self.nodes[who].open.insert(id);
        let actions = match write {
            true => self.nodes[who].relay.write(now, id, extent),
            false => self.nodes[who].relay.read(now, id, extent),
        };
        self.relay_actions(who, actions, true);
    }

    fn tick(&mut self, faulty: bool) {
        if !self.t.is_multiple_of(TICK_MS) {
            return;
        }
        if self.root_down_until.is_none() {
            let actions = self.root.tick(self.root_now());
            self.root_actions(actions, faulty);
        }
        for n in 0..self.nodes.len() {
            if !self.alive(n) {
                continue;
            }
            let now = self.now(n);
            let actions = self.nodes[n].relay.tick(now);
            self.relay_actions(n, actions, faulty);
        }
    }

    /// Every valid copy is at the root's current version, and counted by
    /// its holder's parent while that parent is the process it attached
    /// to.
    fn check_copies(&self) {
        for n in 0..self.nodes.len() {
            if !self.alive(n) {
                continue;
            }
            let session = self.sessions[self.nodes[n].session];
            let holder = holder_id(n, self.nodes[n].incarnation);
            for extent in 0..EXTENTS {
                let Some(version) = self.nodes[n].relay.copy(self.now(n), extent) else {
                    continue;
                };
                assert_eq!(
                    (self.nodes[n].relay.epoch(), version),
                    (self.root_epoch, self.root.version(extent)),
                    "t={} node {n}'s copy of extent {extent} is stale",
                    self.t
                );
                let counted = match session.parent {
                    Parent::Root => self.root.may_hold(holder, extent),
                    Parent::Node(p) => {
                        !self.parent_there(&session) || self.nodes[p].relay.may_hold(holder, extent)
                    }
                };
                assert!(
                    counted,
                    "t={} node {n} holds extent {extent} (version {version}) that its parent no longer counts",
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
            self.roots();
            self.return_the_dead();
            self.faults();
            self.move_nodes(true);
            self.tick(true);
            self.workload();
            self.check_copies();
            self.t += 1;
        }
        // Heal: no new faults or requests; cuts end, the dead return,
        // nodes go home.
        for node in &mut self.nodes {
            node.cut_until = 0;
        }
        while self.t < FAULTY_MS + HEAL_MS {
            self.deliver(false);
            self.return_the_dead();
            self.move_nodes(false);
            self.tick(false);
            self.check_copies();
            self.t += 1;
        }
        self.check_reads();
        for (n, node) in self.nodes.iter().enumerate() {
            assert!(
                node.open.is_empty() && !node.relay.waiting(),
                "node {n}'s requests {:?} never ended",
                node.open
            );
        }
        assert!(self.local_open.is_empty(), "root writes never ended");
        assert!(self.applying.is_empty());
    }
}

fn run_seeds(homes: &[Parent]) -> Vec<Stats> {
    (0..24)
        .map(|seed| {
            let mut world = World::new(seed, FAULTS, CONFIG, homes);
            world.run();
            let s = world.stats;
            assert!(
                s.reads > 1_000 && s.writes > 300,
                "seed {seed}: too little load"
            );
            assert!(
                s.hits > 0 && s.deaths + s.cuts > 0,
                "seed {seed}: no hits or no faults"
            );
            s
        })
        .collect()
}

#[test]
fn copies_stay_current_and_every_request_ends_under_faults() {
    run_seeds(&flat(8));
}

#[test]
fn a_tree_of_relays_stays_as_coherent_as_one_level() {
    for (seed, s) in run_seeds(&binary_tree(3)).iter().enumerate() {
        assert!(s.moves > 0, "seed {seed}: no node moved to another parent");
        assert!(
            s.nested_hits > 0,
            "seed {seed}: no node under a relay read its own copy"
        );
    }
}

/// The root dies a third of the way in; the second root takes over once
/// its own clock says every lease of the first has ended, and every node
/// moves to it.
#[test]
fn a_second_root_takes_over_once_every_lease_of_the_first_has_ended() {
    for homes in [flat(8), binary_tree(3)] {
        for seed in 0..12 {
            let mut world = World::new(seed, FAULTS, CONFIG, &homes);
            world.root_dies_at = Some(10_000);
            world.run();
            let s = &world.stats;
            assert_eq!(s.takeovers, 1);
            assert!(
                s.reads > 1_000 && s.writes > 300 && s.hits > 0,
                "seed {seed}: too little load"
            );
        }
    }
}

/// Its mutation: a second root that takes over as soon as the first dies
/// finds copies of the first still valid.
#[test]
fn a_second_root_that_does_not_wait_is_caught() {
    for homes in [flat(8), binary_tree(3)] {
        let caught = (0..24).any(|seed| {
            let run = std::panic::catch_unwind(|| {
                let mut world = World::new(seed, FAULTS, CONFIG, &homes);
                world.root_dies_at = Some(10_000);
                world.takeover_wait_ms = 0;
                world.run();
            });
            run.is_err_and(|why| {
                why.downcast_ref::<String>()
                    .is_some_and(|s| s.contains("stale"))
            })
        });
        assert!(caught, "no seed caught a takeover before the leases ended");
    }
}

/// The mutation the simulation must catch: nodes that count their lease
/// as long as their parent does, with no margin for clocks that drift 2%.
#[test]
fn a_lease_without_a_drift_margin_is_caught_outliving_the_parent_s_count() {
    let faults = Faults {
        drift_ppm: 20_000,
        ..FAULTS
    };
    let margined = LeaseConfig {
        drift_ppm: 20_000,
        ..CONFIG
    };
    for homes in [flat(8), binary_tree(3)] {
        World::new(1, faults, margined, &homes).run();
        let unmargined = LeaseConfig {
            drift_ppm: 0,
            ..CONFIG
        };
        let caught = (0..24).any(|seed| {
            let run =
                std::panic::catch_unwind(|| World::new(seed, faults, unmargined, &homes).run());
            run.is_err_and(|why| {
                why.downcast_ref::<String>()
                    .is_some_and(|s| s.contains("no longer counts") || s.contains("stale"))
            })
        });
        assert!(
            caught,
            "no seed caught a lease outliving its parent's count"
        );
    }
}
