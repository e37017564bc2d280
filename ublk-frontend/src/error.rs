/// Why a device could not be created or removed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrontendError {
    #[error(
        "kernel module ublk_drv is not loaded ({control} is missing); \
         load it with `modprobe ublk_drv`"
    )]
    DriverMissing { control: &'static str },
    #[error("invalid device options: {0}")]
    InvalidOptions(String),
    #[error("ublk driver refused to {action}: {}", describe(error))]
    Driver {
        action: &'static str,
        // Not a `source`: its own message ("other failure") says nothing.
        error: libublk::UblkError,
    },
    #[error("cannot spawn the device thread")]
    Spawn(#[source] std::io::Error),
    #[error("ublk device thread ended without reporting (it panicked)")]
    ThreadLost,
    #[error("device {path} did not appear within {seconds} s")]
    NodeMissing { path: String, seconds: u64 },
    #[error("{path} is in use (mounted or held open exclusively)")]
    Busy { path: String },
}

/// libublk's own messages drop the errno ("other failure"); say it.
fn describe(e: &libublk::UblkError) -> String {
    use libublk::UblkError;
    match e {
        UblkError::OtherError(code) | UblkError::UringIOError(code) => {
            std::io::Error::from_raw_os_error(code.abs()).to_string()
        }
        UblkError::IOError(io) => io.to_string(),
        other => format!("{other} ({other:?})"),
    }
}
