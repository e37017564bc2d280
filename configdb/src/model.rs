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
mod tests {
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
}
