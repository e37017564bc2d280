use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Path {
    Primary,
    Secondary,
}
use Path::*;

const MS: Duration = Duration::from_millis(1);

fn router() -> (Router<Path>, Instant) {
    let config = RouteConfig {
        request_timeout: 1000 * MS,
        io_timeout: 10_000 * MS,
        retry_interval: 100 * MS,
    };
    (
        Router::new(vec![Primary, Secondary], config),
        Instant::now(),
    )
}

#[test]
fn a_refusal_for_good_ends_the_request_only_from_the_path_it_is_on() {
    let (mut r, t0) = router();
    assert_eq!(r.submit(1, t0), vec![send(1, Primary)]);
    assert!(!r.refused_for_good(1, Secondary), "not out there");
    assert!(r.refused_for_good(1, Primary));
    assert_eq!(r.in_flight(), 0);
    assert!(!r.refused_for_good(1, Primary), "ended once");
    assert!(r.tick(t0 + 20_000 * MS).is_empty(), "no late failure");
}

fn send(id: u64, path: Path) -> Action<Path> {
    Action::Send { id, path }
}

#[test]
fn requests_take_the_preferred_path_and_complete_on_success() {
    let (mut r, t) = router();
    assert_eq!(r.submit(1, t), [send(1, Primary)]);
    assert_eq!(r.succeeded(1, Primary), [Action::Complete { id: 1 }]);
    assert_eq!(r.in_flight(), 0);
    assert_eq!(r.next_deadline(), None);
}

#[test]
fn a_refusal_resends_on_the_alternate_and_a_late_reply_from_the_old_path_is_ignored() {
    let (mut r, t) = router();
    r.submit(1, t);
    assert_eq!(r.failed(1, Primary, t + MS), [send(1, Secondary)]);
    assert_eq!(r.succeeded(1, Primary), []);
    assert_eq!(r.succeeded(1, Secondary), [Action::Complete { id: 1 }]);
}

#[test]
fn a_dead_path_sends_everything_in_flight_on_it_to_the_alternate() {
    let (mut r, t) = router();
    r.submit(1, t);
    r.submit(2, t);
    assert_eq!(
        r.path_down(Primary, t + MS),
        [send(1, Secondary), send(2, Secondary)]
    );
    assert_eq!(r.submit(3, t + MS), [send(3, Secondary)]);
}

#[test]
fn a_path_that_comes_back_takes_new_requests_again() {
    let (mut r, t) = router();
    r.path_down(Primary, t);
    assert_eq!(r.submit(1, t), [send(1, Secondary)]);
    assert_eq!(r.path_up(Primary, t + MS), []);
    assert_eq!(r.submit(2, t + MS), [send(2, Primary)]);
    // The request already on the secondary stays there.
    assert_eq!(r.succeeded(1, Secondary), [Action::Complete { id: 1 }]);
}

#[test]
fn with_every_path_down_a_request_waits_and_goes_out_when_one_returns() {
    let (mut r, t) = router();
    r.path_down(Primary, t);
    r.path_down(Secondary, t);
    assert_eq!(r.submit(1, t), []);
    assert_eq!(r.tick(t + 5000 * MS), []);
    assert_eq!(r.path_up(Secondary, t + 6000 * MS), [send(1, Secondary)]);
    assert_eq!(r.succeeded(1, Secondary), [Action::Complete { id: 1 }]);
}

#[test]
fn a_request_fails_only_after_every_path_was_down_for_the_io_timeout() {
    let (mut r, t) = router();
    r.submit(1, t);
    r.path_down(Primary, t + MS);
    assert_eq!(r.path_down(Secondary, t + 2 * MS), []);
    assert_eq!(r.tick(t + 9000 * MS), []);
    assert_eq!(r.next_deadline(), Some(t + 9100 * MS));
    assert_eq!(r.tick(t + 10_001 * MS), [Action::Fail { id: 1 }]);
    assert_eq!(r.in_flight(), 0);
}

#[test]
fn a_silent_path_loses_the_request_after_the_request_timeout() {
    let (mut r, t) = router();
    r.submit(1, t);
    assert_eq!(r.next_deadline(), Some(t + 1000 * MS));
    assert_eq!(r.tick(t + 999 * MS), []);
    assert_eq!(r.tick(t + 1000 * MS), [send(1, Secondary)]);
    assert_eq!(r.succeeded(1, Secondary), [Action::Complete { id: 1 }]);
}

#[test]
fn refusals_on_every_path_are_retried_at_a_measured_pace_then_fail() {
    let (mut r, t) = router();
    r.submit(1, t);
    assert_eq!(r.failed(1, Primary, t), [send(1, Secondary)]);
    // Both refused: one more round at once, then one per retry interval.
    assert_eq!(r.failed(1, Secondary, t), [send(1, Primary)]);
    assert_eq!(r.failed(1, Primary, t), [send(1, Secondary)]);
    assert_eq!(r.failed(1, Secondary, t), []);
    assert_eq!(r.tick(t + 50 * MS), []);
    assert_eq!(r.tick(t + 100 * MS), [send(1, Primary)]);
    let mut now = t + 100 * MS;
    let mut path = Primary;
    let mut sends = 0;
    loop {
        let actions = r.failed(1, path, now);
        let actions = if actions.is_empty() {
            now += 100 * MS;
            r.tick(now)
        } else {
            actions
        };
        match actions.as_slice() {
            [Action::Send { path: next, .. }] => {
                path = *next;
                sends += 1;
            }
            [Action::Fail { id: 1 }] => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(now >= t + 10_000 * MS, "failed at {:?}", now - t);
    assert!(sends <= 2 * 100 + 2, "{sends} sends in 10 s");
}

#[test]
fn withdrawn_requests_are_forgotten_and_their_late_replies_ignored() {
    let (mut r, t) = router();
    r.path_down(Secondary, t);
    r.submit(1, t);
    r.submit(2, t);
    assert_eq!(r.path_of(1), Some(Primary));
    // Refused twice by the only path up: it waits for the next round.
    assert_eq!(r.failed(2, Primary, t), [send(2, Primary)]);
    assert_eq!(r.failed(2, Primary, t), []);
    assert_eq!(r.path_of(2), None);
    assert_eq!(r.withdraw_unsent(), [2]);
    assert_eq!(r.in_flight(), 1);
    assert!(r.withdraw(1));
    assert!(!r.withdraw(1));
    assert_eq!(r.succeeded(1, Primary), []);
    r.submit(3, t);
    r.submit(4, t);
    assert_eq!(r.withdraw_all(), [3, 4]);
    assert_eq!(r.next_deadline(), None);
}

#[test]
fn many_requests_under_random_failures_each_end_exactly_once() {
    // A seeded simulation: paths die and return, replies succeed or are
    // refused, time passes; every request must end, exactly once.
    let (mut r, t) = router();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut random = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let mut on_path: BTreeMap<u64, Path> = BTreeMap::new();
    let mut submitted = Vec::new();
    let mut ended: BTreeMap<u64, Action<Path>> = BTreeMap::new();
    let mut now = t;
    let mut apply = |actions: Vec<Action<Path>>, on_path: &mut BTreeMap<u64, Path>| {
        for action in actions {
            match action {
                Action::Send { id, path } => {
                    on_path.insert(id, path);
                }
                Action::Complete { id } | Action::Fail { id } => {
                    on_path.remove(&id);
                    assert!(ended.insert(id, action).is_none(), "{id} ended twice");
                }
            }
        }
    };
    for step in 0..20_000u64 {
        now += MS * (random(20) as u32);
        let actions = match random(10) {
            0 if step < 15_000 => {
                submitted.push(step);
                r.submit(step, now)
            }
            1 => r.path_down(if random(2) == 0 { Primary } else { Secondary }, now),
            2 | 3 => r.path_up(if random(2) == 0 { Primary } else { Secondary }, now),
            4..=7 => match on_path
                .keys()
                .nth(random(on_path.len().max(1) as u64) as usize)
            {
                Some(&id) if random(4) == 0 => r.failed(id, on_path[&id], now),
                Some(&id) => r.succeeded(id, on_path[&id]),
                None => Vec::new(),
            },
            _ => r.tick(now),
        };
        apply(actions, &mut on_path);
    }
    // Let everything settle with both paths up.
    now += MS;
    apply(r.path_up(Primary, now), &mut on_path);
    apply(r.path_up(Secondary, now), &mut on_path);
    while let Some((&id, &path)) = on_path.iter().next() {
        apply(r.succeeded(id, path), &mut on_path);
    }
    assert_eq!(r.in_flight(), 0);
    assert!(submitted.len() > 1000);
    assert_eq!(ended.keys().copied().collect::<Vec<_>>(), submitted);
    assert!(ended.values().any(|a| matches!(a, Action::Complete { .. })));
}
