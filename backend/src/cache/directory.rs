//! The root's side: leases, the directory of copies, and the writes that
//! wait for their recalls.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::{Down, Extent, HolderId, LeaseConfig, Millis, Stamped, Up, Version};

/// What the shell does for the directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirectoryAction {
    Send {
        to: HolderId,
        msg: Stamped,
    },
    /// Write the data of `writer`'s write to `extent` on the tail, then
    /// call [`Directory::applied`]. One at a time per extent.
    Apply {
        extent: Extent,
        writer: Writer,
    },
    /// The root's own write `id` is applied as `version`.
    LocalWritten {
        id: u64,
        version: Version,
    },
}

/// Whose write: a holder's, or the root node's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Writer {
    Holder { holder: HolderId, id: u64 },
    Local { id: u64 },
}

/// The root of one cached vdisk.
pub struct Directory {
    config: LeaseConfig,
    epoch: u64,
    holders: BTreeMap<HolderId, Lease>,
    extents: BTreeMap<Extent, Entry>,
}

/// What the root knows of one holder.
#[derive(Debug, Default)]
struct Lease {
    /// Ends at this time on the root's clock.
    until: Millis,
    generation: u64,
    /// The last sequence number stamped on a message to it.
    seq: u64,
    /// Writes applied, by id, kept until the holder says it has their
    /// answers: a resent write is answered again, never applied twice.
    applied: BTreeMap<u64, Version>,
}

#[derive(Debug, Default)]
struct Entry {
    version: Version,
    /// Holders that may hold a copy (a superset of those that do).
    copies: BTreeSet<HolderId>,
    /// Writes in arrival order; the first is under way.
    writes: VecDeque<Writer>,
    /// Holders asked to drop their copy for the first write, with the
    /// sequence number of the first recall and when it was last sent.
    recalling: BTreeMap<HolderId, (u64, Millis)>,
    /// The first write is being applied to the tail.
    applying: bool,
    /// Reads that arrived while a write was under way.
    gets: Vec<(HolderId, u64)>,
}

impl Directory {
    pub fn new(epoch: u64, config: LeaseConfig) -> Directory {
        Directory {
            config,
            epoch,
            holders: BTreeMap::new(),
            extents: BTreeMap::new(),
        }
    }

    /// The version of `extent` on the tail.
    pub fn version(&self, extent: Extent) -> Version {
        self.extents.get(&extent).map_or(0, |e| e.version)
    }

    /// Whether the root counts `holder` among `extent`'s copies with a
    /// lease it has not yet let expire.
    pub fn may_hold(&self, holder: HolderId, extent: Extent) -> bool {
        self.extents
            .get(&extent)
            .is_some_and(|e| e.copies.contains(&holder))
    }

    /// A message from `from` arrived at `now`.
    pub fn receive(&mut self, now: Millis, from: HolderId, msg: Up) -> Vec<DirectoryAction> {
        let mut actions = Vec::new();
        match msg {
            Up::Renew { renewal } => {
                let lease = self.holders.entry(from).or_default();
                if now >= lease.until {
                    // The last lease (if any) expired, and with it every
                    // copy the root counted: this is a new one.
                    lease.generation += 1;
                }
                lease.until = now + self.config.ttl_ms;
                let generation = lease.generation;
                self.send(
                    from,
                    Down::Renewed {
                        renewal,
                        generation,
                    },
                    &mut actions,
                );
            }
            Up::Get { id, extent } => {
                let entry = self.extents.entry(extent).or_default();
                if entry.writes.is_empty() {
                    self.grant(now, from, id, extent, &mut actions);
                } else {
                    entry.gets.push((from, id));
                }
            }
            Up::Write { id, extent, oldest } => {
                let lease = self.holders.entry(from).or_default();
                lease.applied.retain(|&done, _| done >= oldest);
                if let Some(&version) = lease.applied.get(&id) {
                    // The write's version, not the extent's now: not a
                    // copy to keep.
                    let answer = Down::Written {
                        id,
                        extent,
                        version,
                        holder: false,
                    };
                    self.send(from, answer, &mut actions);
                    return actions;
                }
                let writer = Writer::Holder { holder: from, id };
                let entry = self.extents.entry(extent).or_default();
                if !entry.writes.contains(&writer) {
                    entry.writes.push_back(writer);
                    self.start_write(now, extent, &mut actions);
                }
            }
            Up::Recalled { extent, seq } => {
                let Some(entry) = self.extents.get_mut(&extent) else {
                    return actions;
                };
                if entry
                    .recalling
                    .get(&from)
                    .is_some_and(|&(first, _)| seq >= first)
                {
                    entry.recalling.remove(&from);
                    entry.copies.remove(&from);
                    self.start_write(now, extent, &mut actions);
                }
            }
        }
        actions
    }

    /// The root node's own write of `extent`: it waits for the recalls as
    /// a holder's does.
    pub fn write_local(&mut self, now: Millis, id: u64, extent: Extent) -> Vec<DirectoryAction> {
        let mut actions = Vec::new();
        self.extents
            .entry(extent)
            .or_default()
            .writes
            .push_back(Writer::Local { id });
        self.start_write(now, extent, &mut actions);
        actions
    }

    /// The shell has written the first write of `extent` to the tail.
    pub fn applied(&mut self, now: Millis, extent: Extent) -> Vec<DirectoryAction> {
        let mut actions = Vec::new();
        let Some(entry) = self.extents.get_mut(&extent) else {
            return actions;
        };
        if !entry.applying {
            return actions;
        }
        let Some(writer) = entry.writes.pop_front() else {
            return actions;
        };
        entry.applying = false;
        entry.version += 1;
        let version = entry.version;
        match writer {
            Writer::Local { id } => actions.push(DirectoryAction::LocalWritten { id, version }),
            Writer::Holder { holder, id } => {
                let cached = self.count_copy(now, holder, extent);
                if let Some(lease) = self.holders.get_mut(&holder) {
                    lease.applied.insert(id, version);
                }
                let answer = Down::Written {
                    id,
                    extent,
                    version,
                    holder: cached,
                };
                self.send(holder, answer, &mut actions);
            }
        }
        // With another write next, the reads wait for it too, and get data
        // no older than the last write acknowledged before them.
        let gets = match self.extents.get_mut(&extent) {
            Some(entry) if entry.writes.is_empty() => std::mem::take(&mut entry.gets),
            _ => Vec::new(),
        };
        for (holder, id) in gets {
            self.grant(now, holder, id, extent, &mut actions);
        }
        self.start_write(now, extent, &mut actions);
        actions
    }

    /// Time passes: leases that ran out take their copies with them (the
    /// holders dropped them earlier, by their own count), and unanswered
    /// recalls are sent again.
    pub fn tick(&mut self, now: Millis) -> Vec<DirectoryAction> {
        let mut actions = Vec::new();
        let expired: BTreeSet<HolderId> = self
            .holders
            .iter()
            .filter(|(_, lease)| now >= lease.until)
            .map(|(&holder, _)| holder)
            .collect();
        let extents: Vec<Extent> = self.extents.keys().copied().collect();
        for extent in extents {
            let mut resend = Vec::new();
            if let Some(entry) = self.extents.get_mut(&extent) {
                entry.copies.retain(|h| !expired.contains(h));
                entry.recalling.retain(|h, _| !expired.contains(h));
                for (&holder, (_, sent)) in entry.recalling.iter_mut() {
                    if now >= *sent + self.config.resend_ms {
                        *sent = now;
                        resend.push(holder);
                    }
                }
            }
            for holder in resend {
                self.send(holder, Down::Recall { extent }, &mut actions);
            }
            self.start_write(now, extent, &mut actions);
        }
        actions
    }

    /// Sends `extent` to `holder` for read `id`, counting the copy if the
    /// holder's lease stands.
    fn grant(
        &mut self,
        now: Millis,
        holder: HolderId,
        id: u64,
        extent: Extent,
        actions: &mut Vec<DirectoryAction>,
    ) {
        let cached = self.count_copy(now, holder, extent);
        let version = self.version(extent);
        let answer = Down::Granted {
            id,
            extent,
            version,
            holder: cached,
        };
        self.send(holder, answer, actions);
    }

    /// Counts `holder` among `extent`'s copies if its lease stands.
    fn count_copy(&mut self, now: Millis, holder: HolderId, extent: Extent) -> bool {
        let leased = self.holders.get(&holder).is_some_and(|l| now < l.until);
        if leased {
            self.extents
                .entry(extent)
                .or_default()
                .copies
                .insert(holder);
        }
        leased
    }

    /// Moves the first write of `extent` on: recalls every copy, or, once
    /// none is left, has it applied.
    fn start_write(&mut self, now: Millis, extent: Extent, actions: &mut Vec<DirectoryAction>) {
        let Some(entry) = self.extents.get_mut(&extent) else {
            return;
        };
        let Some(&writer) = entry.writes.front() else {
            return;
        };
        if entry.applying {
            return;
        }
        let unasked: Vec<HolderId> = entry
            .copies
            .iter()
            .filter(|h| !entry.recalling.contains_key(h))
            .copied()
            .collect();
        if entry.copies.is_empty() {
            entry.applying = true;
            actions.push(DirectoryAction::Apply { extent, writer });
            return;
        }
        for holder in unasked {
            let seq = self.send(holder, Down::Recall { extent }, actions);
            if let Some(entry) = self.extents.get_mut(&extent) {
                entry.recalling.insert(holder, (seq, now));
            }
        }
    }

    /// Stamps and sends `msg`; returns its sequence number.
    fn send(&mut self, to: HolderId, msg: Down, actions: &mut Vec<DirectoryAction>) -> u64 {
        let lease = self.holders.entry(to).or_default();
        lease.seq += 1;
        actions.push(DirectoryAction::Send {
            to,
            msg: Stamped {
                epoch: self.epoch,
                seq: lease.seq,
                generation: lease.generation,
                msg,
            },
        });
        lease.seq
    }
}
