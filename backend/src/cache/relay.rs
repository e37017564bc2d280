//! A caching node of the tree: a holder toward its parent (the root or
//! another relay), and to the nodes below it what the root is to its
//! holders, from its own copies. A leaf is a relay with no children.
//!
//! What keeps the tree as coherent as one level:
//! - **Nested copies.** A relay counts a child's copy of an extent only
//!   while it holds a valid copy of that extent itself, at the same
//!   version. So every copy below it is one its parent counts it for, and
//!   a recall from above reaches it.
//! - **A recall goes down before it is answered up.** A relay drops its
//!   copy at once, recalls its children's, and tells its parent only when
//!   none is left (answered, or its lease expired).
//! - **Nested leases.** A relay renews its children only while its own
//!   lease stands, and never past its end: when its lease runs out, so
//!   have its children's, before its parent's count of it does. A parent
//!   that takes a silent relay for gone has thereby taken its whole
//!   subtree for gone.
//! - **Writes go up.** A relay forwards its children's writes to its
//!   parent (the root applies them) and answers each once it is applied.

use std::collections::BTreeMap;

use super::grants::{Grants, Outbox};
use super::holder::{Holder, HolderAction};
use super::{Down, Extent, HolderId, LeaseConfig, Millis, Stamped, Up, Version};

/// What the shell does for a relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayAction {
    /// A message to the parent.
    Up(Up),
    /// A message to a child.
    Down { to: HolderId, msg: Stamped },
    /// This node's read `id` is done: the extent's data is at `version`,
    /// from this node's copy (`hit`) or from above.
    ReadDone {
        id: u64,
        version: Version,
        hit: bool,
    },
    /// This node's write `id` is applied as `version`.
    WriteDone { id: u64, version: Version },
}

/// Whose request a relay sent up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    Local { id: u64 },
    Child { child: HolderId, id: u64 },
}

#[derive(Debug, Clone, Copy)]
struct Forwarded {
    origin: Origin,
    extent: Extent,
}

/// One node's cache of one vdisk, in the tree under the vdisk's root.
pub struct Relay {
    config: LeaseConfig,
    up: Holder,
    down: Grants,
    /// Numbers the requests sent up (the relay's own and its children's:
    /// identifiers are remapped per hop).
    next_up_id: u64,
    reads: BTreeMap<u64, Forwarded>,
    writes: BTreeMap<u64, Forwarded>,
    /// Recalls of extents from the children, waiting for their copies to
    /// go: for the parent (with the sequence number to answer with), or
    /// for an eviction from this node's cache (none).
    recalls: BTreeMap<Extent, Option<u64>>,
    /// After a move to another parent: the leases granted under the old
    /// parent's lease all end by then; none is renewed, and no copy
    /// granted, before.
    fenced_until: Millis,
}

impl Relay {
    pub fn new(config: LeaseConfig) -> Relay {
        Relay {
            config,
            up: Holder::new(config),
            down: Grants::new(0, config),
            next_up_id: 1,
            reads: BTreeMap::new(),
            writes: BTreeMap::new(),
            recalls: BTreeMap::new(),
            fenced_until: 0,
        }
    }

    /// The version of this node's valid copy of `extent`, if it has one.
    pub fn copy(&self, now: Millis, extent: Extent) -> Option<Version> {
        self.up.copy(now, extent)
    }

    /// The newest epoch heard from a root: a copy's data is named by it
    /// and the copy's version.
    pub fn epoch(&self) -> u64 {
        self.up.epoch()
    }

    /// Whether the write sent up as `up_id` is still waiting for its
    /// answer (and may be sent again).
    pub fn sending_up(&self, up_id: u64) -> bool {
        self.writes.contains_key(&up_id)
    }

    /// Whether this node's lease from its parent stands.
    pub fn leased(&self, now: Millis) -> bool {
        self.up.lease_left(now).is_some()
    }

    /// Whether this node counts `child` among `extent`'s copies.
    pub fn may_hold(&self, child: HolderId, extent: Extent) -> bool {
        self.down.may_hold(child, extent)
    }

    /// Whether requests (this node's or its children's) wait for the
    /// parent, or a recall from it for the children.
    pub fn waiting(&self) -> bool {
        !self.reads.is_empty()
            || !self.writes.is_empty()
            || !self.recalls.is_empty()
            || self.up.waiting()
    }

    /// This node reads `extent`: from its copy if it is valid, else from
    /// above.
    pub fn read(&mut self, now: Millis, id: u64, extent: Extent) -> Vec<RelayAction> {
        self.read_up(now, Origin::Local { id }, extent)
    }

    /// This node writes `extent`, through the root.
    pub fn write(&mut self, now: Millis, id: u64, extent: Extent) -> Vec<RelayAction> {
        self.write_up(now, Origin::Local { id }, extent)
    }

    /// A message from the parent arrived at `now`.
    pub fn receive_up(&mut self, now: Millis, stamped: Stamped) -> Vec<RelayAction> {
        let actions = self.up.receive(now, stamped);
        self.down.set_epoch(self.up.epoch());
        self.act_on_up(now, actions)
    }

    /// A message from child `from` arrived at `now`.
    pub fn receive_down(&mut self, now: Millis, from: HolderId, msg: Up) -> Vec<RelayAction> {
        let mut out = Outbox::new();
        let mut actions = Vec::new();
        match msg {
            Up::Renew { renewal } => {
                // No lease to nest the child's in: it lapses, and renews
                // again a quarter of a lease later.
                if let Some(left) = self.up.lease_left(now).filter(|_| now >= self.fenced_until) {
                    let ttl = left.min(self.config.ttl_ms);
                    self.down.renew(now, from, renewal, ttl, &mut out);
                }
            }
            Up::Get { id, extent } => {
                let origin = Origin::Child { child: from, id };
                // A read already sent up is resent by this node's holder.
                if !self.reads.values().any(|f| f.origin == origin) {
                    actions = self.read_up(now, origin, extent);
                }
            }
            Up::Write { id, extent, oldest } => {
                let origin = Origin::Child { child: from, id };
                if let Some(version) = self.down.answered(from, id, oldest) {
                    let answer = Down::Written {
                        id,
                        extent,
                        version,
                        holder: false,
                    };
                    self.down.send(from, answer, &mut out);
                } else if !self.writes.values().any(|f| f.origin == origin) {
                    actions = self.write_up(now, origin, extent);
                }
            }
            Up::Recalled { extent, seq } => {
                if self.down.recalled(from, extent, seq) {
                    self.answer_recall(now, extent, &mut out, &mut actions);
                }
            }
        }
        with_sends(out, actions)
    }

    /// Time passes: the lease is renewed, unanswered requests and recalls
    /// are sent again, and children whose lease ran out lose their copies.
    pub fn tick(&mut self, now: Millis) -> Vec<RelayAction> {
        let upward = self.up.tick(now);
        let mut actions = self.act_on_up(now, upward);
        let mut out = Outbox::new();
        self.down.tick(now, &mut out);
        let recalls: Vec<Extent> = self.recalls.keys().copied().collect();
        for extent in recalls {
            self.answer_recall(now, extent, &mut out, &mut actions);
        }
        let mut all = with_sends(out, Vec::new());
        all.append(&mut actions);
        all
    }

    /// This node's cache lets `extent` go: its copy goes at once, and the
    /// children's are recalled, as an inclusive cache does, since a recall
    /// from above must find every copy below through this node's. None is
    /// given out again before they are gone.
    pub fn evict(&mut self, now: Millis, extent: Extent) -> Vec<RelayAction> {
        self.up.drop_copy(extent);
        self.recalls.entry(extent).or_default();
        let (mut out, mut actions) = (Outbox::new(), Vec::new());
        self.answer_recall(now, extent, &mut out, &mut actions);
        with_sends(out, actions)
    }

    /// Leaves the parent for another (the parent died, or is cut off):
    /// nothing held under the old parent counts, so the copies go, and
    /// the children are renewed again, or given copies, only once every
    /// lease granted them under the old parent's has ended. Requests under
    /// way are sent to the new parent.
    pub fn reattach(&mut self, now: Millis) -> Vec<RelayAction> {
        if let Some(left) = self.up.lease_left(now) {
            self.fenced_until = self.fenced_until.max(now + left);
        }
        // The old parent takes this node's copies for gone when its lease
        // there ends, and the children's ended before.
        self.recalls.clear();
        let actions = self.up.reattach(now);
        self.act_on_up(now, actions)
    }

    fn read_up(&mut self, now: Millis, origin: Origin, extent: Extent) -> Vec<RelayAction> {
        let up_id = self.next_up_id;
        self.next_up_id += 1;
        self.reads.insert(up_id, Forwarded { origin, extent });
        let actions = self.up.read(now, up_id, extent);
        self.act_on_up(now, actions)
    }

    fn write_up(&mut self, now: Millis, origin: Origin, extent: Extent) -> Vec<RelayAction> {
        let up_id = self.next_up_id;
        self.next_up_id += 1;
        self.writes.insert(up_id, Forwarded { origin, extent });
        let actions = self.up.write(now, up_id, extent);
        self.act_on_up(now, actions)
    }

    /// Turns what the holder toward the parent does into what the relay
    /// does: answers for its children, its own requests done, and recalls
    /// passed down.
    fn act_on_up(&mut self, now: Millis, upward: Vec<HolderAction>) -> Vec<RelayAction> {
        let mut out = Outbox::new();
        let mut actions = Vec::new();
        for action in upward {
            match action {
                HolderAction::Send(Up::Recalled { extent, seq }) => {
                    let answer = self.recalls.entry(extent).or_default();
                    *answer = Some(answer.map_or(seq, |newest| newest.max(seq)));
                    self.answer_recall(now, extent, &mut out, &mut actions);
                }
                HolderAction::Send(msg) => actions.push(RelayAction::Up(msg)),
                HolderAction::ReadDone { id, version, hit } => {
                    let Some(f) = self.reads.remove(&id) else {
                        continue;
                    };
                    match f.origin {
                        Origin::Local { id } => {
                            actions.push(RelayAction::ReadDone { id, version, hit })
                        }
                        Origin::Child { child, id } => {
                            // The copy, if this node keeps one, is at least
                            // as new as the answer.
                            let (version, holder) = match self.copy_to_share(now, f.extent) {
                                Some(copy) => (copy, self.down.count_copy(now, child, f.extent)),
                                None => (version, false),
                            };
                            let answer = Down::Granted {
                                id,
                                extent: f.extent,
                                version,
                                holder,
                            };
                            self.down.send(child, answer, &mut out);
                        }
                    }
                }
                HolderAction::WriteDone { id, version } => {
                    let Some(f) = self.writes.remove(&id) else {
                        continue;
                    };
                    match f.origin {
                        Origin::Local { id } => {
                            actions.push(RelayAction::WriteDone { id, version })
                        }
                        Origin::Child { child, id } => {
                            let holder = self.copy_to_share(now, f.extent) == Some(version)
                                && self.down.count_copy(now, child, f.extent);
                            self.down.remember(child, id, version);
                            let answer = Down::Written {
                                id,
                                extent: f.extent,
                                version,
                                holder,
                            };
                            self.down.send(child, answer, &mut out);
                        }
                    }
                }
            }
        }
        with_sends(out, actions)
    }

    /// This node's copy of `extent`, if children may be given copies of it:
    /// - not while a recall of it waits for theirs to go: a child's answer
    ///   to the recall would uncount a copy given after it, and new copies
    ///   could keep the recall waiting;
    /// - not after a move to another parent until the children's leases
    ///   granted under the old parent's have ended: such a lease may
    ///   outlive this node's new copy.
    fn copy_to_share(&self, now: Millis, extent: Extent) -> Option<Version> {
        self.up
            .copy(now, extent)
            .filter(|_| now >= self.fenced_until && !self.recalls.contains_key(&extent))
    }

    /// Recalls the children's copies of `extent`, and answers the parent's
    /// recall, if there is one, once none is left.
    fn answer_recall(
        &mut self,
        now: Millis,
        extent: Extent,
        out: &mut Outbox,
        actions: &mut Vec<RelayAction>,
    ) {
        let Some(&answer) = self.recalls.get(&extent) else {
            return;
        };
        if self.down.recall(now, extent, out) {
            self.recalls.remove(&extent);
            if let Some(seq) = answer {
                actions.push(RelayAction::Up(Up::Recalled { extent, seq }));
            }
        }
    }
}

/// The messages down first, in the order they were stamped, then the rest.
fn with_sends(out: Outbox, actions: Vec<RelayAction>) -> Vec<RelayAction> {
    out.into_iter()
        .map(|(to, msg)| RelayAction::Down { to, msg })
        .chain(actions)
        .collect()
}
