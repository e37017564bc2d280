//! The protocol's rules one at a time; `sim.rs` runs them all at once.

use super::holder::{Holder, HolderAction};
use super::*;

const CONFIG: LeaseConfig = LeaseConfig {
    ttl_ms: 1_000,
    drift_ppm: 5_000,
    resend_ms: 100,
};

fn sends(actions: &[DirectoryAction]) -> Vec<(HolderId, Down)> {
    actions
        .iter()
        .filter_map(|a| match a {
            DirectoryAction::Send { to, msg } => Some((*to, msg.msg)),
            _ => None,
        })
        .collect()
}

fn applies(actions: &[DirectoryAction]) -> usize {
    actions
        .iter()
        .filter(|a| matches!(a, DirectoryAction::Apply { .. }))
        .count()
}

/// A root where holders 1 and 2 hold leases and copies of extent 7.
fn root_with_two_copies() -> Directory {
    let mut root = Directory::new(1, CONFIG);
    for h in [1, 2] {
        root.receive(0, h, Up::Renew { renewal: 1 });
        let granted = root.receive(
            0,
            h,
            Up::Get {
                id: h.into(),
                extent: 7,
            },
        );
        assert!(matches!(
            sends(&granted)[..],
            [(_, Down::Granted { holder: true, .. })]
        ));
    }
    root
}

#[test]
fn a_write_lands_only_once_every_copy_is_recalled() {
    let mut root = root_with_two_copies();
    let asked = root.receive(
        10,
        1,
        Up::Write {
            id: 9,
            extent: 7,
            oldest: 9,
        },
    );
    let recalled: Vec<HolderId> = sends(&asked).iter().map(|(to, _)| *to).collect();
    assert_eq!(recalled, [1, 2], "the writer's copy is recalled too");
    assert_eq!(applies(&asked), 0);
    let seq = |actions: &[DirectoryAction], h| {
        actions.iter().find_map(|a| match a {
            DirectoryAction::Send { to, msg } if *to == h => Some(msg.seq),
            _ => None,
        })
    };
    let (one, two) = (seq(&asked, 1).unwrap(), seq(&asked, 2).unwrap());
    assert_eq!(
        applies(&root.receive(
            20,
            1,
            Up::Recalled {
                extent: 7,
                seq: one
            }
        )),
        0
    );
    // A read meanwhile waits for the write.
    assert!(root
        .receive(25, 1, Up::Get { id: 11, extent: 7 })
        .is_empty());
    assert_eq!(
        applies(&root.receive(
            30,
            2,
            Up::Recalled {
                extent: 7,
                seq: two
            }
        )),
        1
    );
    let before = root.version(7);
    let done = root.applied(40, 7);
    assert!(sends(&done).contains(&(
        1,
        Down::Written {
            id: 9,
            extent: 7,
            version: before + 1,
            holder: true
        }
    )));
    assert!(sends(&done).contains(&(
        1,
        Down::Granted {
            id: 11,
            extent: 7,
            version: before + 1,
            holder: true
        }
    )));
}

#[test]
fn a_resent_write_that_was_answered_is_answered_again_not_queued() {
    let mut root = Directory::new(1, CONFIG);
    root.receive(0, 1, Up::Renew { renewal: 1 });
    let write = Up::Write {
        id: 4,
        extent: 7,
        oldest: 4,
    };
    let writer = Writer::Holder { holder: 1, id: 4 };
    assert_eq!(applies(&root.receive(1, 1, write)), 1);
    assert!(root.queued(7, writer));
    root.applied(2, 7);
    assert!(!root.queued(7, writer));
    let again = root.receive(3, 1, write);
    assert_eq!(applies(&again), 0);
    assert!(
        !root.queued(7, writer),
        "the shell would keep its data for ever"
    );
    assert!(matches!(
        sends(&again)[..],
        [(
            1,
            Down::Written {
                id: 4,
                holder: false,
                ..
            }
        )]
    ));
}

#[test]
fn a_new_root_s_versions_are_above_every_version_of_the_roots_before() {
    let mut old = Directory::new(1, CONFIG);
    for id in 1..=3 {
        old.write_local(0, id, 7);
        old.applied(0, 7);
    }
    let new = Directory::new(2, CONFIG);
    assert!(new.version(7) > old.version(7));
    assert!(new.version(8) > old.version(7), "of every extent");
}

#[test]
fn a_holder_that_never_answers_a_recall_is_fenced_by_its_lease() {
    let mut root = root_with_two_copies();
    // Holder 1 keeps renewing; holder 2 has gone silent since time 0.
    root.receive(500, 1, Up::Renew { renewal: 2 });
    let asked = root.receive(
        510,
        1,
        Up::Write {
            id: 9,
            extent: 7,
            oldest: 9,
        },
    );
    let one = match asked.first() {
        Some(DirectoryAction::Send { msg, .. }) => msg.seq,
        other => panic!("no recall: {other:?}"),
    };
    root.receive(
        520,
        1,
        Up::Recalled {
            extent: 7,
            seq: one,
        },
    );
    let waiting = root.tick(999);
    assert_eq!(applies(&waiting), 0, "holder 2's lease still stands");
    assert_eq!(
        sends(&waiting),
        [(2, Down::Recall { extent: 7 })],
        "its recall is sent again"
    );
    assert_eq!(
        applies(&root.tick(1_000)),
        1,
        "its lease is over: no copy of it can be read"
    );
}

fn stamped(seq: u64, generation: u64, msg: Down) -> Stamped {
    Stamped {
        epoch: 1,
        seq,
        generation,
        msg,
    }
}

/// A holder whose lease (generation 1) stands from time 0.
fn leased_holder() -> Holder {
    let mut holder = Holder::new(CONFIG);
    holder.tick(0);
    holder.receive(
        5,
        stamped(
            1,
            1,
            Down::Renewed {
                renewal: 1,
                generation: 1,
                ttl_ms: CONFIG.ttl_ms,
            },
        ),
    );
    holder
}

#[test]
fn a_grant_overtaken_by_a_recall_answers_its_read_but_is_not_kept() {
    let mut holder = leased_holder();
    holder.read(10, 3, 7);
    // The root recalled extent 7 (seq 5) after granting it (seq 4); the
    // recall came first.
    holder.receive(20, stamped(5, 1, Down::Recall { extent: 7 }));
    let done = holder.receive(
        21,
        stamped(
            4,
            1,
            Down::Granted {
                id: 3,
                extent: 7,
                version: 2,
                holder: true,
            },
        ),
    );
    assert_eq!(
        done,
        [HolderAction::ReadDone {
            id: 3,
            version: 2,
            hit: false
        }]
    );
    assert_eq!(holder.copy(22, 7), None);
}

#[test]
fn copies_end_with_the_lease_and_a_new_lease_does_not_revive_them() {
    let mut holder = leased_holder();
    holder.read(10, 3, 7);
    holder.receive(
        11,
        stamped(
            2,
            1,
            Down::Granted {
                id: 3,
                extent: 7,
                version: 2,
                holder: true,
            },
        ),
    );
    assert_eq!(holder.copy(12, 7), Some(2));
    let ttl = CONFIG.holder_ttl_ms(CONFIG.ttl_ms);
    assert_eq!(holder.copy(ttl - 1, 7), Some(2));
    assert_eq!(
        holder.copy(ttl, 7),
        None,
        "counted from the renewal's sending"
    );
    // A renewal sent before the lapse and answered after it, by a root
    // that kept the same lease, gives the lease back but not the copy.
    holder.tick(ttl - 10);
    holder.receive(
        ttl + 5,
        stamped(
            3,
            1,
            Down::Renewed {
                renewal: 2,
                generation: 1,
                ttl_ms: CONFIG.ttl_ms,
            },
        ),
    );
    assert_eq!(holder.copy(ttl + 6, 7), None);
    // A grant sent under the lease the root since let expire is not kept.
    holder.read(ttl + 7, 4, 7);
    holder.receive(
        ttl + 8,
        stamped(
            4,
            0,
            Down::Granted {
                id: 4,
                extent: 7,
                version: 2,
                holder: true,
            },
        ),
    );
    assert_eq!(holder.copy(ttl + 9, 7), None);
}

#[test]
fn a_deposed_root_is_not_heard() {
    let mut holder = Holder::new(CONFIG);
    holder.tick(0);
    holder.receive(
        5,
        Stamped {
            epoch: 3,
            seq: 1,
            generation: 1,
            msg: Down::Renewed {
                renewal: 1,
                generation: 1,
                ttl_ms: CONFIG.ttl_ms,
            },
        },
    );
    holder.read(10, 3, 7);
    let old = Stamped {
        epoch: 2,
        seq: 2,
        generation: 1,
        msg: Down::Granted {
            id: 3,
            extent: 7,
            version: 2,
            holder: true,
        },
    };
    assert!(holder.receive(11, old).is_empty());
    assert_eq!(holder.copy(12, 7), None);
    assert!(holder.waiting());
}

/// A relay whose parent renewed its lease at time 0 for a full lease, and
/// whose child 5 holds a lease from it.
fn relay_with_a_child() -> Relay {
    let mut relay = Relay::new(CONFIG);
    relay.tick(0);
    let renewed = Down::Renewed {
        renewal: 1,
        generation: 1,
        ttl_ms: CONFIG.ttl_ms,
    };
    relay.receive_up(2, stamped(1, 1, renewed));
    let answer = relay.receive_down(3, 5, Up::Renew { renewal: 1 });
    assert!(matches!(
        answer[..],
        [RelayAction::Down {
            to: 5,
            msg: Stamped {
                msg: Down::Renewed { .. },
                ..
            }
        }]
    ));
    relay
}

/// The messages a relay sends up, and down (to whom, what).
fn relay_sends(actions: &[RelayAction]) -> (Vec<Up>, Vec<(HolderId, Down)>) {
    let (up, down) = relay_stamped(actions);
    (up, down.into_iter().map(|(to, s)| (to, s.msg)).collect())
}

fn relay_stamped(actions: &[RelayAction]) -> (Vec<Up>, Vec<(HolderId, Stamped)>) {
    let up = actions
        .iter()
        .filter_map(|a| match a {
            RelayAction::Up(msg) => Some(*msg),
            _ => None,
        })
        .collect();
    let down = actions
        .iter()
        .filter_map(|a| match a {
            RelayAction::Down { to, msg } => Some((*to, *msg)),
            _ => None,
        })
        .collect();
    (up, down)
}

/// Child 5 reads extent 7 through the relay, which gets it from above at
/// `version` with `holder` and answers the child.
fn read_through(relay: &mut Relay, now: Millis, seq: u64, holder: bool) -> Down {
    let (up, _) = relay_sends(&relay.receive_down(now, 5, Up::Get { id: 40, extent: 7 }));
    let [Up::Get { id, extent: 7 }] = up[..] else {
        panic!("the read was not sent up: {up:?}");
    };
    let granted = Down::Granted {
        id,
        extent: 7,
        version: 2,
        holder,
    };
    let (_, down) = relay_sends(&relay.receive_up(now + 1, stamped(seq, 1, granted)));
    let [(5, answer)] = down[..] else {
        panic!("the child got no answer: {down:?}");
    };
    answer
}

#[test]
fn a_relay_answers_a_recall_only_once_its_children_dropped_their_copies() {
    let mut relay = relay_with_a_child();
    let answer = read_through(&mut relay, 10, 2, true);
    assert!(matches!(
        answer,
        Down::Granted {
            id: 40,
            version: 2,
            holder: true,
            ..
        }
    ));
    assert!(relay.may_hold(5, 7));
    let recall = stamped(9, 1, Down::Recall { extent: 7 });
    let (up, down) = relay_stamped(&relay.receive_up(20, recall));
    assert!(up.is_empty(), "answered before the child dropped its copy");
    assert_eq!(relay.copy(20, 7), None, "the relay's own copy goes at once");
    let [(5, to_child)] = down[..] else {
        panic!("the child was not recalled: {down:?}");
    };
    assert_eq!(to_child.msg, Down::Recall { extent: 7 });
    // Until the child answers the relay's recall (its own numbering),
    // only the resends go out.
    let (up, _) = relay_sends(&relay.tick(200));
    assert!(up.is_empty());
    let dropped = Up::Recalled {
        extent: 7,
        seq: to_child.seq,
    };
    let (up, _) = relay_sends(&relay.receive_down(210, 5, dropped));
    assert_eq!(up, [Up::Recalled { extent: 7, seq: 9 }]);
}

#[test]
fn a_relay_gives_no_copy_of_what_it_does_not_hold() {
    let mut relay = relay_with_a_child();
    let answer = read_through(&mut relay, 10, 2, false);
    assert!(matches!(answer, Down::Granted { holder: false, .. }));
    assert!(!relay.may_hold(5, 7));
}

#[test]
fn a_relay_never_renews_a_child_past_its_own_lease() {
    let mut relay = relay_with_a_child();
    // Its lease, renewed at 0, ends at holder_ttl on its clock.
    let end = CONFIG.holder_ttl_ms(CONFIG.ttl_ms);
    let (_, down) = relay_sends(&relay.receive_down(end - 100, 5, Up::Renew { renewal: 2 }));
    assert!(
        matches!(down[..], [(5, Down::Renewed { ttl_ms: 100, .. })]),
        "{down:?}"
    );
    let (_, down) = relay_sends(&relay.receive_down(end, 5, Up::Renew { renewal: 3 }));
    assert!(down.is_empty(), "renewed without a lease of its own");
}

#[test]
fn after_a_move_a_relay_shares_nothing_until_its_old_grants_ended() {
    let mut relay = relay_with_a_child();
    relay.reattach(100);
    // The new parent's lease.
    let renewed = Down::Renewed {
        renewal: 2,
        generation: 1,
        ttl_ms: CONFIG.ttl_ms,
    };
    relay.receive_up(110, stamped(1, 1, renewed));
    assert!(relay.leased(111));
    let (_, down) = relay_sends(&relay.receive_down(120, 5, Up::Renew { renewal: 2 }));
    assert!(down.is_empty(), "a child renewed within the fence");
    let answer = read_through(&mut relay, 130, 2, true);
    assert!(matches!(answer, Down::Granted { holder: false, .. }));
    // The old lease ended at holder_ttl: from then on the child is renewed
    // and given copies under the new one.
    let end = CONFIG.holder_ttl_ms(CONFIG.ttl_ms);
    relay.tick(end);
    let renewed_again = Down::Renewed {
        renewal: 3,
        generation: 1,
        ttl_ms: CONFIG.ttl_ms,
    };
    relay.receive_up(end + 1, stamped(3, 1, renewed_again));
    let (_, down) = relay_sends(&relay.receive_down(end + 2, 5, Up::Renew { renewal: 3 }));
    assert!(matches!(down[..], [(5, Down::Renewed { .. })]), "{down:?}");
    // Its copy from the new parent is shared now.
    assert_eq!(relay.copy(end + 3, 7), Some(2));
    let (_, down) = relay_sends(&relay.receive_down(end + 3, 5, Up::Get { id: 41, extent: 7 }));
    assert!(
        matches!(down[..], [(5, Down::Granted { holder: true, .. })]),
        "{down:?}"
    );
}

#[test]
fn an_eviction_recalls_the_children_and_shares_nothing_until_they_are_gone() {
    let mut relay = relay_with_a_child();
    read_through(&mut relay, 10, 2, true);
    let (up, down) = relay_stamped(&relay.evict(20, 7));
    assert!(up.is_empty(), "an eviction is not news to the parent");
    assert_eq!(relay.copy(20, 7), None);
    let [(5, recall)] = down[..] else {
        panic!("the child was not recalled: {down:?}");
    };
    assert_eq!(recall.msg, Down::Recall { extent: 7 });
    // Fetched again while the child's copy is still out: not shared.
    let answer = read_through(&mut relay, 30, 3, true);
    assert!(matches!(answer, Down::Granted { holder: false, .. }));
    assert_eq!(relay.copy(32, 7), Some(2));
    let dropped = Up::Recalled {
        extent: 7,
        seq: recall.seq,
    };
    let (up, _) = relay_sends(&relay.receive_down(40, 5, dropped));
    assert!(up.is_empty());
    let (_, down) = relay_sends(&relay.receive_down(41, 5, Up::Get { id: 42, extent: 7 }));
    assert!(
        matches!(down[..], [(5, Down::Granted { holder: true, .. })]),
        "{down:?}"
    );
}
