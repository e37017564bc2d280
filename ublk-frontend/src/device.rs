use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use backend::BlockBackend;
use libublk::ctrl::{UblkCtrl, UblkCtrlBuilder};
use libublk::io::UblkDev;
use libublk::{sys, UblkFlags};

use crate::queue::serve_queue;
use crate::FrontendError;

const CONTROL_PATH: &str = "/dev/ublk-control";
/// How long the block node may take to show up after START_DEV.
const NODE_WAIT: Duration = Duration::from_secs(10);

/// How a vdisk's block device looks to the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceOptions {
    pub size_bytes: u64,
    /// 512 or 4096.
    pub logical_block_size: u32,
    /// Hardware queues; each is served by a thread of its own.
    pub queues: u16,
    /// Requests in flight per queue.
    pub queue_depth: u16,
    /// Largest single transfer, and each in-flight request's buffer size.
    pub io_buf_bytes: u32,
    pub read_only: bool,
    /// Ask the driver for `/dev/ublkb<id>`; `None` takes the next free one.
    pub device_id: Option<u32>,
}

impl DeviceOptions {
    pub const MAX_QUEUES: u16 = 64;
    pub const MAX_QUEUE_DEPTH: u16 = 4096;

    pub fn new(size_bytes: u64) -> Self {
        DeviceOptions {
            size_bytes,
            logical_block_size: 4096,
            queues: 1,
            queue_depth: 128,
            io_buf_bytes: 512 << 10,
            read_only: false,
            device_id: None,
        }
    }

    /// Checks what the driver would refuse, with a message that says why.
    pub fn validate(&self) -> Result<(), FrontendError> {
        let invalid = |msg: String| Err(FrontendError::InvalidOptions(msg));
        let bs = self.logical_block_size;
        if bs != 512 && bs != 4096 {
            return invalid(format!("block size {bs} is neither 512 nor 4096"));
        }
        if self.size_bytes == 0 || !self.size_bytes.is_multiple_of(u64::from(bs)) {
            return invalid(format!(
                "size {} bytes is not a positive multiple of the block size {bs}",
                self.size_bytes
            ));
        }
        if !(1..=Self::MAX_QUEUES).contains(&self.queues) {
            return invalid(format!("queues must be 1 to {}", Self::MAX_QUEUES));
        }
        if !(1..=Self::MAX_QUEUE_DEPTH).contains(&self.queue_depth) {
            return invalid(format!(
                "queue depth must be 1 to {}",
                Self::MAX_QUEUE_DEPTH
            ));
        }
        if self.io_buf_bytes < 4096 || !self.io_buf_bytes.is_multiple_of(4096) {
            return invalid("io buffer size must be a multiple of 4096".into());
        }
        Ok(())
    }

    fn params(&self, max_io_buf_bytes: u32) -> sys::ublk_params {
        let bs_shift = self.logical_block_size.trailing_zeros() as u8;
        let mut attrs = sys::UBLK_ATTR_VOLATILE_CACHE;
        let mut types = sys::UBLK_PARAM_TYPE_BASIC;
        if self.read_only {
            attrs |= sys::UBLK_ATTR_READ_ONLY;
        } else {
            types |= sys::UBLK_PARAM_TYPE_DISCARD;
        }
        // Discard and write-zeroes carry no data: allow the largest range
        // one request can describe.
        let max_range_sectors = u32::MAX >> 9;
        sys::ublk_params {
            types,
            basic: sys::ublk_param_basic {
                attrs,
                logical_bs_shift: bs_shift,
                physical_bs_shift: bs_shift.max(12),
                io_opt_shift: 12,
                io_min_shift: bs_shift,
                max_sectors: max_io_buf_bytes >> 9,
                dev_sectors: self.size_bytes >> 9,
                ..Default::default()
            },
            discard: sys::ublk_param_discard {
                discard_granularity: self.logical_block_size.max(4096),
                max_discard_sectors: max_range_sectors,
                max_write_zeroes_sectors: max_range_sectors,
                max_discard_segments: 1,
                ..Default::default()
            },
            ..Default::default()
        }
    }
}

/// A live `/dev/ublkbN`. Stopping it (or dropping it) removes the device
/// from the kernel; the data stays in the backend.
pub struct Device {
    ctrl: Arc<UblkCtrl>,
    id: u32,
    thread: Option<JoinHandle<()>>,
}

impl Device {
    /// Creates and starts the device; returns once its block node exists.
    pub fn start<B>(options: &DeviceOptions, backend: B) -> Result<Self, FrontendError>
    where
        B: BlockBackend + Send + Sync + 'static,
    {
        options.validate()?;
        if !Path::new(CONTROL_PATH).exists() {
            return Err(FrontendError::DriverMissing {
                control: CONTROL_PATH,
            });
        }
        let (started_tx, started_rx) = mpsc::sync_channel(1);
        let options_for_thread = options.clone();
        let backend = Arc::new(backend);
        let thread = std::thread::Builder::new()
            .name("ublk-device".into())
            .spawn(move || run_device(&options_for_thread, backend, started_tx))
            .map_err(FrontendError::Spawn)?;
        let (ctrl, id) = match started_rx.recv() {
            Ok(Ok(started)) => started,
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e);
            }
            Err(mpsc::RecvError) => {
                let _ = thread.join();
                return Err(FrontendError::ThreadLost);
            }
        };
        let device = Device {
            ctrl,
            id,
            thread: Some(thread),
        };
        device.wait_for_node()?;
        Ok(device)
    }

    /// The N of `/dev/ublkbN`.
    pub fn id(&self) -> u32 {
        self.id
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/dev/ublkb{}", self.id))
    }

    /// Refuses when something holds the block device exclusively, as a
    /// mounted filesystem or a volume manager does: stopping would fail
    /// its I/O.
    pub fn ensure_unused(&self) -> Result<(), FrontendError> {
        use std::os::unix::fs::OpenOptionsExt;
        match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_EXCL)
            .open(self.path())
        {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Err(FrontendError::Busy {
                path: self.path().display().to_string(),
            }),
            // Any other outcome leaves nothing for us to protect.
            _ => Ok(()),
        }
    }

    /// Stops the queues and deletes the device from the kernel.
    pub fn stop(mut self) -> Result<(), FrontendError> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), FrontendError> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        // Control commands go through a per-thread ring: this thread may not
        // have one yet.
        init_control_ring()?;
        let killed = self.ctrl.kill_dev();
        if thread.join().is_err() {
            tracing::error!(id = self.id, "ublk device thread panicked");
        }
        killed.map(drop).map_err(|error| FrontendError::Driver {
            action: "stop the device",
            error,
        })
        // The device is deleted when the last `ctrl` handle drops, which is
        // ours: the device thread has ended.
    }

    fn wait_for_node(&self) -> Result<(), FrontendError> {
        let deadline = Instant::now() + NODE_WAIT;
        while !self.path().exists() {
            if Instant::now() > deadline {
                return Err(FrontendError::NodeMissing {
                    path: self.path().display().to_string(),
                    seconds: NODE_WAIT.as_secs(),
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::error!(id = self.id, "stopping ublk device: {e}");
        }
    }
}

fn init_control_ring() -> Result<(), FrontendError> {
    libublk::ctrl::ublk_init_ctrl_task_ring(|ring| {
        if ring.is_none() {
            *ring = Some(io_uring::IoUring::builder().build(8)?);
        }
        Ok(())
    })
    .map_err(|error| FrontendError::Driver {
        action: "set up a control ring",
        error,
    })
}

type Started = Result<(Arc<UblkCtrl>, u32), FrontendError>;

/// The device thread: adds the device, serves it until it is stopped, and
/// reports the outcome of the start through `started`.
fn run_device<B>(options: &DeviceOptions, backend: Arc<B>, started: mpsc::SyncSender<Started>)
where
    B: BlockBackend + Send + Sync + 'static,
{
    let ctrl = match add_device(options) {
        Ok(ctrl) => Arc::new(ctrl),
        Err(e) => {
            let _ = started.send(Err(e));
            return;
        }
    };
    let handle = ctrl.clone();
    let started_ok = started.clone();
    let init = |dev: &mut UblkDev| {
        dev.tgt.dev_size = options.size_bytes;
        dev.tgt.params = options.params(dev.dev_info.max_io_buf_bytes);
        Ok(())
    };
    let serve = move |qid: u16, dev: &UblkDev| serve_queue(qid, dev, &*backend);
    let on_started = move |ctrl: &UblkCtrl| {
        let _ = started_ok.send(Ok((handle, ctrl.dev_info().dev_id)));
    };
    if let Err(error) = ctrl.run_target(init, serve, on_started) {
        let _ = started.send(Err(FrontendError::Driver {
            action: "start the device",
            error,
        }));
    }
}

fn add_device(options: &DeviceOptions) -> Result<UblkCtrl, FrontendError> {
    let build = |id: Option<u32>| {
        UblkCtrlBuilder::default()
            .name("ublkvd")
            .id(id.map_or(-1, |id| id as i32))
            .nr_queues(options.queues)
            .depth(options.queue_depth)
            .io_buf_bytes(options.io_buf_bytes)
            .dev_flags(UblkFlags::UBLK_DEV_F_ADD_DEV)
            .build()
    };
    let ctrl = match build(options.device_id) {
        Err(e) if options.device_id.is_some() => {
            // The number is a preference: a stale or foreign device may hold it.
            tracing::warn!(
                id = options.device_id,
                "cannot reuse ublk device number ({e:?}); taking the next free one"
            );
            build(None)
        }
        other => other,
    };
    ctrl.map_err(|error| FrontendError::Driver {
        action: "add a device",
        error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_options_are_valid() {
        DeviceOptions::new(1 << 30).validate().unwrap();
    }

    #[test]
    fn size_must_be_a_positive_multiple_of_the_block_size() {
        let mut options = DeviceOptions::new(4096 + 512);
        assert!(options.validate().is_err());
        options.logical_block_size = 512;
        options.validate().unwrap();
        assert!(DeviceOptions::new(0).validate().is_err());
    }

    #[test]
    fn only_512_and_4096_byte_blocks_are_accepted() {
        let mut options = DeviceOptions::new(1 << 20);
        options.logical_block_size = 1024;
        assert!(options.validate().is_err());
    }

    #[test]
    fn params_describe_size_blocks_and_discard() {
        let mut options = DeviceOptions::new(1 << 30);
        options.logical_block_size = 512;
        let params = options.params(512 << 10);
        assert_eq!(params.basic.dev_sectors, (1 << 30) >> 9);
        assert_eq!(params.basic.logical_bs_shift, 9);
        assert_eq!(params.basic.max_sectors, 1024);
        assert_ne!(params.basic.attrs & sys::UBLK_ATTR_VOLATILE_CACHE, 0);
        assert_ne!(params.types & sys::UBLK_PARAM_TYPE_DISCARD, 0);
        assert_eq!(params.basic.attrs & sys::UBLK_ATTR_READ_ONLY, 0);
    }

    #[test]
    fn read_only_devices_say_so_and_offer_no_discard() {
        let mut options = DeviceOptions::new(1 << 30);
        options.read_only = true;
        let params = options.params(512 << 10);
        assert_ne!(params.basic.attrs & sys::UBLK_ATTR_READ_ONLY, 0);
        assert_eq!(params.types & sys::UBLK_PARAM_TYPE_DISCARD, 0);
    }
}
