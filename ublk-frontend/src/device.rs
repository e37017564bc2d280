use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use backend::{BlockBackend, RegisteredIo};
use libublk::ctrl::{UblkCtrl, UblkCtrlBuilder};
use libublk::io::UblkDev;
use libublk::{sys, UblkFlags};

mod recovery;

pub use recovery::fail_unclaimed;
use recovery::{recover_device, recoverable};

use crate::queue::{serve_queue, Copied, DataPath, ZeroCopy};
use crate::FrontendError;

const CONTROL_PATH: &str = "/dev/ublk-control";
/// How long the block node may take to show up after START_DEV.
const NODE_WAIT: Duration = Duration::from_secs(10);
/// Every device is created recoverable: when its server dies or leaves it,
/// the kernel keeps it and holds its I/O, and requeues what the server had
/// taken (REISSUE) for the next server. Backend requests are idempotent
/// while pending (the same data to the same offset), so a request run
/// twice is harmless.
const RECOVERY_FLAGS: u64 = (sys::UBLK_F_USER_RECOVERY | sys::UBLK_F_USER_RECOVERY_REISSUE) as u64;

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
        // A volatile cache that the tails flush on request, and FUA writes
        // the tails write through it: a filesystem's commit record is one
        // write, not a write and a flush.
        let mut attrs = sys::UBLK_ATTR_VOLATILE_CACHE | sys::UBLK_ATTR_FUA;
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
/// from the kernel; the data stays in the backend. [`Device::keep`] leaves
/// it to the next server instead.
pub struct Device {
    ctrl: Arc<UblkCtrl>,
    id: u32,
    /// Taken over from a previous server rather than created.
    recovered: bool,
    /// Requests' data goes between the kernel's pages and the tail with
    /// no copy ([`Device::start_zero_copy`]).
    zero_copy: bool,
    thread: Option<JoinHandle<()>>,
}

impl Device {
    /// Starts the device; returns once its block node exists. If
    /// `options.device_id` names a device a previous server left (killed,
    /// or exited with [`Device::keep`]) with the same geometry, this one
    /// takes it over: its block node never went away, and the I/O the
    /// kernel held meanwhile now runs. Otherwise a new device is created.
    pub fn start<B>(options: &DeviceOptions, backend: B) -> Result<Self, FrontendError>
    where
        B: BlockBackend + Send + Sync + 'static,
    {
        Self::launch::<B, Copied>(options, backend, false)
    }

    /// Starts the device as [`Device::start`] does, with zero copy where
    /// the kernel offers it (ublk's automatic buffer registration, Linux
    /// 6.16): each request's pages are registered in the queue's io_uring
    /// and the backend moves the data between them and its tail there. On
    /// an older kernel the driver copies, as for any backend.
    pub fn start_zero_copy<B>(options: &DeviceOptions, backend: B) -> Result<Self, FrontendError>
    where
        B: RegisteredIo + Send + Sync + 'static,
    {
        if driver_registers_buffers() {
            Self::launch::<B, ZeroCopy>(options, backend, true)
        } else {
            Self::launch::<B, Copied>(options, backend, false)
        }
    }

    fn launch<B, P>(
        options: &DeviceOptions,
        backend: B,
        zero_copy: bool,
    ) -> Result<Self, FrontendError>
    where
        B: BlockBackend + Send + Sync + 'static,
        P: DataPath<B>,
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
            .spawn(move || run_device::<B, P>(&options_for_thread, backend, zero_copy, started_tx))
            .map_err(FrontendError::Spawn)?;
        let (ctrl, id, recovered) = match started_rx.recv() {
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
            recovered,
            zero_copy,
            thread: Some(thread),
        };
        device.wait_for_node()?;
        Ok(device)
    }

    /// The N of `/dev/ublkbN`.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Whether this device was taken over from a previous server.
    pub fn recovered(&self) -> bool {
        self.recovered
    }

    /// Whether the requests' data goes between the kernel's pages and the
    /// tail with no copy.
    pub fn zero_copy(&self) -> bool {
        self.zero_copy
    }

    /// Leaves the device in the kernel for the next server: when this
    /// process exits, the kernel quiesces the device and holds its I/O
    /// (applications wait, and see no error) until a server recovers it.
    /// The device thread stays blocked until then.
    pub fn keep(self) {
        self.ctrl.disown();
        // Neither stop the queues nor delete the device, as dropping does.
        std::mem::forget(self);
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
        killed.map_err(|error| FrontendError::Driver {
            action: "stop the device",
            error,
        })?;
        if self.recovered {
            // A created device is deleted when the last `ctrl` handle drops
            // (ours: the device thread has ended); a recovered one is not.
            self.ctrl.del_dev().map_err(|error| FrontendError::Driver {
                action: "delete the device",
                error,
            })?;
        }
        Ok(())
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

type Started = Result<(Arc<UblkCtrl>, u32, bool), FrontendError>;

/// The device thread: recovers or adds the device, serves it until it is
/// stopped, and reports the outcome of the start through `started`.
fn run_device<B, P>(
    options: &DeviceOptions,
    backend: Arc<B>,
    zero_copy: bool,
    started: mpsc::SyncSender<Started>,
) where
    B: BlockBackend + Send + Sync + 'static,
    P: DataPath<B>,
{
    let recovering = match options
        .device_id
        .map(|id| recoverable(id, options, zero_copy))
    {
        Some(Ok(recovering)) => recovering,
        Some(Err(e)) => {
            let _ = started.send(Err(e));
            return;
        }
        None => false,
    };
    let ctrl = if recovering {
        recover_device(options)
    } else {
        add_device(options, zero_copy)
    };
    let ctrl = match ctrl {
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
    let serve = move |qid: u16, dev: &UblkDev| serve_queue::<B, P>(qid, dev, &*backend);
    let on_started = move |ctrl: &UblkCtrl| {
        let _ = started_ok.send(Ok((handle, ctrl.dev_info().dev_id, recovering)));
    };
    if let Err(error) = ctrl.run_target(init, serve, on_started) {
        let _ = started.send(Err(FrontendError::Driver {
            action: "start the device",
            error,
        }));
    }
}

/// Adds a device, asking for `options.device_id` only while no device
/// holds that number: when libublk's ADD_DEV fails, dropping its control
/// deletes the device of the number it asked for, so asking for a taken
/// number deletes the device that holds it (another server's on a kernel
/// several nodes share, as in the test VM, or a foreign one). The check
/// and the add run under an exclusive lock on the control device, which
/// every ublkvd of this kernel takes, so that two never race for a number.
fn add_device(options: &DeviceOptions, zero_copy: bool) -> Result<UblkCtrl, FrontendError> {
    let flags = RECOVERY_FLAGS | device_flags(zero_copy);
    let build = |id: Option<u32>| {
        UblkCtrlBuilder::default()
            .name("ublkvd")
            .id(id.map_or(-1, |id| id as i32))
            .nr_queues(options.queues)
            .depth(options.queue_depth)
            .io_buf_bytes(options.io_buf_bytes)
            .ctrl_flags(flags)
            .dev_flags(UblkFlags::UBLK_DEV_F_ADD_DEV)
            .build()
    };
    let _lock = ControlLock::take()?;
    let free = options.device_id.filter(|&id| !number_taken(id));
    if let (Some(id), None) = (options.device_id, free) {
        // The number is a preference: a stale or foreign device may hold it.
        tracing::warn!(id, "ublk device number taken; taking the next free one");
    }
    build(free).map_err(|error| FrontendError::Driver {
        action: "add a device",
        error,
    })
}

/// The driver flags of a device with or without zero copy, beyond those
/// every device has.
fn device_flags(zero_copy: bool) -> u64 {
    if zero_copy {
        u64::from(sys::UBLK_F_AUTO_BUF_REG)
    } else {
        0
    }
}

/// Whether this kernel's ublk driver registers each request's pages in the
/// queue's io_uring itself (`UBLK_F_AUTO_BUF_REG`), which zero copy needs.
/// Asked once: a driver's features do not change while it is loaded.
fn driver_registers_buffers() -> bool {
    static REGISTERS: OnceLock<bool> = OnceLock::new();
    *REGISTERS.get_or_init(|| {
        init_control_ring().is_ok()
            && UblkCtrl::get_features()
                .is_some_and(|features| features & u64::from(sys::UBLK_F_AUTO_BUF_REG) != 0)
    })
}

/// Whether a ublk device has number `id` on this kernel.
fn number_taken(id: u32) -> bool {
    Path::new(&format!("/dev/ublkc{id}")).exists()
        || Path::new(&format!("/sys/class/ublk-char/ublkc{id}")).exists()
}

/// An exclusive flock on the ublk control device, held while adding
/// (released when the file closes).
struct ControlLock(#[allow(dead_code)] std::fs::File);

impl ControlLock {
    fn take() -> Result<ControlLock, FrontendError> {
        use std::os::fd::AsRawFd;
        let lock_failed = |e: std::io::Error| FrontendError::Driver {
            action: "lock the control device",
            error: libublk::UblkError::IOError(e),
        };
        let file = std::fs::File::open(CONTROL_PATH).map_err(lock_failed)?;
        // SAFETY: flock on a descriptor this function owns.
        while unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(lock_failed(e));
            }
        }
        Ok(ControlLock(file))
    }
}

#[cfg(test)]
mod tests;
