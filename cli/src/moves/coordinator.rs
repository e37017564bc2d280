//! The decisions of a move's coordinator, without I/O. A move goes
//! Begin (the store records it, naming the live members that must suspend)
//! → Ack (each suspends and drains, then acknowledges) → End (committed at
//! the next epoch once all acknowledged, else cancelled). The coordinator
//! (`daemon/mover.rs`) writes those to the store; here it learns, from the
//! store's record and the live members, where the move stands
//! ([`progress`]), and whether the new mapping must wait for a lease to run
//! out before it commits ([`must_wait_out_lease`]).

use std::collections::BTreeSet;

use configdb::{PendingMove, Placement};

/// Where a move stands, as the coordinator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// The store no longer holds this move: it ended elsewhere.
    Gone,
    /// Every node it waits for acknowledged.
    Acknowledged,
    /// Some nodes have not acknowledged yet. Those of them `vouch` names
    /// are declared down and not vouched for yet: the coordinator
    /// acknowledges for them (a member declared down is refused by its
    /// peers, and by the epoch once the move commits).
    Waiting {
        missing: Vec<String>,
        vouch: Vec<String>,
    },
}

/// Where move `move_id` stands, from the store's `moving` record of the
/// vdisk, the live members, and the nodes acknowledged for already.
pub fn progress(
    moving: Option<&PendingMove>,
    move_id: u64,
    alive: &BTreeSet<String>,
    vouched: &BTreeSet<String>,
) -> Progress {
    let Some(moving) = moving.filter(|m| m.id == move_id) else {
        return Progress::Gone;
    };
    let missing: Vec<String> = moving
        .waiting_for
        .difference(&moving.acked)
        .cloned()
        .collect();
    if missing.is_empty() {
        return Progress::Acknowledged;
    }
    let vouch = missing
        .iter()
        .filter(|n| !alive.contains(*n) && !vouched.contains(*n))
        .cloned()
        .collect();
    Progress::Waiting { missing, vouch }
}

/// Whether a node of the vdisk's tails did not suspend by itself: it was not
/// among the live members the move waited for, or the coordinator
/// acknowledged for it. Such a node may still write its own tail until its
/// lease from the store runs out, so the new mapping takes effect only
/// after that.
pub fn must_wait_out_lease(
    placement: &Placement,
    waited_for: &BTreeSet<String>,
    vouched: &BTreeSet<String>,
) -> bool {
    placement
        .cluster_tails()
        .map(|t| t.node.as_str())
        .any(|n| !waited_for.contains(n) || vouched.contains(n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::twin;

    fn nodes(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|n| n.to_string()).collect()
    }

    fn pending(waiting_for: &[&str], acked: &[&str]) -> PendingMove {
        PendingMove {
            id: 4,
            to: twin("v", 0, 1).spec.placement,
            coordinator: "c".into(),
            waiting_for: nodes(waiting_for),
            acked: nodes(acked),
        }
    }

    #[test]
    fn a_move_waits_for_every_node_named_and_vouches_once_for_those_down() {
        let m = pending(&["a", "b", "c"], &["c"]);
        let none = BTreeSet::new();
        assert_eq!(
            progress(Some(&m), 4, &nodes(&["a", "b", "c"]), &none),
            Progress::Waiting {
                missing: vec!["a".into(), "b".into()],
                vouch: vec![],
            }
        );
        assert_eq!(
            progress(Some(&m), 4, &nodes(&["b", "c"]), &none),
            Progress::Waiting {
                missing: vec!["a".into(), "b".into()],
                vouch: vec!["a".into()],
            }
        );
        let vouched = nodes(&["a"]);
        assert_eq!(
            progress(Some(&m), 4, &nodes(&["b", "c"]), &vouched),
            Progress::Waiting {
                missing: vec!["a".into(), "b".into()],
                vouch: vec![],
            },
            "vouched for once"
        );
        let all = pending(&["a", "b", "c"], &["a", "b", "c"]);
        assert_eq!(
            progress(Some(&all), 4, &none, &none),
            Progress::Acknowledged
        );
    }

    #[test]
    fn a_move_that_ended_elsewhere_or_another_move_is_gone() {
        let m = pending(&["a"], &[]);
        let none = BTreeSet::new();
        assert_eq!(progress(None, 4, &none, &none), Progress::Gone);
        assert_eq!(progress(Some(&m), 5, &none, &none), Progress::Gone);
    }

    #[test]
    fn the_lease_is_waited_out_only_for_a_tail_node_that_did_not_suspend_by_itself() {
        let placement = twin("v", 0, 1).spec.placement; // a:d0, b:d0
        let none = BTreeSet::new();
        assert!(!must_wait_out_lease(
            &placement,
            &nodes(&["a", "b", "c"]),
            &none
        ));
        assert!(
            must_wait_out_lease(&placement, &nodes(&["b", "c"]), &none),
            "a not waited for"
        );
        assert!(
            must_wait_out_lease(&placement, &nodes(&["a", "b"]), &nodes(&["a"])),
            "a vouched for"
        );
        assert!(
            !must_wait_out_lease(&placement, &nodes(&["a", "b"]), &nodes(&["c"])),
            "c holds no tail"
        );
    }
}
