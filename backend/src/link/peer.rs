use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::Instant;

use identity::rustls::ClientConfig;
use tokio::sync::watch;

use super::{HealthConfig, Link, LinkError, Reply, STRAGGLE};
use crate::wire::{CacheMessage, Op, Status};
use crate::AlignedBuf;

/// A peer node reached over one link per network (seed 003's redundant
/// CTI paths). Calls are striped across the links that are up; a call whose
/// link fails under it moves to the next link that is up, so the loss of one
/// link costs a resend, never a failed call, while another remains.
///
/// Membership has the last word (seed 003's CMM): a peer the cluster
/// declared down is unreachable at once, whatever its links say, and its
/// link addresses are whatever it last announced.
pub struct PeerLinks {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    config: HealthConfig,
    /// What the peer is dialled with: its certificate must name it.
    tls: Arc<ClientConfig>,
    links: RwLock<Arc<[Link]>>,
    member: AtomicBool,
    next: AtomicUsize,
    up: watch::Sender<bool>,
}

impl PeerLinks {
    /// A peer not known to be a live member yet: no links, unreachable
    /// until [`PeerLinks::set_membership`] says otherwise. Its links dial
    /// with `tls` ([`identity::NodeIdentity::client_config`] for `name`).
    pub fn new(name: &str, config: HealthConfig, tls: Arc<ClientConfig>) -> PeerLinks {
        let (up, _) = watch::channel(false);
        PeerLinks {
            inner: Arc::new(Inner {
                name: name.to_owned(),
                config,
                tls,
                links: RwLock::new(Arc::from(Vec::new())),
                member: AtomicBool::new(false),
                next: AtomicUsize::new(0),
                up,
            }),
        }
    }

    /// Follows the peer's membership: `Some(addrs)` while it is a live
    /// member announcing those link addresses (links start, or are
    /// replaced if the addresses changed, on the current tokio runtime);
    /// `None` once it is down, which makes it unreachable at once so that
    /// its requests move to another path.
    pub fn set_membership(&self, links: Option<&[SocketAddr]>) {
        let inner = &self.inner;
        match links {
            Some(addrs) => {
                let current: Vec<SocketAddr> = inner.links().iter().map(Link::addr).collect();
                if current != addrs {
                    let links: Vec<Link> = addrs
                        .iter()
                        .map(|&addr| Link::spawn(addr, inner.config, inner.tls.clone()))
                        .collect();
                    for link in &links {
                        follow(Arc::downgrade(inner), link.watch());
                    }
                    tracing::info!(peer = %inner.name, links = ?addrs, "peer links");
                    *inner.links.write().unwrap_or_else(|p| p.into_inner()) = Arc::from(links);
                }
                inner.member.store(true, Ordering::Relaxed);
            }
            None => inner.member.store(false, Ordering::Relaxed),
        }
        inner.refresh();
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The current links, one per announced address.
    pub fn links(&self) -> Arc<[Link]> {
        self.inner.links()
    }

    /// Whether the peer is a live member with any link up.
    pub fn is_up(&self) -> bool {
        *self.inner.up.borrow()
    }

    /// Follows whether the peer is reachable.
    pub fn watch(&self) -> watch::Receiver<bool> {
        self.inner.up.subscribe()
    }

    /// Sends one request on the next link that is up, and on the others in
    /// turn if a link fails under it, as long as they were heard lately (a
    /// cut that took one link often took its twins too, and waiting for
    /// each to be declared down would hold the request back from the next
    /// path). Fails with [`LinkError::Down`] when no link could carry it,
    /// or at once if the peer is not a live member.
    ///
    /// A request resent on another link may have reached the peer on the
    /// first one too: requests are idempotent while pending (a write carries
    /// the same data to the same offset), so running twice is harmless. But
    /// the copy lost with the first link must not start after the request
    /// completes, when a newer write may follow it: before the resend, the
    /// next link fences the peer (it closes this node's other connections
    /// and answers once nothing they carried runs). If no link can, the
    /// call fails with [`LinkError::Lost`], saying until when the lost copy
    /// may still start.
    pub async fn call(
        &self,
        vdisk: u64,
        epoch: u64,
        op: Op,
        payload: Option<Arc<AlignedBuf>>,
    ) -> Result<Reply, LinkError> {
        if !self.inner.member.load(Ordering::Relaxed) {
            return Err(LinkError::Down);
        }
        let links = self.inner.links();
        let count = links.len();
        let first = self.inner.next.fetch_add(1, Ordering::Relaxed);
        let mut failed = false;
        // Until when copies lost on earlier links may start, if unfenced.
        let mut unfenced: Option<Instant> = None;
        for i in 0..count {
            let link = &links[(first + i) % count];
            let usable = if failed {
                link.is_fresh()
            } else {
                link.is_up()
            };
            if !usable {
                continue;
            }
            if unfenced.is_some() {
                if !fence(link).await {
                    continue;
                }
                unfenced = None;
            }
            match link.call(vdisk, epoch, op, payload.clone()).await {
                Err(LinkError::Down) => failed = true,
                Err(LinkError::Lost { settles_at }) => {
                    failed = true;
                    unfenced = Some(unfenced.map_or(settles_at, |at| at.max(settles_at)));
                }
                other => return other,
            }
        }
        Err(match unfenced {
            Some(settles_at) => LinkError::Lost { settles_at },
            None => LinkError::Down,
        })
    }
}

impl PeerLinks {
    /// Sends a cache message about `vdisk` on the next link that is up,
    /// if the peer is a live member: one way, and dropped if no link is up
    /// (the cache's cores send again what is lost).
    pub fn send_cache(&self, vdisk: u64, message: CacheMessage, data: Option<Arc<AlignedBuf>>) {
        if !self.inner.member.load(Ordering::Relaxed) {
            return;
        }
        let links = self.inner.links();
        let first = self.inner.next.fetch_add(1, Ordering::Relaxed);
        let up = (0..links.len())
            .map(|i| &links[(first + i) % links.len()])
            .find(|link| link.is_up());
        if let Some(link) = up {
            link.send_cache(vdisk, message, data);
        }
    }
}

/// Fences the peer on `link`: once answered, nothing this node sent on its
/// other connections to the peer runs there or can start. Not worth
/// waiting for longer than a lost request may start anyway.
async fn fence(link: &Link) -> bool {
    let fenced = tokio::time::timeout(STRAGGLE, link.call(0, 0, Op::Fence, None)).await;
    matches!(
        fenced,
        Ok(Ok(Reply {
            status: Status::Ok,
            ..
        }))
    )
}

impl Inner {
    fn links(&self) -> Arc<[Link]> {
        self.links.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Recomputes reachability: a live member with any link up. Logs
    /// changes.
    fn refresh(&self) {
        let member = self.member.load(Ordering::Relaxed);
        let reachable = member && self.links().iter().any(Link::is_up);
        let changed = self
            .up
            .send_if_modified(|up| std::mem::replace(up, reachable) != reachable);
        if !changed {
            return;
        }
        if reachable {
            tracing::info!(peer = %self.name, "peer reachable");
        } else if member {
            tracing::warn!(peer = %self.name, "peer unreachable: every link is down");
        } else {
            tracing::warn!(peer = %self.name, "peer unreachable: not a live member");
        }
    }
}

/// Recomputes the peer's reachability whenever one of its links changes
/// state; ends with the link's task, or with the peer.
fn follow(peer: Weak<Inner>, mut link: watch::Receiver<bool>) {
    tokio::spawn(async move {
        while link.changed().await.is_ok() {
            match peer.upgrade() {
                Some(peer) => peer.refresh(),
                None => return,
            }
        }
    });
}
