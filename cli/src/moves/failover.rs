//! Failover policy: what happens, and where it is decided, when a part of
//! the cluster fails. This module decides the one failover that changes
//! the configuration (a vdisk moves to its secondary); the others are
//! decided where they act, listed here so that the policy is read in one
//! place:
//!
//! | failure | what happens | decided in |
//! |---|---|---|
//! | a request's attempt fails or goes unanswered | resent on the vdisk's next path; the application sees an error only after `io_timeout_ms` without a path, or at once if the tail refuses the request itself (EINVAL, ENOSPC, EROFS, EOPNOTSUPP) | `backend/src/route/router.rs`, `route/vdisk.rs` |
//! | a link goes silent | declared down after its heartbeats go unanswered; calls move to the peer's other links, a lost call's copy is fenced before it is resent | `backend/src/link/health.rs`, `link/peer.rs` |
//! | a mirror's side is lost | the primary records it stale in the store, then goes on alone, marking what it misses; resync when it answers again | `backend/src/mirror/replica.rs`, `mirror/resync.rs` |
//! | a primary's node is down for `failover_move_ms` | the vdisk moves to its secondary (a mirror: only if its copy is current) | here, carried out by `daemon/mover.rs` on the store's leader |
//! | a former primary comes back | it copies from the new primary the regions it wrote alone, then serves as the secondary | `node.rs` (`take_back`) |
//! | the writer's node is down | another node's first write takes the write role | `configdb/src/model.rs` (`ClaimWriter`), `daemon/writer.rs` |
//! | a node loses the store's majority | its lease runs out: it touches no tail and peers refuse it | `daemon/lease.rs`, `backend/src/peer/` |
//!
//! The choices: a move waits `failover_move_ms` (a node restarting, or a
//! short partition, costs a delay rather than a move and a resync); a
//! mirror never takes over with a copy the store does not call current,
//! since it may lack acknowledged writes (the vdisk waits for its primary
//! instead: an error, never lost data).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use configdb::{MirrorCopy, Placement, TailRef, VdiskName, VdiskRecord};

/// What the failover policy asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Move the vdisk to `to`: its secondary becomes its primary.
    Move {
        name: VdiskName,
        down: String,
        to: Placement,
    },
    /// The primary's node is down and the mirror cannot take over: its copy
    /// is not current. Said once per epoch.
    Stranded {
        name: VdiskName,
        down: String,
        copy: MirrorCopy,
    },
}

/// Since when each vdisk has had its primary down, and what that calls
/// for. Pure: fed the configuration, the live members and the time.
pub struct Failover {
    /// How long a primary's node stays down before its vdisks move.
    after: Duration,
    /// Since when each vdisk (at its epoch) has had its primary down.
    down_since: BTreeMap<(VdiskName, u64), Instant>,
    /// The vdisks (at their epoch) whose stranding was said.
    said: BTreeSet<(VdiskName, u64)>,
}

impl Failover {
    pub fn new(after: Duration) -> Failover {
        Failover {
            after,
            down_since: BTreeMap::new(),
            said: BTreeSet::new(),
        }
    }

    /// This node is not the store's leader: another node decides, and
    /// what was seen down is forgotten (the next leader starts its count
    /// afresh, as this node will if it leads again).
    pub fn not_leading(&mut self) {
        self.down_since.clear();
        self.said.clear();
    }

    /// What to do now about `vdisks`, with `alive` the live members.
    pub fn decide<'a>(
        &mut self,
        vdisks: impl IntoIterator<Item = &'a VdiskRecord>,
        alive: &BTreeSet<String>,
        now: Instant,
    ) -> Vec<Decision> {
        let mut decisions = Vec::new();
        let mut stranded = BTreeMap::new();
        for record in vdisks.into_iter().filter(|r| r.moving.is_none()) {
            let Some((primary, secondary)) = pair(&record.spec.placement) else {
                continue;
            };
            if alive.contains(&primary.node) || !alive.contains(&secondary.node) {
                continue;
            }
            let key = (record.spec.name.clone(), record.epoch);
            let since = self.down_since.get(&key).copied().unwrap_or(now);
            stranded.insert(key.clone(), since);
            if now.duration_since(since) < self.after {
                continue;
            }
            let (name, down) = (record.spec.name.clone(), primary.node.clone());
            decisions.push(match &record.spec.placement {
                Placement::Mirror { .. } if record.mirror_copy != MirrorCopy::Current => {
                    if !self.said.insert(key) {
                        continue;
                    }
                    Decision::Stranded {
                        name,
                        down,
                        copy: record.mirror_copy,
                    }
                }
                Placement::Mirror { .. } => Decision::Move {
                    name,
                    down,
                    to: record.spec.placement.switched_over(),
                },
                _ => Decision::Move {
                    name,
                    down,
                    to: Placement::Cluster {
                        primary: secondary.clone(),
                        secondary: Some(primary.clone()),
                    },
                },
            });
        }
        self.said.retain(|key| stranded.contains_key(key));
        self.down_since = stranded;
        decisions
    }
}

/// A vdisk's primary and the tail that may take over from it, if it has
/// one.
fn pair(placement: &Placement) -> Option<(&TailRef, &TailRef)> {
    match placement {
        Placement::Cluster {
            primary,
            secondary: Some(secondary),
        } => Some((primary, secondary)),
        Placement::Mirror {
            primary, mirror, ..
        } => Some((primary, mirror)),
        Placement::Cluster {
            secondary: None, ..
        }
        | Placement::Local { .. } => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{self, record, tail};

    const AFTER: Duration = Duration::from_secs(10);

    fn twin(name: &str) -> VdiskRecord {
        fixtures::twin(name, 0, 1)
    }

    fn mirror(name: &str, copy: MirrorCopy) -> VdiskRecord {
        let placement = Placement::Mirror {
            primary: tail("a:m0"),
            mirror: tail("b:m0"),
            region_size: 1 << 20,
        };
        VdiskRecord {
            mirror_copy: copy,
            ..record(name, placement, 0, 1)
        }
    }

    fn alive(nodes: &[&str]) -> BTreeSet<String> {
        nodes.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn a_primary_down_for_the_whole_delay_moves_its_vdisk_to_the_secondary() {
        let mut failover = Failover::new(AFTER);
        let vdisks = [twin("v")];
        let t0 = Instant::now();
        let only_b = alive(&["b", "c"]);
        assert_eq!(failover.decide(&vdisks, &only_b, t0), []);
        assert_eq!(failover.decide(&vdisks, &only_b, t0 + AFTER / 2), []);
        let moved = failover.decide(&vdisks, &only_b, t0 + AFTER);
        assert_eq!(
            moved,
            [Decision::Move {
                name: vdisks[0].spec.name.clone(),
                down: "a".into(),
                to: Placement::Cluster {
                    primary: tail("b:d0"),
                    secondary: Some(tail("a:d0")),
                },
            }]
        );
    }

    #[test]
    fn a_primary_back_before_the_delay_resets_the_count() {
        let mut failover = Failover::new(AFTER);
        let vdisks = [twin("v")];
        let t0 = Instant::now();
        failover.decide(&vdisks, &alive(&["b"]), t0);
        failover.decide(&vdisks, &alive(&["a", "b"]), t0 + AFTER / 2);
        assert_eq!(failover.decide(&vdisks, &alive(&["b"]), t0 + AFTER), []);
        assert_eq!(
            failover
                .decide(&vdisks, &alive(&["b"]), t0 + 2 * AFTER)
                .len(),
            1
        );
    }

    #[test]
    fn nothing_moves_without_a_live_secondary_or_while_a_move_is_under_way() {
        let mut failover = Failover::new(AFTER);
        let t0 = Instant::now();
        let single = record(
            "s",
            Placement::Cluster {
                primary: tail("a:d1"),
                secondary: None,
            },
            0,
            1,
        );
        let vdisks = [twin("v"), single];
        for at in [t0, t0 + AFTER, t0 + 2 * AFTER] {
            assert_eq!(failover.decide(&vdisks, &alive(&["c"]), at), []);
        }
        let mut moving = twin("w");
        moving.moving = Some(configdb::PendingMove {
            id: 1,
            to: moving.spec.placement.clone(),
            coordinator: "c".into(),
            waiting_for: BTreeSet::new(),
            acked: BTreeSet::new(),
        });
        for at in [t0, t0 + AFTER, t0 + 2 * AFTER] {
            assert_eq!(failover.decide([&moving], &alive(&["b"]), at), []);
        }
    }

    #[test]
    fn a_mirror_takes_over_only_with_a_current_copy_and_a_stale_one_is_said_once() {
        let mut failover = Failover::new(AFTER);
        let t0 = Instant::now();
        let b = alive(&["b"]);
        let current = [mirror("m", MirrorCopy::Current)];
        failover.decide(&current, &b, t0);
        let Decision::Move { to, .. } = &failover.decide(&current, &b, t0 + AFTER)[0] else {
            panic!("no move");
        };
        assert_eq!(*to, current[0].spec.placement.switched_over());

        let mut failover = Failover::new(AFTER);
        let stale = [mirror("n", MirrorCopy::Stale)];
        failover.decide(&stale, &b, t0);
        let said = failover.decide(&stale, &b, t0 + AFTER);
        assert!(matches!(
            said[..],
            [Decision::Stranded {
                copy: MirrorCopy::Stale,
                ..
            }]
        ));
        assert_eq!(failover.decide(&stale, &b, t0 + 2 * AFTER), []);
    }

    #[test]
    fn a_new_leader_counts_afresh() {
        let mut failover = Failover::new(AFTER);
        let vdisks = [twin("v")];
        let t0 = Instant::now();
        failover.decide(&vdisks, &alive(&["b"]), t0);
        failover.not_leading();
        assert_eq!(failover.decide(&vdisks, &alive(&["b"]), t0 + AFTER), []);
    }
}
