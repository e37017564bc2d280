//! The protocol's rules one at a time; `sim.rs` runs them all at once.

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
    let done = root.applied(40, 7);
    assert!(sends(&done).contains(&(
        1,
        Down::Written {
            id: 9,
            extent: 7,
            version: 1,
            holder: true
        }
    )));
    assert!(sends(&done).contains(&(
        1,
        Down::Granted {
            id: 11,
            extent: 7,
            version: 1,
            holder: true
        }
    )));
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
    let ttl = CONFIG.holder_ttl_ms();
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
