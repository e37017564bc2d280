use std::sync::atomic::AtomicU64;
use std::sync::{Arc, PoisonError, RwLock};

use prometheus_client::metrics::histogram::Histogram;

use crate::tail::Tail;

/// What one path has done for a vdisk, for status views and tests.
#[derive(Debug, Default)]
pub struct PathCounters {
    /// Requests this path completed.
    pub completed: AtomicU64,
    /// Attempts this path refused, lost or left unanswered.
    pub failed: AtomicU64,
}

/// The counters of a vdisk's current paths: one entry per path, in
/// preference order.
pub type PathsCounters = Arc<[(String, PathCounters)]>;

/// A vdisk's routing counters. They live as long as the vdisk, across
/// reconfigurations: a new mapping replaces the per-path counters, the
/// vdisk-wide ones keep counting.
#[derive(Debug)]
pub struct VdiskCounters {
    paths: RwLock<PathsCounters>,
    /// Attempts that resent a request after another attempt failed, or
    /// after it was held for a new mapping.
    pub resends: AtomicU64,
    /// Requests that completed only after being resent: each lived through
    /// a failover, a refusal or a reconfiguration, and the application saw
    /// a delay.
    pub failovers: AtomicU64,
    /// Seconds from submission to completion of those requests: what a
    /// failover costs the application.
    pub failover_stall: Histogram,
    /// Requests that failed on every path, or were held, for the I/O
    /// timeout.
    pub errors: AtomicU64,
}

impl VdiskCounters {
    /// The counters of the current mapping's paths.
    pub fn paths(&self) -> PathsCounters {
        self.paths
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Counters for a new vdisk on `paths`.
    pub(super) fn new(paths: &[Arc<dyn Tail>]) -> Self {
        VdiskCounters {
            paths: RwLock::new(path_counters(paths)),
            resends: AtomicU64::new(0),
            failovers: AtomicU64::new(0),
            failover_stall: crate::IoMetrics::latency_histogram(),
            errors: AtomicU64::new(0),
        }
    }

    pub(super) fn set_paths(&self, paths: PathsCounters) {
        *self.paths.write().unwrap_or_else(PoisonError::into_inner) = paths;
    }
}

/// Fresh counters for `paths`, in their order.
pub(super) fn path_counters(paths: &[Arc<dyn Tail>]) -> PathsCounters {
    paths
        .iter()
        .map(|p| (p.name().to_owned(), PathCounters::default()))
        .collect()
}
