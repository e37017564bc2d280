//! What a node knows of the nodes below it: their leases, which extents
//! they may hold, and the recalls it waits on. The root's [`Directory`]
//! and a [`Relay`] both grant copies to the nodes below them; they differ
//! in what a recall is for (a write at the root, a recall from above at a
//! relay) and where the data comes from.
//!
//! [`Directory`]: super::Directory
//! [`Relay`]: super::Relay

use std::collections::{BTreeMap, BTreeSet};

use super::{Down, Extent, HolderId, LeaseConfig, Millis, Stamped, Version};

/// Messages to the nodes below, stamped, in the order they were sent.
pub(super) type Outbox = Vec<(HolderId, Stamped)>;

pub(super) struct Grants {
    config: LeaseConfig,
    /// The vdisk's epoch, stamped on every message down.
    epoch: u64,
    holders: BTreeMap<HolderId, Lease>,
    extents: BTreeMap<Extent, Copies>,
}

/// What is known of one node below.
#[derive(Debug, Default)]
struct Lease {
    /// Ends at this time on this node's clock.
    until: Millis,
    generation: u64,
    /// The last sequence number stamped on a message to it.
    seq: u64,
    /// Its writes answered, by id, kept until it says it has the answers:
    /// a resent write is answered again, never done twice.
    answered: BTreeMap<u64, Version>,
}

#[derive(Debug, Default)]
struct Copies {
    /// Nodes that may hold a copy (a superset of those that do).
    holders: BTreeSet<HolderId>,
    /// Nodes asked to drop their copy, with the sequence number of the
    /// first recall and when it was last sent.
    recalling: BTreeMap<HolderId, (u64, Millis)>,
}

impl Grants {
    pub(super) fn new(epoch: u64, config: LeaseConfig) -> Grants {
        Grants {
            config,
            epoch,
            holders: BTreeMap::new(),
            extents: BTreeMap::new(),
        }
    }

    pub(super) fn set_epoch(&mut self, epoch: u64) {
        self.epoch = self.epoch.max(epoch);
    }

    /// Renews `from`'s lease for `ttl_ms` from now, and says so.
    pub(super) fn renew(
        &mut self,
        now: Millis,
        from: HolderId,
        renewal: u64,
        ttl_ms: u64,
        out: &mut Outbox,
    ) {
        let lease = self.holders.entry(from).or_default();
        if now >= lease.until {
            // The last lease (if any) expired, and with it every copy
            // counted under it: this is a new one.
            lease.generation += 1;
        }
        lease.until = lease.until.max(now + ttl_ms);
        let generation = lease.generation;
        let answer = Down::Renewed {
            renewal,
            generation,
            ttl_ms,
        };
        self.send(from, answer, out);
    }

    /// Whether `holder` is counted among `extent`'s copies.
    pub(super) fn may_hold(&self, holder: HolderId, extent: Extent) -> bool {
        self.extents
            .get(&extent)
            .is_some_and(|e| e.holders.contains(&holder))
    }

    /// Counts `holder` among `extent`'s copies if its lease stands.
    pub(super) fn count_copy(&mut self, now: Millis, holder: HolderId, extent: Extent) -> bool {
        let leased = self.holders.get(&holder).is_some_and(|l| now < l.until);
        if leased {
            self.extents
                .entry(extent)
                .or_default()
                .holders
                .insert(holder);
        }
        leased
    }

    /// Asks every node that may hold `extent` and was not asked yet to
    /// drop it; true once none may hold it.
    pub(super) fn recall(&mut self, now: Millis, extent: Extent, out: &mut Outbox) -> bool {
        let Some(copies) = self.extents.get(&extent) else {
            return true;
        };
        if copies.holders.is_empty() {
            return true;
        }
        let unasked: Vec<HolderId> = copies
            .holders
            .iter()
            .filter(|h| !copies.recalling.contains_key(h))
            .copied()
            .collect();
        for holder in unasked {
            let seq = self.send(holder, Down::Recall { extent }, out);
            if let Some(copies) = self.extents.get_mut(&extent) {
                copies.recalling.insert(holder, (seq, now));
            }
        }
        false
    }

    /// `from` dropped its copy of `extent` for the recall stamped `seq`;
    /// true if that was the answer to a recall under way.
    pub(super) fn recalled(&mut self, from: HolderId, extent: Extent, seq: u64) -> bool {
        let Some(copies) = self.extents.get_mut(&extent) else {
            return false;
        };
        let answers = copies
            .recalling
            .get(&from)
            .is_some_and(|&(first, _)| seq >= first);
        if answers {
            copies.recalling.remove(&from);
            copies.holders.remove(&from);
        }
        answers
    }

    /// Time passes: leases that ran out take their copies with them (the
    /// nodes dropped them earlier, by their own count), and unanswered
    /// recalls are sent again.
    pub(super) fn tick(&mut self, now: Millis, out: &mut Outbox) {
        let expired: BTreeSet<HolderId> = self
            .holders
            .iter()
            .filter(|(_, lease)| now >= lease.until)
            .map(|(&holder, _)| holder)
            .collect();
        let mut resend = Vec::new();
        for (&extent, copies) in self.extents.iter_mut() {
            copies.holders.retain(|h| !expired.contains(h));
            copies.recalling.retain(|h, _| !expired.contains(h));
            for (&holder, (_, sent)) in copies.recalling.iter_mut() {
                if now >= *sent + self.config.resend_ms {
                    *sent = now;
                    resend.push((holder, extent));
                }
            }
        }
        for (holder, extent) in resend {
            self.send(holder, Down::Recall { extent }, out);
        }
    }

    /// The version write `id` of `holder` was answered with, if it was;
    /// forgets the answers to its writes before `oldest`, which it has.
    pub(super) fn answered(&mut self, holder: HolderId, id: u64, oldest: u64) -> Option<Version> {
        let lease = self.holders.entry(holder).or_default();
        lease.answered.retain(|&done, _| done >= oldest);
        lease.answered.get(&id).copied()
    }

    /// Remembers that write `id` of `holder` was answered with `version`.
    pub(super) fn remember(&mut self, holder: HolderId, id: u64, version: Version) {
        if let Some(lease) = self.holders.get_mut(&holder) {
            lease.answered.insert(id, version);
        }
    }

    /// Stamps `msg` and puts it in `out`; returns its sequence number.
    pub(super) fn send(&mut self, to: HolderId, msg: Down, out: &mut Outbox) -> u64 {
        let lease = self.holders.entry(to).or_default();
        lease.seq += 1;
        out.push((
            to,
            Stamped {
                epoch: self.epoch,
                seq: lease.seq,
                generation: lease.generation,
                msg,
            },
        ));
        lease.seq
    }
}
