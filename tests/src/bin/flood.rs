//! `flood`: an attacker without credentials, for the security tests. Opens
//! many TCP connections to a peer server and holds them, silent (`idle`)
//! or sending a byte of a handshake now and then (`slowloris`), then
//! prints one JSON line: how many connected and how many the server closed
//! by the end. With `--replay FILE`, it instead sends FILE's bytes (a
//! captured client's side of a session) on one connection and prints how
//! many bytes came back before the server closed it.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    addr: SocketAddr,
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    #[arg(long, value_enum, default_value_t = Mode::Idle)]
    mode: Mode,
    /// How long each connection is held
    #[arg(long, default_value_t = 8)]
    hold_secs: u64,
    /// Send this file's bytes on one connection instead
    #[arg(long, conflicts_with = "mode")]
    replay: Option<std::path::PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Mode {
    Idle,
    Slowloris,
}

/// What became of one connection.
enum Fate {
    NotConnected,
    ClosedByServer,
    HeldOpen,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    raise_descriptor_limit(args.connections as u64 + 64)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match &args.replay {
        Some(path) => runtime.block_on(replay(args.addr, path)),
        None => runtime.block_on(run(args)),
    }
}

async fn replay(addr: SocketAddr, path: &std::path::Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut stream = TcpStream::connect(addr).await?;
    // The server may close before taking it all: what it took is enough.
    let _ = stream.write_all(&bytes).await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer));
    let closed = matches!(read.await, Ok(Ok(_)) | Ok(Err(_)));
    println!(
        "{}",
        serde_json::json!({"sent": bytes.len(), "answered": answer.len(), "closed_by_server": closed})
    );
    Ok(())
}

fn raise_descriptor_limit(wanted: u64) -> anyhow::Result<()> {
    let limit = libc::rlimit {
        rlim_cur: wanted,
        rlim_max: wanted,
    };
    // SAFETY: setrlimit reads a valid rlimit struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(std::io::Error::last_os_error()).context("cannot raise RLIMIT_NOFILE");
    }
    Ok(())
}

async fn run(args: Args) -> anyhow::Result<()> {
    let hold = Duration::from_secs(args.hold_secs);
    let tasks: Vec<_> = (0..args.connections)
        .map(|_| tokio::spawn(one(args.addr, args.mode, hold)))
        .collect();
    let (mut connected, mut closed) = (0, 0);
    for task in tasks {
        match task.await? {
            Fate::NotConnected => {}
            Fate::ClosedByServer => {
                connected += 1;
                closed += 1;
            }
            Fate::HeldOpen => connected += 1,
        }
    }
    println!(
        "{}",
        serde_json::json!({
            "attempted": args.connections,
            "connected": connected,
            "closed_by_server": closed,
        })
    );
    Ok(())
}

async fn one(addr: SocketAddr, mode: Mode, hold: Duration) -> Fate {
    let connect = tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(addr));
    let Ok(Ok(mut stream)) = connect.await else {
        return Fate::NotConnected;
    };
    // The first bytes of a TLS record carrying a ClientHello.
    let hello = [0x16u8, 0x03, 0x01, 0x02, 0x00, 0x01];
    let deadline = tokio::time::Instant::now() + hold;
    let mut sent = 0;
    let mut byte = [0u8; 1];
    loop {
        let tick = tokio::time::Instant::now() + Duration::from_secs(1);
        let wake = tick.min(deadline);
        tokio::select! {
            read = stream.read(&mut byte) => match read {
                // Anything back (an alert) or the end: the server gave up on us.
                Ok(_) | Err(_) => return Fate::ClosedByServer,
            },
            () = tokio::time::sleep_until(wake) => {
                if wake == deadline {
                    return Fate::HeldOpen;
                }
                if let Mode::Slowloris = mode {
                    if sent < hello.len() {
                        if stream.write_all(&hello[sent..=sent]).await.is_err() {
                            return Fate::ClosedByServer;
                        }
                        sent += 1;
                    }
                }
            }
        }
    }
}
