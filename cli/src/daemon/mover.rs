//! The daemon's part in moves: running one as its coordinator (Begin, the
//! acknowledgements, End; `crate::moves::coordinator` decides), suspending
//! and acknowledging as a member, ending the moves a vanished coordinator
//! left, and carrying out the failover policy on the store's leader.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use backend::LEASE_RUN_OUT;
use configdb::{Command, Configuration, Placement, StoreRole, VdiskName, VdiskRecord};
use tokio::sync::watch;

use crate::control::{MoveRequest, VdiskInfo};
use crate::moves::coordinator::{must_wait_out_lease, progress, Progress};
use crate::moves::failover::{Decision, Failover};
use crate::node::Suspension;

use super::{lock, Daemon, RECHECK};

impl Daemon {
    /// Drains the vdisk's I/O on this node, then tells the coordinator.
    pub(super) async fn suspend_and_acknowledge(self: Arc<Self>, suspension: Suspension) {
        let started = Instant::now();
        if let Some(routed) = &suspension.routed {
            routed.suspend().await;
        }
        tracing::info!(
            vdisk = %suspension.name,
            drained_ms = started.elapsed().as_millis() as u64,
            "reconfiguration: I/O suspended and drained"
        );
        let ack = Command::AckMove {
            name: suspension.name.clone(),
            move_id: suspension.move_id,
            node: self.name.clone(),
        };
        if let Err(e) = self.store.write(ack).await {
            tracing::warn!(vdisk = %suspension.name, "reconfiguration: cannot acknowledge: {e}");
        }
    }

    /// Cancels moves pending for much longer than a move may take: their
    /// coordinator died or lost the store. Any node may; the store takes
    /// the first end of a move and refuses the others.
    pub(super) fn end_abandoned_moves(self: &Arc<Self>, config: &Configuration) {
        let now = Instant::now();
        let mut seen = lock(&self.moves_seen);
        let pending: BTreeMap<u64, &VdiskRecord> = config
            .vdisks
            .values()
            .filter_map(|r| r.moving.as_ref().map(|m| (m.id, r)))
            .collect();
        seen.retain(|id, _| pending.contains_key(id));
        for (&id, record) in &pending {
            let first = *seen.entry(id).or_insert(now);
            if now.duration_since(first) < self.move_timeout * 3 {
                continue;
            }
            seen.insert(id, now);
            let end = Command::EndMove {
                name: record.spec.name.clone(),
                move_id: id,
                commit: false,
            };
            let daemon = self.clone();
            tokio::spawn(async move {
                if daemon.store.write(end).await.is_ok() {
                    tracing::warn!("reconfiguration {id} abandoned by its coordinator: cancelled");
                }
            });
        }
    }

    /// Moves a cluster vdisk to new tails while its I/O runs (seed 003's
    /// reconfiguration), once the tails are checked.
    pub async fn move_vdisk(&self, request: MoveRequest) -> anyhow::Result<VdiskInfo> {
        let name: VdiskName = request.name.parse()?;
        let config = self.store.configuration();
        let Some(record) = config.vdisks.get(&name) else {
            bail!("no vdisk named {name}");
        };
        let to = match &record.spec.placement {
            // A mirror's copies stay where they are: only which one is the
            // primary changes.
            Placement::Mirror {
                primary, mirror, ..
            } => {
                if request.primary != *mirror
                    || request.secondary.as_ref().is_some_and(|s| s != primary)
                {
                    bail!(
                        "vdisk {name} is mirrored: it can only switch to its mirror ({mirror}) as primary"
                    );
                }
                record.spec.placement.switched_over()
            }
            _ => Placement::Cluster {
                primary: request.primary,
                secondary: request.secondary,
            },
        };
        if to == record.spec.placement {
            bail!("vdisk {name} is already on {to}");
        }
        self.with_node(|node| node.check_tails(&record.spec, &to, &config))?;
        self.reconfigure(record, to).await
    }

    /// Takes `record` to `to` through the protocol: every live member
    /// suspends and drains the vdisk, then the new mapping commits at the
    /// next epoch and everyone resumes on it. A member that does not
    /// acknowledge in time cancels the move; I/O resumes on the old mapping.
    async fn reconfigure(&self, record: &VdiskRecord, to: Placement) -> anyhow::Result<VdiskInfo> {
        let name = record.spec.name.clone();
        let waiting_for = self.live_members();
        let started = Instant::now();
        let begun = self
            .store
            .write(Command::BeginMove {
                name: name.clone(),
                to: to.clone(),
                coordinator: self.name.clone(),
                waiting_for: waiting_for.clone(),
                from_epoch: record.epoch,
            })
            .await?;
        // No lease granted after this can let a node ignore the move: it
        // would see the move along with the confirmation.
        let begun_at = Instant::now();
        let move_id = begun
            .vdisk
            .as_ref()
            .and_then(|r| r.moving.as_ref().map(|m| m.id))
            .context("the store began no move")?;
        tracing::info!(vdisk = %name, %to, nodes = ?waiting_for, "reconfiguration: asking every live node to suspend");
        // The acknowledgements are read from this node's copy: it must
        // have the move first (a follower applies after the leader).
        self.store
            .wait_applied(begun.generation, self.move_timeout)
            .await;
        let acked = self.all_acknowledged(&name, move_id).await;
        if let Ok(vouched) = &acked {
            if must_wait_out_lease(&record.spec.placement, &waiting_for, vouched) {
                let until = begun_at + LEASE_RUN_OUT;
                tracing::info!(vdisk = %name, ms = until.saturating_duration_since(Instant::now()).as_millis() as u64, "reconfiguration: waiting out the lease of a tail's node that did not suspend");
                tokio::time::sleep_until(until.into()).await;
            }
        }
        let commit = acked.is_ok();
        let ended = self
            .store
            .write(Command::EndMove {
                name: name.clone(),
                move_id,
                commit,
            })
            .await?;
        self.reconciled(ended.generation).await?;
        if let Err(missing) = acked {
            bail!(
                "move of {name} cancelled: {} did not suspend within {} ms; I/O goes on with the old mapping",
                missing.join(", "),
                self.move_timeout.as_millis()
            );
        }
        tracing::info!(
            vdisk = %name,
            %to,
            ms = started.elapsed().as_millis() as u64,
            "reconfiguration committed"
        );
        self.info(&name)
    }

    /// On the store's leader, until `stop`: carries out the moves the
    /// failover policy ([`Failover`]) decides. The store then says which
    /// tail is in charge, and the old primary's node, back, serves as the
    /// secondary at the new epoch.
    pub async fn follow_membership(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        // Without gossip no member is ever seen down.
        let (Some(after), true) = (self.failover_move, self.gossip.is_some()) else {
            return;
        };
        let mut failover = Failover::new(after);
        loop {
            tokio::select! {
                () = tokio::time::sleep(RECHECK / 2) => {}
                _ = stop.wait_for(|&s| s) => return,
            }
            if self.store.status().role != StoreRole::Leader {
                failover.not_leading();
                continue;
            }
            let config = self.store.configuration();
            let decisions =
                failover.decide(config.vdisks.values(), &self.live_members(), Instant::now());
            for decision in decisions {
                match decision {
                    Decision::Move { name, down, to } => {
                        tracing::warn!(vdisk = %name, %down, "primary's node down: moving the vdisk to its secondary");
                        let Some(record) = config.vdisks.get(&name) else {
                            continue;
                        };
                        if let Err(e) = self.reconfigure(record, to).await {
                            tracing::error!(vdisk = %name, "{e:#}");
                        }
                    }
                    Decision::Stranded { name, down, copy } => {
                        tracing::error!(vdisk = %name, %down, %copy, "primary's node down, and the mirror cannot take over: its copy is not current; the vdisk waits for its primary");
                    }
                }
            }
        }
    }

    /// Waits for every acknowledgement of move `move_id`, at most the move
    /// timeout, and returns those the coordinator acknowledged for; else
    /// returns who is missing. A member declared down while the move waits
    /// is acknowledged for by the coordinator: its requests to peers are
    /// refused as a non-member's, and by the epoch once the move commits;
    /// its own tails it touches only while its lease lasts, which the
    /// commit waits out. Waiting for it would only hold everyone's I/O for
    /// the whole timeout.
    async fn all_acknowledged(
        &self,
        name: &VdiskName,
        move_id: u64,
    ) -> Result<BTreeSet<String>, Vec<String>> {
        let deadline = tokio::time::Instant::now() + self.move_timeout;
        let mut changes = self.store.subscribe();
        let mut view = self.gossip.as_ref().map(|g| g.view());
        let mut vouched = BTreeSet::new();
        loop {
            let moving = self
                .store
                .configuration()
                .vdisks
                .get(name)
                .and_then(|r| r.moving.clone());
            let alive = self.live_members();
            let (missing, vouch) = match progress(moving.as_ref(), move_id, &alive, &vouched) {
                Progress::Gone => {
                    return Err(vec!["the store (the move ended elsewhere)".to_owned()])
                }
                Progress::Acknowledged => return Ok(vouched),
                Progress::Waiting { missing, vouch } => (missing, vouch),
            };
            for node in vouch {
                vouched.insert(node.clone());
                tracing::warn!(vdisk = %name, node = %node, "reconfiguration: acknowledged for a member declared down");
                let ack = Command::AckMove {
                    name: name.clone(),
                    move_id,
                    node: node.clone(),
                };
                if let Err(e) = self.store.write(ack).await {
                    tracing::warn!(vdisk = %name, "reconfiguration: cannot acknowledge for {node}: {e}");
                }
            }
            let membership_changed = async {
                match &mut view {
                    Some(view) => {
                        let _ = view.changed().await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return Err(missing) },
                () = membership_changed => {}
                () = tokio::time::sleep_until(deadline) => return Err(missing),
            }
        }
    }
}
