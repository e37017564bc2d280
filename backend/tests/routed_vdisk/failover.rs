//! Failover: requests go to the preferred reachable path, move to the other when it goes, and wait at most the I/O timeout for one.

use super::*;

#[test]
fn requests_fail_over_to_the_secondary_and_return_to_the_primary() {
    runtime().block_on(async {
        let tail = Tail::new();
        let mut primary = Server::start(&tail).await;
        let secondary = Server::start(&tail).await;
        // Both reachable before the first request: else it goes wherever
        // a link came up first.
        let paths = vec![
            connected_peer("a", &primary).await,
            connected_peer("b", &secondary).await,
        ];
        let vdisk = routed(paths, RouteConfig::default());
        write_and_check(&vdisk, 0, 1).await;
        assert!(completed(&vdisk, 0) >= 1, "the primary serves first");
        assert_eq!(completed(&vdisk, 1), 0);

        primary.kill().await;
        for i in 1..20 {
            write_and_check(&vdisk, i, i as u8).await;
        }
        assert!(completed(&vdisk, 1) >= 38, "the secondary took over");

        primary.restart().await;
        let before = completed(&vdisk, 0);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while completed(&vdisk, 0) == before {
            assert!(
                tokio::time::Instant::now() < deadline,
                "primary not used again"
            );
            write_and_check(&vdisk, 30, 99).await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for i in 1..20 {
            assert_eq!(file_block(&tail.path, i), block(i as u8));
        }
        assert_eq!(vdisk.counters().errors.load(Ordering::Relaxed), 0);
    });
}

#[test]
fn a_peer_declared_down_by_membership_gets_no_requests_though_its_links_are_up() {
    runtime().block_on(async {
        let tail = Tail::new();
        let primary_server = Server::start(&tail).await;
        let secondary = Server::start(&tail).await;
        let primary = member("a", &primary_server);
        let vdisk = routed(
            vec![remote(primary.clone()), peer("b", &secondary)],
            RouteConfig::default(),
        );
        write_and_check(&vdisk, 0, 1).await;
        assert!(completed(&vdisk, 0) >= 1);

        primary.set_membership(None);
        assert!(!primary.is_up(), "down at once, not after a heartbeat");
        assert!(primary.links().iter().all(|link| link.is_up()));
        let before = completed(&vdisk, 0);
        for i in 1..10 {
            write_and_check(&vdisk, i, i as u8).await;
        }
        assert_eq!(completed(&vdisk, 0), before, "a down member is not used");
        assert!(completed(&vdisk, 1) >= 18);

        primary.set_membership(Some(&[primary_server.addr]));
        assert!(primary.is_up(), "its links stayed up: usable at once");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while completed(&vdisk, 0) == before {
            assert!(
                tokio::time::Instant::now() < deadline,
                "primary not used again"
            );
            write_and_check(&vdisk, 20, 5).await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(vdisk.counters().errors.load(Ordering::Relaxed), 0);
    });
}

#[test]
fn a_local_tail_is_preferred_over_a_peer() {
    runtime().block_on(async {
        let tail = Tail::new();
        let server = Server::start(&tail).await;
        let vdisk = routed(
            vec![tail.open(), peer("b", &server)],
            RouteConfig::default(),
        );
        write_and_check(&vdisk, 3, 7).await;
        assert_eq!(completed(&vdisk, 0), 2);
        assert_eq!(completed(&vdisk, 1), 0);
    });
}

#[test]
fn with_every_path_gone_a_request_fails_after_the_io_timeout_and_not_before() {
    runtime().block_on(async {
        let tail = Tail::new();
        let mut only = Server::start(&tail).await;
        let config = RouteConfig {
            io_timeout: Duration::from_millis(600),
            ..RouteConfig::default()
        };
        let vdisk = routed(vec![peer("a", &only)], config);
        write_and_check(&vdisk, 0, 1).await;
        only.kill().await;
        let started = tokio::time::Instant::now();
        let mut buf = vec![0; BLOCK];
        let result = vdisk.read(0, &mut buf).await;
        assert!(
            matches!(result, Err(IoError::Unreachable { .. })),
            "{result:?}"
        );
        assert!(started.elapsed() >= Duration::from_millis(600));
        assert_eq!(vdisk.counters().errors.load(Ordering::Relaxed), 1);
    });
}

#[test]
fn a_path_that_returns_within_the_io_timeout_completes_the_waiting_request() {
    runtime().block_on(async {
        let tail = Tail::new();
        let mut only = Server::start(&tail).await;
        let vdisk = routed(vec![peer("a", &only)], RouteConfig::default());
        write_and_check(&vdisk, 2, 5).await;
        only.kill().await;
        let restart = async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            only.restart().await;
        };
        let mut buf = vec![0; BLOCK];
        let (read, ()) = tokio::join!(vdisk.read(2 * BLOCK as u64, &mut buf), restart);
        read.unwrap();
        assert_eq!(buf, block(5));
    });
}
