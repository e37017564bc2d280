//! Suspend, resume and epochs: requests held across a mapping change, parked on a stale epoch, resent only once a first attempt can no longer land; the lease; errors that fail at once.

use super::*;

#[test]
fn suspend_resolves_once_requests_in_flight_are_done_and_holds_new_ones_until_resume() {
    runtime().block_on(async {
        let tail = Tail::new();
        let server = Server::start(&tail).await;
        let vdisk = Arc::new(routed(vec![peer("a", &server)], RouteConfig::default()));
        write_and_check(&vdisk, 0, 1).await;
        let writes: Vec<_> = (1..=16).map(|i| spawn_write(&vdisk, i, i as u8)).collect();
        // Submitted, and (as a rule: the replies need the server's turn on
        // this thread) not answered yet.
        let_them_submit().await;

        vdisk.suspend().await;
        // Every write submitted before the suspension has landed.
        assert_eq!(completed(&vdisk, 0), 2 + 16);
        for i in 1..=16 {
            assert_eq!(file_block(&tail.path, i), block(i as u8));
        }
        let held = spawn_write(&vdisk, 20, 20);
        // Suspensions overlap harmlessly.
        vdisk.suspend().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!held.is_finished(), "a held write went out");
        assert_eq!(file_block(&tail.path, 20), vec![0; BLOCK]);

        vdisk.resume(None);
        held.await.unwrap().unwrap();
        assert_eq!(file_block(&tail.path, 20), block(20));
        for write in writes {
            write.await.unwrap().unwrap();
        }
        assert_eq!(vdisk.counters().errors.load(Ordering::Relaxed), 0);
    });
}

#[test]
fn resume_with_a_new_mapping_sends_held_requests_on_the_new_path_under_the_new_epoch() {
    runtime().block_on(async {
        let tail = Tail::new();
        let old = Server::start_at(&tail, 1).await;
        let new = Server::start_at(&tail, 2).await;
        let vdisk = Arc::new(routed(
            vec![connected_peer("old", &old).await],
            RouteConfig::default(),
        ));
        write_and_check(&vdisk, 0, 1).await;
        let old_paths = vdisk.counters().paths();
        vdisk.suspend().await;
        let held = spawn_write(&vdisk, 1, 2);
        let_them_submit().await;

        vdisk.resume(Some((2, vec![connected_peer("new", &new).await])));
        held.await.unwrap().unwrap();
        assert_eq!(file_block(&tail.path, 1), block(2));
        write_and_check(&vdisk, 2, 3).await;

        // The new server refuses epoch 1 and holds a later one: the
        // requests carried epoch 2 exactly.
        assert_eq!(new.exports.get(VDISK).unwrap().1, 2);
        let paths = vdisk.counters().paths();
        assert_eq!(paths.len(), 1);
        assert_eq!(paths[0].0, "new");
        assert_eq!(paths[0].1.completed.load(Ordering::Relaxed), 3);
        assert_eq!(paths[0].1.failed.load(Ordering::Relaxed), 0);
        // The old path got nothing more.
        assert_eq!(old_paths[0].1.completed.load(Ordering::Relaxed), 2);
        assert_eq!(old_paths[0].1.failed.load(Ordering::Relaxed), 0);
        assert_eq!(old.exports.get(VDISK).unwrap().1, 1);
        // The held request was sent once, on the new path: no resend.
        assert_eq!(vdisk.counters().resends.load(Ordering::Relaxed), 0);
    });
}

#[test]
fn a_tail_on_a_newer_epoch_parks_the_request_until_resume_brings_that_epoch() {
    runtime().block_on(async {
        let tail = Tail::new();
        let server = Server::start_at(&tail, 1).await;
        let vdisk = Arc::new(routed(
            vec![connected_peer("a", &server).await],
            RouteConfig::default(),
        ));
        write_and_check(&vdisk, 0, 1).await;
        let mut stale = vdisk.stale();
        assert_eq!(*stale.borrow(), 1);

        server.exports.set_epoch(VDISK, 2);
        let parked = spawn_write(&vdisk, 1, 5);
        tokio::time::timeout(Duration::from_secs(5), stale.wait_for(|&e| e == 2))
            .await
            .unwrap()
            .unwrap();
        // New requests are held too, not sent to be refused.
        let held = spawn_write(&vdisk, 2, 6);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!parked.is_finished() && !held.is_finished());
        assert_eq!(file_block(&tail.path, 1), vec![0; BLOCK]);
        assert_eq!(failed(&vdisk, 0), 0, "a stale epoch is no path failure");

        vdisk.resume(Some((2, vec![connected_peer("a", &server).await])));
        parked.await.unwrap().unwrap();
        held.await.unwrap().unwrap();
        assert_eq!(file_block(&tail.path, 1), block(5));
        assert_eq!(file_block(&tail.path, 2), block(6));
        assert_eq!(*vdisk.stale().borrow(), 2);
        assert_eq!(vdisk.counters().errors.load(Ordering::Relaxed), 0);
    });
}

#[test]
fn a_request_held_for_the_io_timeout_fails_as_unreachable() {
    runtime().block_on(async {
        let tail = Tail::new();
        let server = Server::start(&tail).await;
        let config = RouteConfig {
            io_timeout: Duration::from_millis(300),
            ..RouteConfig::default()
        };
        let vdisk = routed(vec![peer("a", &server)], config);
        write_and_check(&vdisk, 0, 1).await;
        vdisk.suspend().await;
        let started = tokio::time::Instant::now();
        let result = vdisk.write(BLOCK as u64, &block(2), false).await;
        assert!(
            matches!(result, Err(IoError::Unreachable { .. })),
            "{result:?}"
        );
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert_eq!(file_block(&tail.path, 1), vec![0; BLOCK]);
        assert_eq!(vdisk.counters().errors.load(Ordering::Relaxed), 1);
    });
}

#[test]
fn a_request_parked_on_a_stale_epoch_fails_if_the_new_mapping_never_comes() {
    runtime().block_on(async {
        let tail = Tail::new();
        let server = Server::start_at(&tail, 3).await;
        let config = RouteConfig {
            io_timeout: Duration::from_millis(300),
            ..RouteConfig::default()
        };
        let vdisk = routed(vec![peer("a", &server)], config);
        let result = vdisk.write(0, &block(2), false).await;
        assert!(
            matches!(result, Err(IoError::Unreachable { .. })),
            "{result:?}"
        );
        assert_eq!(*vdisk.stale().borrow(), 3);
        assert_eq!(file_block(&tail.path, 0), vec![0; BLOCK]);
        assert_eq!(vdisk.counters().errors.load(Ordering::Relaxed), 1);
    });
}

/// The resend-overlap hole of a twin-tailed tail: a write resent on the
/// secondary after its request timeout must not complete while its first
/// attempt may still land on the primary, or a newer write to the block,
/// made once the first completed, would be undone by that attempt landing
/// late. Here the primary holds the attempt because its store lags (as a
/// slow disk would), and lands it when it catches up.
#[test]
fn a_resent_write_completes_only_once_its_first_attempt_can_no_longer_land() {
    runtime().block_on(async {
        let tail = Tail::new();
        let lagging = Server::start_at(&tail, 1).await;
        let current = Server::start_at(&tail, 2).await;
        let config = RouteConfig {
            request_timeout: Duration::from_millis(200),
            ..RouteConfig::default()
        };
        let paths = vec![
            connected_peer("a", &lagging).await,
            connected_peer("b", &current).await,
        ];
        let handle = tokio::runtime::Handle::current();
        let vdisk = Arc::new(RoutedVdisk::spawn(
            &handle,
            VDISK,
            2,
            paths,
            config,
            Lease::unbounded(),
        ));
        // Another writer of the vdisk, through the secondary only.
        let other = RoutedVdisk::spawn(
            &handle,
            VDISK,
            2,
            vec![connected_peer("b", &current).await],
            config,
            Lease::unbounded(),
        );

        let first = spawn_write(&vdisk, 0, 1);
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(file_block(&tail.path, 0), block(1), "resent on b");
        let completed_early = first.is_finished();
        if completed_early {
            // What the application may do once the write completed.
            other.write(0, &block(2), false).await.unwrap();
        }
        // The primary's store catches up: the held attempt runs.
        lagging.exports.set_epoch(VDISK, 2);
        first.await.unwrap().unwrap();
        if !completed_early {
            other.write(0, &block(2), false).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            file_block(&tail.path, 0) == block(2),
            "an old attempt landed over a newer write"
        );
        assert!(!completed_early, "completed while an attempt could land");
        assert_eq!(vdisk.counters().errors.load(Ordering::Relaxed), 0);
    });
}

/// The cut-off local writer: a node without its lease from the store's
/// majority does not touch its own tail, though it is attached to it.
#[test]
fn the_local_tail_takes_requests_only_while_the_node_holds_its_lease() {
    runtime().block_on(async {
        let tail = Tail::new();
        let lease = Lease::expired();
        let vdisk = Arc::new(RoutedVdisk::spawn(
            &tokio::runtime::Handle::current(),
            VDISK,
            EPOCH,
            vec![tail.open()],
            RouteConfig::default(),
            lease.clone(),
        ));
        let write = spawn_write(&vdisk, 0, 3);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!write.is_finished());
        assert_eq!(file_block(&tail.path, 0), vec![0; BLOCK]);
        assert!(failed(&vdisk, 0) > 0, "refused, and tried again");

        lease.confirmed(std::time::Instant::now());
        write.await.unwrap().unwrap();
        assert_eq!(file_block(&tail.path, 0), block(3));
        assert_eq!(vdisk.counters().errors.load(Ordering::Relaxed), 0);
    });
}

/// A request the tail refuses for what it is (here: past the tail's end,
/// EINVAL) would be refused by every path, now and later: it fails at once
/// with that error, not after the I/O timeout as EIO.
#[test]
fn a_request_the_tail_refuses_for_good_fails_at_once_with_its_errno() {
    runtime().block_on(async {
        let tail = Tail::new();
        let server = Server::start(&tail).await;
        let vdisk = routed(vec![peer("a", &server)], RouteConfig::default());
        write_and_check(&vdisk, 0, 1).await;
        let started = tokio::time::Instant::now();
        let mut buf = vec![0; BLOCK];
        let past_the_end = 4 << 20;
        let result = vdisk.read(past_the_end, &mut buf).await;
        let errno = result.as_ref().map_err(IoError::errno).err();
        assert_eq!(errno, Some(-libc::EINVAL), "{result:?}");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "took {:?}",
            started.elapsed()
        );
        // The path did nothing wrong: it stays in use.
        write_and_check(&vdisk, 1, 2).await;
    });
}
