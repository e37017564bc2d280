use std::rc::Rc;

use backend::{BlockBackend, IoError, RegisteredBuf, RegisteredIo, Ring};
use libublk::helpers::IoBuf;
use libublk::io::{UblkDev, UblkQueue};
use libublk::uring_async::{ublk_submit_sqe_async, wait_and_handle_io_events};
use libublk::{sys, BufDesc, UblkError, UblkUringData};

use crate::kick::{Kick, KickOnRemoteWake};
use crate::BlockRequest;

/// The io_uring of the ublk queue thread that polls the future: tail I/O
/// shares the ring that carries the queue's ublk commands.
#[derive(Debug, Clone, Copy, Default)]
pub struct QueueRing;

impl Ring for QueueRing {
    async unsafe fn submit(&self, entry: io_uring::squeue::Entry) -> i32 {
        ublk_submit_sqe_async(entry, UblkUringData::Target as u64)
            .await
            .unwrap_or(-libc::EIO)
    }
}

/// How the data of a tag's requests gets between the kernel's pages and
/// the backend.
pub(crate) trait DataPath<B: BlockBackend> {
    /// Loops "wait for a request, run it on the backend, commit the result"
    /// until the queue goes down.
    async fn serve_tag(queue: &UblkQueue<'_>, tag: u16, backend: &B) -> Result<(), UblkError>;
}

/// The driver copies each request's data to and from a buffer of the tag's
/// own, which the backend reads and fills: what every kernel offers, and
/// what a backend that sends the data elsewhere needs.
pub(crate) struct Copied;

/// The driver registers each request's pages in the queue ring's buffer
/// table at the tag's index (`UBLK_F_AUTO_BUF_REG`), and the backend's tail
/// I/O, on that ring, reads and writes them there: the data never enters
/// this process.
pub(crate) struct ZeroCopy;

/// Serves one queue until the device stops: one task per tag.
pub(crate) fn serve_queue<B: BlockBackend, P: DataPath<B>>(qid: u16, dev: &UblkDev, backend: &B) {
    let queue = match UblkQueue::new(qid, dev) {
        Ok(queue) => Rc::new(queue),
        Err(e) => {
            tracing::error!(qid, "cannot set up ublk queue: {e:?}");
            return;
        }
    };
    let kick = match Kick::new() {
        Ok(kick) => kick,
        Err(e) => {
            tracing::error!(qid, "cannot create the queue's eventfd: {e}");
            return;
        }
    };
    let executor = smol::LocalExecutor::new();
    executor.spawn(kick.clone().serve()).detach();
    let tasks: Vec<_> = queue
        .tags()
        .map(|tag| {
            let queue = queue.clone();
            let serve = async move {
                match P::serve_tag(&queue, tag, backend).await {
                    Ok(()) | Err(UblkError::QueueIsDown) => {}
                    Err(e) => tracing::error!(qid, tag, "ublk tag task failed: {e:?}"),
                }
            };
            executor.spawn(KickOnRemoteWake::new(serve, kick.clone()))
        })
        .collect();
    smol::block_on(executor.run(async {
        let run_tasks = || while executor.try_tick() {};
        let all_done = || tasks.iter().all(|task| task.is_finished());
        if let Err(e) = wait_and_handle_io_events(&queue, Some(20), run_tasks, all_done).await {
            tracing::error!(qid, "ublk queue event loop failed: {e:?}");
        }
    }));
}

impl<B: BlockBackend> DataPath<B> for Copied {
    async fn serve_tag(queue: &UblkQueue<'_>, tag: u16, backend: &B) -> Result<(), UblkError> {
        let mut buf = IoBuf::<u8>::new(queue.dev.dev_info.max_io_buf_bytes as usize);
        queue
            .submit_io_prep_cmd(tag, BufDesc::Slice(buf.as_slice()), 0, Some(&buf))
            .await?;
        loop {
            let iod = queue.get_iod(tag);
            let result = match BlockRequest::decode(iod.op_flags, iod.start_sector, iod.nr_sectors)
            {
                Ok(request) => execute_copied(backend, request, buf.as_mut_slice()).await,
                Err(errno) => errno,
            };
            queue
                .submit_io_commit_cmd(tag, BufDesc::Slice(buf.as_slice()), result)
                .await?;
        }
    }
}

impl<B: RegisteredIo> DataPath<B> for ZeroCopy {
    async fn serve_tag(queue: &UblkQueue<'_>, tag: u16, backend: &B) -> Result<(), UblkError> {
        // The driver registers the pages of the tag's next request at this
        // index when it hands the request over, and unregisters them when
        // the result is committed: the table has one slot per tag.
        let pages = sys::ublk_auto_buf_reg {
            index: tag,
            flags: 0,
            reserved0: 0,
            reserved1: 0,
        };
        queue
            .submit_io_prep_cmd(tag, BufDesc::AutoReg(pages), 0, None)
            .await?;
        let registered = RegisteredBuf::kernel(tag);
        loop {
            let iod = queue.get_iod(tag);
            let result = match BlockRequest::decode(iod.op_flags, iod.start_sector, iod.nr_sectors)
            {
                Ok(request @ BlockRequest::Read { offset, len }) => {
                    let read = backend.read_registered(offset, len, registered).await;
                    completion(request, read.map(|()| len))
                }
                Ok(request @ BlockRequest::Write { offset, len, fua }) => {
                    let written = backend.write_registered(offset, len, registered, fua).await;
                    completion(request, written.map(|()| len))
                }
                Ok(request) => execute_without_data(backend, request).await,
                Err(errno) => errno,
            };
            queue
                .submit_io_commit_cmd(tag, BufDesc::AutoReg(pages), result)
                .await?;
        }
    }
}

/// Runs one request with its data in `buf`; returns the ublk completion
/// result: the bytes moved, 0 for operations without data, or a negative
/// errno.
async fn execute_copied<B: BlockBackend>(
    backend: &B,
    request: BlockRequest,
    buf: &mut [u8],
) -> i32 {
    match request {
        BlockRequest::Read { offset, len } => match buf.get_mut(..len as usize) {
            Some(data) => completion(request, backend.read(offset, data).await.map(|()| len)),
            None => -libc::EINVAL,
        },
        BlockRequest::Write { offset, len, fua } => match buf.get(..len as usize) {
            Some(data) => completion(
                request,
                backend.write(offset, data, fua).await.map(|()| len),
            ),
            None => -libc::EINVAL,
        },
        _ => execute_without_data(backend, request).await,
    }
}

/// Runs a request that moves no data: flush, discard, write-zeroes.
async fn execute_without_data<B: BlockBackend>(backend: &B, request: BlockRequest) -> i32 {
    let outcome = match request {
        BlockRequest::Flush => backend.flush().await,
        BlockRequest::Discard { offset, len } => backend.discard(offset, len).await,
        BlockRequest::WriteZeroes { offset, len } => backend.write_zeroes(offset, len).await,
        BlockRequest::Read { .. } | BlockRequest::Write { .. } => return -libc::EINVAL,
    };
    completion(request, outcome.map(|()| 0))
}

/// The ublk completion result of `request`: the bytes it moved, or a
/// negative errno.
fn completion(request: BlockRequest, outcome: Result<u32, IoError>) -> i32 {
    match outcome {
        // A transfer fits one io buffer, far below i32::MAX.
        Ok(bytes) => bytes as i32,
        Err(e) => {
            tracing::warn!(?request, "request failed: {e}");
            e.errno()
        }
    }
}
