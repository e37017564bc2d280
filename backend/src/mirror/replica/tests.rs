use super::*;
use Side::{A, B};

const W: Request = Request::Write {
    offset: 4096,
    len: 8192,
};

fn send(id: u64, side: Side) -> Action {
    Action::Send { id, side }
}

fn mark(id: u64) -> Action {
    Action::MarkDirty {
        id,
        offset: 4096,
        len: 8192,
    }
}

fn complete(id: u64) -> Vec<Action> {
    vec![Action::Complete { id }]
}

#[test]
fn a_write_in_sync_completes_only_once_both_sides_have_it() {
    let mut r = Replica::new(ReplicaConfig::default());
    assert_eq!(r.submit(1, W), [send(1, A), send(1, B)]);
    assert_eq!(r.succeeded(1, B), []);
    assert_eq!(r.succeeded(1, A), complete(1));
    assert!(!r.is_degraded());
    assert_eq!(r.in_flight(), 0);
}

#[test]
fn reads_go_to_the_preferred_side_and_flushes_to_both() {
    let mut r = Replica::new(ReplicaConfig {
        read_from: B,
        ..ReplicaConfig::default()
    });
    assert_eq!(r.submit(1, Request::Read), [send(1, B)]);
    assert_eq!(r.succeeded(1, B), complete(1));
    assert_eq!(r.submit(2, Request::Flush), [send(2, A), send(2, B)]);
    assert_eq!(r.succeeded(2, A), []);
    assert_eq!(r.succeeded(2, B), complete(2));
}

#[test]
fn a_side_failing_a_write_degrades_and_the_write_completes_once_marked_dirty() {
    let mut r = Replica::new(ReplicaConfig::default());
    r.submit(1, W);
    assert_eq!(r.succeeded(1, A), []);
    assert_eq!(r.failed(1, B), [mark(1)]);
    assert_eq!(r.state(B), SideState::Down);
    assert_eq!(r.dirty_marked(1), complete(1));
}

#[test]
fn a_write_submitted_while_degraded_goes_to_the_survivor_and_is_marked_at_once() {
    let mut r = Replica::new(ReplicaConfig::default());
    assert_eq!(r.side_down(A), []);
    assert_eq!(r.submit(1, W), [send(1, B), mark(1)]);
    assert_eq!(r.dirty_marked(1), []);
    assert_eq!(r.succeeded(1, B), complete(1));
}

#[test]
fn a_failed_dirty_mark_fails_the_write() {
    let mut r = Replica::new(ReplicaConfig::default());
    r.side_down(B);
    r.submit(1, W);
    r.succeeded(1, A);
    assert_eq!(r.dirty_mark_failed(1), [Action::Fail { id: 1 }]);
    assert_eq!(r.dirty_marked(1), []);
}

#[test]
fn a_read_on_a_lost_side_moves_to_the_other_and_its_late_answer_is_ignored() {
    let mut r = Replica::new(ReplicaConfig::default());
    r.submit(1, Request::Read);
    assert_eq!(r.side_down(A), [send(1, B)]);
    assert_eq!(r.succeeded(1, A), []);
    assert_eq!(r.succeeded(1, B), complete(1));
}

#[test]
fn a_side_that_returns_is_stale_written_to_but_not_read_until_resynced() {
    let mut r = Replica::new(ReplicaConfig::default());
    r.side_down(A);
    r.side_up(A);
    assert_eq!(r.state(A), SideState::Stale);
    assert_eq!(r.submit(1, Request::Read), [send(1, B)]);
    // Both sides take the write: no mark needed once both have it.
    assert_eq!(r.submit(2, W), [send(2, A), send(2, B)]);
    r.succeeded(2, A);
    assert_eq!(r.succeeded(2, B), complete(2));
    assert!(r.resynced(A));
    assert_eq!(r.submit(3, Request::Read), [send(3, A)]);
    assert!(!r.is_degraded());
}

#[test]
fn resync_is_refused_while_a_write_that_missed_the_side_is_in_flight() {
    let mut r = Replica::new(ReplicaConfig::default());
    r.side_down(A);
    r.submit(1, W);
    r.side_up(A);
    assert!(!r.resynced(A));
    r.succeeded(1, B);
    r.dirty_marked(1);
    assert!(r.resynced(A));
}

#[test]
fn with_no_side_in_sync_requests_fail() {
    let mut r = Replica::new(ReplicaConfig::default());
    r.submit(1, W);
    r.side_down(A);
    assert_eq!(r.side_down(B), [Action::Fail { id: 1 }]);
    r.side_up(A);
    assert_eq!(r.submit(2, Request::Read), [Action::Fail { id: 2 }]);
    assert_eq!(r.submit(3, W), [Action::Fail { id: 3 }]);
}

#[test]
fn a_write_only_the_stale_side_took_fails() {
    let mut r = Replica::new(ReplicaConfig::default());
    r.side_down(A);
    r.side_up(A);
    r.submit(1, W);
    r.succeeded(1, A);
    assert_eq!(r.failed(1, B), [Action::Fail { id: 1 }]);
}

/// Reads from A, the store tracking B: a primary on A.
const TRACKED: ReplicaConfig = ReplicaConfig {
    read_from: A,
    tracked: Some(B),
    required: None,
};

fn tracked() -> Replica {
    Replica::new(TRACKED)
}

#[test]
fn losing_the_tracked_side_holds_everything_until_the_store_records_it_stale() {
    let mut r = tracked();
    r.submit(1, W);
    assert_eq!(r.failed(1, B), [Action::RecordStale, mark(1)]);
    assert_eq!(r.succeeded(1, A), []);
    assert_eq!(
        r.dirty_marked(1),
        [],
        "marked, but the store still calls B current"
    );
    assert_eq!(r.submit(2, Request::Read), [], "held while recording");
    assert_eq!(r.recorded(), Recorded::RecordingStale);
    assert_eq!(r.stale_recorded(), [Action::Complete { id: 1 }, send(2, A)]);
    // Stale from now on: a write only needs its mark.
    assert_eq!(r.submit(3, W), [send(3, A), mark(3)]);
}

#[test]
fn a_primary_the_store_does_not_hear_fails_what_b_missed_and_all_new_requests() {
    let mut r = tracked();
    r.submit(1, W);
    r.submit(2, Request::Read);
    r.side_down(B);
    r.dirty_marked(1);
    r.succeeded(1, A);
    assert_eq!(r.submit(3, W), []);
    assert_eq!(
        r.stale_record_failed(),
        [Action::Fail { id: 1 }, Action::Fail { id: 3 }]
    );
    assert_eq!(
        r.succeeded(2, A),
        complete(2),
        "a read already out completes"
    );
    assert_eq!(r.submit(4, Request::Read), [Action::Fail { id: 4 }]);
    // A retried record went through: service resumes.
    assert_eq!(r.stale_recorded(), []);
    assert_eq!(r.submit(5, Request::Read), [send(5, A)]);
}

#[test]
fn a_loss_while_recording_current_is_recorded_stale_after_it() {
    let mut r = Replica::with_states(TRACKED, [SideState::InSync, SideState::Stale], false);
    assert_eq!(
        r.recorded(),
        Recorded::Unconfirmed,
        "this node's store may lag"
    );
    assert!(r.resynced(B));
    assert!(r.record_current());
    assert_eq!(r.side_down(B), [Action::RecordStale]);
    r.current_recorded();
    assert_eq!(
        r.recorded(),
        Recorded::RecordingStale,
        "the later record stands"
    );
    assert!(!r.record_current(), "B is down");
}

#[test]
fn losing_the_untracked_side_needs_no_record() {
    let mut r = tracked();
    r.submit(1, W);
    assert_eq!(r.failed(1, A), [mark(1)]);
    assert_eq!(r.succeeded(1, B), []);
    assert_eq!(r.dirty_marked(1), complete(1));
}

#[test]
fn losing_the_required_side_fails_writes_but_not_reads_until_it_is_back() {
    let mut r = Replica::new(ReplicaConfig {
        read_from: A,
        tracked: Some(B),
        required: Some(A),
    });
    r.submit(1, W);
    assert_eq!(r.failed(1, A), [mark(1)]);
    assert_eq!(
        r.succeeded(1, B),
        [Action::Fail { id: 1 }],
        "B alone is not enough"
    );
    assert_eq!(r.submit(2, W), [Action::Fail { id: 2 }]);
    assert_eq!(r.submit(3, Request::Read), [send(3, B)]);
    r.side_up(A);
    assert!(r.resynced(A));
    assert_eq!(r.submit(4, W), [send(4, A), send(4, B)]);
}

#[test]
fn a_failed_current_record_counts_as_maybe_current() {
    let mut r = Replica::with_states(TRACKED, [SideState::InSync, SideState::Stale], false);
    assert!(r.resynced(B));
    assert!(r.record_current());
    r.current_record_failed();
    assert_eq!(r.recorded(), Recorded::Unconfirmed);
    r.submit(1, W);
    assert_eq!(r.failed(1, B), [Action::RecordStale, mark(1)]);
    r.succeeded(1, A);
    assert_eq!(r.dirty_marked(1), [], "waits for the stale record");
    assert_eq!(r.stale_recorded(), complete(1));
}

#[test]
fn a_flush_the_tracked_side_missed_waits_for_the_stale_record() {
    let mut r = tracked();
    r.submit(1, Request::Flush);
    assert_eq!(r.failed(1, B), [Action::RecordStale]);
    assert_eq!(r.succeeded(1, A), []);
    assert_eq!(r.stale_recorded(), complete(1));
}
