//! How a vdisk is reconciled, as a pure function: from what this node runs
//! and the configuration the store applied, the steps that bring the one
//! to the other. `apply.rs` carries the steps out.

use std::collections::{BTreeMap, BTreeSet};

use configdb::{Configuration, VdiskName, VdiskRecord};

/// This node, as the plan needs it.
pub struct Me<'a> {
    pub name: &'a str,
    /// Whether this node makes devices at all.
    pub devices: bool,
    /// Vdisks whose device an admin took down here.
    pub detached: &'a BTreeSet<VdiskName>,
}

impl Me<'_> {
    /// Whether this node runs a device for the vdisk: it makes devices, the
    /// placement has one here, and no admin detached it.
    pub fn wants_device(&self, record: &VdiskRecord) -> bool {
        self.devices
            && record.spec.placement.has_device_on(self.name)
            && !self.detached.contains(&record.spec.name)
    }

    /// Whether this node runs anything for the vdisk: a device, or a tail
    /// served to peers.
    pub fn has_part(&self, record: &VdiskRecord) -> bool {
        self.wants_device(record) || record.spec.placement.tail_on(self.name).is_some()
    }
}

/// A vdisk this node runs, as the plan sees it.
pub struct Running<'a> {
    /// The record it runs from.
    pub record: &'a VdiskRecord,
    /// It could not be started.
    pub failed: bool,
    /// Deleted from the store while its device was in use here.
    pub deleted: bool,
    /// The move this node suspended its I/O for.
    pub suspended_for: Option<u64>,
}

/// One thing to do to bring this node in line with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Stop running the vdisk here (kept while its device is in use).
    Remove(VdiskName),
    /// Start the vdisk from `record`: new here, or failed before and
    /// changed since. After a [`Step::Remove`] of the same name, only if
    /// the removal happened (a device in use keeps the old one).
    Start(VdiskRecord),
    /// Bring a running vdisk to `record`: set its device's permissions,
    /// swap its mapping at the new epoch, or resume the I/O a cancelled
    /// move held, as the flags say.
    Update {
        record: VdiskRecord,
        permissions: bool,
        remap: bool,
        cancel_suspension: bool,
    },
    /// Suspend the vdisk's I/O for move `move_id`, then acknowledge it.
    Suspend { name: VdiskName, move_id: u64 },
}

/// The steps, in order: removals first (a vdisk whose id changed is removed,
/// then started), then each vdisk of the configuration, each followed by
/// the suspension a pending move asks of this node (once: `acking` holds the
/// moves already suspended for).
pub fn plan(
    running: &BTreeMap<VdiskName, Running<'_>>,
    config: &Configuration,
    me: &Me<'_>,
    acking: &BTreeSet<u64>,
) -> Vec<Step> {
    // Removed: deleted, no longer in the store or this node's, or a new
    // vdisk under the same name.
    let gone = |name: &VdiskName, v: &Running<'_>| {
        v.deleted
            || config
                .vdisks
                .get(name)
                .is_none_or(|record| !me.has_part(record) || record.id != v.record.id)
    };
    let mut steps: Vec<Step> = running
        .iter()
        .filter(|(name, v)| gone(name, v))
        .map(|(name, _)| Step::Remove(name.clone()))
        .collect();
    for record in config.vdisks.values() {
        let name = &record.spec.name;
        if me.has_part(record) {
            match running.get(name) {
                None => steps.push(Step::Start(record.clone())),
                Some(v) if gone(name, v) => steps.push(Step::Start(record.clone())),
                Some(v) if v.failed => {
                    if v.record != record {
                        steps.push(Step::Start(record.clone()));
                    }
                }
                Some(v) => {
                    let remap = record.epoch != v.record.epoch;
                    let ended = record.moving.as_ref().map(|m| m.id) != v.suspended_for;
                    steps.push(Step::Update {
                        record: record.clone(),
                        permissions: record.spec.permissions != v.record.spec.permissions,
                        remap,
                        cancel_suspension: !remap && v.suspended_for.is_some() && ended,
                    });
                }
            }
        }
        if let Some(moving) = &record.moving {
            if moving.waiting_for.contains(me.name)
                && !moving.acked.contains(me.name)
                && !acking.contains(&moving.id)
            {
                steps.push(Step::Suspend {
                    name: name.clone(),
                    move_id: moving.id,
                });
            }
        }
    }
    steps
}

#[cfg(test)]
mod tests {
    use configdb::PendingMove;

    use super::*;
    use crate::fixtures::twin;

    fn record(name: &str, id: u32, epoch: u64) -> VdiskRecord {
        twin(name, id, epoch)
    }

    fn config(records: &[&VdiskRecord]) -> Configuration {
        let mut config = Configuration::default();
        for r in records {
            config.vdisks.insert(r.spec.name.clone(), (*r).clone());
        }
        config
    }

    fn running(record: &VdiskRecord) -> Running<'_> {
        Running {
            record,
            failed: false,
            deleted: false,
            suspended_for: None,
        }
    }

    fn runs<'a>(list: Vec<Running<'a>>) -> BTreeMap<VdiskName, Running<'a>> {
        list.into_iter()
            .map(|r| (r.record.spec.name.clone(), r))
            .collect()
    }

    const NONE: &BTreeSet<VdiskName> = &BTreeSet::new();

    fn me(name: &str) -> Me<'_> {
        Me {
            name,
            devices: true,
            detached: NONE,
        }
    }

    /// The plan on node `node` running `running`, for a configuration of
    /// `records`, no move suspended for yet.
    fn steps_of(running: Vec<Running<'_>>, records: &[&VdiskRecord], node: &str) -> Vec<Step> {
        plan(
            &runs(running),
            &config(records),
            &me(node),
            &BTreeSet::new(),
        )
    }

    fn update(record: &VdiskRecord) -> Step {
        Step::Update {
            record: record.clone(),
            permissions: false,
            remap: false,
            cancel_suspension: false,
        }
    }

    #[test]
    fn a_new_vdisk_starts_and_an_unchanged_one_is_only_brought_to_its_record() {
        let (v, w) = (record("v", 1, 1), record("w", 2, 1));
        let steps = steps_of(vec![running(&v)], &[&v, &w], "c");
        assert_eq!(steps, [update(&v), Step::Start(w.clone())]);
    }

    #[test]
    fn a_vdisk_gone_from_the_store_or_from_this_node_is_removed() {
        let v = record("v", 1, 1);
        let steps = steps_of(vec![running(&v)], &[], "c");
        assert_eq!(steps, [Step::Remove(v.spec.name.clone())]);
        // A node without devices has no part in a vdisk it holds no tail of.
        let bare = Me {
            devices: false,
            ..me("c")
        };
        let steps = plan(
            &runs(vec![running(&v)]),
            &config(&[&v]),
            &bare,
            &BTreeSet::new(),
        );
        assert_eq!(steps, [Step::Remove(v.spec.name.clone())]);
        // A detached device leaves the tail this node serves.
        let detached = BTreeSet::from([v.spec.name.clone()]);
        let a = Me {
            detached: &detached,
            ..me("a")
        };
        let steps = plan(
            &runs(vec![running(&v)]),
            &config(&[&v]),
            &a,
            &BTreeSet::new(),
        );
        assert_eq!(steps, [update(&v)]);
    }

    #[test]
    fn a_vdisk_added_again_under_its_name_is_removed_then_started() {
        let (old, new) = (record("v", 1, 1), record("v", 7, 1));
        let steps = steps_of(vec![running(&old)], &[&new], "c");
        assert_eq!(
            steps,
            [
                Step::Remove(old.spec.name.clone()),
                Step::Start(new.clone())
            ]
        );
    }

    #[test]
    fn a_new_epoch_remaps_and_new_permissions_are_set() {
        let old = record("v", 1, 1);
        let mut new = record("v", 1, 2);
        new.spec.permissions.mode = 0o600;
        let steps = steps_of(vec![running(&old)], &[&new], "c");
        assert_eq!(
            steps,
            [Step::Update {
                record: new.clone(),
                permissions: true,
                remap: true,
                cancel_suspension: false,
            }]
        );
    }

    #[test]
    fn a_failed_vdisk_starts_again_only_once_its_record_changed_and_a_deleted_one_is_removed_again()
    {
        let v = record("v", 1, 1);
        let failed = Running {
            failed: true,
            ..running(&v)
        };
        let steps = steps_of(vec![failed], &[&v], "c");
        assert_eq!(steps, []);
        let moved = record("v", 1, 2);
        let failed = Running {
            failed: true,
            ..running(&v)
        };
        let steps = steps_of(vec![failed], &[&moved], "c");
        assert_eq!(steps, [Step::Start(moved.clone())]);
        let deleted = Running {
            deleted: true,
            ..running(&v)
        };
        let steps = steps_of(vec![deleted], &[&v], "c");
        let name = v.spec.name.clone();
        assert_eq!(steps, [Step::Remove(name), Step::Start(v.clone())]);
    }

    #[test]
    fn a_move_is_suspended_for_once_and_its_cancellation_resumes_the_io() {
        let v = record("v", 1, 1);
        let mut moving = v.clone();
        moving.moving = Some(PendingMove {
            id: 9,
            to: v.spec.placement.clone(),
            coordinator: "a".into(),
            waiting_for: BTreeSet::from(["a".into(), "c".into()]),
            acked: BTreeSet::from(["a".into()]),
        });
        let steps = steps_of(vec![running(&v)], &[&moving], "c");
        let suspend = Step::Suspend {
            name: v.spec.name.clone(),
            move_id: 9,
        };
        assert_eq!(steps, [update(&moving), suspend]);
        let acking = BTreeSet::from([9]);
        let suspended = Running {
            suspended_for: Some(9),
            ..running(&moving)
        };
        let steps = plan(
            &runs(vec![suspended]),
            &config(&[&moving]),
            &me("c"),
            &acking,
        );
        assert_eq!(steps, [update(&moving)], "once");
        // a, which acknowledged already, and b, not waited for, do nothing.
        for node in ["a", "b"] {
            let steps = plan(
                &runs(vec![]),
                &config(&[&moving]),
                &me(node),
                &BTreeSet::new(),
            );
            assert!(
                !steps.iter().any(|s| matches!(s, Step::Suspend { .. })),
                "{node}"
            );
        }
        // The move ended without a new epoch: cancelled.
        let suspended = Running {
            suspended_for: Some(9),
            ..running(&moving)
        };
        let steps = plan(&runs(vec![suspended]), &config(&[&v]), &me("c"), &acking);
        assert_eq!(
            steps,
            [Step::Update {
                record: v.clone(),
                permissions: false,
                remap: false,
                cancel_suspension: true,
            }]
        );
    }
}
