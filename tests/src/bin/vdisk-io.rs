//! `vdisk-io`: a node with no tail of its own, driving verified random I/O
//! into a cluster vdisk through the backend API (links, routing, failover)
//! while a test kills and cuts what is under it. No ublk involved.
//!
//! Every write puts a pattern derived from (block, generation) in a block;
//! every read checks the block holds the pattern of its last write. Runs
//! until stdin closes, then reads back every block it wrote. Prints one JSON
//! line per report interval and a final one with `"done": true`.

use std::cell::RefCell;
use std::io::BufRead;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use backend::link::{HealthConfig, PeerLinks, RemoteTail};
use backend::route::{RouteConfig, RoutedVdisk};
use backend::{BlockBackend, Lease, Tail};
use clap::Parser;
use identity::NodeIdentity;

const BLOCK: usize = 4096;

#[derive(Parser)]
struct Args {
    /// The vdisk's wire id (what `VdiskName::id` gives for its name)
    #[arg(long)]
    vdisk: String,
    /// Blocks of 4 KiB to use from the start of the vdisk
    #[arg(long, default_value_t = 4096)]
    blocks: u64,
    /// A path, in order of preference: NAME=ADDR[,ADDR...]
    #[arg(long = "peer", required = true)]
    peers: Vec<String>,
    /// The node this driver proves it is (a certificate of the CA the
    /// cluster secret derives, as a daemon's)
    #[arg(long)]
    name: String,
    /// The cluster secret's file
    #[arg(long)]
    secret_file: PathBuf,
    /// Requests in flight
    #[arg(long, default_value_t = 8)]
    depth: u64,
    /// Heartbeat interval of the links [default: the daemon's]
    #[arg(long)]
    heartbeat_ms: Option<u64>,
    #[arg(long, default_value_t = 200)]
    report_ms: u64,
    /// The vdisk epoch requests carry
    #[arg(long, default_value_t = 1)]
    epoch: u64,
    /// How long a request may find no path before it fails, in ms
    /// [default: the daemon's]
    #[arg(long)]
    io_timeout_ms: Option<u64>,
    /// Only read (what a stale reader would get), write nothing
    #[arg(long)]
    read_only: bool,
}

/// What the workers share: the model of what each block holds, and counts.
#[derive(Default)]
struct State {
    /// Generation of the last completed write of each block; 0: never written.
    generation: Vec<u32>,
    writes: u64,
    /// Reads answered with data.
    reads: u64,
    errors: u64,
    mismatches: u64,
    /// The longest any one request took, in ms.
    max_latency_ms: u64,
    first_error: Option<String>,
}

fn pattern(block: u64, generation: u32) -> Vec<u8> {
    let seed = block.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ u64::from(generation);
    (0..BLOCK as u64)
        .map(|i| (seed.rotate_left((i % 64) as u32) ^ i) as u8)
        .collect()
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, run(args))
}

fn parse_peer(
    text: &str,
    vdisk: u64,
    health: HealthConfig,
    identity: &NodeIdentity,
) -> anyhow::Result<Arc<dyn Tail>> {
    let Some((name, addrs)) = text.split_once('=') else {
        bail!("--peer wants NAME=ADDR[,ADDR...], not {text:?}");
    };
    let addrs: Vec<SocketAddr> = addrs
        .split(',')
        .map(|a| a.parse().with_context(|| format!("bad address {a:?}")))
        .collect::<anyhow::Result<_>>()?;
    let peer = PeerLinks::new(name, health, identity.client_config(name)?);
    peer.set_membership(Some(&addrs));
    Ok(Arc::new(RemoteTail::new(Arc::new(peer), vdisk)))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let default = HealthConfig::default();
    let health = HealthConfig {
        interval: args
            .heartbeat_ms
            .map_or(default.interval, Duration::from_millis),
        ..default
    };
    let secret = std::fs::read(&args.secret_file)
        .with_context(|| format!("cannot read {}", args.secret_file.display()))?;
    let identity = NodeIdentity::from_secret(&args.name, secret.trim_ascii())?;
    let id: u64 = configdb::VdiskName::try_from(args.vdisk.clone())?.id();
    let paths = args
        .peers
        .iter()
        .map(|p| parse_peer(p, id, health, &identity))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let route = RouteConfig::default();
    let route = RouteConfig {
        io_timeout: args
            .io_timeout_ms
            .map_or(route.io_timeout, Duration::from_millis),
        ..route
    };
    let vdisk = Rc::new(RoutedVdisk::spawn(
        &tokio::runtime::Handle::current(),
        id,
        args.epoch,
        paths,
        route,
        // A client with no tail of its own: its peers hold the leases.
        Lease::unbounded(),
    ));
    let state = Rc::new(RefCell::new(State {
        generation: vec![0; args.blocks as usize],
        ..State::default()
    }));

    // Stop when stdin closes.
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    std::thread::spawn(move || {
        for _ in std::io::stdin().lock().lines() {}
        let _ = stop_tx.send(true);
    });

    let workers: Vec<_> = (0..args.depth)
        .map(|worker| {
            let (vdisk, state, stop) = (vdisk.clone(), state.clone(), stop.clone());
            let (depth, blocks, read_only) = (args.depth, args.blocks, args.read_only);
            tokio::task::spawn_local(async move {
                // Each worker owns the blocks ≡ worker (mod depth): no two
                // requests in flight touch one block.
                let mut seed = 0x2545_f491_4f6c_dd1d_u64 ^ (worker + 1);
                while !*stop.borrow() {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    let block = (seed % (blocks / depth)) * depth + worker;
                    let write = !read_only && !seed.is_multiple_of(3);
                    one_request(&vdisk, &state, block, write).await;
                }
            })
        })
        .collect();

    let reporter = {
        let (vdisk, state, mut stop) = (vdisk.clone(), state.clone(), stop.clone());
        let every = Duration::from_millis(args.report_ms);
        tokio::task::spawn_local(async move {
            loop {
                report(&vdisk, &state.borrow(), false, 0);
                tokio::select! {
                    () = tokio::time::sleep(every) => {}
                    _ = stop.wait_for(|&s| s) => return,
                }
            }
        })
    };
    for worker in workers {
        worker.await?;
    }
    reporter.await?;

    // Every block written must read back as its last write.
    let written: Vec<(u64, u32)> = state
        .borrow()
        .generation
        .iter()
        .enumerate()
        .filter(|(_, &g)| g > 0)
        .map(|(b, &g)| (b as u64, g))
        .collect();
    let mut verified = 0;
    for (block, generation) in written {
        let mut buf = vec![0; BLOCK];
        match vdisk.read(block * BLOCK as u64, &mut buf).await {
            Ok(()) if buf == pattern(block, generation) => verified += 1,
            Ok(()) => note_failure(
                &state,
                true,
                format!("final read of block {block}: wrong data"),
            ),
            Err(e) => note_failure(&state, false, format!("final read of block {block}: {e}")),
        }
    }
    report(&vdisk, &state.borrow(), true, verified);
    Ok(())
}

async fn one_request(vdisk: &RoutedVdisk, state: &RefCell<State>, block: u64, write: bool) {
    let offset = block * BLOCK as u64;
    let started = Instant::now();
    let generation = state.borrow().generation[block as usize];
    if write {
        let next = generation + 1;
        let result = vdisk.write(offset, &pattern(block, next), false).await;
        let mut s = state.borrow_mut();
        s.max_latency_ms = s.max_latency_ms.max(started.elapsed().as_millis() as u64);
        match result {
            Ok(()) => {
                s.generation[block as usize] = next;
                s.writes += 1;
            }
            Err(e) => {
                drop(s);
                note_failure(state, false, format!("write of block {block}: {e}"));
            }
        }
    } else {
        let mut buf = vec![0; BLOCK];
        let result = vdisk.read(offset, &mut buf).await;
        let mut s = state.borrow_mut();
        s.max_latency_ms = s.max_latency_ms.max(started.elapsed().as_millis() as u64);
        if result.is_ok() {
            s.reads += 1;
        }
        drop(s);
        match result {
            // A block never written may hold anything from earlier runs.
            Ok(()) if generation == 0 || buf == pattern(block, generation) => {}
            Ok(()) => note_failure(state, true, format!("read of block {block}: wrong data")),
            Err(e) => note_failure(state, false, format!("read of block {block}: {e}")),
        }
    }
}

fn note_failure(state: &RefCell<State>, mismatch: bool, what: String) {
    let mut s = state.borrow_mut();
    if mismatch {
        s.mismatches += 1;
    } else {
        s.errors += 1;
    }
    eprintln!("vdisk-io: {what}");
    s.first_error.get_or_insert(what);
}

fn report(vdisk: &RoutedVdisk, state: &State, done: bool, verified: u64) {
    let counters = vdisk.counters();
    let paths: serde_json::Map<String, serde_json::Value> = counters
        .paths()
        .iter()
        .map(|(name, c)| (name.clone(), c.completed.load(Ordering::Relaxed).into()))
        .collect();
    let line = serde_json::json!({
        "done": done,
        "writes": state.writes,
        "reads": state.reads,
        "errors": state.errors,
        "mismatches": state.mismatches,
        "max_latency_ms": state.max_latency_ms,
        "resends": counters.resends.load(Ordering::Relaxed),
        "completed": paths,
        "verified_blocks": verified,
        "first_error": state.first_error,
    });
    println!("{line}");
}
