//! The mirror shell's records in the store: that the tracked side's copy
//! is stale (before a write it misses is acknowledged) or current again.

use std::time::Instant;

use crate::mirror::{Action, Recorded};

use super::{Event, MirrorTask, RECORD_RETRY};

impl MirrorTask {
    /// Starts the next record of the tracked side, if none is out.
    pub(super) fn start_record(&mut self) {
        if self.recording {
            return;
        }
        let Some(current) = self.records.pop_front() else {
            return;
        };
        let Some(recorder) = self.recorder.clone() else {
            // Untracked mirrors ask for no record; if one is asked anyway,
            // nobody vouches for the side, which is what stale means.
            let _ = self.events.send(Event::Recorded {
                current,
                result: Err("no store to record the mirror in".into()),
            });
            self.recording = true;
            return;
        };
        self.recording = true;
        let events = self.events.clone();
        tokio::spawn(async move {
            let result = recorder.record(current).await;
            let _ = events.send(Event::Recorded { current, result });
        });
    }

    pub(super) fn recorded(&mut self, current: bool, result: Result<(), String>) -> Vec<Action> {
        self.recording = false;
        match (current, result) {
            (false, Ok(())) => {
                tracing::warn!(
                    vdisk = self.vdisk,
                    "the store records the mirror's copy stale: it cannot take over until resynced"
                );
                self.replica.stale_recorded()
            }
            (false, Err(why)) => {
                if self.replica.recorded() != Recorded::Unrecordable {
                    tracing::error!(
                        vdisk = self.vdisk,
                        "the store cannot record the mirror stale ({why}): requests fail until it can, as this node may no longer be the primary"
                    );
                }
                self.record_retry_at = Some(Instant::now() + RECORD_RETRY);
                self.replica.stale_record_failed()
            }
            (true, Ok(())) => {
                tracing::info!(
                    vdisk = self.vdisk,
                    "the store records the mirror's copy current"
                );
                self.replica.current_recorded();
                Vec::new()
            }
            (true, Err(why)) => {
                tracing::warn!(
                    vdisk = self.vdisk,
                    "the store cannot record the mirror current yet ({why})"
                );
                self.replica.current_record_failed();
                self.record_retry_at = Some(Instant::now() + RECORD_RETRY);
                Vec::new()
            }
        }
    }
}
