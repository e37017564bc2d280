//! A caching node's side toward its parent: its lease, its copies, and its
//! requests. A [`Relay`](super::Relay) wraps one.

use std::collections::BTreeMap;

use super::{Down, Extent, LeaseConfig, Millis, Stamped, Up, Version};

/// What the shell does for a holder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HolderAction {
    Send(Up),
    /// Read `id` is done: the extent's data is at `version`, from this
    /// node's copy (`hit`) or the root.
    ReadDone {
        id: u64,
        version: Version,
        hit: bool,
    },
    /// Write `id` is applied as `version`.
    WriteDone {
        id: u64,
        version: Version,
    },
}

/// One node's cache of one vdisk, as its parent sees it.
pub struct Holder {
    config: LeaseConfig,
    /// The newest epoch heard from a root.
    epoch: u64,
    lease: Option<Lease>,
    /// Renewals sent and not answered, by number: when each was sent.
    renewals: BTreeMap<u64, Millis>,
    next_renewal: u64,
    last_renewal: Option<Millis>,
    /// Copies held, valid while the lease is.
    copies: BTreeMap<Extent, Version>,
    /// The newest recall of each extent (its sequence number): a grant
    /// stamped before it is out of date.
    recalled: BTreeMap<Extent, u64>,
    /// Reads and writes waiting for the root: extent, last sent.
    reads: BTreeMap<u64, (Extent, Millis)>,
    writes: BTreeMap<u64, (Extent, Millis)>,
}

#[derive(Debug, Clone, Copy)]
struct Lease {
    /// On this node's clock.
    valid_until: Millis,
    generation: u64,
}

impl Holder {
    pub fn new(config: LeaseConfig) -> Holder {
        Holder {
            config,
            epoch: 0,
            lease: None,
            renewals: BTreeMap::new(),
            next_renewal: 1,
            last_renewal: None,
            copies: BTreeMap::new(),
            recalled: BTreeMap::new(),
            reads: BTreeMap::new(),
            writes: BTreeMap::new(),
        }
    }

    /// The version of this node's valid copy of `extent`, if it has one.
    pub fn copy(&self, now: Millis, extent: Extent) -> Option<Version> {
        self.lease
            .filter(|l| now < l.valid_until)
            .and_then(|_| self.copies.get(&extent).copied())
    }

    /// Whether requests wait for the parent.
    pub fn waiting(&self) -> bool {
        !self.reads.is_empty() || !self.writes.is_empty()
    }

    /// How long the lease has left, if it stands.
    pub fn lease_left(&self, now: Millis) -> Option<Millis> {
        self.lease
            .filter(|l| now < l.valid_until)
            .map(|l| l.valid_until - now)
    }

    /// The newest epoch heard from a root.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Reads `extent`: from the copy if it is valid, else from the root.
    pub fn read(&mut self, now: Millis, id: u64, extent: Extent) -> Vec<HolderAction> {
        self.lapse(now);
        if let Some(version) = self.copy(now, extent) {
            return vec![HolderAction::ReadDone {
                id,
                version,
                hit: true,
            }];
        }
        self.reads.insert(id, (extent, now));
        vec![HolderAction::Send(Up::Get { id, extent })]
    }

    /// Writes `extent` through the root.
    pub fn write(&mut self, now: Millis, id: u64, extent: Extent) -> Vec<HolderAction> {
        self.lapse(now);
        self.writes.insert(id, (extent, now));
        vec![HolderAction::Send(self.write_message(id, extent))]
    }

    /// A message from the root arrived at `now`.
    pub fn receive(&mut self, now: Millis, stamped: Stamped) -> Vec<HolderAction> {
        self.lapse(now);
        if stamped.epoch < self.epoch {
            return Vec::new();
        }
        if stamped.epoch > self.epoch {
            // A new root: nothing the old one granted counts.
            self.epoch = stamped.epoch;
            self.copies.clear();
            self.lease = None;
        }
        match stamped.msg {
            Down::Renewed {
                renewal,
                generation,
                ttl_ms,
            } => {
                let Some(sent) = self.renewals.remove(&renewal) else {
                    return Vec::new();
                };
                self.renewed(now, sent + self.config.holder_ttl_ms(ttl_ms), generation);
                Vec::new()
            }
            Down::Recall { extent } => {
                self.copies.remove(&extent);
                let seq = self.recalled.entry(extent).or_default();
                *seq = (*seq).max(stamped.seq);
                vec![HolderAction::Send(Up::Recalled {
                    extent,
                    seq: stamped.seq,
                })]
            }
            Down::Granted {
                id,
                extent,
                version,
                holder,
            } => {
                self.keep(now, &stamped, extent, version, holder);
                match self.reads.remove(&id) {
                    Some(_) => vec![HolderAction::ReadDone {
                        id,
                        version,
                        hit: false,
                    }],
                    None => Vec::new(),
                }
            }
            Down::Written {
                id,
                extent,
                version,
                holder,
            } => {
                self.keep(now, &stamped, extent, version, holder);
                match self.writes.remove(&id) {
                    Some(_) => vec![HolderAction::WriteDone { id, version }],
                    None => Vec::new(),
                }
            }
        }
    }

    /// Time passes: the lease is renewed, and requests the root has not
    /// answered are sent again.
    pub fn tick(&mut self, now: Millis) -> Vec<HolderAction> {
        self.lapse(now);
        let mut actions = Vec::new();
        let due = self
            .last_renewal
            .is_none_or(|last| now >= last + self.config.renew_every_ms());
        if due {
            let renewal = self.next_renewal;
            self.next_renewal += 1;
            self.last_renewal = Some(now);
            // An answer to a renewal older than a lease would give none.
            let ttl = self.config.holder_ttl_ms(self.config.ttl_ms);
            self.renewals.retain(|_, sent| *sent + ttl > now);
            self.renewals.insert(renewal, now);
            actions.push(HolderAction::Send(Up::Renew { renewal }));
        }
        actions.extend(self.resend(now, self.config.resend_ms));
        actions
    }

    /// Drops this node's copy of `extent`: the parent counts a superset
    /// of the copies, so it need not be told.
    pub fn drop_copy(&mut self, extent: Extent) {
        self.copies.remove(&extent);
    }

    /// Moves to another parent: nothing the old one granted counts, and
    /// requests under way go to the new one now.
    pub fn reattach(&mut self, now: Millis) -> Vec<HolderAction> {
        self.lease = None;
        self.copies.clear();
        // Sequence numbers and renewals are the old parent's.
        self.recalled.clear();
        self.renewals.clear();
        self.last_renewal = None;
        let mut actions = self.resend(now, 0);
        actions.extend(self.tick(now));
        actions
    }

    /// Sends again the requests last sent `after` or longer ago.
    fn resend(&mut self, now: Millis, after: Millis) -> Vec<HolderAction> {
        let mut actions = Vec::new();
        for (&id, (extent, sent)) in self.reads.iter_mut() {
            if now >= *sent + after {
                *sent = now;
                actions.push(HolderAction::Send(Up::Get {
                    id,
                    extent: *extent,
                }));
            }
        }
        let writes: Vec<(u64, Extent)> = self
            .writes
            .iter_mut()
            .filter(|(_, (_, sent))| now >= *sent + after)
            .map(|(&id, (extent, sent))| {
                *sent = now;
                (id, *extent)
            })
            .collect();
        for (id, extent) in writes {
            actions.push(HolderAction::Send(self.write_message(id, extent)));
        }
        actions
    }

    fn write_message(&self, id: u64, extent: Extent) -> Up {
        let oldest = self.writes.keys().next().copied().unwrap_or(id);
        Up::Write { id, extent, oldest }
    }

    /// Drops every copy once the lease has run out: the root lets it
    /// expire later, by its own count, and may then let a write land.
    fn lapse(&mut self, now: Millis) {
        if self.lease.is_some_and(|l| now >= l.valid_until) {
            self.lease = None;
            self.copies.clear();
        }
    }

    /// The parent renewed the lease until `valid_until`.
    fn renewed(&mut self, now: Millis, valid_until: Millis, generation: u64) {
        if valid_until <= now {
            return;
        }
        match &mut self.lease {
            Some(lease) if lease.generation == generation => {
                lease.valid_until = lease.valid_until.max(valid_until);
            }
            _ => {
                // A new lease: the root counts none of the old copies.
                self.copies.clear();
                self.lease = Some(Lease {
                    valid_until,
                    generation,
                });
            }
        }
    }

    /// Caches `version` of `extent` from a grant or a write's answer, if
    /// the root counts this node's copy under the lease it holds now and
    /// no recall came after it.
    fn keep(
        &mut self,
        now: Millis,
        stamped: &Stamped,
        extent: Extent,
        version: Version,
        holder: bool,
    ) {
        let leased = self
            .lease
            .is_some_and(|l| now < l.valid_until && l.generation == stamped.generation);
        let recalled_after = self
            .recalled
            .get(&extent)
            .is_some_and(|&seq| seq > stamped.seq);
        if holder && leased && !recalled_after {
            // Answers may arrive out of order: the root's versions only
            // grow, so the higher one is the current one.
            let copy = self.copies.entry(extent).or_insert(version);
            *copy = (*copy).max(version);
        }
    }
}
