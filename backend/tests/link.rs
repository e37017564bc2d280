//! A link to the real peer server over loopback TCP: it comes up, carries
//! calls, goes down when the server stops or falls silent, and comes back.

// Helpers outside #[test] functions panic on purpose: a failed step fails the test.
#![allow(clippy::unwrap_used)]

mod support;

use std::fs::File;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use backend::link::{HealthConfig, Link, LinkError, PeerLinks, PEER_CLOSED_SETTLE};
use backend::peer::{serve, Exports};
use backend::wire::{Op, Status};
use backend::{AlignedBuf, Engine, LocalTail};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

const VDISK: u64 = 1;

struct Peer {
    _engine: Engine,
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    exports: Arc<Exports>,
}

impl Peer {
    fn new() -> Peer {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let path = dir.path().join("tail");
        File::create(&path).unwrap().set_len(4 << 20).unwrap();
        let engine = Engine::start(64).unwrap();
        let exports = Exports::new();
        exports.insert(
            VDISK,
            1,
            Arc::new(LocalTail::open(&path, 4096, false, engine.ring()).unwrap()),
        );
        Peer {
            _engine: engine,
            _dir: dir,
            path,
            exports: Arc::new(exports),
        }
    }

    /// Serves on `listeners` until the returned sender is used or dropped.
    fn serve(
        &self,
        listeners: Vec<TcpListener>,
    ) -> (oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(
            listeners,
            self.exports.clone(),
            support::server_tls("server"),
            async {
                let _ = stopped.await;
            },
        ));
        (
            stop,
            tokio::spawn(async move { task.await.unwrap().unwrap() }),
        )
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn wait_until(link: &Link, up: bool) {
    let mut state = link.watch();
    tokio::time::timeout(Duration::from_secs(5), state.wait_for(|&now| now == up))
        .await
        .unwrap_or_else(|_| panic!("link did not become {}", if up { "up" } else { "down" }))
        .unwrap();
}

fn block(data: u8) -> AlignedBuf {
    let mut buf = AlignedBuf::new(4096).unwrap();
    buf.fill(data);
    buf
}

#[test]
fn a_link_comes_up_and_carries_writes_and_reads() {
    runtime().block_on(async {
        let peer = Peer::new();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_stop, _served) = peer.serve(vec![listener]);
        let link = Link::spawn(
            addr,
            HealthConfig::default(),
            support::client_tls("client", "server"),
        );
        wait_until(&link, true).await;

        let write = link
            .call(
                VDISK,
                1,
                Op::Write {
                    offset: 8192,
                    len: 4096,
                    fua: false,
                },
                Some(Arc::new(block(0x3c))),
            )
            .await
            .unwrap();
        assert_eq!(write.status, Status::Ok);
        let read = link
            .call(
                VDISK,
                1,
                Op::Read {
                    offset: 8192,
                    len: 4096,
                },
                None,
            )
            .await
            .unwrap();
        assert_eq!(read.status, Status::Ok);
        assert_eq!(&read.data.unwrap()[..], &block(0x3c)[..]);
        let counters = link.counters();
        assert_eq!(counters.ups.load(Ordering::Relaxed), 1);
        // The write's data went out, the read's came back, with headers.
        assert!(counters.sent_bytes.load(Ordering::Relaxed) >= 4096 + 2 * 56);
        assert!(counters.received_bytes.load(Ordering::Relaxed) >= 4096 + 2 * 56);
        // The link came up on a heartbeat's answer: its round trip is known.
        assert!(counters.heartbeat_rtt_us.load(Ordering::Relaxed) > 0);
    });
}

/// A session is replaced (a new handshake, new keys) once it carried its
/// records, long before rustls would send a key update that a session
/// sealed by the kernel cannot take; the calls made meanwhile all complete,
/// whole, and none is lost.
#[test]
fn a_session_that_carried_its_records_is_renewed_without_losing_a_call() {
    runtime().block_on(async {
        let peer = Peer::new();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_stop, _served) = peer.serve(vec![listener]);
        let health = HealthConfig {
            records_per_session: 100,
            ..HealthConfig::default()
        };
        let link = Link::spawn(addr, health, support::client_tls("client", "server"));
        wait_until(&link, true).await;
        // Down while it dials the next session: a call waits it out, as a
        // caller with no other link would.
        let call = |op, payload: Option<Arc<AlignedBuf>>| {
            let link = &link;
            async move {
                loop {
                    match link.call(VDISK, 1, op, payload.clone()).await {
                        Err(LinkError::Down) => wait_until(link, true).await,
                        reply => break reply.unwrap(),
                    }
                }
            }
        };
        for i in 0..200u64 {
            let offset = (i % 64) * 4096;
            let written = Some(Arc::new(block(i as u8)));
            let reply = call(
                Op::Write {
                    offset,
                    len: 4096,
                    fua: false,
                },
                written,
            )
            .await;
            assert_eq!(reply.status, Status::Ok);
            let reply = call(Op::Read { offset, len: 4096 }, None).await;
            assert_eq!(&reply.data.unwrap()[..], &block(i as u8)[..]);
        }
        // 400 calls at 3 records each, at most, and 100 a session.
        let renewals = link.counters().renewals.load(Ordering::Relaxed);
        assert!(renewals >= 3, "{renewals} renewals");
    });
}

#[test]
fn a_link_goes_down_with_its_server_and_returns_when_the_server_does() {
    runtime().block_on(async {
        let peer = Peer::new();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let (stop, served) = peer.serve(vec![listener]);
        let link = Link::spawn(
            addr,
            HealthConfig::default(),
            support::client_tls("client", "server"),
        );
        wait_until(&link, true).await;

        stop.send(()).unwrap();
        served.await.unwrap();
        wait_until(&link, false).await;
        let refused = link
            .call(
                VDISK,
                1,
                Op::Read {
                    offset: 0,
                    len: 4096,
                },
                None,
            )
            .await;
        assert_eq!(refused.unwrap_err(), LinkError::Down);

        let listener = TcpListener::bind(addr).await.unwrap();
        let (_stop, _served) = peer.serve(vec![listener]);
        wait_until(&link, true).await;
        let read = link
            .call(
                VDISK,
                1,
                Op::Read {
                    offset: 0,
                    len: 4096,
                },
                None,
            )
            .await
            .unwrap();
        assert_eq!(read.status, Status::Ok);
        assert_eq!(link.counters().ups.load(Ordering::Relaxed), 2);
        assert_eq!(link.counters().downs.load(Ordering::Relaxed), 1);
    });
}

#[test]
fn a_peer_that_stops_answering_is_declared_down_and_its_calls_fail() {
    runtime().block_on(async {
        // A "peer" that answers heartbeats for a while, then only reads.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let peer = Peer::new();
        let (stop, served) = peer.serve(vec![listener]);
        let link = Link::spawn(
            addr,
            HealthConfig::default(),
            support::client_tls("client", "server"),
        );
        wait_until(&link, true).await;
        // Stop serving but keep a silent listener on the address, so that
        // the reconnection succeeds and then hears nothing.
        stop.send(()).unwrap();
        served.await.unwrap();
        let silent = TcpListener::bind(addr).await.unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = silent.accept().await {
                held.push(stream);
            }
        });
        wait_until(&link, false).await;
        let started = tokio::time::Instant::now();
        let call = link
            .call(
                VDISK,
                1,
                Op::Read {
                    offset: 0,
                    len: 4096,
                },
                None,
            )
            .await;
        assert_eq!(call.unwrap_err(), LinkError::Down);
        assert!(!link.is_up());
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    });
}

#[test]
fn a_link_to_a_peer_that_no_longer_admits_this_node_goes_down_and_returns_once_admitted() {
    runtime().block_on(async {
        let peer = Peer::new();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_stop, _served) = peer.serve(vec![listener]);
        let health = HealthConfig {
            interval: Duration::from_millis(20),
            allowed_misses: 3,
            ..HealthConfig::default()
        };
        let link = Link::spawn(addr, health, support::client_tls("client", "server"));
        wait_until(&link, true).await;

        peer.exports
            .admit_only(Some(std::collections::HashSet::from([
                "elsewhere".to_owned()
            ])));
        // Its heartbeats are refused: as good as unanswered.
        wait_until(&link, false).await;

        peer.exports.admit_only(None);
        wait_until(&link, true).await;
    });
}

/// A call caught on a cut link is not given up as lost: the peer is fenced
/// on its other link (the cut connection closed there, and none of its
/// requests left running), and the call is sent again and completed there.
#[test]
fn a_call_lost_with_a_cut_link_is_fenced_and_completed_on_the_other_link() {
    runtime().block_on(async {
        let peer = Peer::new();
        let one = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let two = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (cable, direct) = (
            support::Cable::lay(one.local_addr().unwrap()).await,
            two.local_addr().unwrap(),
        );
        let (_stop, _served) = peer.serve(vec![one, two]);
        let links = Arc::new(PeerLinks::new(
            "server",
            HealthConfig::default(),
            support::client_tls("client", "server"),
        ));
        links.set_membership(Some(&[cable.addr, direct]));
        for link in links.links().iter() {
            wait_until(link, true).await;
        }
        // The first call goes on the first link, through the cable, and is
        // held at the peer: its store has not applied epoch 2 yet.
        let caller = links.clone();
        let call = tokio::spawn(async move {
            let op = Op::Write {
                offset: 0,
                len: 4096,
                fua: false,
            };
            let data = Some(Arc::new(block(7)));
            caller.call(VDISK, 2, op, data).await
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        cable.cut();
        // The link is declared down within ~240 ms; the fence on the other
        // waits for the held request, which the store's catch-up releases
        // into a closed connection.
        tokio::time::sleep(Duration::from_millis(600)).await;
        peer.exports.set_epoch(VDISK, 2);
        let reply = tokio::time::timeout(Duration::from_secs(3), call)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(reply.map(|r| r.status), Ok(Status::Ok));
        let mut landed = vec![0; 4096];
        File::open(&peer.path)
            .unwrap()
            .read_exact_at(&mut landed, 0)
            .unwrap();
        assert!(landed == block(7)[..], "the write did not land");
    });
}

/// A peer that goes away (its process dies: every connection dropped with
/// nothing answered) starts nothing more: the calls lost with it settle at
/// once, not after the silence a cut would need.
#[test]
fn a_call_lost_because_the_peer_went_away_settles_at_once() {
    runtime().block_on(async {
        let peer = Peer::new();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve(
            vec![listener],
            peer.exports.clone(),
            support::server_tls("server"),
            std::future::pending(),
        ));
        let link = Arc::new(Link::spawn(
            addr,
            HealthConfig::default(),
            support::client_tls("client", "server"),
        ));
        wait_until(&link, true).await;
        // Held at the peer (its store lags), so in flight when it dies.
        let caller = link.clone();
        let call = tokio::spawn(async move {
            let op = Op::Write {
                offset: 0,
                len: 4096,
                fua: false,
            };
            caller.call(VDISK, 2, op, Some(Arc::new(block(1)))).await
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        server.abort();
        let lost = tokio::time::timeout(Duration::from_secs(3), call)
            .await
            .unwrap()
            .unwrap();
        let Err(LinkError::Lost { settles_at }) = lost else {
            panic!("not lost: {lost:?}");
        };
        let left = settles_at.saturating_duration_since(std::time::Instant::now());
        assert!(left <= PEER_CLOSED_SETTLE, "settles in {left:?}");
    });
}

/// Cache messages go one way on a link, in order with its calls, and reach
/// the peer's cache endpoint of the vdisk, data and all.
#[test]
fn a_link_carries_cache_messages_to_the_peers_endpoint() {
    use backend::cache::{Down, Stamped, Up};
    use backend::wire::CacheMessage;
    use support::Recorder;

    runtime().block_on(async {
        let peer = Peer::new();
        let recorder = Arc::new(Recorder::default());
        peer.exports.insert_cache(7, recorder.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_stop, _served) = peer.serve(vec![listener]);
        let link = Link::spawn(
            addr,
            HealthConfig::default(),
            support::client_tls("client", "server"),
        );
        wait_until(&link, true).await;
        let granted = CacheMessage::ToChild(Stamped {
            epoch: 1,
            seq: 2,
            generation: 1,
            msg: Down::Granted {
                id: 4,
                extent: 0,
                version: 9,
                holder: true,
            },
        });
        let renew = CacheMessage::ToParent {
            instance: 5,
            msg: Up::Renew { renewal: 1 },
            at: 0,
        };
        link.send_cache(7, granted, Some(Arc::new(block(0x6e))));
        link.send_cache(7, renew, None);
        // A call after them is answered after they were delivered.
        let beat = link.call(0, 0, Op::Heartbeat, None).await.unwrap();
        assert_eq!(beat.status, Status::Ok);
        let got = recorder.0.lock().unwrap().clone();
        assert_eq!(
            got,
            [
                ("client".to_owned(), granted, Some(block(0x6e).to_vec())),
                ("client".to_owned(), renew, None),
            ]
        );
    });
}
