//! The peer server over real TCP on loopback, serving a real file tail
//! through the io_uring engine, driven by a plain blocking client.

// Helpers outside #[test] functions panic on purpose: a failed step fails the test.
#![allow(clippy::unwrap_used)]

mod cache;
mod fencing;
mod serving;
#[path = "../support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;

use backend::peer::{serve, Clients, Exports};
use backend::wire::{Frame, Header, Nack, Op, Status, HEADER_LEN};
use backend::{Engine, Lease, LocalTail};
use identity::rustls::{ClientConnection, StreamOwned};
use identity::ServerName;
use tokio::sync::oneshot;

const VDISK: u64 = 1;
const EPOCH: u64 = 5;
const TAIL_SIZE: u64 = 8 << 20;

struct Server {
    addr: SocketAddr,
    exports: Arc<Exports>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
    _dir: tempfile::TempDir,
    tail: std::path::PathBuf,
}

impl Server {
    fn start() -> Server {
        Server::start_leased(Lease::unbounded())
    }

    /// A server of a node that touches its tails only while it holds
    /// `lease`.
    fn start_leased(lease: Lease) -> Server {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let tail = dir.path().join("tail");
        File::create(&tail).unwrap().set_len(TAIL_SIZE).unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let (ready, addr) = std::sync::mpsc::channel();
        let tail_path = tail.clone();
        let exports = Arc::new(Exports::leased(lease));
        let served = exports.clone();
        let thread = std::thread::spawn(move || {
            let engine = Engine::start(64)?;
            served.insert(
                VDISK,
                EPOCH,
                Arc::new(LocalTail::open(&tail_path, 4096, false, engine.ring()).unwrap()),
            );
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
                ready.send(listener.local_addr()?).unwrap();
                serve(
                    vec![listener],
                    served,
                    support::server_tls("server"),
                    async {
                        let _ = stopped.await;
                    },
                )
                .await
            })
        });
        Server {
            addr: addr.recv().unwrap(),
            exports,
            stop: Some(stop),
            thread: Some(thread),
            _dir: dir,
            tail,
        }
    }

    /// A client of node "client", a member of the server's cluster.
    fn connect(&self) -> Client {
        self.connect_as(support::client_tls("client", "server"))
    }

    fn connect_as(&self, tls: Arc<identity::rustls::ClientConfig>) -> Client {
        let stream = self.connect_plain();
        let name = ServerName::from(self.addr.ip());
        let connection = ClientConnection::new(tls, name).unwrap();
        Client {
            stream: StreamOwned::new(connection, stream),
        }
    }

    /// A TCP connection that speaks no TLS.
    fn connect_plain(&self) -> TcpStream {
        let stream = TcpStream::connect(self.addr).unwrap();
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(20)))
            .unwrap();
        stream
    }

    fn stop(mut self) -> std::io::Result<()> {
        self.stop.take().unwrap().send(()).unwrap();
        self.thread.take().unwrap().join().unwrap()
    }
}

struct Client {
    stream: StreamOwned<ClientConnection, TcpStream>,
}

impl Client {
    fn send(&mut self, id: u64, vdisk: u64, epoch: u64, op: Op, payload: &[u8]) {
        self.stream
            .write_all(&request(id, vdisk, epoch, op, payload))
            .unwrap();
        self.stream.flush().unwrap();
    }

    /// The next reply: its id, status and payload.
    fn recv(&mut self) -> (u64, Status, Vec<u8>) {
        let mut head = [0u8; HEADER_LEN];
        self.stream.read_exact(&mut head).unwrap();
        let header = Header::decode(&head).unwrap();
        let mut payload = vec![0; header.payload_len as usize];
        self.stream.read_exact(&mut payload).unwrap();
        header.verify_payload(&payload).unwrap();
        let Frame::Reply { id, status } = header.frame else {
            panic!("server sent a request");
        };
        (id, status, payload)
    }

    fn call(&mut self, vdisk: u64, epoch: u64, op: Op, payload: &[u8]) -> (Status, Vec<u8>) {
        self.send(42, vdisk, epoch, op, payload);
        let (id, status, data) = self.recv();
        assert_eq!(id, 42);
        (status, data)
    }

    /// Like `call`, for a request the server may hold a while: heartbeats
    /// go out meanwhile, as from any link, since the server closes a
    /// connection silent for `wire::SILENCE`.
    fn call_patiently(
        &mut self,
        vdisk: u64,
        epoch: u64,
        op: Op,
        payload: &[u8],
    ) -> (Status, Vec<u8>) {
        self.send(42, vdisk, epoch, op, payload);
        let beats = 6;
        for beat in 0..beats {
            std::thread::sleep(std::time::Duration::from_millis(250));
            self.send(100 + beat, 0, 0, Op::Heartbeat, &[]);
        }
        let mut answer = None;
        for _ in 0..=beats {
            let (id, status, data) = self.recv();
            if id == 42 {
                answer = Some((status, data));
            }
        }
        answer.unwrap()
    }

    /// The replies that come until the server closes the connection.
    fn replies_until_closed(&mut self) -> Vec<(u64, Status)> {
        let mut replies = Vec::new();
        loop {
            let mut head = [0u8; HEADER_LEN];
            if self.stream.read_exact(&mut head).is_err() {
                return replies;
            }
            let header = Header::decode(&head).unwrap();
            let mut payload = vec![0; header.payload_len as usize];
            self.stream.read_exact(&mut payload).unwrap();
            let Frame::Reply { id, status } = header.frame else {
                panic!("not a reply: {header:?}");
            };
            replies.push((id, status));
        }
    }

    /// True once the server has closed the connection.
    fn closed_by_server(&mut self) -> bool {
        let mut byte = [0u8; 1];
        matches!(self.stream.read(&mut byte), Ok(0) | Err(_))
    }
}

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u64).wrapping_mul(2654435761).wrapping_add(seed) as u8)
        .collect()
}

fn file_bytes(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let mut out = vec![0; len];
    File::open(path)
        .unwrap()
        .read_exact_at(&mut out, offset)
        .unwrap();
    out
}

/// A request frame as the wire carries it, payload included.
fn request(id: u64, vdisk: u64, epoch: u64, op: Op, payload: &[u8]) -> Vec<u8> {
    let head = Frame::Request {
        id,
        vdisk,
        epoch,
        op,
    }
    .encode(payload)
    .unwrap();
    [&head[..], payload].concat()
}
