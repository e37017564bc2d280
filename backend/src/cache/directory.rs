//! The root's side: leases, the directory of copies, and the writes that
//! wait for their recalls.

use std::collections::{BTreeMap, VecDeque};

use super::grants::{Grants, Outbox};
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

/// A root's versions start at its epoch shifted this far: room for 2^40
/// writes of an extent under one root, and 2^24 epochs.
const EPOCH_SHIFT: u32 = 40;

/// The root of one cached vdisk.
pub struct Directory {
    config: LeaseConfig,
    /// Every extent's version before its first write here: above every
    /// version a root of an earlier epoch gave, so that versions only
    /// grow across roots too.
    base: Version,
    grants: Grants,
    extents: BTreeMap<Extent, Entry>,
}

#[derive(Debug, Default)]
struct Entry {
    version: Version,
    /// Writes in arrival order; the first is under way.
    writes: VecDeque<Writer>,
    /// The first write is being applied to the tail.
    applying: bool,
    /// Reads that arrived while a write was under way.
    gets: Vec<(HolderId, u64)>,
}

impl Directory {
    pub fn new(epoch: u64, config: LeaseConfig) -> Directory {
        Directory {
            config,
            base: epoch << EPOCH_SHIFT,
            grants: Grants::new(epoch, config),
            extents: BTreeMap::new(),
        }
    }

    /// The version of `extent` on the tail.
    pub fn version(&self, extent: Extent) -> Version {
        self.extents.get(&extent).map_or(self.base, |e| e.version)
    }

    /// Whether `writer`'s write of `extent` waits to be applied (or is
    /// being applied): a resent write that was answered already is not.
    pub fn queued(&self, extent: Extent, writer: Writer) -> bool {
        self.extents
            .get(&extent)
            .is_some_and(|e| e.writes.contains(&writer))
    }

    /// Whether the root counts `holder` among `extent`'s copies with a
    /// lease it has not yet let expire.
    pub fn may_hold(&self, holder: HolderId, extent: Extent) -> bool {
        self.grants.may_hold(holder, extent)
    }

    /// A message from `from` arrived at `now`.
    pub fn receive(&mut self, now: Millis, from: HolderId, msg: Up) -> Vec<DirectoryAction> {
        let mut out = Outbox::new();
        let mut actions = Vec::new();
        match msg {
            Up::Renew { renewal } => {
                let ttl = self.config.ttl_ms;
                self.grants.renew(now, from, renewal, ttl, &mut out);
            }
            Up::Get { id, extent } => {
                let entry = self.entry(extent);
                if entry.writes.is_empty() {
                    self.grant(now, from, id, extent, &mut out);
                } else if !entry.gets.contains(&(from, id)) {
                    entry.gets.push((from, id));
                }
            }
            Up::Write { id, extent, oldest } => {
                if let Some(version) = self.grants.answered(from, id, oldest) {
                    // The write's version, not the extent's now: not a
                    // copy to keep.
                    let answer = Down::Written {
                        id,
                        extent,
                        version,
                        holder: false,
                    };
                    self.grants.send(from, answer, &mut out);
                } else {
                    let writer = Writer::Holder { holder: from, id };
                    let entry = self.entry(extent);
                    if !entry.writes.contains(&writer) {
                        entry.writes.push_back(writer);
                        self.start_write(now, extent, &mut out, &mut actions);
                    }
                }
            }
            Up::Recalled { extent, seq } => {
                if self.grants.recalled(from, extent, seq) {
                    self.start_write(now, extent, &mut out, &mut actions);
                }
            }
        }
        with_sends(out, actions)
    }

    /// The root node's own write of `extent`: it waits for the recalls as
    /// a holder's does.
    pub fn write_local(&mut self, now: Millis, id: u64, extent: Extent) -> Vec<DirectoryAction> {
        let (mut out, mut actions) = (Outbox::new(), Vec::new());
        self.entry(extent).writes.push_back(Writer::Local { id });
        self.start_write(now, extent, &mut out, &mut actions);
        with_sends(out, actions)
    }

    /// The shell has written the first write of `extent` to the tail.
    pub fn applied(&mut self, now: Millis, extent: Extent) -> Vec<DirectoryAction> {
        let (mut out, mut actions) = (Outbox::new(), Vec::new());
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
        // With another write next, the reads wait for it too, and get data
        // no older than the last write acknowledged before them.
        let gets = match entry.writes.is_empty() {
            true => std::mem::take(&mut entry.gets),
            false => Vec::new(),
        };
        match writer {
            Writer::Local { id } => actions.push(DirectoryAction::LocalWritten { id, version }),
            Writer::Holder { holder, id } => {
                let cached = self.grants.count_copy(now, holder, extent);
                self.grants.remember(holder, id, version);
                let answer = Down::Written {
                    id,
                    extent,
                    version,
                    holder: cached,
                };
                self.grants.send(holder, answer, &mut out);
            }
        }
        for (holder, id) in gets {
            self.grant(now, holder, id, extent, &mut out);
        }
        self.start_write(now, extent, &mut out, &mut actions);
        with_sends(out, actions)
    }

    /// Time passes: leases that ran out take their copies with them, and
    /// unanswered recalls are sent again; a write whose last recall was
    /// answered by an expiry goes on.
    pub fn tick(&mut self, now: Millis) -> Vec<DirectoryAction> {
        let (mut out, mut actions) = (Outbox::new(), Vec::new());
        self.grants.tick(now, &mut out);
        let writing: Vec<Extent> = self
            .extents
            .iter()
            .filter(|(_, e)| !e.writes.is_empty())
            .map(|(&extent, _)| extent)
            .collect();
        for extent in writing {
            self.start_write(now, extent, &mut out, &mut actions);
        }
        with_sends(out, actions)
    }

    fn entry(&mut self, extent: Extent) -> &mut Entry {
        let base = self.base;
        self.extents.entry(extent).or_insert_with(|| Entry {
            version: base,
            ..Entry::default()
        })
    }

    /// Sends `extent` to `holder` for read `id`, counting the copy if the
    /// holder's lease stands.
    fn grant(&mut self, now: Millis, holder: HolderId, id: u64, extent: Extent, out: &mut Outbox) {
        let cached = self.grants.count_copy(now, holder, extent);
        let answer = Down::Granted {
            id,
            extent,
            version: self.version(extent),
            holder: cached,
        };
        self.grants.send(holder, answer, out);
    }

    /// Moves the first write of `extent` on: recalls every copy, or, once
    /// none is left, has it applied.
    fn start_write(
        &mut self,
        now: Millis,
        extent: Extent,
        out: &mut Outbox,
        actions: &mut Vec<DirectoryAction>,
    ) {
        let Some(entry) = self.extents.get_mut(&extent) else {
            return;
        };
        let Some(&writer) = entry.writes.front() else {
            return;
        };
        if entry.applying || !self.grants.recall(now, extent, out) {
            return;
        }
        entry.applying = true;
        actions.push(DirectoryAction::Apply { extent, writer });
    }
}

/// The messages first, in the order they were stamped, then the rest.
fn with_sends(out: Outbox, actions: Vec<DirectoryAction>) -> Vec<DirectoryAction> {
    out.into_iter()
        .map(|(to, msg)| DirectoryAction::Send { to, msg })
        .chain(actions)
        .collect()
}
