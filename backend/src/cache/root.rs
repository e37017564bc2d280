//! The root's shell: a [`Directory`] driven by messages from the children,
//! the root node's own writes, and time, with the vdisk's tail underneath.
//! Grants read their extent from the tail; writes wait for the
//! directory's recalls, then land on the tail, and only then are they
//! answered.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::{
    CacheTransport, Directory, DirectoryAction, Down, Extent, HolderId, LeaseConfig, Millis, Up,
    Writer,
};
use crate::tail::{BlockOp, Tail};
use crate::{AlignedBuf, IoError};

/// How long an extent the tail refused to take stays refused before the
/// write is tried again: the application sees a delay, never an error.
const APPLY_RETRY: Duration = Duration::from_millis(100);

/// The root of one cached vdisk on this node.
pub struct CacheRoot {
    tail: Arc<dyn Tail>,
    epoch: u64,
    extent_bytes: u64,
    transport: Arc<dyn CacheTransport>,
    started: Instant,
    state: Mutex<RootState>,
}

struct RootState {
    directory: Directory,
    /// The data of the writes not yet applied: where in the extent, and
    /// the bytes.
    writes: BTreeMap<Writer, (u32, Arc<AlignedBuf>)>,
    /// The root node's own writes waiting to be applied.
    local: HashMap<u64, oneshot::Sender<()>>,
    next_local: u64,
}

impl CacheRoot {
    pub fn new(
        tail: Arc<dyn Tail>,
        epoch: u64,
        extent_bytes: u64,
        config: LeaseConfig,
        transport: Arc<dyn CacheTransport>,
    ) -> Arc<CacheRoot> {
        Arc::new(CacheRoot {
            tail,
            epoch,
            extent_bytes,
            transport,
            started: Instant::now(),
            state: Mutex::new(RootState {
                directory: Directory::new(epoch, config),
                writes: BTreeMap::new(),
                local: HashMap::new(),
                next_local: 1,
            }),
        })
    }

    /// A message from child `from`; a write's data goes at byte `at` of
    /// its extent.
    pub fn receive(
        self: &Arc<Self>,
        from: HolderId,
        msg: Up,
        at: u32,
        data: Option<Arc<AlignedBuf>>,
    ) {
        if let Err(why) = check_write(msg, at, data.as_deref(), self.extent_bytes) {
            tracing::warn!(from, ?msg, "cache root: message dropped: {why}");
            return;
        }
        let actions = {
            let mut state = self.lock();
            let actions = state.directory.receive(self.now(), from, msg);
            // The data is kept for as long as the write waits: not at all
            // for a resent write that was answered already.
            if let (Up::Write { id, extent, .. }, Some(data)) = (msg, data) {
                let writer = Writer::Holder { holder: from, id };
                if state.directory.queued(extent, writer) {
                    state.writes.entry(writer).or_insert((at, data));
                }
            }
            actions
        };
        self.run(actions);
    }

    /// Writes `data` at `offset` of the vdisk, from the root node itself:
    /// each extent's part once every copy of it is recalled.
    pub async fn write(self: &Arc<Self>, offset: u64, data: &[u8]) -> Result<(), IoError> {
        write_parts(offset, data, self.extent_bytes, |extent, at, part| {
            let (tx, rx) = oneshot::channel();
            let actions = {
                let mut state = self.lock();
                let id = state.next_local;
                state.next_local += 1;
                state.local.insert(id, tx);
                state.writes.insert(Writer::Local { id }, (at, part));
                state.directory.write_local(self.now(), id, extent)
            };
            self.run(actions);
            rx
        })
        .await
    }

    /// Time passes: leases expire, recalls are sent again.
    pub fn tick(self: &Arc<Self>) {
        let actions = self.lock().directory.tick(self.now());
        self.run(actions);
    }

    fn run(self: &Arc<Self>, actions: Vec<DirectoryAction>) {
        for action in actions {
            match action {
                DirectoryAction::Send { to, msg } => match msg.msg {
                    Down::Granted { extent, .. } => {
                        let root = self.clone();
                        tokio::spawn(async move {
                            match root.read_extent(extent).await {
                                Ok(data) => root.transport.to_child(to, msg, Some(data)),
                                // Not sent: the child asks again.
                                Err(error) => {
                                    tracing::warn!(extent, %error, "cache root: cannot read an extent to grant")
                                }
                            }
                        });
                    }
                    _ => self.transport.to_child(to, msg, None),
                },
                DirectoryAction::Apply { extent, writer } => {
                    let write = self.lock().writes.get(&writer).cloned();
                    let Some((at, data)) = write else {
                        tracing::error!(
                            extent,
                            ?writer,
                            "cache root: a write to apply has no data"
                        );
                        continue;
                    };
                    let root = self.clone();
                    tokio::spawn(async move { root.apply(extent, writer, at, data).await });
                }
                DirectoryAction::LocalWritten { id, .. } => {
                    if let Some(done) = self.lock().local.remove(&id) {
                        let _ = done.send(());
                    }
                }
            }
        }
    }

    /// Writes `writer`'s data to the tail until the tail takes it, then
    /// tells the directory.
    async fn apply(
        self: Arc<Self>,
        extent: Extent,
        writer: Writer,
        at: u32,
        data: Arc<AlignedBuf>,
    ) {
        let offset = extent * self.extent_bytes + u64::from(at);
        let op = BlockOp::Write {
            offset,
            len: data.len() as u32,
            fua: false,
        };
        while let Err(error) = self.tail.execute(self.epoch, op, Some(data.clone())).await {
            tracing::warn!(extent, %error, "cache root: the tail refused a write; trying again");
            tokio::time::sleep(APPLY_RETRY).await;
        }
        let actions = {
            let mut state = self.lock();
            state.writes.remove(&writer);
            state.directory.applied(self.now(), extent)
        };
        self.run(actions);
    }

    async fn read_extent(&self, extent: Extent) -> Result<Arc<AlignedBuf>, String> {
        let op = BlockOp::Read {
            offset: extent * self.extent_bytes,
            len: self.extent_bytes as u32,
        };
        match self.tail.execute(self.epoch, op, None).await {
            Ok(Some(data)) => Ok(Arc::new(data)),
            Ok(None) => Err("the tail answered a read without data".to_owned()),
            Err(error) => Err(error.to_string()),
        }
    }

    fn now(&self) -> Millis {
        self.started.elapsed().as_millis() as Millis
    }

    fn lock(&self) -> MutexGuard<'_, RootState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Checks that a write from a child carries data that stays inside its
/// extent: the directory applies it as that extent's, and nothing else.
pub(super) fn check_write(
    msg: Up,
    at: u32,
    data: Option<&AlignedBuf>,
    extent_bytes: u64,
) -> Result<(), &'static str> {
    match (msg, data) {
        (Up::Write { .. }, None) => Err("a write without data"),
        (Up::Write { .. }, Some(data)) if u64::from(at) + data.len() as u64 > extent_bytes => {
            Err("a write past the end of its extent")
        }
        (Up::Write { .. }, Some(_)) | (_, None) => Ok(()),
        (_, Some(_)) => Err("data with a message that carries none"),
    }
}

/// Writes `data` at `offset` of the vdisk one extent's part at a time:
/// `start` hands a part (its extent, where in it, its bytes) to a core and
/// returns what is told once the part is applied. Ends once every part is.
pub(super) async fn write_parts(
    offset: u64,
    data: &[u8],
    extent_bytes: u64,
    mut start: impl FnMut(Extent, u32, Arc<AlignedBuf>) -> oneshot::Receiver<()>,
) -> Result<(), IoError> {
    let mut done = Vec::new();
    for Part { extent, at, bytes } in split(offset, data.len(), extent_bytes) {
        let mut part = AlignedBuf::new(bytes.len())?;
        part.copy_from_slice(&data[bytes]);
        done.push(start(extent, at, Arc::new(part)));
    }
    for rx in done {
        rx.await.map_err(|_| IoError::ShuttingDown)?;
    }
    Ok(())
}

/// The parts of `len` bytes at `offset` of the vdisk that fall in each
/// extent: the extent, where in it, and where in the bytes.
pub(super) fn split(offset: u64, len: usize, extent_bytes: u64) -> Vec<Part> {
    let mut parts = Vec::new();
    let mut done = 0usize;
    while done < len {
        let at = offset + done as u64;
        let (extent, within) = (at / extent_bytes, at % extent_bytes);
        let part = ((extent_bytes - within) as usize).min(len - done);
        parts.push(Part {
            extent,
            at: within as u32,
            bytes: done..done + part,
        });
        done += part;
    }
    parts
}

/// One extent's part of a request.
pub(super) struct Part {
    pub extent: Extent,
    /// Where in the extent it starts.
    pub at: u32,
    /// Where in the request's bytes it is.
    pub bytes: std::ops::Range<usize>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_must_bring_its_data_and_stay_in_its_extent() {
        let write = Up::Write {
            id: 1,
            extent: 3,
            oldest: 1,
        };
        let data = AlignedBuf::new(4096).unwrap();
        assert_eq!(check_write(write, 0, Some(&data), 8192), Ok(()));
        assert_eq!(check_write(write, 4096, Some(&data), 8192), Ok(()));
        assert!(check_write(write, 4097, Some(&data), 8192).is_err());
        assert!(check_write(write, 0, None, 8192).is_err());
        let get = Up::Get { id: 1, extent: 3 };
        assert_eq!(check_write(get, 0, None, 8192), Ok(()));
        assert!(check_write(get, 0, Some(&data), 8192).is_err());
    }

    #[test]
    fn a_request_is_split_at_extent_boundaries() {
        let parts: Vec<(Extent, u32, std::ops::Range<usize>)> = split(12288, 12288, 8192)
            .into_iter()
            .map(|p| (p.extent, p.at, p.bytes))
            .collect();
        assert_eq!(parts, [(1, 4096, 0..4096), (2, 0, 4096..12288)]);
    }
}
