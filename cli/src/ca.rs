//! `ublkvd ca`: the cluster's certificate authority, kept in files by the
//! admin, for clusters without a PKI of their own.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::Context;
use identity::CertificateAuthority;

use crate::args::CaCommand;

pub fn run(command: CaCommand) -> anyhow::Result<()> {
    match command {
        CaCommand::Init { dir, cluster } => {
            let ca = CertificateAuthority::generate(&cluster)?;
            create_dir(&dir)?;
            // The key first: a CA certificate without its key is useless,
            // and an existing key is never replaced.
            write_new(&dir.join("ca.key"), &ca.key_pem(), 0o600)?;
            write_new(&dir.join("ca.pem"), ca.cert_pem(), 0o644)?;
            println!(
                "{0}/ca.pem: the cluster's CA certificate, for every node's [tls] ca\n\
                 {0}/ca.key: its key; keep it off the nodes (mode 600)",
                dir.display()
            );
        }
        CaCommand::Issue { node, dir, days } => {
            let read = |name: &str| {
                let path = dir.join(name);
                std::fs::read_to_string(&path).with_context(|| {
                    format!("cannot read {} (run `ublkvd ca init`)", path.display())
                })
            };
            let ca = CertificateAuthority::from_pem(&read("ca.pem")?, &read("ca.key")?)?;
            let issued = ca.issue(&node, days)?;
            write_new(&dir.join(format!("{node}.key")), &issued.key, 0o600)?;
            write_new(&dir.join(format!("{node}.pem")), &issued.cert, 0o644)?;
            println!(
                "{0}/{node}.pem and {0}/{node}.key: node {node}'s certificate (valid {days} days) \
                 and key; copy them with ca.pem to {node} and name them in its [tls] section",
                dir.display()
            );
        }
    }
    Ok(())
}

fn create_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))
}

/// Writes a new file with `mode`; an existing one is never overwritten.
fn write_new(path: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}
