//! Holding this node's lease ([`backend::Lease`]) from the store's majority.

use std::sync::Arc;
use std::time::{Duration, Instant};

use backend::{Lease, LEASE};
use configdb::Store;
use tokio::sync::watch;

/// How often the lease is renewed: a few times per [`LEASE`], so that a
/// confirmation or two may be lost (a leader election takes about one)
/// without the node stopping.
const RENEW: Duration = Duration::from_secs(1);

/// Asks the store's majority for a confirmation every [`RENEW`], until
/// `stop`; each that comes holds `lease` until [`LEASE`] after it was
/// asked. Logs when the lease is lost and found again.
pub async fn hold(store: Arc<Store>, lease: Lease, mut stop: watch::Receiver<bool>) {
    let mut held = false;
    loop {
        let asked = Instant::now();
        match store.confirm(LEASE / 2).await {
            Ok(()) => {
                lease.confirmed(asked);
                if !held {
                    tracing::info!(
                        "lease from the store's majority held: this node serves its tails"
                    );
                    held = true;
                }
            }
            Err(e) if held && !lease.is_held() => {
                tracing::error!("lease from the store's majority lost ({e}): this node touches none of its tails until the majority answers again");
                held = false;
            }
            Err(e) => tracing::debug!("lease not renewed: {e}"),
        }
        let next = tokio::time::Instant::from_std(asked + RENEW);
        tokio::select! {
            () = tokio::time::sleep_until(next) => {}
            _ = stop.wait_for(|&s| s) => return,
        }
    }
}
