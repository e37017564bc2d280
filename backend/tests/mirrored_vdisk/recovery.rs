//! A store that cannot record a loss, a primary that changes, a replaced disk, restarts, and writes racing a resync or held in the network.

use super::*;

#[test]
fn a_primary_whose_store_cannot_record_the_loss_fails_requests_until_it_can() {
    runtime().block_on(async {
        let (a, mut b) = (TestSide::start().await, TestSide::start().await);
        let m = mirror(&a, &b).await;
        write_regions(&m, 0..=3, 0).await;
        *m.store.refuse.lock().unwrap() = true;
        b.kill().await;
        let refused = m.write(0, &block(9)).await;
        assert!(
            refused.is_err(),
            "acknowledged while the store calls b current"
        );
        let mut back = vec![0; BLOCK];
        assert!(m.read(0, &mut back).await.is_err(), "a read, too");
        assert_eq!(m.status().recorded, Recorded::Unrecordable);

        // The store is back: the retried record goes through.
        *m.store.refuse.lock().unwrap() = false;
        m.wait("recorded", |s| s.recorded == Recorded::Stale).await;
        m.write(0, &block(9)).await.unwrap();
        assert_eq!(a.block(0), block(9));
        assert_eq!(b.block(0), block(0), "b missed it");
        assert!(m.records().len() >= 2 && m.records().iter().all(|&current| !current));
    });
}

#[test]
fn a_former_primary_takes_back_exactly_its_dirty_regions_from_the_new_one() {
    runtime().block_on(async {
        let (new_primary, old_primary) = (TestSide::start().await, TestSide::start().await);
        std::fs::write(&new_primary.path, vec![0x5a; SIZE as usize]).unwrap();
        // The old primary wrote regions 3 and 9 alone before it lost its
        // place; the rest of its copy differs too, but is not its to fix.
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let mut map = DirtyMapFile::create(&dir.path().join("dirty"), geometry()).unwrap();
        map.mark_durable(3 * REGION + 4096, 4096).unwrap();
        map.mark_durable(9 * REGION, 2 * 4096).unwrap();
        let engine = Engine::start(8).unwrap();
        let own = LocalTail::open(&old_primary.path, 4096, false, engine.ring()).unwrap();
        let copied = backend::mirror::pull_dirty(
            new_primary.path("new").await,
            Arc::new(own),
            EPOCH,
            &mut map,
            Duration::from_secs(2),
        )
        .await
        .unwrap();
        assert_eq!(copied, 2 * REGION);
        assert_eq!(map.regions().count(), 0);
        let old = std::fs::read(&old_primary.path).unwrap();
        for region in 0..SIZE / REGION {
            let bytes = &old[(region * REGION) as usize..((region + 1) * REGION) as usize];
            let expected = if region == 3 || region == 9 { 0x5a } else { 0 };
            assert!(bytes.iter().all(|&b| b == expected), "region {region}");
        }
        let durable = DirtyMapFile::open(&dir.path().join("dirty"), geometry()).unwrap();
        assert_eq!(durable.regions().count(), 0, "the clears are durable");
    });
}

#[test]
fn a_full_resync_asked_for_a_replaced_disk_copies_it_whole_and_tells_the_store_first() {
    runtime().block_on(async {
        let (a, b) = (TestSide::start().await, TestSide::start().await);
        let m = mirror(&a, &b).await;
        write_regions(&m, 0..=63, 0x21).await;
        // b's disk replaced by a blank one, unknown to the mirror.
        std::fs::write(&b.path, vec![0; SIZE as usize]).unwrap();
        m.vdisk.full_resync(Side::B).await.unwrap();
        let done = m
            .wait("resynced", |s| {
                s.sides == [SideState::InSync; 2] && s.recorded == Recorded::Current && !s.full
            })
            .await;
        assert_eq!(done.resynced_bytes, SIZE);
        assert_eq!(
            m.records(),
            [false, true],
            "stale before the copy, current after"
        );
        assert!(same_files(&a, &b));
    });
}

#[test]
fn regions_being_written_when_the_primary_stops_are_resynced_at_its_next_start() {
    runtime().block_on(async {
        let (a, b) = (TestSide::start().await, TestSide::start().await);
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let map_path = dir.path().join("dirty");
        // A crash with writes to regions 2 and 7 half done: they landed on
        // a, not b, and the activity log has them.
        let mut map = DirtyMapFile::create(&map_path, geometry()).unwrap();
        map.mark_durable(2 * REGION, 4096).unwrap();
        map.mark_durable(7 * REGION, 4096).unwrap();
        drop(map);
        for region in [2, 7] {
            File::options()
                .write(true)
                .open(&a.path)
                .unwrap()
                .write_all_at(&block(0x77), region * REGION)
                .unwrap();
        }
        // Restarted: the store still calls b current, yet b lacks them.
        let states = [SideState::InSync, SideState::Stale];
        let m = mirror_on(&a, &b, dir, states, true, false, SWEEP).await;
        let done = m
            .wait("resynced", |s| s.sides == [SideState::InSync; 2])
            .await;
        assert_eq!(done.resynced_bytes, 2 * REGION);
        assert!(same_files(&a, &b));
        assert_eq!(m.records(), [], "the store never called b stale");
    });
}

#[test]
fn a_resync_ends_while_the_regions_it_copies_are_written_all_along() {
    runtime().block_on(async {
        let (a, mut b) = (TestSide::start().await, TestSide::start().await);
        let m = Arc::new(mirror(&a, &b).await);
        write_regions(&m, 0..=15, 1).await;
        b.kill().await;
        write_regions(&m, 0..=15, 2).await;
        // A writer that never leaves the dirty regions alone.
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (m, stop) = (m.clone(), stop.clone());
            tokio::spawn(async move {
                let mut round = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let r = round % 16;
                    let data = block(round as u8);
                    m.write(region_block(r) * BLOCK as u64, &data)
                        .await
                        .unwrap();
                    round += 1;
                }
                round
            })
        };
        b.restart().await;
        m.wait("resynced under load", |s| {
            s.sides == [SideState::InSync; 2] && s.recorded == Recorded::Current
        })
        .await;
        stop.store(true, Ordering::Relaxed);
        let rounds = writer.await.unwrap();
        assert!(rounds > 16, "the writer ran through the resync: {rounds}");
        m.flush().await.unwrap();
        assert!(same_files(&a, &b));
    });
}

/// A write sent to side B and held in the network while B is resynced
/// without it must not land afterwards, over the newer data the resync
/// copied: B is taken back only once nothing sent there before can still
/// land (its server closes a connection silent for `wire::SILENCE`, and
/// runs nothing of a closed one).
#[test]
fn a_write_held_in_the_network_never_lands_after_its_region_was_resynced() {
    runtime().block_on(async {
        let a = TestSide::start().await;
        let mut b = TestSide::start().await;
        let cable = support::Cable::lay(b.addr).await;
        b.dial = cable.addr;
        let m = mirror(&a, &b).await;
        let offset = region_block(3) * BLOCK as u64;

        cable.hold();
        m.write(offset, &block(1)).await.unwrap();
        assert_ne!(m.status().sides[1], SideState::InSync, "b lost a write");
        m.write(offset, &block(2)).await.unwrap();
        m.wait("b resynced on a new connection", |s| {
            s.sides == [SideState::InSync; 2]
        })
        .await;
        assert!(b.block(region_block(3)) == block(2), "b resynced");

        cable.release();
        // Time for the held write to land, if anything would run it.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            b.block(region_block(3)) == block(2),
            "the held write landed over the resynced data"
        );
        assert!(same_files(&a, &b));
    });
}

#[test]
fn a_clean_stop_in_sync_leaves_nothing_to_resync() {
    runtime().block_on(async {
        let (a, b) = (TestSide::start().await, TestSide::start().await);
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        DirtyMapFile::create(&dir.path().join("dirty"), geometry()).unwrap();
        // No sweep in the test's time: only the stop may clear the log.
        let states = [SideState::InSync; 2];
        let m = mirror_on(&a, &b, dir, states, true, false, Duration::from_secs(3600)).await;
        write_regions(&m, 0..=3, 1).await;
        assert_eq!(m.durable_regions(), 4, "the activity log holds them");
        let Mirror {
            vdisk,
            map_path,
            _map_dir,
            ..
        } = m;
        drop(vdisk);
        let start = std::time::Instant::now();
        while durable_regions(&map_path) > 0 {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "a clean stop left the log as it was"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(same_files(&a, &b));
    });
}
