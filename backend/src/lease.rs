use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a confirmation from the store's majority lets a node do I/O on
/// its tails, counted from when it asked (see [`Lease`]).
pub const LEASE: Duration = Duration::from_secs(4);

/// How long after the store committed a change that takes a tail from a
/// node (a move's begin) no lease of that node, granted before, can still
/// run: [`LEASE`], 5% for the two clocks' rates, and the time a started
/// I/O takes to finish.
pub const LEASE_RUN_OUT: Duration =
    Duration::from_millis(LEASE.as_millis() as u64 * 105 / 100 + 500);

/// A node's right to do I/O on its own tails, local requests and peers'
/// alike. A node cut off from the store's majority must stop before the
/// majority gives its tails to another node: it holds the right only until
/// [`LEASE`] after it last asked the majority for a confirmation that came
/// (a read index, which also brought it every change committed before it
/// asked). The majority, for its part, lets a move that a node did not
/// acknowledge take effect only [`LEASE_RUN_OUT`] after the move began:
/// by then, that node has either seen the move or stopped.
///
/// Clones share the lease. A node without a replicated store holds an
/// unbounded one: nothing else can take its tails.
#[derive(Clone, Debug)]
pub struct Lease(Option<Arc<Mutex<Option<Instant>>>>);

impl Lease {
    /// Held for good: a node that has no replicated store to answer to.
    pub fn unbounded() -> Lease {
        Lease(None)
    }

    /// Not held until [`Lease::confirmed`].
    pub fn expired() -> Lease {
        Lease(Some(Arc::default()))
    }

    /// The majority confirmed a request made at `asked_at`: held until
    /// [`LEASE`] after it, unless held longer already.
    pub fn confirmed(&self, asked_at: Instant) {
        if let Some(until) = &self.0 {
            let mut until = until.lock().unwrap_or_else(|p| p.into_inner());
            let new = asked_at + LEASE;
            if until.is_none_or(|at| at < new) {
                *until = Some(new);
            }
        }
    }

    /// Whether the node may do I/O on its tails now.
    pub fn is_held(&self) -> bool {
        self.is_held_at(Instant::now())
    }

    pub fn is_held_at(&self, now: Instant) -> bool {
        match &self.0 {
            None => true,
            Some(until) => until
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_some_and(|at| now < at),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_is_held_from_a_confirmation_until_lease_after_it_was_asked() {
        let lease = Lease::expired();
        let t = Instant::now();
        assert!(!lease.is_held_at(t));
        lease.confirmed(t);
        assert!(lease.is_held_at(t + LEASE - Duration::from_millis(1)));
        assert!(!lease.is_held_at(t + LEASE));
        // A late answer to an older request shortens nothing.
        lease.confirmed(t - Duration::from_secs(1));
        assert!(lease.is_held_at(t + LEASE - Duration::from_millis(1)));
        let shared = lease.clone();
        lease.confirmed(t + Duration::from_secs(1));
        assert!(shared.is_held_at(t + LEASE));
    }

    #[test]
    fn an_unbounded_lease_is_always_held() {
        assert!(Lease::unbounded().is_held_at(Instant::now() + Duration::from_secs(1 << 20)));
    }
}
