use std::rc::Rc;

use backend::{BlockBackend, Ring};
use libublk::helpers::IoBuf;
use libublk::io::{UblkDev, UblkQueue};
use libublk::uring_async::{ublk_submit_sqe_async, wait_and_handle_io_events};
use libublk::{BufDesc, UblkError, UblkUringData};

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

/// Serves one queue until the device stops: one task per tag, each looping
/// "wait for a request, run it on the backend, commit the result".
pub(crate) fn serve_queue<B: BlockBackend>(qid: u16, dev: &UblkDev, backend: &B) {
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
                match serve_tag(&queue, tag, backend).await {
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

async fn serve_tag<B: BlockBackend>(
    queue: &UblkQueue<'_>,
    tag: u16,
    backend: &B,
) -> Result<(), UblkError> {
    let mut buf = IoBuf::<u8>::new(queue.dev.dev_info.max_io_buf_bytes as usize);
    queue
        .submit_io_prep_cmd(tag, BufDesc::Slice(buf.as_slice()), 0, Some(&buf))
        .await?;
    loop {
        let iod = queue.get_iod(tag);
        let request = BlockRequest::decode(iod.op_flags, iod.start_sector, iod.nr_sectors);
        let result = match request {
            Ok(request) => execute(backend, request, buf.as_mut_slice()).await,
            Err(errno) => errno,
        };
        queue
            .submit_io_commit_cmd(tag, BufDesc::Slice(buf.as_slice()), result)
            .await?;
    }
}

/// Runs one request; returns the ublk completion result: the bytes moved,
/// 0 for operations without data, or a negative errno.
async fn execute<B: BlockBackend>(backend: &B, request: BlockRequest, buf: &mut [u8]) -> i32 {
    let outcome = match request {
        BlockRequest::Read { offset, len } => match buf.get_mut(..len as usize) {
            Some(data) => backend.read(offset, data).await.map(|()| len),
            None => return -libc::EINVAL,
        },
        BlockRequest::Write { offset, len } => match buf.get(..len as usize) {
            Some(data) => backend.write(offset, data).await.map(|()| len),
            None => return -libc::EINVAL,
        },
        BlockRequest::Flush => backend.flush().await.map(|()| 0),
        BlockRequest::Discard { offset, len } => backend.discard(offset, len).await.map(|()| 0),
        BlockRequest::WriteZeroes { offset, len } => {
            backend.write_zeroes(offset, len).await.map(|()| 0)
        }
    };
    match outcome {
        // A transfer fits one io buffer, far below i32::MAX.
        Ok(bytes) => bytes as i32,
        Err(e) => {
            tracing::warn!(?request, "request failed: {e}");
            e.errno()
        }
    }
}
