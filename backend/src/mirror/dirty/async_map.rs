use std::collections::VecDeque;
use std::io;
use std::ops::Range;
use std::sync::mpsc;

use tokio::runtime::Handle;
use tokio::task::JoinHandle;

use super::{DirtyGeometry, DirtyMapFile, DirtyRegions, MarkError};

/// What the mirror task asks of the map's writer thread, in order.
enum MapUpdate {
    /// Mark the range; answered once durable, with every mark before it.
    Mark { ticket: u64, offset: u64, len: u64 },
    /// Clear regions the other side has again (both sides flushed), in
    /// memory: the next sync writes them.
    Clear(Vec<u64>),
    /// Sync, marks or not.
    Flush,
}

/// The marks up to `ticket` (every one sent before it too) are durable, or
/// the sync that was to make them so failed.
#[derive(Debug)]
pub(in crate::mirror) struct MarksDone {
    pub ticket: u64,
    pub result: Result<(), String>,
}

/// A [`DirtyMapFile`] written by a thread of its own, so that the mirror
/// task never waits for a sync: it keeps the regions in memory and decides
/// from them, while the writer applies the same marks and clears in the
/// same order and syncs them. Marks sent while a sync runs go to disk
/// together in the next one (group commit): writes landing in many clean
/// regions at once cost one sync, not one each.
///
/// A write may be acknowledged only once its regions are durable: either
/// [`mark`](Self::mark) found them so, or the ticket it returned was
/// answered with success.
pub(in crate::mirror) struct AsyncDirtyMap {
    regions: DirtyRegions,
    updates: mpsc::Sender<MapUpdate>,
    writer: JoinHandle<()>,
    next_ticket: u64,
    /// Marks sent whose sync is not answered yet: their tickets, in order,
    /// and the regions they touch.
    syncing: VecDeque<(u64, Range<u64>)>,
    /// Regions whose sync failed: dirty in memory, perhaps not on disk,
    /// until a later sync succeeds (it rewrites them).
    unsynced: Vec<Range<u64>>,
}

impl AsyncDirtyMap {
    /// Starts the writer of `map` on `runtime`'s blocking threads; each
    /// answer to a mark goes to `done`, in ticket order.
    pub fn spawn(
        runtime: &Handle,
        vdisk: u64,
        map: DirtyMapFile,
        done: impl Fn(MarksDone) + Send + 'static,
    ) -> AsyncDirtyMap {
        let regions = map.regions().clone();
        let (updates, inbox) = mpsc::channel();
        let writer = runtime.spawn_blocking(move || write_map(vdisk, map, &inbox, done));
        AsyncDirtyMap {
            regions,
            updates,
            writer,
            next_ticket: 0,
            syncing: VecDeque::new(),
            unsynced: Vec::new(),
        }
    }

    /// The regions as the mirror task sees them: every region marked,
    /// durable or not yet, less the cleared ones.
    pub fn regions(&self) -> &DirtyRegions {
        &self.regions
    }

    pub fn geometry(&self) -> DirtyGeometry {
        self.regions.geometry()
    }

    /// Marks every region the `len` bytes at `offset` touch. `None`: they
    /// were all durable already, and the write may go on at once. A ticket:
    /// the write waits for its answer ([`synced`](Self::synced)).
    pub fn mark(&mut self, offset: u64, len: u64) -> Result<Option<u64>, MarkError> {
        let newly_dirty = self.regions.mark(offset, len)?.is_some();
        let touched = self.geometry().regions_of(offset, len);
        let durable = !newly_dirty
            && !self.syncing.iter().any(|(_, r)| overlaps(r, &touched))
            && !self.unsynced.iter().any(|r| overlaps(r, &touched));
        if durable {
            return Ok(None);
        }
        self.next_ticket += 1;
        let ticket = self.next_ticket;
        let sent = self.updates.send(MapUpdate::Mark {
            ticket,
            offset,
            len,
        });
        if sent.is_err() {
            self.unsynced.push(touched);
            return Err(MarkError::Io(io::Error::other(
                "the dirty map's writer stopped",
            )));
        }
        self.syncing.push_back((ticket, touched));
        Ok(Some(ticket))
    }

    /// Takes in the writer's answer for the marks up to `done.ticket`.
    pub fn synced(&mut self, done: &MarksDone) {
        while let Some((_, regions)) = self
            .syncing
            .pop_front_if(|(ticket, _)| *ticket <= done.ticket)
        {
            if done.result.is_err() {
                self.unsynced.push(regions);
            }
        }
        if done.result.is_ok() {
            // The sync rewrote whatever an earlier failure left.
            self.unsynced.clear();
        }
    }

    /// Clears `regions`, once both sides have them durably. Lazily: the
    /// clear reaches the disk with the next sync (a mark's, a
    /// [`flush`](Self::flush), the close); a region left dirty by a crash
    /// costs only a needless copy.
    pub fn clear(&mut self, regions: Vec<u64>) {
        let cleared: Vec<u64> = regions
            .into_iter()
            .filter(|&region| self.regions.clear(region))
            .collect();
        if !cleared.is_empty() {
            self.send(MapUpdate::Clear(cleared));
        }
    }

    /// Has the writer sync the clears made so far.
    pub fn flush(&mut self) {
        self.send(MapUpdate::Flush);
    }

    fn send(&self, update: MapUpdate) {
        if self.updates.send(update).is_err() {
            tracing::warn!("the dirty map's writer stopped: clears stay in memory only");
        }
    }

    /// Stops the writer once it has written everything sent to it, clears
    /// included, so that the map file may be opened again.
    pub async fn close(self) {
        drop(self.updates);
        if let Err(e) = self.writer.await {
            tracing::error!(error = %e, "the dirty map's writer failed");
        }
    }
}

/// The writer: applies every update queued, then syncs once if a mark or a
/// flush asks for it; at the end, syncs what is left.
fn write_map(
    vdisk: u64,
    mut map: DirtyMapFile,
    inbox: &mpsc::Receiver<MapUpdate>,
    done: impl Fn(MarksDone),
) {
    while let Ok(first) = inbox.recv() {
        let mut ticket = None;
        let mut refused = None;
        let mut sync = false;
        for update in std::iter::once(first).chain(inbox.try_iter()) {
            match update {
                MapUpdate::Mark {
                    ticket: t,
                    offset,
                    len,
                } => {
                    ticket = Some(t);
                    sync = true;
                    if let Err(e) = map.mark(offset, len) {
                        refused = Some(e.to_string());
                    }
                }
                MapUpdate::Clear(regions) => {
                    for region in regions {
                        map.clear(region);
                    }
                }
                MapUpdate::Flush => sync = true,
            }
        }
        if !sync {
            continue;
        }
        let result = match (refused, map.flush()) {
            (Some(why), _) => Err(why),
            (None, Err(e)) => {
                tracing::error!(vdisk, error = %e, "cannot sync the dirty map");
                Err(e.to_string())
            }
            (None, Ok(())) => Ok(()),
        };
        if let Some(ticket) = ticket {
            done(MarksDone { ticket, result });
        }
    }
    if let Err(e) = map.flush() {
        tracing::warn!(vdisk, error = %e, "cannot write the dirty map's last clears: the next start copies those regions again");
    }
}

fn overlaps(a: &Range<u64>, b: &Range<u64>) -> bool {
    a.start < b.end && b.start < a.end
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use tokio::sync::mpsc as async_mpsc;

    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    const R: u64 = 64 * 1024;

    fn geometry() -> Result<DirtyGeometry, crate::mirror::GeometryError> {
        DirtyGeometry::new(64 * R, R)
    }

    /// A map at `path` with its answers on a channel.
    fn spawn(
        path: &Path,
    ) -> Result<(AsyncDirtyMap, async_mpsc::UnboundedReceiver<MarksDone>), Box<dyn std::error::Error>>
    {
        let file = match path.exists() {
            true => DirtyMapFile::open(path, geometry()?)?,
            false => DirtyMapFile::create(path, geometry()?)?,
        };
        let (answers, inbox) = async_mpsc::unbounded_channel();
        let map = AsyncDirtyMap::spawn(&Handle::current(), 7, file, move |done| {
            let _ = answers.send(done);
        });
        Ok((map, inbox))
    }

    /// Waits for the answer that covers `ticket`, taking in every answer.
    async fn answered(
        map: &mut AsyncDirtyMap,
        inbox: &mut async_mpsc::UnboundedReceiver<MarksDone>,
        ticket: u64,
    ) -> Result<(), String> {
        loop {
            let Some(done) = inbox.recv().await else {
                return Err("the writer stopped".into());
            };
            map.synced(&done);
            if done.ticket >= ticket {
                return done.result;
            }
        }
    }

    fn on_disk(path: &Path) -> Result<Vec<u64>, Box<dyn std::error::Error>> {
        Ok(DirtyMapFile::open(path, geometry()?)?
            .regions()
            .iter()
            .collect())
    }

    #[tokio::test]
    async fn a_mark_is_free_only_once_its_sync_is_answered() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("map");
        let (mut map, mut inbox) = spawn(&path)?;
        let first = map
            .mark(3 * R, 4096)?
            .ok_or("a clean region needs a sync")?;
        // Dirty in memory already, not durable yet: a second write to it
        // must wait too.
        let second = map
            .mark(3 * R + 8192, 4096)?
            .ok_or("a region being synced needs a sync")?;
        assert!(second > first);
        answered(&mut map, &mut inbox, second).await?;
        assert_eq!(on_disk(&path)?, [3], "answered, so durable");
        assert_eq!(map.mark(3 * R, 4096)?, None, "durable: no sync");
        map.close().await;
        Ok(())
    }

    #[tokio::test]
    async fn marks_sent_together_are_answered_in_order_and_all_durable() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("map");
        let (mut map, mut inbox) = spawn(&path)?;
        let mut last = 0;
        for region in 0..40 {
            last = map.mark(region * R, 1)?.ok_or("clean")?;
        }
        let mut answers = Vec::new();
        while answers.last() != Some(&last) {
            let done = inbox.recv().await.ok_or("the writer stopped")?;
            done.result.clone()?;
            map.synced(&done);
            answers.push(done.ticket);
        }
        assert!(answers.windows(2).all(|w| w[0] < w[1]), "{answers:?}");
        assert!(answers.len() <= 40, "one answer per sync, not per mark");
        assert_eq!(on_disk(&path)?, (0..40).collect::<Vec<_>>());
        map.close().await;
        Ok(())
    }

    #[tokio::test]
    async fn a_failed_sync_leaves_its_regions_to_be_marked_again() -> TestResult {
        let dir = tempfile::tempdir()?;
        let (mut map, mut inbox) = spawn(&dir.path().join("map"))?;
        let ticket = map.mark(5 * R, 1)?.ok_or("clean")?;
        // The writer's own answer is drained; a failure is fed in its place.
        answered(&mut map, &mut inbox, ticket).await?;
        let ticket = map.mark(6 * R, 1)?.ok_or("clean")?;
        map.synced(&MarksDone {
            ticket,
            result: Err("fsync failed".into()),
        });
        assert!(map.mark(6 * R, 1)?.is_some(), "not durable: marked again");
        assert_eq!(map.mark(5 * R, 1)?, None, "an older region stays durable");
        Ok(())
    }

    #[tokio::test]
    async fn clears_reach_the_file_by_the_time_it_is_closed() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("map");
        let (mut map, mut inbox) = spawn(&path)?;
        let ticket = map.mark(R, 2 * R)?.ok_or("clean")?;
        answered(&mut map, &mut inbox, ticket).await?;
        map.clear(vec![1]);
        assert_eq!(map.regions().iter().collect::<Vec<_>>(), [2]);
        map.close().await;
        assert_eq!(on_disk(&path)?, [2]);
        // Reopened, a cleared region needs a sync again.
        let (mut map, _inbox) = spawn(&path)?;
        assert!(map.mark(R, 1)?.is_some());
        assert_eq!(map.mark(2 * R, 1)?, None);
        Ok(())
    }

    #[tokio::test]
    async fn a_range_past_the_end_is_refused_and_marks_nothing() -> TestResult {
        let dir = tempfile::tempdir()?;
        let (mut map, _inbox) = spawn(&dir.path().join("map"))?;
        assert!(matches!(map.mark(64 * R - 1, 2), Err(MarkError::Range(_))));
        assert_eq!(map.regions().count(), 0);
        Ok(())
    }
}
