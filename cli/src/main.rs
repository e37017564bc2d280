//! `ublkvd`: the node daemon (`serve`) and the client commands that drive it.

mod args;
mod ca;
mod client;
mod config;
mod control;
mod daemon;
#[cfg(test)]
mod fixtures;
mod moves;
mod node;

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

use args::{AddArgs, Cli, Command, StoreCommand};
use client::tables::{print_members, print_one, print_store, print_table};
use client::{exit, mirror, status};
use config::{ConfigFile, NodeConfig};
use control::{AddRequest, Request};
use control::{MoveRequest, SetRequest};
use daemon::server;

fn main() -> ExitCode {
    // A usage error gets clap's whole say: what is missing or wrong, a
    // hint for a typo, and the usage line. Help and version go to stdout
    // with status 0.
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(exit::USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ublkvd: error: {e:#}");
            exit::status(&e)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let file = match &cli.config {
        Some(path) => ConfigFile::load(path)?,
        None => ConfigFile::default(),
    };
    let socket = file.control_socket(cli.socket.clone());
    match cli.command {
        Command::Serve(args) => {
            init_logging();
            let config = NodeConfig::resolve(file, args.data_dir, cli.socket)?;
            server::serve(&config, args.keep_devices)
        }
        Command::Add(args) => add(&socket, args),
        Command::Del { name, json } => {
            let deleted = control::call(&socket, &Request::Del { name })?;
            if json {
                print_one(&deleted)?;
            }
            Ok(())
        }
        Command::Detach { name, json } => {
            let detached = control::call(&socket, &Request::Detach { name })?;
            if json {
                print_one(&detached)?;
            }
            Ok(())
        }
        Command::Release { name, json } => {
            let released = control::call(&socket, &Request::Release { name })?;
            if json {
                print_one(&released)?;
            }
            Ok(())
        }
        Command::Attach { name, json } => {
            let attached = control::call(&socket, &Request::Attach { name })?;
            if json {
                print_one(&attached)
            } else {
                let device = attached.first().and_then(|v| v.device.as_ref());
                if let Some(device) = device {
                    println!("{}", device.display());
                }
                Ok(())
            }
        }
        Command::Set(args) => {
            let request = Request::Set(SetRequest {
                name: args.name,
                owner: args.permissions.owner,
                group: args.permissions.group,
                mode: args.permissions.mode,
            });
            let set = control::call(&socket, &request)?;
            if args.json {
                print_one(&set)
            } else {
                print_table(&set);
                Ok(())
            }
        }
        Command::Move(args) => {
            let request = Request::Move(MoveRequest {
                name: args.name,
                primary: args.primary,
                secondary: args.secondary,
            });
            let moved = control::call(&socket, &request)?;
            if args.json {
                print_one(&moved)
            } else {
                print_table(&moved);
                Ok(())
            }
        }
        Command::Store { json, change } => {
            let store = match change {
                None => control::store(&socket)?,
                Some(StoreCommand::SetVoters { nodes }) => control::set_voters(&socket, &nodes)?,
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&store)?);
            } else {
                print_store(&store);
            }
            Ok(())
        }
        Command::List { json } => {
            let vdisks = control::call(&socket, &Request::List)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&vdisks)?);
            } else {
                print_table(&vdisks);
            }
            Ok(())
        }
        Command::Status { json } => {
            let vdisks = control::call(&socket, &Request::List)?;
            // A node without gossip answers members with an error: alone.
            let members = control::members(&socket).ok();
            let store = control::store(&socket).ok();
            let status = status::summarize(&vdisks, members.as_ref(), store.as_ref());
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", status::render(&status));
            }
            Ok(())
        }
        Command::Resync {
            name,
            json,
            watch,
            full,
        } => {
            let info = control::resync(&socket, &name, full)?;
            if watch {
                return mirror::watch(&socket, &name);
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&info)?);
            } else {
                println!("{}", mirror::describe(&info));
            }
            Ok(())
        }
        Command::Verify { name, json } => {
            let report = control::verify(&socket, &name)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!("{}", mirror::describe_verify(&report));
            }
            if !report.differing.is_empty() {
                return Err(exit::CopiesDiffer {
                    vdisk: report.vdisk,
                    regions: report.differing.len(),
                }
                .into());
            }
            Ok(())
        }
        Command::Ca(command) => ca::run(command),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "ublkvd", &mut std::io::stdout());
            Ok(())
        }
        Command::KeptWatch {
            after_ms,
            left_by,
            ids,
        } => {
            let serving = || control::call(&socket, &Request::List).is_ok();
            let after = std::time::Duration::from_millis(after_ms);
            let deleted = ublk_frontend::fail_unclaimed(&ids, left_by, after, serving)?;
            for id in deleted {
                eprintln!(
                    "ublkvd: kept device /dev/ublkb{id} had no daemon for {} s: deleted, its held I/O failed",
                    after.as_secs()
                );
            }
            Ok(())
        }
        Command::Man { dir } => {
            use clap::CommandFactory;
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            clap_mangen::generate_to(Cli::command(), &dir)
                .with_context(|| format!("cannot write the manual pages into {}", dir.display()))
        }
        Command::Members { json } => {
            let members = control::members(&socket)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&members)?);
            } else {
                print_members(&members);
            }
            Ok(())
        }
    }
}

fn add(socket: &std::path::Path, args: AddArgs) -> anyhow::Result<()> {
    let tail = match &args.tail {
        Some(tail) => Some(
            std::path::absolute(tail)
                .with_context(|| format!("invalid tail path {}", tail.display()))?,
        ),
        None => None,
    };
    let request = Request::Add(AddRequest {
        name: args.name,
        size_bytes: args.size,
        tail,
        primary: args.primary,
        secondary: args.secondary,
        mirror: args.mirror,
        region_size: args.region_size,
        block_size: args.block_size,
        queues: args.queues,
        queue_depth: args.queue_depth,
        read_only: args.read_only,
        owner: args.permissions.owner,
        group: args.permissions.group,
        mode: args.permissions.mode,
        multi_writer: args.multi_writer,
    });
    let vdisks = control::call(socket, &request)?;
    let vdisk = vdisks
        .first()
        .context("the daemon reported no vdisk for the add")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(vdisk)?);
    } else if let Some(device) = &vdisk.device {
        println!("{}", device.display());
    }
    Ok(())
}

fn init_logging() {
    // openraft reports its whole state at INFO, and warns of things an
    // admin cannot act on (an answer nobody waits for any more); the
    // store's changes are in ublkvd's own lines. RUST_LOG brings it back.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=error"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
