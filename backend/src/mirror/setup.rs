//! What a mirror starts from and what it shows: its setup and timing, the
//! store it records its copy in, its status and a verify's findings.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use super::sides::AttemptError;
use super::{DirtyMapFile, PacerConfig, Recorded, ReplicaConfig, SideState};
use crate::tail::Tail;

/// What a record of the mirror's copy resolves to: the store's refusal or
/// error, as text for the log.
pub type RecordFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// Tells the configuration store what the tracked side's copy is. The
/// backend knows no store: the daemon implements this.
pub trait CopyRecorder: Send + Sync {
    /// Records the copy current (`true`: it holds every acknowledged
    /// write) or stale.
    fn record(&self, current: bool) -> RecordFuture;
}

/// Timing of a mirror.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MirrorConfig {
    /// A side that has not answered a request for this long is lost.
    pub request_timeout: Duration,
    /// How often a lost side is asked whether it is back.
    pub probe_interval: Duration,
    /// While both sides are in sync, a region not written for this long
    /// (and at most twice as long) is cleared from the dirty map.
    pub activity_sweep: Duration,
    pub pacer: PacerConfig,
}

impl Default for MirrorConfig {
    fn default() -> Self {
        MirrorConfig {
            request_timeout: Duration::from_secs(5),
            probe_interval: Duration::from_secs(1),
            activity_sweep: Duration::from_secs(2),
            pacer: PacerConfig::default(),
        }
    }
}

/// Everything a mirror starts from.
pub struct MirrorSetup {
    /// The vdisk's id, for logs.
    pub vdisk: u64,
    pub epoch: u64,
    /// Side A's path, then side B's.
    pub sides: [Arc<dyn Tail>; 2],
    pub dirty: DirtyMapFile,
    /// The sides as the store and the dirty map left them.
    pub states: [SideState; 2],
    /// Whether the store calls the tracked side's copy current.
    pub store_current: bool,
    pub replica: ReplicaConfig,
    pub config: MirrorConfig,
    /// Required when `replica.tracked` names a side.
    pub recorder: Option<Arc<dyn CopyRecorder>>,
    /// The stale side lacks an unknown part (a new or replaced disk): every
    /// region is marked dirty at start, and a resync copies all of it.
    pub full: bool,
}

/// What an admin (`ublkvd status`, `ublkvd resync`) sees of a mirror.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MirrorStatus {
    /// Side A's and side B's state, in that order.
    pub sides: [SideState; 2],
    /// What the store says of the tracked side, as far as known here.
    pub recorded: Recorded,
    pub region_size: u64,
    /// What a resync has left to copy: the regions of the resync under
    /// way, or those recorded dirty while a side is away; 0 in sync (the
    /// regions written lately, kept in the map in case of a crash, are on
    /// both sides).
    pub dirty_bytes: u64,
    /// Bytes the resync copied since the mirror started.
    pub resynced_bytes: u64,
    /// Bytes per second the resync copied lately; 0 when it is not running.
    pub rate: u64,
    /// The resync under way copies the whole device.
    pub full: bool,
}

/// The outcome of an online comparison of both copies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub regions: u64,
    pub region_size: u64,
    /// Regions whose copies differ although neither is recorded dirty.
    pub differing: Vec<u64>,
    /// Regions recorded dirty: they differ until resynced, so they were
    /// not compared.
    pub skipped_dirty: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("both copies must be reachable to compare them; the {0} side is not")]
    SideDown(String),
    #[error("reading the {side} side failed: {why}")]
    SideFailed { side: String, why: AttemptError },
    #[error("a verify of this mirror is already running")]
    AlreadyRunning,
    #[error("vdisk is shutting down")]
    ShuttingDown,
}
