//! The client's exit status, for scripts: each kind of failure a script may
//! act on has its own number, and the message on stderr says the rest.
//!
//! | status | meaning |
//! |---|---|
//! | 0 | done |
//! | 1 | refused or failed: the daemon (or the store) said no, or the command could not finish; the message says why |
//! | 2 | bad usage: clap's message and the usage line |
//! | 3 | no daemon to ask: nothing serves the control socket, or this user may not reach it |
//! | 4 | `verify` compared the copies and some regions differ |

use std::fmt;
use std::process::ExitCode;

pub const REFUSED: u8 = 1;
/// What clap exits with on a usage error.
pub const USAGE: u8 = 2;
pub const UNREACHABLE: u8 = 3;
pub const COPIES_DIFFER: u8 = 4;

/// The control socket could not be reached; the message says why and where.
#[derive(Debug)]
pub struct Unreachable(pub String);

/// `verify` found regions whose copies differ.
#[derive(Debug)]
pub struct CopiesDiffer {
    pub vdisk: String,
    pub regions: usize,
}

impl fmt::Display for Unreachable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unreachable {}

impl fmt::Display for CopiesDiffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} region(s) of {} differ between its copies",
            self.regions, self.vdisk
        )
    }
}

impl std::error::Error for CopiesDiffer {}

/// The exit status `error` calls for.
pub fn status(error: &anyhow::Error) -> ExitCode {
    let code = if error.downcast_ref::<Unreachable>().is_some() {
        UNREACHABLE
    } else if error.downcast_ref::<CopiesDiffer>().is_some() {
        COPIES_DIFFER
    } else {
        REFUSED
    };
    ExitCode::from(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_of_failure_has_its_status_through_any_context() {
        let unreachable = anyhow::Error::new(std::io::Error::from(std::io::ErrorKind::NotFound))
            .context(Unreachable("cannot reach the daemon".into()));
        assert_eq!(status(&unreachable), ExitCode::from(UNREACHABLE));
        let differ = anyhow::Error::new(CopiesDiffer {
            vdisk: "v".into(),
            regions: 2,
        });
        assert_eq!(
            differ.to_string(),
            "2 region(s) of v differ between its copies"
        );
        assert_eq!(status(&differ), ExitCode::from(COPIES_DIFFER));
        let refused = anyhow::anyhow!("no vdisk named x");
        assert_eq!(status(&refused), ExitCode::from(REFUSED));
    }
}
