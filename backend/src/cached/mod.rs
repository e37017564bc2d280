//! Cached vdisks on the network: the cache shells' messages carried by
//! this node's links to its peers' servers ([`PeerLinks::send_cache`]),
//! and taken from its own server ([`CacheEndpoint`]). Every message goes
//! on its sender's link, whichever way it goes in the tree, so a server
//! never pushes anything.
//!
//! A parent names its children by node and process: a node that restarts
//! picks a new random instance and is a new holder, whose request numbers
//! start again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use crate::cache::{CacheNode, CacheRoot, CacheTransport, HolderId, Stamped, Up};
use crate::link::PeerLinks;
use crate::peer::CacheEndpoint;
use crate::wire::CacheMessage;
use crate::AlignedBuf;

/// How a node finds its link to a peer, by the peer's name.
pub trait Peers: Send + Sync {
    fn get(&self, name: &str) -> Option<Arc<PeerLinks>>;
}

/// The children a parent heard from: each node's process a holder of its
/// own.
#[derive(Default)]
struct Children {
    /// By node, its processes' holder numbers.
    ids: HashMap<Arc<str>, Vec<(u64, HolderId)>>,
    /// By holder number, its node.
    names: Vec<Arc<str>>,
}

impl Children {
    fn id(&mut self, node: &str, instance: u64) -> HolderId {
        let known = self.ids.get(node).and_then(|processes| {
            processes
                .iter()
                .find(|(i, _)| *i == instance)
                .map(|&(_, id)| id)
        });
        if let Some(id) = known {
            return id;
        }
        let id = self.names.len() as HolderId;
        let name: Arc<str> = Arc::from(node);
        self.names.push(name.clone());
        self.ids.entry(name).or_default().push((instance, id));
        id
    }

    fn name(&self, id: HolderId) -> Option<Arc<str>> {
        self.names.get(id as usize).cloned()
    }
}

/// One cached vdisk's messages on this node's links: to its parent (none
/// at the root), and to the children it heard from.
pub struct LinkTransport {
    vdisk: u64,
    /// This process's instance, as its parent knows it.
    instance: u64,
    peers: Arc<dyn Peers>,
    parent: RwLock<Option<Arc<str>>>,
    children: Mutex<Children>,
}

impl LinkTransport {
    /// The transport of `vdisk` on this node, sending to `parent` (none at
    /// the root).
    pub fn new(vdisk: u64, parent: Option<&str>, peers: Arc<dyn Peers>) -> Arc<LinkTransport> {
        Arc::new(LinkTransport {
            vdisk,
            instance: rand::random(),
            peers,
            parent: RwLock::new(parent.map(Arc::from)),
            children: Mutex::new(Children::default()),
        })
    }

    /// The node this one sends its messages up to now.
    pub fn parent(&self) -> Option<Arc<str>> {
        self.parent
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Sends up to `parent` from now on: the caller tells its core to
    /// reattach ([`CacheNode::reattach`]).
    pub fn set_parent(&self, parent: &str) {
        *self.parent.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::from(parent));
    }

    fn child_id(&self, node: &str, instance: u64) -> HolderId {
        self.children
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .id(node, instance)
    }
}

impl CacheTransport for LinkTransport {
    fn to_parent(&self, msg: Up, at: u32, data: Option<Arc<AlignedBuf>>) {
        let Some(parent) = self.parent() else {
            return;
        };
        if let Some(links) = self.peers.get(&parent) {
            let message = CacheMessage::ToParent {
                instance: self.instance,
                msg,
                at,
            };
            links.send_cache(self.vdisk, message, data);
        }
    }

    fn to_child(&self, child: HolderId, msg: Stamped, data: Option<Arc<AlignedBuf>>) {
        let name = self
            .children
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .name(child);
        if let Some(links) = name.and_then(|name| self.peers.get(&name)) {
            links.send_cache(self.vdisk, CacheMessage::ToChild(msg), data);
        }
    }
}

/// Where a cached vdisk's messages go on this node: its root, or a caching
/// node.
pub enum CacheRole {
    Root {
        root: Arc<CacheRoot>,
        transport: Arc<LinkTransport>,
    },
    Node {
        node: Arc<CacheNode>,
        transport: Arc<LinkTransport>,
    },
}

impl CacheEndpoint for CacheRole {
    fn receive(&self, from: &str, message: CacheMessage, data: Option<Arc<AlignedBuf>>) {
        match (self, message) {
            (CacheRole::Root { root, transport }, CacheMessage::ToParent { instance, msg, at }) => {
                root.receive(transport.child_id(from, instance), msg, at, data);
            }
            (CacheRole::Node { node, transport }, CacheMessage::ToParent { instance, msg, at }) => {
                node.receive_from_child(transport.child_id(from, instance), msg, at, data);
            }
            (CacheRole::Node { node, transport }, CacheMessage::ToChild(stamped)) => {
                // Only the parent it sends to now speaks for the root.
                if transport.parent().as_deref() != Some(from) {
                    tracing::debug!(
                        from,
                        "cache message from a node that is not this node's parent dropped"
                    );
                    return;
                }
                let node = node.clone();
                tokio::spawn(async move { node.receive_from_parent(stamped, data).await });
            }
            (CacheRole::Root { .. }, CacheMessage::ToChild(_)) => {
                tracing::debug!(
                    from,
                    "cache message to a child dropped: the root has no parent"
                );
            }
        }
    }
}
