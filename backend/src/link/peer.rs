use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::watch;

use super::{HealthConfig, Link, LinkError, Reply};
use crate::wire::Op;
use crate::AlignedBuf;

/// A peer node reached over one link per network (seed 003's redundant
/// CTI paths). Calls are striped across the links that are up; a call whose
/// link fails under it moves to the next link that is up, so the loss of one
/// link costs a resend, never a failed call, while another remains.
pub struct PeerLinks {
    name: String,
    links: Vec<Link>,
    next: AtomicUsize,
    up: watch::Receiver<bool>,
}

impl PeerLinks {
    /// Starts a link to each of `addrs` on the current tokio runtime.
    pub fn spawn(name: &str, addrs: &[SocketAddr], config: HealthConfig) -> PeerLinks {
        let links: Vec<Link> = addrs.iter().map(|&a| Link::spawn(a, config)).collect();
        let (up_tx, up) = watch::channel(false);
        let up_tx = Arc::new(up_tx);
        let states: Vec<watch::Receiver<bool>> = links.iter().map(Link::watch).collect();
        // One forwarder per link keeps "any link up" current; they end when
        // their link's task does.
        for mut state in states.iter().cloned() {
            let up_tx = up_tx.clone();
            let states = states.clone();
            let name = name.to_owned();
            tokio::spawn(async move {
                while state.changed().await.is_ok() {
                    let any_up = states.iter().any(|s| *s.borrow());
                    let changed =
                        up_tx.send_if_modified(|up| std::mem::replace(up, any_up) != any_up);
                    if changed {
                        if any_up {
                            tracing::info!(peer = %name, "peer reachable");
                        } else {
                            tracing::warn!(peer = %name, "peer unreachable: every link is down");
                        }
                    }
                }
            });
        }
        PeerLinks {
            name: name.to_owned(),
            links,
            next: AtomicUsize::new(0),
            up,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn links(&self) -> &[Link] {
        &self.links
    }

    /// Whether any link to the peer is up.
    pub fn is_up(&self) -> bool {
        *self.up.borrow()
    }

    /// Follows whether any link is up.
    pub fn watch(&self) -> watch::Receiver<bool> {
        self.up.clone()
    }

    /// Sends one request on the next link that is up, and on the others in
    /// turn if a link fails under it, as long as they were heard lately (a
    /// cut that took one link often took its twins too, and waiting for
    /// each to be declared down would hold the request back from the next
    /// path). Fails with [`LinkError::Down`] when no link could carry it.
    ///
    /// A request resent on another link may have reached the peer on the
    /// first one too: requests are idempotent while pending (a write carries
    /// the same data to the same offset), so running twice is harmless.
    pub async fn call(
        &self,
        vdisk: u64,
        epoch: u64,
        op: Op,
        payload: Option<Arc<AlignedBuf>>,
    ) -> Result<Reply, LinkError> {
        let count = self.links.len();
        let first = self.next.fetch_add(1, Ordering::Relaxed);
        let mut failed = false;
        for i in 0..count {
            let link = &self.links[(first + i) % count];
            let usable = if failed {
                link.is_fresh()
            } else {
                link.is_up()
            };
            if !usable {
                continue;
            }
            match link.call(vdisk, epoch, op, payload.clone()).await {
                Err(LinkError::Down) => failed = true,
                other => return other,
            }
        }
        Err(LinkError::Down)
    }
}
