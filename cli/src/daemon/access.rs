//! Who may do what on the control socket: each connection's peer, as the
//! kernel recorded it when the peer connected, against the groups the
//! config names.
//!
//! The peer's supplementary groups come from SO_PEERGROUPS, not from
//! /proc/PID/status nor from the group database (getgrouplist): the kernel
//! takes that snapshot at connect(), with SO_PEERCRED's uid, so a pid reused
//! after the peer exits, or a peer that changes its groups afterwards, cannot
//! lend it other groups; and it holds the groups the process really has, so a
//! process that dropped a group (a sandboxed service, `setpriv
//! --clear-groups`) does not get it back from /etc/group, and no lookup in
//! the group database (perhaps LDAP) waits on each connection.

use std::os::fd::AsRawFd;

use tokio::net::UnixStream;

use crate::control::Request;

/// What a request does, which decides who may send it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Reports how things stand: changes nothing and costs the vdisks' I/O
    /// nothing.
    Read,
    /// Changes vdisks or loads their I/O; says what, for the refusal.
    Admin(&'static str),
}

impl Access {
    /// The one place requests are classified. No wildcard: a new request
    /// is classified before it compiles.
    pub fn of(request: &Request) -> Access {
        match request {
            Request::List | Request::Members | Request::Store => Access::Read,
            // Without `full` it only reports how the copies stand.
            Request::Resync { full: false, .. } => Access::Read,
            // Marks the whole mirror for copying: every byte is sent again.
            Request::Resync { full: true, .. } => Access::Admin("start a full resync"),
            // It changes no byte, but reads all of both copies, one of them
            // across the network, and holds the writes to each region while
            // that region is compared: a read-only user must not be able to
            // slow the vdisks' I/O at will.
            Request::Verify { .. } => Access::Admin("verify vdisks"),
            Request::SetVoters { .. } => Access::Admin("change the store's voters"),
            Request::Add(_)
            | Request::Del { .. }
            | Request::Set(_)
            | Request::Move(_)
            | Request::Detach { .. }
            | Request::Attach { .. }
            | Request::Release { .. } => Access::Admin("change vdisks"),
        }
    }
}

/// A group the config names, with its number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub name: String,
    pub gid: u32,
}

/// The groups admitted to the control socket besides root.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ControlGroups {
    /// Its members may do all that root may.
    pub admin: Option<Group>,
    /// Its members may send the read requests.
    pub read: Option<Group>,
}

impl ControlGroups {
    pub fn is_empty(&self) -> bool {
        self.admin.is_none() && self.read.is_none()
    }
}

/// A control connection's peer as the kernel recorded it at connect().
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    /// `None` when the peer is in a pid namespace the daemon cannot see.
    pub pid: Option<i32>,
    gid: u32,
    groups: Vec<u32>,
}

impl Peer {
    /// The peer of `stream`: SO_PEERCRED's uid, gid and pid, and
    /// SO_PEERGROUPS' supplementary groups.
    pub fn of(stream: &UnixStream) -> std::io::Result<Peer> {
        let cred = stream.peer_cred()?;
        Ok(Peer {
            uid: cred.uid(),
            pid: cred.pid(),
            gid: cred.gid(),
            groups: peer_groups(stream)?,
        })
    }

    fn is_in(&self, group: Option<&Group>) -> bool {
        group.is_some_and(|group| self.gid == group.gid || self.groups.contains(&group.gid))
    }
}

/// The supplementary groups the peer of `stream` had when it connected.
fn peer_groups(stream: &UnixStream) -> std::io::Result<Vec<u32>> {
    let word = std::mem::size_of::<libc::gid_t>();
    let mut groups: Vec<libc::gid_t> = vec![0; 32];
    // Twice at most: the snapshot does not change, so after ERANGE has
    // told the size it needs, the second call fits.
    for _ in 0..2 {
        let mut len = libc::socklen_t::try_from(groups.len() * word)
            .map_err(|_| std::io::Error::other("too many groups"))?;
        // SAFETY: the kernel writes at most `len` bytes to `groups`, which
        // holds that many, and writes the length it wrote or needs to `len`.
        let rc = unsafe {
            libc::getsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let count = len as usize / word;
        if rc == 0 {
            groups.truncate(count);
            return Ok(groups);
        }
        let error = std::io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::ERANGE) || count <= groups.len() {
            return Err(error);
        }
        groups.resize(count, 0);
    }
    Err(std::io::Error::other(
        "the peer's groups changed while they were read",
    ))
}

/// The rules control requests are admitted by.
#[derive(Debug, Clone)]
pub struct AccessRules {
    groups: ControlGroups,
    /// The daemon's own user may do everything: it owns the socket.
    daemon_uid: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Admin,
    Reader,
}

impl AccessRules {
    pub fn new(groups: ControlGroups, daemon_uid: u32) -> AccessRules {
        AccessRules { groups, daemon_uid }
    }

    fn role(&self, peer: &Peer) -> Option<Role> {
        if peer.uid == 0 || peer.uid == self.daemon_uid || peer.is_in(self.groups.admin.as_ref()) {
            Some(Role::Admin)
        } else if peer.is_in(self.groups.read.as_ref()) {
            Some(Role::Reader)
        } else {
            None
        }
    }

    /// Whether `peer` may send a request of `access`; if not, the refusal,
    /// which names the rule.
    pub fn admit(&self, peer: &Peer, access: Access) -> Result<(), String> {
        let role = self.role(peer);
        let (admitted, what) = match access {
            Access::Read => (role.is_some(), "read this node's state"),
            Access::Admin(what) => (role == Some(Role::Admin), what),
        };
        if admitted {
            return Ok(());
        }
        let mut who = vec!["root".to_owned()];
        if self.daemon_uid != 0 {
            who.push(format!("uid {} (the daemon's)", self.daemon_uid));
        }
        let mut groups = vec![self.groups.admin.as_ref()];
        if access == Access::Read {
            groups.push(self.groups.read.as_ref());
        }
        who.extend(
            groups
                .into_iter()
                .flatten()
                .map(|g| format!("group {}", g.name)),
        );
        Err(format!(
            "uid {} may not {what}: {} only",
            peer.uid,
            either(&who)
        ))
    }
}

/// "a", "a or b", "a, b or c".
fn either(names: &[String]) -> String {
    match names {
        [rest @ .., last] if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => names.join(""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{MoveRequest, SetRequest};

    #[test]
    fn reports_are_read_and_changes_verify_full_resyncs_and_voters_are_admin() {
        let name = || "vd".to_owned();
        let read = [
            Request::List,
            Request::Members,
            Request::Store,
            Request::Resync {
                name: name(),
                full: false,
            },
        ];
        for request in read {
            assert_eq!(Access::of(&request), Access::Read, "{request:?}");
        }
        let tail = || "a:disk0".parse().unwrap();
        let change = [
            Request::Del { name: name() },
            Request::Set(SetRequest {
                name: name(),
                owner: None,
                group: None,
                mode: Some(0o600),
            }),
            Request::Move(MoveRequest {
                name: name(),
                primary: tail(),
                secondary: None,
            }),
            Request::Detach { name: name() },
            Request::Attach { name: name() },
            Request::Release { name: name() },
        ];
        for request in change {
            assert_eq!(
                Access::of(&request),
                Access::Admin("change vdisks"),
                "{request:?}"
            );
        }
        let add = serde_json::from_str(
            r#"{"op":"add","name":"vd","size_bytes":4096,"tail":"/t","primary":null,
                "secondary":null,"block_size":4096,"queues":1,"queue_depth":64,
                "read_only":false,"owner":null,"group":null,"mode":null}"#,
        )
        .unwrap();
        assert_eq!(Access::of(&add), Access::Admin("change vdisks"));
        let full = Request::Resync {
            name: name(),
            full: true,
        };
        assert_eq!(Access::of(&full), Access::Admin("start a full resync"));
        let verify = Request::Verify { name: name() };
        assert_eq!(Access::of(&verify), Access::Admin("verify vdisks"));
        let voters = Request::SetVoters {
            voters: vec![name()],
        };
        assert_eq!(
            Access::of(&voters),
            Access::Admin("change the store's voters")
        );
    }

    fn peer(uid: u32, gid: u32, groups: &[u32]) -> Peer {
        Peer {
            uid,
            pid: Some(1),
            gid,
            groups: groups.to_vec(),
        }
    }

    fn group(name: &str, gid: u32) -> Option<Group> {
        Some(Group {
            name: name.into(),
            gid,
        })
    }

    const CHANGE: Access = Access::Admin("change vdisks");

    #[test]
    fn without_groups_root_and_the_daemons_user_alone_are_admitted() {
        let rules = AccessRules::new(ControlGroups::default(), 0);
        assert_eq!(rules.admit(&peer(0, 0, &[]), CHANGE), Ok(()));
        assert_eq!(
            rules.admit(&peer(1000, 1000, &[]), Access::Read),
            Err("uid 1000 may not read this node's state: root only".into())
        );
        let own_user = AccessRules::new(ControlGroups::default(), 1000);
        assert_eq!(own_user.admit(&peer(1000, 1000, &[]), CHANGE), Ok(()));
        assert_eq!(
            own_user.admit(&peer(1001, 1001, &[]), CHANGE),
            Err("uid 1001 may not change vdisks: root or uid 1000 (the daemon's) only".into())
        );
    }

    #[test]
    fn the_admin_group_may_do_all_and_the_read_group_may_only_read() {
        let rules = AccessRules::new(
            ControlGroups {
                admin: group("ublkvd-admin", 900),
                read: group("ublkvd-read", 901),
            },
            0,
        );
        // Supplementary or primary, a group counts.
        for admin in [peer(1000, 100, &[900]), peer(1000, 900, &[])] {
            assert_eq!(rules.admit(&admin, CHANGE), Ok(()));
            assert_eq!(rules.admit(&admin, Access::Read), Ok(()));
        }
        let reader = peer(1001, 100, &[50, 901]);
        assert_eq!(rules.admit(&reader, Access::Read), Ok(()));
        assert_eq!(
            rules.admit(&reader, Access::Admin("verify vdisks")),
            Err("uid 1001 may not verify vdisks: root or group ublkvd-admin only".into())
        );
        let stranger = peer(65534, 65534, &[100]);
        assert_eq!(
            rules.admit(&stranger, Access::Read),
            Err(
                "uid 65534 may not read this node's state: root, group ublkvd-admin or group ublkvd-read only"
                    .into()
            )
        );
        assert_eq!(
            rules.admit(&stranger, CHANGE),
            Err("uid 65534 may not change vdisks: root or group ublkvd-admin only".into())
        );
    }

    #[test]
    fn a_read_group_alone_leaves_changes_to_root() {
        let rules = AccessRules::new(
            ControlGroups {
                admin: None,
                read: group("users", 100),
            },
            0,
        );
        let reader = peer(1000, 1000, &[100]);
        assert_eq!(rules.admit(&reader, Access::Read), Ok(()));
        assert_eq!(
            rules.admit(&reader, CHANGE),
            Err("uid 1000 may not change vdisks: root only".into())
        );
    }

    #[tokio::test]
    async fn the_peer_of_a_socket_pair_is_this_process_with_its_groups() {
        let (ours, _theirs) = UnixStream::pair().unwrap();
        let peer = Peer::of(&ours).unwrap();
        assert_eq!(peer.uid, uzers::get_effective_uid());
        assert_eq!(peer.gid, uzers::get_effective_gid());
        assert_eq!(peer.pid, Some(std::process::id() as i32));
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("Groups:")).unwrap();
        let mut own: Vec<u32> = line["Groups:".len()..]
            .split_whitespace()
            .map(|gid| gid.parse().unwrap())
            .collect();
        let mut groups = peer.groups.clone();
        own.sort_unstable();
        groups.sort_unstable();
        assert_eq!(groups, own);
    }
}
