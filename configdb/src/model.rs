//! The cluster configuration and the commands that change it, without any
//! storage: applying a command is a pure function of the configuration, so
//! every node that applies the same log reaches the same state, and the
//! rules are tested without Raft.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::{
    MirrorCopy, NodeRecord, PendingMove, Permissions, Placement, VdiskName, VdiskRecord, VdiskSpec,
};

/// The most answers one client may leave unacknowledged: a bound on what
/// a session remembers. A node's store has a few writes in flight at once.
const MAX_UNACKNOWLEDGED: usize = 1024;

/// A change to the configuration, as replicated in the Raft log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    /// Records a new vdisk with the next free id, at epoch 1.
    AddVdisk(VdiskSpec),
    /// Forgets a vdisk (its tails keep the data).
    DeleteVdisk { name: VdiskName },
    /// Changes the owner, group or mode of a vdisk's device nodes.
    SetPermissions {
        name: VdiskName,
        owner: Option<u32>,
        group: Option<u32>,
        mode: Option<u32>,
    },
    /// Starts moving a cluster vdisk to `to`: `waiting_for` must each
    /// suspend their I/O to it and acknowledge. Refused unless the vdisk
    /// is at `from_epoch` with no move under way.
    BeginMove {
        name: VdiskName,
        to: Placement,
        coordinator: String,
        waiting_for: BTreeSet<String>,
        from_epoch: u64,
    },
    /// `node` has suspended and drained its I/O for move `move_id`.
    AckMove {
        name: VdiskName,
        move_id: u64,
        node: String,
    },
    /// Ends move `move_id`: with `commit`, the new placement takes effect
    /// at the next epoch (refused unless every node acknowledged); without,
    /// the old one stays.
    EndMove {
        name: VdiskName,
        move_id: u64,
        commit: bool,
    },
    /// Records a node's links and tails, replacing an earlier record.
    RegisterNode(NodeRecord),
    /// The primary of mirrored vdisk `name` records what its mirror's copy
    /// is, as of `epoch`: refused from a primary the vdisk has moved on
    /// from (another epoch), and while a move is under way, so that a
    /// takeover and a stale mark cannot both succeed.
    SetMirrorCopy {
        name: VdiskName,
        epoch: u64,
        copy: MirrorCopy,
    },
    /// The sending node takes vdisk `name`'s write role: granted if nobody
    /// holds it, the sender does, or `from` does (a holder the sender saw
    /// down). A multi-writer vdisk has no role to take: granted.
    ClaimWriter {
        name: VdiskName,
        from: Option<String>,
    },
    /// The sending node gives vdisk `name`'s write role up.
    ReleaseWriter { name: VdiskName },
}

impl Command {
    /// The vdisk the command changes, if any.
    pub fn vdisk(&self) -> Option<&VdiskName> {
        match self {
            Command::AddVdisk(spec) => Some(&spec.name),
            Command::DeleteVdisk { name }
            | Command::SetPermissions { name, .. }
            | Command::BeginMove { name, .. }
            | Command::AckMove { name, .. }
            | Command::EndMove { name, .. }
            | Command::SetMirrorCopy { name, .. }
            | Command::ClaimWriter { name, .. }
            | Command::ReleaseWriter { name } => Some(name),
            Command::RegisterNode(_) => None,
        }
    }
}

/// A command as a client sends it, numbered in the client's session (the
/// Raft dissertation's client sessions, section 6.3): the store applies
/// each number at most once, answers a retry with the first outcome, and
/// forgets an answer only once the client says it has it. A late or
/// replayed request is thus never applied twice, however many others came
/// between.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub client: Client,
    /// This request's number in the client's session: 1, 2, 3...
    pub seq: u64,
    /// The client has the answers of all its requests numbered below this.
    pub acked_below: u64,
    pub command: Command,
}

/// Who sends requests: a node's store, in one life of its daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Client {
    /// The node's name; over the network, the one its certificate proves.
    pub node: String,
    /// Grows with each start of the node's daemon (its start time in ms):
    /// a request of an earlier life is refused once a later one spoke.
    pub incarnation: u64,
}

/// What the store remembers of one node's requests.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Session {
    incarnation: u64,
    acked_below: u64,
    /// The outcome of each request not yet acknowledged, by number.
    answers: BTreeMap<u64, Response>,
}

/// What applying a request did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// The configuration's generation after the request.
    pub generation: u64,
    /// The vdisk's record after the change (none after a delete).
    pub vdisk: Option<VdiskRecord>,
    /// Why the command was refused; the configuration did not change.
    pub refused: Option<String>,
}

/// Everything the store holds besides Raft's own state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Configuration {
    /// Grows by one with every change: vdisks, permissions, moves, nodes,
    /// and the store's own membership.
    pub generation: u64,
    /// Stored record by record, beside the rest.
    #[serde(skip)]
    pub vdisks: BTreeMap<VdiskName, VdiskRecord>,
    pub nodes: BTreeMap<String, NodeRecord>,
    /// Each node's session, by node name.
    #[serde(default)]
    sessions: BTreeMap<String, Session>,
}

impl Configuration {
    /// Applies one request: the same outcome on every node; a retried
    /// request gets the outcome of its first application, and one the
    /// client had its answer to, or from an earlier life of the client, is
    /// refused unapplied.
    pub fn apply(&mut self, request: &Request) -> Response {
        if let Some(answer) = self.answer_without_applying(request) {
            return answer;
        }
        let response = match self.apply_command(&request.command, &request.client.node) {
            Ok(vdisk) => {
                self.generation += 1;
                Response {
                    generation: self.generation,
                    vdisk,
                    refused: None,
                }
            }
            Err(why) => Response {
                generation: self.generation,
                vdisk: None,
                refused: Some(why),
            },
        };
        if let Some(session) = self.sessions.get_mut(&request.client.node) {
            session.answers.insert(request.seq, response.clone());
        }
        response
    }

    /// Checks `request` against its client's session: the answer it gets
    /// instead of being applied, if any.
    fn answer_without_applying(&mut self, request: &Request) -> Option<Response> {
        let generation = self.generation;
        let refuse = |why: String| Response {
            generation,
            vdisk: None,
            refused: Some(why),
        };
        let node = &request.client.node;
        let session = self.sessions.entry(node.clone()).or_default();
        if request.client.incarnation < session.incarnation {
            return Some(refuse(format!(
                "a request from an earlier run of node {node}'s daemon: not applied"
            )));
        }
        if request.client.incarnation > session.incarnation {
            *session = Session {
                incarnation: request.client.incarnation,
                ..Session::default()
            };
        }
        if request.acked_below > session.acked_below {
            session.acked_below = request.acked_below;
            session.answers = session.answers.split_off(&request.acked_below);
        }
        if request.seq < session.acked_below {
            return Some(refuse(format!(
                "request {} of node {node} was answered already: not applied again",
                request.seq
            )));
        }
        if let Some(answer) = session.answers.get(&request.seq) {
            return Some(answer.clone());
        }
        if session.answers.len() >= MAX_UNACKNOWLEDGED {
            return Some(refuse(format!(
                "node {node} has {MAX_UNACKNOWLEDGED} requests unacknowledged: not applied"
            )));
        }
        None
    }

    /// The store's membership changed: a change like any other.
    pub fn membership_changed(&mut self) {
        self.generation += 1;
    }

    /// Applies `command`, sent by node `sender`.
    fn apply_command(
        &mut self,
        command: &Command,
        sender: &str,
    ) -> Result<Option<VdiskRecord>, String> {
        match command {
            Command::ClaimWriter { name, from } => {
                let record = self.get_mut(name)?;
                if record.spec.multi_writer {
                    return Ok(Some(record.clone()));
                }
                match &record.writer {
                    Some(holder) if holder != sender && from.as_ref() != Some(holder) => {
                        return Err(format!(
                            "vdisk {name} is written from node {holder}: `ublkvd release {name}` there first \
                             (a cluster filesystem's vdisk is added with --multi-writer)"
                        ))
                    }
                    _ => record.writer = Some(sender.to_owned()),
                }
                Ok(Some(record.clone()))
            }
            Command::ReleaseWriter { name } => {
                let record = self.get_mut(name)?;
                if record.writer.as_deref() != Some(sender) {
                    return Err(format!(
                        "node {sender} does not hold vdisk {name}'s write role"
                    ));
                }
                record.writer = None;
                Ok(Some(record.clone()))
            }
            Command::AddVdisk(spec) => self.add(spec).map(Some),
            Command::DeleteVdisk { name } => {
                let record = self.get(name)?;
                if record.moving.is_some() {
                    return Err(format!("vdisk {name} is being moved"));
                }
                self.vdisks.remove(name);
                Ok(None)
            }
            Command::SetPermissions {
                name,
                owner,
                group,
                mode,
            } => {
                if mode.is_some_and(|m| m > 0o7777) {
                    return Err(format!("mode {:o} has bits beyond 7777", mode.unwrap_or(0)));
                }
                let record = self.get_mut(name)?;
                let p = &mut record.spec.permissions;
                *p = Permissions {
                    owner: owner.unwrap_or(p.owner),
                    group: group.unwrap_or(p.group),
                    mode: mode.unwrap_or(p.mode),
                };
                Ok(Some(record.clone()))
            }
            Command::BeginMove {
                name,
                to,
                coordinator,
                waiting_for,
                from_epoch,
            } => self.begin_move(name, to, coordinator, waiting_for, *from_epoch),
            Command::AckMove {
                name,
                move_id,
                node,
            } => {
                let moving = self.pending_move(name, *move_id)?;
                moving.acked.insert(node.clone());
                Ok(self.vdisks.get(name).cloned())
            }
            Command::EndMove {
                name,
                move_id,
                commit,
            } => {
                let moving = self.pending_move(name, *move_id)?;
                if *commit && !moving.all_acked() {
                    let missing: Vec<&str> = moving
                        .waiting_for
                        .difference(&moving.acked)
                        .map(String::as_str)
                        .collect();
                    return Err(format!(
                        "move of {name} cannot commit: not acknowledged by {}",
                        missing.join(", ")
                    ));
                }
                let record = self.get_mut(name)?;
                if *commit && record.mirror_copy != MirrorCopy::Current {
                    return Err(format!(
                        "move of {name} cannot commit: its mirror's copy is {}",
                        record.mirror_copy
                    ));
                }
                if let Some(moving) = record.moving.take() {
                    if *commit {
                        record.spec.placement = moving.to;
                        record.epoch += 1;
                    }
                }
                Ok(Some(record.clone()))
            }
            Command::RegisterNode(node) => {
                self.nodes.insert(node.name.clone(), node.clone());
                Ok(None)
            }
            Command::SetMirrorCopy { name, epoch, copy } => {
                let record = self.get_mut(name)?;
                if !matches!(record.spec.placement, Placement::Mirror { .. }) {
                    return Err(format!("vdisk {name} is not mirrored"));
                }
                if record.epoch != *epoch {
                    return Err(format!(
                        "vdisk {name} moved on (epoch {} is not {epoch})",
                        record.epoch
                    ));
                }
                if let Some(moving) = &record.moving {
                    return Err(format!(
                        "vdisk {name} is being moved by {}",
                        moving.coordinator
                    ));
                }
                record.mirror_copy = *copy;
                Ok(Some(record.clone()))
            }
        }
    }

    fn add(&mut self, spec: &VdiskSpec) -> Result<VdiskRecord, String> {
        if self.vdisks.contains_key(&spec.name) {
            return Err(format!("vdisk {} already exists", spec.name));
        }
        self.check_tails_free(&spec.name, &spec.placement)?;
        // The smallest free id: device numbers stay small and are reused.
        let used: BTreeSet<u32> = self.vdisks.values().map(|v| v.id).collect();
        let id = (0..=u32::MAX)
            .find(|id| !used.contains(id))
            .ok_or("no vdisk id left")?;
        let record = VdiskRecord {
            spec: spec.clone(),
            id,
            epoch: 1,
            moving: None,
            // A new mirror's tails may hold anything: the primary copies
            // its whole tail to the mirror first.
            mirror_copy: match spec.placement {
                Placement::Mirror { .. } => MirrorCopy::Blank,
                _ => MirrorCopy::Current,
            },
            // Taken by the first node to write.
            writer: None,
        };
        self.vdisks.insert(spec.name.clone(), record.clone());
        Ok(record)
    }

    fn begin_move(
        &mut self,
        name: &VdiskName,
        to: &Placement,
        coordinator: &str,
        waiting_for: &BTreeSet<String>,
        from_epoch: u64,
    ) -> Result<Option<VdiskRecord>, String> {
        self.check_tails_free(name, to)?;
        let generation = self.generation;
        let record = self.get_mut(name)?;
        match (&record.spec.placement, to) {
            (Placement::Local { .. }, _) => {
                return Err(format!("vdisk {name} is local to one node: it cannot move"));
            }
            (Placement::Cluster { .. }, Placement::Cluster { .. }) => {}
            (Placement::Cluster { .. }, _) => {
                return Err("a vdisk moves to cluster tails (NODE:TAIL)".into());
            }
            (from @ Placement::Mirror { .. }, to) => {
                if *to != from.switched_over() {
                    return Err(format!(
                        "mirrored vdisk {name} can only switch its primary and its mirror"
                    ));
                }
                if record.mirror_copy != MirrorCopy::Current {
                    return Err(format!(
                        "vdisk {name}'s mirror cannot take over: its copy is {}",
                        record.mirror_copy
                    ));
                }
            }
        }
        if let Some(moving) = &record.moving {
            return Err(format!(
                "vdisk {name} is already being moved by {}",
                moving.coordinator
            ));
        }
        if record.epoch != from_epoch {
            return Err(format!(
                "vdisk {name} changed meanwhile (epoch {} is not {from_epoch})",
                record.epoch
            ));
        }
        record.moving = Some(PendingMove {
            // The generation this command creates: unique to this move.
            id: generation + 1,
            to: to.clone(),
            coordinator: coordinator.to_owned(),
            waiting_for: waiting_for.clone(),
            acked: BTreeSet::new(),
        });
        Ok(Some(record.clone()))
    }

    /// Refuses tails another vdisk than `name` uses.
    fn check_tails_free(&self, name: &VdiskName, placement: &Placement) -> Result<(), String> {
        match self
            .vdisks
            .values()
            .find(|v| &v.spec.name != name && v.spec.placement.shares_a_tail_with(placement))
        {
            Some(other) => Err(format!(
                "{placement}: a tail already used by vdisk {}",
                other.spec.name
            )),
            None => Ok(()),
        }
    }

    fn get(&self, name: &VdiskName) -> Result<&VdiskRecord, String> {
        self.vdisks
            .get(name)
            .ok_or_else(|| format!("no vdisk named {name}"))
    }

    fn get_mut(&mut self, name: &VdiskName) -> Result<&mut VdiskRecord, String> {
        self.vdisks
            .get_mut(name)
            .ok_or_else(|| format!("no vdisk named {name}"))
    }

    fn pending_move(&mut self, name: &VdiskName, move_id: u64) -> Result<&mut PendingMove, String> {
        match self.get_mut(name)?.moving.as_mut() {
            Some(moving) if moving.id == move_id => Ok(moving),
            _ => Err(format!(
                "move {move_id} of vdisk {name} is no longer under way"
            )),
        }
    }
}

#[cfg(test)]
mod tests;
