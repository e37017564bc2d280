//! Devices that outlive their server: taking over one a previous server
//! left (user recovery), and deleting kept ones no server came back for.

use std::time::{Duration, Instant};

use libublk::ctrl::{UblkCtrl, UblkCtrlBuilder};
use libublk::{sys, UblkFlags};

use super::{device_flags, init_control_ring, DeviceOptions};
use crate::FrontendError;

/// How long a device left by a dead server may take to settle (the kernel
/// quiesces it once its requests in flight are requeued).
const QUIESCE_WAIT: Duration = Duration::from_secs(10);

/// Whether device `id` is one a previous server left for us to take
/// over, and if so starts the takeover (START_USER_RECOVERY). A device
/// that cannot be ours (no such device, not recoverable, served by a live
/// process) is left alone: a new device is created instead. So is one
/// left by a dead server with another geometry: it is not this vdisk's (on
/// a kernel several test nodes share, it is another node's, whose daemon
/// is restarting), and deleting it would fail I/O someone may still wait
/// for; an admin deletes it once nobody does. A device whose data path is
/// not the one this server serves (`zero_copy`) is left alone likewise.
pub(super) fn recoverable(
    id: u32,
    options: &DeviceOptions,
    zero_copy: bool,
) -> Result<bool, FrontendError> {
    init_control_ring()?;
    let Ok(ctrl) = UblkCtrl::new_simple(id as i32) else {
        return Ok(false);
    };
    let info = ctrl.dev_info();
    if info.flags & u64::from(sys::UBLK_F_USER_RECOVERY) == 0 {
        return Ok(false);
    }
    if served_by_another(info.ublksrv_pid, std::process::id() as i32) {
        return Ok(false);
    }
    let deadline = Instant::now() + QUIESCE_WAIT;
    while ctrl.dev_info().state != sys::UBLK_S_DEV_QUIESCED as u16 {
        if Instant::now() > deadline {
            tracing::warn!(
                id,
                state = ctrl.dev_info().state,
                "ublk device left by a dead server never quiesced"
            );
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(20));
        let _ = ctrl.read_dev_info();
    }
    let mut params = sys::ublk_params::default();
    let size = match ctrl.get_params(&mut params) {
        Ok(_) => params.basic.dev_sectors << 9,
        Err(_) => 0,
    };
    let info = ctrl.dev_info();
    let zero_copy_flags = device_flags(true);
    if info.nr_hw_queues != options.queues
        || info.queue_depth != options.queue_depth
        || size != options.size_bytes
        || info.flags & zero_copy_flags != device_flags(zero_copy)
    {
        tracing::warn!(
            id,
            "ublk device left by a previous server has another geometry or data path: left alone, another number is taken"
        );
        return Ok(false);
    }
    match ctrl.start_user_recover() {
        Ok(result) if result >= 0 => Ok(true),
        Ok(errno) => Err(FrontendError::Driver {
            action: "start recovering the device",
            error: libublk::UblkError::OtherError(errno),
        }),
        Err(error) => Err(FrontendError::Driver {
            action: "start recovering the device",
            error,
        }),
    }
}

/// The control of a device being recovered: its geometry is the kernel's;
/// starting it ends the recovery instead of adding a device.
pub(super) fn recover_device(options: &DeviceOptions) -> Result<UblkCtrl, FrontendError> {
    UblkCtrlBuilder::default()
        .name("ublkvd")
        .id(options.device_id.map_or(-1, |id| id as i32))
        .nr_queues(options.queues)
        .depth(options.queue_depth)
        .io_buf_bytes(options.io_buf_bytes)
        .dev_flags(UblkFlags::UBLK_DEV_F_RECOVER_DEV)
        .build()
        .map_err(|error| FrontendError::Driver {
            action: "recover the device",
            error,
        })
}

/// Waits up to `deadline` for a server to take over each kept device of
/// `ids` ([`Device::keep`]) from process `left_by`, the server that kept
/// them (it may still be exiting when this starts); then deletes those no
/// other live process serves yet, unless `daemon_serving` says a server is
/// about to, and returns them. Deleting a device fails the I/O the kernel
/// held for it with EIO: a clean error instead of a wait without end when
/// no server comes back.
pub fn fail_unclaimed(
    ids: &[u32],
    left_by: i32,
    deadline: Duration,
    daemon_serving: impl Fn() -> bool,
) -> Result<Vec<u32>, FrontendError> {
    init_control_ring()?;
    let until = Instant::now() + deadline;
    let mut waiting = ids.to_vec();
    loop {
        waiting.retain(|&id| unclaimed(id, left_by));
        let left = until.saturating_duration_since(Instant::now());
        if waiting.is_empty() || left.is_zero() {
            break;
        }
        std::thread::sleep(left.min(Duration::from_secs(1)));
    }
    if waiting.is_empty() || daemon_serving() {
        return Ok(Vec::new());
    }
    let mut deleted = Vec::new();
    for id in waiting {
        let Ok(ctrl) = UblkCtrl::new_simple(id as i32) else {
            continue;
        };
        match ctrl.del_dev() {
            Ok(_) => deleted.push(id),
            Err(error) => tracing::warn!(id, %error, "cannot delete a kept ublk device"),
        }
    }
    Ok(deleted)
}

/// Whether kept device `id` still waits for a server: it exists, and is
/// not live under a process that exists, other than `left_by` (which kept
/// it and is on its way out: the device counts as claimed by it only until
/// it is gone, which a check made before its exit must not take for a
/// takeover).
fn unclaimed(id: u32, left_by: i32) -> bool {
    let Ok(ctrl) = UblkCtrl::new_simple(id as i32) else {
        return false;
    };
    let info = ctrl.dev_info();
    !(info.state == sys::UBLK_S_DEV_LIVE as u16 && served_by_another(info.ublksrv_pid, left_by))
}

/// Whether `server`, a device's server as the driver recorded it, is a
/// process that exists and is not `other`.
fn served_by_another(server: i32, other: i32) -> bool {
    // SAFETY: kill(pid, 0) only checks that the process exists.
    server > 0 && server != other && unsafe { libc::kill(server, 0) } == 0
}
