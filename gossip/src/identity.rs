//! Who a member is: the identity foca gossips, with the metadata other
//! nodes need to reach it.

use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// What a node tells the cluster about itself. It rides in the identity, so
/// whoever knows a member knows how to reach it: nothing is learnt later,
/// nothing can be missed by a node that joins late.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct NodeMeta {
    /// The peer server's addresses, one per data network (the links).
    pub links: Vec<SocketAddr>,
    /// The tails this node holds, by name.
    pub tails: Vec<String>,
    /// The ublkvd version the node runs.
    pub version: String,
}

/// A member's identity: its name, where it gossips, and an incarnation.
///
/// The gossip address is the member's address in foca's sense (seeds are
/// known by address alone): two identities with one address are one node,
/// and the higher incarnation wins. A node starts with
/// the wall-clock time in milliseconds, so a restarted node always wins
/// over its previous life, and renews with `incarnation + 1` when it learns
/// it was declared down, so it rejoins by itself.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeId {
    pub name: String,
    pub gossip: SocketAddr,
    pub incarnation: u64,
    pub meta: NodeMeta,
}

impl NodeId {
    /// A seed as the config names it: an address, its name and metadata
    /// still unknown. foca takes an announce to any identity with the
    /// right address, and learns the real one from the answer.
    pub fn seed(gossip: SocketAddr) -> NodeId {
        NodeId {
            name: String::new(),
            gossip,
            incarnation: 0,
            meta: NodeMeta {
                links: Vec::new(),
                tails: Vec::new(),
                version: String::new(),
            },
        }
    }

    pub fn new(name: String, gossip: SocketAddr, meta: NodeMeta) -> NodeId {
        let incarnation = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |since| since.as_millis() as u64);
        NodeId {
            name,
            gossip,
            incarnation,
            meta,
        }
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}#{}", self.name, self.gossip, self.incarnation)
    }
}

impl foca::Identity for NodeId {
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        Some(NodeId {
            incarnation: self.incarnation.wrapping_add(1),
            ..self.clone()
        })
    }

    fn addr(&self) -> SocketAddr {
        self.gossip
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.incarnation > adversary.incarnation
    }
}

#[cfg(test)]
mod tests {
    use foca::Identity;

    use super::*;

    fn id(incarnation: u64) -> NodeId {
        NodeId {
            name: "a".into(),
            gossip: SocketAddr::from(([10, 0, 0, 1], 7000)),
            incarnation,
            meta: NodeMeta {
                links: vec![SocketAddr::from(([10, 1, 0, 1], 7100))],
                tails: vec!["disk0".into()],
                version: "0.1.0".into(),
            },
        }
    }

    #[test]
    fn a_renewed_identity_is_the_same_node_and_wins() {
        let old = id(5);
        let new = old.renew().unwrap();
        assert_eq!(new.addr(), old.addr());
        assert_eq!(new.meta, old.meta);
        assert!(new.win_addr_conflict(&old));
        assert!(!old.win_addr_conflict(&new));
    }

    #[test]
    fn a_restarted_node_outranks_its_previous_life() {
        let first = NodeId::new("a".into(), id(0).gossip, id(0).meta);
        std::thread::sleep(std::time::Duration::from_millis(2));
        let second = NodeId::new("a".into(), id(0).gossip, id(0).meta);
        assert!(second.win_addr_conflict(&first));
    }
}
