//! The daemon: serves the control socket until SIGTERM or SIGINT, then
//! stops every device and removes the socket.

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use gossip::Gossip;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{watch, Semaphore};

use backend::{Lease, OpenCounts};
use configdb::raft::StoreTls;
use configdb::{NodeRecord, Store, StoreConfig};

use crate::config::NodeConfig;
use crate::control::{MembersInfo, Request, Response, MAX_LINE};
use crate::daemon::access::{Access, AccessRules, ControlGroups, Peer};
use crate::daemon::cluster::Cluster;
use crate::daemon::detached::Detached;
use crate::daemon::links::DeviceLinks;
use crate::daemon::{lock, Daemon};
use crate::node::Node;

/// Runs the node daemon in the foreground. With `keep_devices`, SIGTERM
/// leaves the devices to the next daemon instead of removing them.
pub fn serve(config: &NodeConfig, keep_devices: bool) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let listener = bind_control_socket(&config.control_socket, &config.control_groups)?;
        let rules = Arc::new(AccessRules::new(
            config.control_groups.clone(),
            uzers::get_effective_uid(),
        ));
        if config.devices && !Path::new("/dev/ublk-control").exists() {
            tracing::warn!(
                "kernel module ublk_drv is not loaded: vdisks cannot start until `modprobe ublk_drv`"
            );
        }
        let peer_listeners = Cluster::bind(&config.listen).await?;
        // Announced as this node's links: the addresses actually bound.
        let links = peer_listeners
            .iter()
            .map(TcpListener::local_addr)
            .collect::<std::io::Result<Vec<_>>>()
            .context("cannot read the peer listeners' addresses")?;
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("cannot create data dir {}", config.data_dir.display()))?;
        let identity = config.identity()?;
        identity::use_kernel_tls(config.kernel_tls);
        if identity.is_some() {
            match identity::kernel_tls().await {
                true => tracing::info!("links' TLS records are sealed by the kernel (kTLS)"),
                false => tracing::info!("links' TLS records are sealed by rustls (no kernel TLS here, or kernel_tls = false)"),
            }
        }
        let store = open_store(config, identity.as_ref()).await?;
        // Not held until the store's majority confirms it: nothing touches
        // a tail before.
        let lease = Lease::expired();
        let cluster = Cluster::start(config, links.clone(), identity, lease.clone()).await?;
        let gossip = cluster.gossip().cloned();
        let (stop, stopped) = watch::channel(false);
        let mut peer_servers = cluster.serve_peers(peer_listeners, &stopped)?;
        let record = NodeRecord {
            name: config.node.clone(),
            links,
            tails: cluster.tail_sizes(),
        };
        let store = Arc::new(store);
        // Held until the devices have stopped: their last requests may
        // still go to this node's tails.
        let (lease_stop, lease_stopped) = watch::channel(false);
        let leasing = tokio::spawn(crate::daemon::lease::hold(store.clone(), lease, lease_stopped));
        let daemon = Daemon::new(
            Node::new(
                cluster,
                store.clone(),
                DeviceLinks::new(config.device_links.clone()),
                Detached::load(&config.data_dir.join("detached"))?,
            ),
            store,
            gossip.clone(),
            config.store.voters.keys().cloned().collect(),
            config.store.move_timeout,
            config.store.failover_move,
        );
        // A node back from a stop first catches up with the store, if a
        // majority answers soon: it starts on the mapping of now (a
        // failover made while it was away), not on the one it last applied,
        // and says READY serving it. Without a majority, what the store
        // last applied here comes back.
        if let Err(e) = daemon.store.confirm(CATCH_UP).await {
            tracing::warn!("starting from the configuration last applied here: {e}");
        }
        daemon.reconcile_now().await?;
        let follower = tokio::spawn(daemon.clone().follow_store(stopped.clone()));
        let failovers = tokio::spawn(daemon.clone().follow_membership(stopped.clone()));
        let registration = tokio::spawn(daemon.clone().register(record));
        if let Some(addr) = config.metrics_listen {
            if !addr.ip().is_loopback() {
                tracing::warn!(
                    "metrics_listen {addr} is not a loopback address: /metrics has no authentication, and tells whoever reaches it this node's vdisks, peers and links"
                );
            }
            crate::daemon::metrics::serve(addr, daemon.clone())?;
        }
        tracing::info!(
            node = %config.node,
            socket = %config.control_socket.display(),
            data_dir = %config.data_dir.display(),
            "ublkvd serving"
        );
        // systemd (Type=notify) starts what depends on the devices only now:
        // every vdisk of this node is back and the control socket answers.
        if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
            tracing::warn!("cannot tell systemd the daemon is ready: {e}");
        }
        let served = run(listener, daemon.clone(), rules, shutdown_signal()?).await;
        if keep_devices {
            tracing::info!("shutting down: keeping devices for the next daemon");
        } else {
            tracing::info!("shutting down: stopping devices");
        }
        registration.abort();
        let _ = stop.send(true);
        let _ = follower.await;
        let _ = failovers.await;
        // Devices first: their last requests may still need the peers.
        let node = daemon.node.clone();
        let stopped = tokio::task::spawn_blocking(move || lock(&node).shutdown(keep_devices)).await;
        // Then goodbye, so that peers route around this node at once,
        // before its tails stop being served.
        if let Some(gossip) = gossip {
            gossip.leave().await;
        }
        while peer_servers.join_next().await.is_some() {}
        let _ = lease_stop.send(true);
        let _ = leasing.await;
        daemon.store.shutdown().await;
        let _ = std::fs::remove_file(&config.control_socket);
        let kept = stopped.context("device shutdown panicked")?;
        if let (false, Some(after)) = (kept.is_empty(), config.kept_device_timeout) {
            watch_kept_devices(&kept, after, &config.control_socket);
        }
        served
    })
}

/// Leaves a process behind that deletes the devices `kept` if no daemon has
/// taken them over `after` from now (`ublkvd kept-watch`), so that their
/// held I/O fails instead of waiting for ever.
fn watch_kept_devices(kept: &[u32], after: Duration, socket: &Path) {
    use std::os::unix::process::CommandExt;
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            tracing::warn!(
                "kept devices wait for a daemon for ever: cannot find this program: {e}"
            );
            return;
        }
    };
    let mut watch = std::process::Command::new(exe);
    watch
        .arg("--socket")
        .arg(socket)
        .args(["kept-watch", "--after-ms", &after.as_millis().to_string()])
        .args(["--left-by", &std::process::id().to_string()])
        .args(kept.iter().map(u32::to_string))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        // Not in the daemon's process group: a Ctrl-C to it spares this.
        .process_group(0);
    match watch.spawn() {
        Ok(child) => tracing::info!(
            pid = child.id(),
            seconds = after.as_secs(),
            "kept devices are deleted if no daemon takes them over in time"
        ),
        Err(e) => tracing::warn!("kept devices wait for a daemon for ever: {e}"),
    }
}

/// Opens this node's member of the configuration store: on the network,
/// over TLS as `identity`, with a `[store]` section; else alone.
async fn open_store(
    config: &NodeConfig,
    identity: Option<&identity::NodeIdentity>,
) -> anyhow::Result<Store> {
    let settings = &config.store;
    let tls = identity
        .map(StoreTls::new)
        .transpose()
        .context("the store's TLS configuration")?;
    let listen = match settings.listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen for the store on {addr}"))?,
        ),
        None => None,
    };
    let store = Store::open(StoreConfig {
        node: config.node.clone(),
        dir: config.data_dir.clone(),
        voters: settings.voters.clone(),
        listen,
        tls,
        raft: configdb::store::lan_raft_config(),
        write_timeout: settings.write_timeout,
    })
    .await?;
    Ok(store)
}

/// How long a starting node waits to catch up with the store's majority
/// before it starts from what it last applied.
const CATCH_UP: Duration = Duration::from_secs(3);

/// Control connections open at once, and per user: a socket open to
/// read-only users must not let one of them hold every descriptor, nor
/// every slot root needs.
const CONTROL_CONNECTIONS: usize = 256;
const CONTROL_CONNECTIONS_PER_USER: usize = 16;

/// A control connection that sends no request for this long is closed.
const CONTROL_IDLE: Duration = Duration::from_secs(60);

/// How long the listener rests after an accept error (out of descriptors,
/// say) before it accepts again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Accepts control connections until `shutdown` resolves.
pub async fn run(
    listener: UnixListener,
    daemon: Arc<Daemon>,
    rules: Arc<AccessRules>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    tokio::pin!(shutdown);
    let slots = Arc::new(Semaphore::new(CONTROL_CONNECTIONS));
    let per_user = OpenCounts::default();
    loop {
        tokio::select! {
            () = &mut shutdown => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let Ok(slot) = slots.clone().try_acquire_owned() else {
                        tracing::warn!("control connection refused: {CONTROL_CONNECTIONS} open");
                        continue;
                    };
                    let connection = serve_connection(stream, daemon.clone(), rules.clone(), per_user.clone());
                    tokio::spawn(async move {
                        connection.await;
                        drop(slot);
                    });
                }
                Err(e) => {
                    tracing::warn!("accepting a control connection: {e}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            }
        }
    }
}

async fn serve_connection(
    stream: UnixStream,
    daemon: Arc<Daemon>,
    rules: Arc<AccessRules>,
    per_user: OpenCounts<u32>,
) {
    let peer = match Peer::of(&stream) {
        Ok(peer) => peer,
        Err(e) => {
            tracing::warn!("control connection: cannot read the peer's credentials: {e}");
            return;
        }
    };
    let (reader, mut writer) = stream.into_split();
    let Some(_slot) = per_user.open(&peer.uid, CONTROL_CONNECTIONS_PER_USER) else {
        tracing::warn!(uid = peer.uid, pid = ?peer.pid, "control connection refused: {CONTROL_CONNECTIONS_PER_USER} open by that user");
        let refusal = Response::Error {
            message: format!(
                "too many control connections of uid {} ({CONTROL_CONNECTIONS_PER_USER} open)",
                peer.uid
            ),
        };
        let mut reply = serde_json::to_string(&refusal).unwrap_or_default();
        reply.push('\n');
        let _ = writer.write_all(reply.as_bytes()).await;
        return;
    };
    let mut reader = BufReader::new(reader);
    let mut line = String::new();
    loop {
        line.clear();
        // Bounded per request: a peer cannot make the daemon buffer without end.
        let mut request = (&mut reader).take(MAX_LINE as u64);
        match tokio::time::timeout(CONTROL_IDLE, request.read_line(&mut line)).await {
            Ok(Ok(0)) => return,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::debug!("control connection: {e}");
                return;
            }
            Err(_) => {
                tracing::debug!(
                    uid = peer.uid,
                    "control connection closed: idle for {CONTROL_IDLE:?}"
                );
                return;
            }
        }
        let complete = line.ends_with('\n');
        let response = if !complete && line.len() >= MAX_LINE {
            Response::Error {
                message: format!("request longer than {MAX_LINE} bytes"),
            }
        } else {
            match serde_json::from_str::<Request>(&line) {
                Ok(request) => match rules.admit(&peer, Access::of(&request)) {
                    Ok(()) => {
                        // An audit trail of who changed what.
                        if let Access::Admin(_) = Access::of(&request) {
                            tracing::info!(uid = peer.uid, pid = ?peer.pid, ?request, "control request admitted");
                        }
                        execute(request, &daemon).await
                    }
                    Err(refusal) => {
                        tracing::info!(pid = ?peer.pid, "control request refused: {refusal}");
                        Response::Error { message: refusal }
                    }
                },
                Err(e) => Response::Error {
                    message: format!("malformed request: {e}"),
                },
            }
        };
        let mut reply = serde_json::to_string(&response).unwrap_or_default();
        reply.push('\n');
        if writer.write_all(reply.as_bytes()).await.is_err() || !complete {
            // After an overlong or unterminated request the stream has no
            // request boundary left to find.
            return;
        }
    }
}

/// The membership, straight from the gossip agent: it never waits on the
/// node's lock, so it answers while a device starts.
async fn members(gossip: Option<&Gossip>) -> Response {
    let Some(gossip) = gossip else {
        return Response::Error {
            message: "this node has no [gossip] section: it is not part of a cluster".into(),
        };
    };
    match gossip.members().await {
        Ok(members) => Response::Members(MembersInfo {
            config_number: gossip.view().borrow().config_number,
            rejected_packets: gossip.counters().rejected.load(Ordering::Relaxed),
            stale_packets: gossip.counters().stale.load(Ordering::Relaxed),
            replayed_packets: gossip.counters().replayed.load(Ordering::Relaxed),
            members,
        }),
        Err(e) => Response::Error {
            message: e.to_string(),
        },
    }
}

async fn execute(request: Request, daemon: &Daemon) -> Response {
    let one = |info| vec![info];
    let outcome = match request {
        Request::Members => return members(daemon.gossip.as_deref()).await,
        Request::Store => return Response::Store(daemon.store_info()),
        Request::SetVoters { voters } => {
            return match daemon.set_voters(voters).await {
                Ok(info) => Response::Store(info),
                Err(e) => Response::Error {
                    message: format!("{e:#}"),
                },
            }
        }
        Request::Resync { name, full } => {
            return match daemon.resync(&name, full).await {
                Ok(info) => Response::Resync(info),
                Err(e) => Response::Error {
                    message: format!("{e:#}"),
                },
            }
        }
        Request::Verify { name } => {
            return match daemon.verify(&name).await {
                Ok(info) => Response::Verify(info),
                Err(e) => Response::Error {
                    message: format!("{e:#}"),
                },
            }
        }
        Request::Add(add) => daemon.add(add).await.map(one),
        Request::Del { name } => daemon.del(&name).await.map(one),
        Request::Set(set) => daemon.set(set).await.map(one),
        Request::Detach { name } => daemon.detach(&name).await.map(one),
        Request::Release { name } => daemon.release(&name).await.map(one),
        Request::Attach { name } => daemon.attach(&name).map(one),
        Request::Move(request) => daemon.move_vdisk(request).await.map(one),
        Request::List => Ok(daemon.list()),
    };
    match outcome {
        Ok(vdisks) => Response::Ok { vdisks },
        Err(e) => Response::Error {
            message: format!("{e:#}"),
        },
    }
}

/// Binds the control socket, refusing to steal one a live daemon serves.
fn bind_control_socket(path: &Path, groups: &ControlGroups) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create socket dir {}", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!("another ublkvd daemon is serving {}", path.display());
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove stale socket {}", path.display()))?;
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("cannot bind control socket {}", path.display()))?;
    // The socket controls block devices. With no group configured, only
    // root (or the daemon's user) may connect. With groups, anyone may, and
    // each request is admitted by its peer's credentials (AccessRules): a
    // socket file has one group, not the two an admin and a read group
    // need, and the credentials are the kernel's record of the peer at
    // connect(), which nobody can forge (the D-Bus system bus works so).
    let mode = if groups.is_empty() { 0o600 } else { 0o666 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set the mode of {}", path.display()))?;
    Ok(listener)
}

fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()>> {
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    })
}
