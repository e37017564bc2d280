//! The control protocol between the `ublkvd` client and its daemon: one JSON
//! request per line on a Unix socket, answered by one JSON response line.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use configdb::TailRef;
use serde::{Deserialize, Serialize};

use crate::client::exit::Unreachable;

/// Longest request line the daemon reads; a vdisk spec is far smaller.
pub const MAX_LINE: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Add(AddRequest),
    Del {
        name: String,
    },
    Set(SetRequest),
    Move(MoveRequest),
    /// Take down this node's device for a vdisk, and only it.
    Detach {
        name: String,
    },
    /// Bring back this node's device for a detached vdisk.
    Attach {
        name: String,
    },
    /// Give up this node's write role for a vdisk.
    Release {
        name: String,
    },
    List,
    Members,
    Store,
    /// Make exactly these nodes the store's voters.
    SetVoters {
        voters: Vec<String>,
    },
    /// How a mirrored vdisk's resync stands; answered by its primary.
    /// With `full`, first marks the whole mirror for copying (a replaced
    /// disk).
    Resync {
        name: String,
        #[serde(default)]
        full: bool,
    },
    /// Compare both copies of a mirrored vdisk; answered by its primary.
    Verify {
        name: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddRequest {
    pub name: String,
    pub size_bytes: u64,
    /// A tail of this node alone. Absolute: the client resolves it against
    /// its own working directory. Either this or `primary`.
    pub tail: Option<PathBuf>,
    /// The cluster tail requests go to first.
    pub primary: Option<TailRef>,
    /// The cluster tail requests go to when the primary cannot take them.
    pub secondary: Option<TailRef>,
    /// A tail of another node that holds a second copy: every write of the
    /// primary reaches it too.
    #[serde(default)]
    pub mirror: Option<TailRef>,
    /// A mirror's dirty-region size in bytes.
    #[serde(default)]
    pub region_size: Option<u32>,
    pub block_size: u32,
    pub queues: u16,
    pub queue_depth: u16,
    pub read_only: bool,
    /// The device's owner, group and mode on every node; the defaults of
    /// a disk (root, disk, 0660) for those not given.
    pub owner: Option<u32>,
    pub group: Option<u32>,
    pub mode: Option<u32>,
    /// Every node's device may write at once (a cluster filesystem).
    #[serde(default)]
    pub multi_writer: bool,
}

/// New permissions for a vdisk's device nodes; what is not given stays.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetRequest {
    pub name: String,
    pub owner: Option<u32>,
    pub group: Option<u32>,
    pub mode: Option<u32>,
}

/// New tails for a cluster vdisk, taken while I/O runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MoveRequest {
    pub name: String,
    pub primary: TailRef,
    pub secondary: Option<TailRef>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Response {
    Ok { vdisks: Vec<VdiskInfo> },
    Members(MembersInfo),
    Store(StoreInfo),
    Resync(ResyncInfo),
    Verify(VerifyInfo),
    Error { message: String },
}

/// A mirrored vdisk's copies as its primary sees them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResyncInfo {
    pub vdisk: String,
    pub primary: TailRef,
    pub mirror: TailRef,
    /// `in sync`, `degraded` (the mirror is unreachable), `resyncing`, or
    /// `fenced` (the store cannot be told of the mirror's loss, so the
    /// vdisk takes no request).
    pub state: String,
    /// What the store says of the mirror's copy: current, stale or blank.
    pub mirror_copy: String,
    pub size_bytes: u64,
    pub region_size: u64,
    /// What is left to copy.
    pub dirty_bytes: u64,
    /// What the resync copied since this primary started serving.
    pub resynced_bytes: u64,
    pub rate_bytes_per_sec: u64,
    /// At the current rate, while resyncing.
    pub eta_secs: Option<u64>,
    /// The resync copies the whole device (a new mirror, or a lost map).
    pub full: bool,
}

/// What `verify` found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyInfo {
    pub vdisk: String,
    pub regions: u64,
    pub region_size: u64,
    /// Regions whose copies differ though none is recorded dirty.
    pub differing: Vec<u64>,
    /// Regions recorded dirty, not compared: a resync will copy them.
    pub skipped_dirty: u64,
}

/// The membership as one node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembersInfo {
    /// Grows by one on every change of the live members.
    pub config_number: u64,
    /// Gossip datagrams dropped because they failed authentication.
    pub rejected_packets: u64,
    /// Authenticated gossip datagrams dropped as sent outside the window of
    /// this node's clock (gossip::MAX_SKEW_MS either way).
    #[serde(default)]
    pub stale_packets: u64,
    /// Authenticated gossip datagrams dropped as received already.
    #[serde(default)]
    pub replayed_packets: u64,
    /// This node first, then the others by name.
    pub members: Vec<gossip::MemberStatus>,
}

/// The configuration store as one node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreInfo {
    pub role: configdb::StoreRole,
    pub term: u64,
    /// The leader's name, if one is known.
    pub leader: Option<String>,
    /// Grows with every change to the configuration.
    pub generation: u64,
    pub last_log_index: u64,
    pub last_applied: u64,
    pub voters: Vec<String>,
    pub learners: Vec<String>,
    /// The voters this node's `[store] voters` names; empty for a node
    /// alone. They seed a new store only: a running store's voters change
    /// with `ublkvd store set-voters`.
    #[serde(default)]
    pub configured_voters: Vec<String>,
}

/// A vdisk as `add` and `list` report it: the store's record, and what
/// this node runs for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VdiskInfo {
    pub name: String,
    /// Unique in the cluster; the device is `/dev/ublkb<id>` where that
    /// number is free.
    pub id: u32,
    /// Grows with each change of the vdisk's mapping.
    pub epoch: u64,
    pub size_bytes: u64,
    /// `/dev/ublkbN` while the device runs on this node.
    pub device: Option<PathBuf>,
    /// Whether that device's data goes between the kernel's pages and the
    /// tail with no copy (ublk zero copy: a local tail, Linux 6.16 on).
    #[serde(default)]
    pub zero_copy: bool,
    /// The node of a single-node vdisk.
    pub node: Option<String>,
    /// The local tail of a single-node vdisk.
    pub tail: Option<PathBuf>,
    pub primary: Option<TailRef>,
    pub secondary: Option<TailRef>,
    /// A mirrored vdisk's second copy.
    #[serde(default)]
    pub mirror: Option<TailRef>,
    /// What the store says of the mirror's copy: current, stale or blank.
    #[serde(default)]
    pub mirror_copy: Option<String>,
    /// How the copies stand, on the mirrored vdisk's primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resync: Option<ResyncInfo>,
    pub block_size: u32,
    pub read_only: bool,
    pub owner: u32,
    pub group: u32,
    pub mode: u32,
    /// `running`; `exported` on a node that serves the vdisk's tail to
    /// peers but has no device for it; `not here` on a node that has no
    /// part in it; `suspended` during a move; `failed: <why>` when it
    /// could not be started; `detached` where an admin took this node's
    /// device down (`ublkvd detach`); `deleted` in what `del` answers.
    pub state: String,
    /// The node whose device may write it (one writer at a time); none
    /// until a node writes, or for a multi-writer vdisk.
    #[serde(default)]
    pub writer: Option<String>,
    /// Every node's device may write it at once.
    #[serde(default)]
    pub multi_writer: bool,
    /// Where it is being moved, while a move is under way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moving_to: Option<String>,
    /// A cluster vdisk's paths in order of preference.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<PathInfo>,
}

/// One way from this node to a cluster vdisk's data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathInfo {
    /// `local`, or the peer's name.
    pub name: String,
    /// Whether a link to it is up (always, for a local tail).
    pub reachable: bool,
    /// Requests it has completed since the daemon started.
    pub completed: u64,
    /// A peer's links, one per network; none for a local tail.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<LinkInfo>,
}

/// One link to a peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkInfo {
    pub addr: std::net::SocketAddr,
    /// Connected and answering heartbeats.
    pub up: bool,
}

/// Sends one request to the daemon at `socket` and returns its vdisks, or
/// the daemon's error.
pub fn call(socket: &Path, request: &Request) -> anyhow::Result<Vec<VdiskInfo>> {
    match exchange(socket, request)? {
        Response::Ok { vdisks } => Ok(vdisks),
        other => bail!("unexpected reply from the daemon: {other:?}"),
    }
}

/// Asks the daemon at `socket` how the configuration store stands.
pub fn store(socket: &Path) -> anyhow::Result<StoreInfo> {
    match exchange(socket, &Request::Store)? {
        Response::Store(store) => Ok(store),
        other => bail!("unexpected reply from the daemon: {other:?}"),
    }
}

/// Makes exactly `voters` the store's voters, and returns how the store
/// stands then.
pub fn set_voters(socket: &Path, voters: &[String]) -> anyhow::Result<StoreInfo> {
    let request = Request::SetVoters {
        voters: voters.to_vec(),
    };
    match exchange(socket, &request)? {
        Response::Store(store) => Ok(store),
        other => bail!("unexpected reply from the daemon: {other:?}"),
    }
}

/// Asks the daemon at `socket`, the primary of mirrored vdisk `name`, how
/// its resync stands.
pub fn resync(socket: &Path, name: &str, full: bool) -> anyhow::Result<ResyncInfo> {
    let request = Request::Resync {
        name: name.into(),
        full,
    };
    match exchange(socket, &request)? {
        Response::Resync(info) => Ok(info),
        other => bail!("unexpected reply from the daemon: {other:?}"),
    }
}

/// Asks the daemon at `socket`, the primary of mirrored vdisk `name`, to
/// compare both copies.
pub fn verify(socket: &Path, name: &str) -> anyhow::Result<VerifyInfo> {
    let request = Request::Verify { name: name.into() };
    match exchange(socket, &request)? {
        Response::Verify(info) => Ok(info),
        other => bail!("unexpected reply from the daemon: {other:?}"),
    }
}

/// Asks the daemon at `socket` for the membership.
pub fn members(socket: &Path) -> anyhow::Result<MembersInfo> {
    match exchange(socket, &Request::Members)? {
        Response::Members(members) => Ok(members),
        other => bail!("unexpected reply from the daemon: {other:?}"),
    }
}

/// One request, one reply; the daemon's error becomes this call's.
fn exchange(socket: &Path, request: &Request) -> anyhow::Result<Response> {
    let mut stream = match UnixStream::connect(socket) {
        Ok(stream) => stream,
        // Running or not, the daemon is not this user's to reach.
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            return Err(Unreachable(format!(
                "may not reach the ublkvd daemon at {}: permission denied (root only, unless the daemon's config names admin_group or read_group)",
                socket.display()
            ))
            .into())
        }
        Err(e) => {
            return Err(anyhow::Error::new(e).context(Unreachable(format!(
                "cannot reach the ublkvd daemon at {} (is `ublkvd serve` running?)",
                socket.display()
            ))))
        }
    };
    let mut line = serde_json::to_string(request).context("cannot encode request")?;
    line.push('\n');
    stream
        .write_all(line.as_bytes())
        .context("cannot send request to the daemon")?;
    let mut reply = String::new();
    BufReader::new(stream)
        .read_line(&mut reply)
        .context("cannot read the daemon's reply")?;
    if reply.is_empty() {
        bail!("the daemon closed the connection without replying");
    }
    match serde_json::from_str(&reply).context("malformed reply from the daemon")? {
        Response::Error { message } => bail!(message),
        response => Ok(response),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_through_json() {
        let requests = [
            Request::List,
            Request::Members,
            Request::Del { name: "a".into() },
            Request::Add(AddRequest {
                name: "b".into(),
                size_bytes: 1 << 30,
                tail: None,
                primary: Some("a:disk0".parse().unwrap()),
                secondary: Some("b:disk0".parse().unwrap()),
                mirror: None,
                region_size: None,
                block_size: 4096,
                queues: 1,
                queue_depth: 128,
                read_only: false,
                owner: None,
                group: Some(6),
                mode: Some(0o640),
                multi_writer: false,
            }),
            Request::Set(SetRequest {
                name: "b".into(),
                owner: Some(1000),
                group: None,
                mode: None,
            }),
            Request::Move(MoveRequest {
                name: "b".into(),
                primary: "b:disk0".parse().unwrap(),
                secondary: Some("a:disk0".parse().unwrap()),
            }),
            Request::Store,
            Request::Detach { name: "a".into() },
            Request::Attach { name: "a".into() },
            Request::Release { name: "a".into() },
            Request::SetVoters {
                voters: vec!["a".into(), "b".into(), "c".into()],
            },
            Request::Add(AddRequest {
                name: "a".into(),
                size_bytes: 1 << 30,
                tail: Some("/srv/a.img".into()),
                primary: None,
                secondary: None,
                mirror: None,
                region_size: None,
                block_size: 4096,
                queues: 1,
                queue_depth: 128,
                read_only: false,
                owner: None,
                group: None,
                mode: None,
                multi_writer: true,
            }),
        ];
        for request in requests {
            let json = serde_json::to_string(&request).unwrap();
            assert_eq!(serde_json::from_str::<Request>(&json).unwrap(), request);
        }
    }

    #[test]
    fn unknown_operations_and_fields_are_refused() {
        assert!(serde_json::from_str::<Request>(r#"{"op":"format"}"#).is_err());
        assert!(
            serde_json::from_str::<Request>(r#"{"op":"del","name":"a","force":true}"#).is_err()
        );
    }
}
