use super::*;

fn spec(name: &str, primary: &str) -> VdiskSpec {
    VdiskSpec {
        name: name.parse().unwrap(),
        size_bytes: 1 << 30,
        placement: Placement::Cluster {
            primary: primary.parse().unwrap(),
            secondary: None,
        },
        block_size: 4096,
        queues: 1,
        queue_depth: 64,
        read_only: false,
        permissions: Permissions::default(),
        multi_writer: false,
    }
}

fn apply(config: &mut Configuration, seq: u64, command: Command) -> Response {
    config.apply(&request(1, seq, 0, command))
}

fn request(incarnation: u64, seq: u64, acked_below: u64, command: Command) -> Request {
    let client = Client {
        node: "a".into(),
        incarnation,
    };
    Request {
        client,
        seq,
        acked_below,
        command,
    }
}

fn name(name: &str) -> VdiskName {
    name.parse().unwrap()
}

fn nodes(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| n.to_string()).collect()
}

#[test]
fn vdisks_get_the_smallest_free_id_at_epoch_one() {
    let mut c = Configuration::default();
    for (i, n) in ["x", "y", "z"].iter().enumerate() {
        let r = apply(
            &mut c,
            i as u64,
            Command::AddVdisk(spec(n, &format!("a:d{i}"))),
        );
        assert_eq!(r.vdisk.unwrap().id, i as u32);
    }
    apply(&mut c, 10, Command::DeleteVdisk { name: name("y") });
    let r = apply(&mut c, 11, Command::AddVdisk(spec("w", "a:d9")));
    let record = r.vdisk.unwrap();
    assert_eq!((record.id, record.epoch), (1, 1));
    assert_eq!(c.generation, 5);
}

#[test]
fn refusals_change_nothing_and_say_why() {
    let mut c = Configuration::default();
    apply(&mut c, 1, Command::AddVdisk(spec("x", "a:d0")));
    let before = c.clone();
    let duplicate = apply(&mut c, 2, Command::AddVdisk(spec("x", "a:d1")));
    assert_eq!(duplicate.refused.as_deref(), Some("vdisk x already exists"));
    let shared = apply(&mut c, 3, Command::AddVdisk(spec("y", "a:d0")));
    assert!(shared.refused.unwrap().contains("already used by vdisk x"));
    let unknown = apply(&mut c, 4, Command::DeleteVdisk { name: name("q") });
    assert_eq!(unknown.refused.as_deref(), Some("no vdisk named q"));
    assert_eq!(
        (c.generation, &c.vdisks),
        (before.generation, &before.vdisks)
    );
}

#[test]
fn a_retried_request_is_applied_once() {
    let mut c = Configuration::default();
    let first = apply(&mut c, 7, Command::AddVdisk(spec("x", "a:d0")));
    let retry = apply(&mut c, 7, Command::AddVdisk(spec("x", "a:d0")));
    assert_eq!(first, retry);
    assert!(retry.refused.is_none());
    assert_eq!(c.generation, 1);
}

#[test]
fn a_late_duplicate_is_never_applied_again_however_many_came_between() {
    let mut c = Configuration::default();
    let add = || Command::AddVdisk(spec("x", "a:d0"));
    let delete = || Command::DeleteVdisk { name: name("x") };
    assert!(c.apply(&request(1, 1, 1, add())).refused.is_none());
    // Many requests later (more than any window would hold), each
    // acknowledging the ones before, x is gone.
    for seq in 2..600 {
        let command = if seq == 599 {
            delete()
        } else {
            Command::DeleteVdisk { name: name("none") }
        };
        c.apply(&request(1, seq, seq, command));
    }
    assert!(c.vdisks.is_empty());
    let generation = c.generation;
    // The first add, delivered again: refused, x stays gone.
    let late = c.apply(&request(1, 1, 1, add()));
    assert!(late.refused.unwrap().contains("answered already"));
    assert!(c.vdisks.is_empty());
    assert_eq!(c.generation, generation);
    // What the session remembers is what is not acknowledged.
    assert!(c.sessions["a"].answers.len() <= 1);
}

#[test]
fn a_request_of_an_earlier_life_of_a_node_is_refused() {
    let mut c = Configuration::default();
    c.apply(&request(2, 1, 1, Command::AddVdisk(spec("x", "a:d0"))));
    let old = c.apply(&request(1, 5, 1, Command::DeleteVdisk { name: name("x") }));
    assert!(old.refused.unwrap().contains("earlier run"));
    assert_eq!(c.vdisks.len(), 1);
    // A later life starts afresh: its request 1 is new.
    let later = c.apply(&request(3, 1, 1, Command::DeleteVdisk { name: name("x") }));
    assert!(later.refused.is_none());
    assert!(c.vdisks.is_empty());
}

#[test]
fn permissions_change_field_by_field() {
    let mut c = Configuration::default();
    apply(&mut c, 1, Command::AddVdisk(spec("x", "a:d0")));
    let set = |owner, group, mode| Command::SetPermissions {
        name: name("x"),
        owner,
        group,
        mode,
    };
    apply(&mut c, 2, set(Some(1000), None, Some(0o640)));
    let p = c.vdisks[&name("x")].spec.permissions;
    assert_eq!((p.owner, p.group, p.mode), (1000, 6, 0o640));
    let r = apply(&mut c, 3, set(None, None, Some(0o17777)));
    assert!(r.refused.is_some());
}

#[test]
fn a_move_commits_a_new_epoch_only_with_every_acknowledgement() {
    let mut c = Configuration::default();
    apply(&mut c, 1, Command::AddVdisk(spec("x", "a:d0")));
    let to = Placement::Cluster {
        primary: "b:d0".parse().unwrap(),
        secondary: Some("a:d0".parse().unwrap()),
    };
    let begin = apply(
        &mut c,
        2,
        Command::BeginMove {
            name: name("x"),
            to: to.clone(),
            coordinator: "c".into(),
            waiting_for: nodes(&["a", "b", "c"]),
            from_epoch: 1,
        },
    );
    let move_id = begin.vdisk.unwrap().moving.unwrap().id;
    let ack = |node: &str| Command::AckMove {
        name: name("x"),
        move_id,
        node: node.into(),
    };
    let commit = Command::EndMove {
        name: name("x"),
        move_id,
        commit: true,
    };
    apply(&mut c, 3, ack("a"));
    apply(&mut c, 4, ack("c"));
    let early = apply(&mut c, 5, commit.clone());
    assert!(early.refused.unwrap().contains("not acknowledged by b"));
    let deleted = apply(&mut c, 6, Command::DeleteVdisk { name: name("x") });
    assert!(deleted.refused.unwrap().contains("being moved"));
    apply(&mut c, 7, ack("b"));
    let done = apply(&mut c, 8, commit).vdisk.unwrap();
    assert_eq!((done.epoch, &done.spec.placement), (2, &to));
    assert!(done.moving.is_none());
    // An acknowledgement that comes after the end changes nothing.
    assert!(apply(&mut c, 9, ack("b")).refused.is_some());
}

#[test]
fn a_cancelled_move_keeps_the_old_mapping_and_epoch() {
    let mut c = Configuration::default();
    apply(&mut c, 1, Command::AddVdisk(spec("x", "a:d0")));
    let begin = |from_epoch| Command::BeginMove {
        name: name("x"),
        to: Placement::Cluster {
            primary: "b:d0".parse().unwrap(),
            secondary: None,
        },
        coordinator: "c".into(),
        waiting_for: nodes(&["a"]),
        from_epoch,
    };
    let stale = apply(&mut c, 2, begin(7));
    assert!(stale.refused.unwrap().contains("changed meanwhile"));
    let move_id = apply(&mut c, 3, begin(1)).vdisk.unwrap().moving.unwrap().id;
    let twice = apply(&mut c, 4, begin(1));
    assert!(twice.refused.unwrap().contains("already being moved by c"));
    let end = Command::EndMove {
        name: name("x"),
        move_id,
        commit: false,
    };
    let record = apply(&mut c, 5, end).vdisk.unwrap();
    assert_eq!(record.epoch, 1);
    assert_eq!(record.spec.placement, spec("x", "a:d0").placement);
}

#[test]
fn a_move_may_not_take_another_vdisks_tail() {
    let mut c = Configuration::default();
    apply(&mut c, 1, Command::AddVdisk(spec("x", "a:d0")));
    apply(&mut c, 2, Command::AddVdisk(spec("y", "b:d0")));
    let r = apply(
        &mut c,
        3,
        Command::BeginMove {
            name: name("x"),
            to: spec("x", "b:d0").placement,
            coordinator: "c".into(),
            waiting_for: nodes(&["a"]),
            from_epoch: 1,
        },
    );
    assert!(r.refused.unwrap().contains("vdisk y"));
}

/// `command` sent by node `node`.
fn apply_from(c: &mut Configuration, node: &str, seq: u64, command: Command) -> Response {
    let mut request = request(1, seq, 0, command);
    request.client.node = node.into();
    c.apply(&request)
}

#[test]
fn one_node_at_a_time_holds_the_write_role_and_only_a_down_holder_loses_it() {
    let mut c = Configuration::default();
    apply(&mut c, 1, Command::AddVdisk(spec("x", "a:d0")));
    let claim = |from: Option<&str>| Command::ClaimWriter {
        name: name("x"),
        from: from.map(str::to_owned),
    };
    let release = || Command::ReleaseWriter { name: name("x") };
    let writer = |c: &Configuration| c.vdisks[&name("x")].writer.clone();
    assert_eq!(writer(&c), None, "nobody writes a new vdisk yet");
    assert!(apply_from(&mut c, "b", 1, claim(None)).refused.is_none());
    assert!(
        apply_from(&mut c, "b", 2, claim(None)).refused.is_none(),
        "again"
    );
    let taken = apply_from(&mut c, "c", 1, claim(None));
    assert!(taken.refused.unwrap().contains("written from node b"));
    let wrong = apply_from(&mut c, "c", 2, claim(Some("a")));
    assert!(wrong.refused.is_some(), "a does not hold it");
    assert!(apply_from(&mut c, "c", 3, release()).refused.is_some());
    // c saw b down: it takes the role over.
    assert!(apply_from(&mut c, "c", 4, claim(Some("b")))
        .refused
        .is_none());
    assert_eq!(writer(&c).as_deref(), Some("c"));
    assert!(apply_from(&mut c, "c", 5, release()).refused.is_none());
    assert_eq!(writer(&c), None);
    assert!(apply_from(&mut c, "b", 3, claim(None)).refused.is_none());
    // A multi-writer vdisk grants every claim and records none.
    let shared = VdiskSpec {
        multi_writer: true,
        ..spec("y", "a:d1")
    };
    apply(&mut c, 2, Command::AddVdisk(shared));
    for (node, seq) in [("b", 4), ("c", 6)] {
        let claim = Command::ClaimWriter {
            name: name("y"),
            from: None,
        };
        assert!(apply_from(&mut c, node, seq, claim).refused.is_none());
    }
    assert_eq!(c.vdisks[&name("y")].writer, None);
}

fn mirror(name: &str) -> VdiskSpec {
    VdiskSpec {
        placement: Placement::Mirror {
            primary: "a:d0".parse().unwrap(),
            mirror: "b:d1".parse().unwrap(),
            region_size: 1 << 20,
        },
        ..spec(name, "unused:x")
    }
}

fn set_copy(c: &mut Configuration, id: u64, epoch: u64, copy: MirrorCopy) -> Response {
    let name = name("m");
    apply(c, id, Command::SetMirrorCopy { name, epoch, copy })
}

fn switch_over(c: &mut Configuration, id: u64) -> Response {
    let to = c.vdisks[&name("m")].spec.placement.switched_over();
    let epoch = c.vdisks[&name("m")].epoch;
    let begun = apply(
        c,
        id,
        Command::BeginMove {
            name: name("m"),
            to,
            coordinator: "c".into(),
            waiting_for: BTreeSet::new(),
            from_epoch: epoch,
        },
    );
    let Some(moving) = begun.vdisk.clone().and_then(|v| v.moving) else {
        return begun;
    };
    apply(
        c,
        id + 1,
        Command::EndMove {
            name: name("m"),
            move_id: moving.id,
            commit: true,
        },
    )
}

#[test]
fn a_new_mirror_is_blank_and_only_its_primary_at_its_epoch_records_its_copy() {
    let mut c = Configuration::default();
    let added = apply(&mut c, 1, Command::AddVdisk(mirror("m")));
    assert_eq!(added.vdisk.unwrap().mirror_copy, MirrorCopy::Blank);
    let stale = set_copy(&mut c, 2, 7, MirrorCopy::Current);
    assert!(stale.refused.unwrap().contains("moved on"));
    assert_eq!(c.vdisks[&name("m")].mirror_copy, MirrorCopy::Blank);
    let synced = set_copy(&mut c, 3, 1, MirrorCopy::Current);
    assert_eq!(synced.refused, None);
    assert_eq!(c.vdisks[&name("m")].mirror_copy, MirrorCopy::Current);
    let plain = apply(&mut c, 4, Command::AddVdisk(spec("p", "a:d5")));
    assert_eq!(plain.vdisk.unwrap().mirror_copy, MirrorCopy::Current);
    let not_mirrored = apply(
        &mut c,
        5,
        Command::SetMirrorCopy {
            name: name("p"),
            epoch: 1,
            copy: MirrorCopy::Stale,
        },
    );
    assert!(not_mirrored.refused.unwrap().contains("not mirrored"));
}

#[test]
fn only_a_current_mirror_takes_over_and_then_the_old_primary_cannot_mark_it() {
    let mut c = Configuration::default();
    apply(&mut c, 1, Command::AddVdisk(mirror("m")));
    let blank = switch_over(&mut c, 2);
    assert!(blank.refused.unwrap().contains("blank"), "a blank mirror");
    set_copy(&mut c, 4, 1, MirrorCopy::Current);
    let done = switch_over(&mut c, 5).vdisk.unwrap();
    assert_eq!(done.epoch, 2);
    let Placement::Mirror {
        primary, mirror, ..
    } = &done.spec.placement
    else {
        panic!("still a mirror: {:?}", done.spec.placement);
    };
    assert_eq!((primary.node.as_str(), mirror.node.as_str()), ("b", "a"));
    // The old primary, cut off, tries to go on alone: refused.
    let late = set_copy(&mut c, 7, 1, MirrorCopy::Stale);
    assert!(late.refused.is_some());
    assert_eq!(c.vdisks[&name("m")].mirror_copy, MirrorCopy::Current);
    // The new primary marks the old one stale: it cannot take back.
    set_copy(&mut c, 8, 2, MirrorCopy::Stale);
    let back = switch_over(&mut c, 9);
    assert!(back.refused.unwrap().contains("stale"));
    assert_eq!(c.vdisks[&name("m")].epoch, 2);
}

#[test]
fn a_mirror_moves_only_by_switching_and_marks_wait_for_a_move_to_end() {
    let mut c = Configuration::default();
    apply(&mut c, 1, Command::AddVdisk(mirror("m")));
    set_copy(&mut c, 2, 1, MirrorCopy::Current);
    let elsewhere = apply(
        &mut c,
        3,
        Command::BeginMove {
            name: name("m"),
            to: Placement::Cluster {
                primary: "c:d2".parse().unwrap(),
                secondary: None,
            },
            coordinator: "c".into(),
            waiting_for: BTreeSet::new(),
            from_epoch: 1,
        },
    );
    assert!(elsewhere.refused.unwrap().contains("only switch"));
    let to = c.vdisks[&name("m")].spec.placement.switched_over();
    apply(
        &mut c,
        4,
        Command::BeginMove {
            name: name("m"),
            to,
            coordinator: "c".into(),
            waiting_for: nodes(&["a", "b"]),
            from_epoch: 1,
        },
    );
    let during = set_copy(&mut c, 5, 1, MirrorCopy::Stale);
    assert!(during.refused.unwrap().contains("being moved"));
}
