//! The peer server over real TCP on loopback, serving a real file tail
//! through the io_uring engine, driven by a plain blocking client.

// Helpers outside #[test] functions panic on purpose: a failed step fails the test.
#![allow(clippy::unwrap_used)]

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

#[test]
fn pipelined_writes_and_reads_round_trip_and_land_in_the_tail() {
    let server = Server::start();
    let mut client = server.connect();
    const CHUNK: u32 = 16 << 10;
    // Every write is sent before any reply is read: all are in flight on
    // one connection at once.
    for id in 0..64u64 {
        let op = Op::Write {
            offset: id * u64::from(CHUNK),
            len: CHUNK,
        };
        client.send(id, VDISK, EPOCH, op, &pattern(CHUNK as usize, id));
    }
    let mut acknowledged: Vec<u64> = (0..64)
        .map(|_| {
            let (id, status, data) = client.recv();
            assert_eq!(status, Status::Ok);
            assert!(data.is_empty());
            id
        })
        .collect();
    acknowledged.sort_unstable();
    assert_eq!(acknowledged, (0..64).collect::<Vec<_>>());

    for id in 0..64u64 {
        client.send(
            id,
            VDISK,
            EPOCH,
            Op::Read {
                offset: id * u64::from(CHUNK),
                len: CHUNK,
            },
            &[],
        );
    }
    let mut reads = HashMap::new();
    for _ in 0..64 {
        let (id, status, data) = client.recv();
        assert_eq!(status, Status::Ok);
        reads.insert(id, data);
    }
    for id in 0..64u64 {
        assert_eq!(reads[&id], pattern(CHUNK as usize, id), "read {id}");
        assert_eq!(
            file_bytes(&server.tail, id * u64::from(CHUNK), CHUNK as usize),
            reads[&id]
        );
    }
    server.stop().unwrap();
}

#[test]
fn flush_discard_and_write_zeroes_are_served() {
    let server = Server::start();
    let mut client = server.connect();
    let data = pattern(8192, 1);
    assert_eq!(
        client
            .call(
                VDISK,
                EPOCH,
                Op::Write {
                    offset: 0,
                    len: 8192
                },
                &data
            )
            .0,
        Status::Ok
    );
    assert_eq!(client.call(VDISK, EPOCH, Op::Flush, &[]).0, Status::Ok);
    assert_eq!(
        client
            .call(
                VDISK,
                EPOCH,
                Op::WriteZeroes {
                    offset: 0,
                    len: 4096
                },
                &[]
            )
            .0,
        Status::Ok
    );
    assert_eq!(
        client
            .call(
                VDISK,
                EPOCH,
                Op::Discard {
                    offset: 4096,
                    len: 4096
                },
                &[]
            )
            .0,
        Status::Ok
    );
    assert_eq!(file_bytes(&server.tail, 0, 8192), vec![0; 8192]);
    server.stop().unwrap();
}

#[test]
fn refusals_name_their_reason_and_keep_the_connection() {
    let server = Server::start();
    let mut client = server.connect();
    assert_eq!(client.call(VDISK, EPOCH, Op::Heartbeat, &[]).0, Status::Ok);
    assert_eq!(
        client
            .call(
                99,
                EPOCH,
                Op::Read {
                    offset: 0,
                    len: 4096
                },
                &[]
            )
            .0,
        Status::Nack(Nack::NoSuchTail)
    );
    assert_eq!(
        client
            .call(
                VDISK,
                EPOCH - 1,
                Op::Read {
                    offset: 0,
                    len: 4096
                },
                &[]
            )
            .0,
        Status::Nack(Nack::StaleEpoch { current: EPOCH })
    );
    assert_eq!(
        client
            .call(
                VDISK,
                EPOCH,
                Op::Read {
                    offset: TAIL_SIZE - 4096,
                    len: 8192
                },
                &[]
            )
            .0,
        Status::Nack(Nack::Io {
            errno: libc::EINVAL as u32
        })
    );
    assert_eq!(
        client
            .call(
                VDISK,
                EPOCH,
                Op::Write {
                    offset: 1,
                    len: 512
                },
                &[7; 512]
            )
            .0,
        Status::Nack(Nack::Io {
            errno: libc::EINVAL as u32
        })
    );
    // Still serving after every refusal; the tail did not grow.
    assert_eq!(client.call(VDISK, EPOCH, Op::Heartbeat, &[]).0, Status::Ok);
    assert_eq!(std::fs::metadata(&server.tail).unwrap().len(), TAIL_SIZE);
    server.stop().unwrap();
}

#[test]
fn malformed_header_closes_only_that_connection() {
    let server = Server::start();
    let mut bad = server.connect();
    bad.stream.write_all(&[0x5a; HEADER_LEN]).unwrap();
    assert!(bad.closed_by_server());
    let mut good = server.connect();
    assert_eq!(good.call(VDISK, EPOCH, Op::Heartbeat, &[]).0, Status::Ok);
    server.stop().unwrap();
}

#[test]
fn corrupted_payload_closes_the_connection_and_writes_nothing() {
    let server = Server::start();
    let mut client = server.connect();
    let data = pattern(4096, 3);
    let head = Frame::Request {
        id: 1,
        vdisk: VDISK,
        epoch: EPOCH,
        op: Op::Write {
            offset: 0,
            len: 4096,
        },
    }
    .encode(&data)
    .unwrap();
    let mut corrupted = data.clone();
    corrupted[10] ^= 1;
    client.stream.write_all(&head).unwrap();
    client.stream.write_all(&corrupted).unwrap();
    assert!(client.closed_by_server());
    assert_eq!(file_bytes(&server.tail, 0, 4096), vec![0; 4096]);
    server.stop().unwrap();
}

#[test]
fn a_reply_sent_to_the_server_closes_the_connection() {
    let server = Server::start();
    let mut client = server.connect();
    let head = Frame::Reply {
        id: 1,
        status: Status::Ok,
    }
    .encode(&[])
    .unwrap();
    client.stream.write_all(&head).unwrap();
    assert!(client.closed_by_server());
    server.stop().unwrap();
}

fn write_block(offset: u64) -> Op {
    Op::Write { offset, len: 4096 }
}

#[test]
fn a_stale_epoch_write_is_refused_and_never_reaches_the_tail() {
    let server = Server::start();
    let mut client = server.connect();
    let (status, _) = client.call(VDISK, EPOCH - 1, write_block(0), &pattern(4096, 1));
    assert_eq!(status, Status::Nack(Nack::StaleEpoch { current: EPOCH }));
    assert_eq!(file_bytes(&server.tail, 0, 4096), vec![0; 4096]);
    server.stop().unwrap();
}

#[test]
fn a_request_never_raises_an_epoch_however_new() {
    let server = Server::start();
    let mut client = server.connect();
    for epoch in [EPOCH + 1, u64::MAX] {
        let (status, _) = client.call_patiently(VDISK, epoch, write_block(0), &pattern(4096, 1));
        assert_eq!(status, Status::Nack(Nack::StaleEpoch { current: EPOCH }));
    }
    assert_eq!(file_bytes(&server.tail, 0, 4096), vec![0; 4096]);
    assert_eq!(server.exports.get(VDISK).unwrap().1, EPOCH);
    // The honest nodes, at the store's epoch, are still served.
    let (status, _) = client.call(VDISK, EPOCH, write_block(0), &pattern(4096, 2));
    assert_eq!(status, Status::Ok);
    assert_eq!(file_bytes(&server.tail, 0, 4096), pattern(4096, 2));
    server.stop().unwrap();
}

#[test]
fn a_newer_epoch_is_served_once_this_nodes_store_applies_it() {
    let server = Server::start();
    let mut client = server.connect();
    client.send(7, VDISK, EPOCH + 1, write_block(0), &pattern(4096, 1));
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(file_bytes(&server.tail, 0, 4096), vec![0; 4096]);
    // The store applies the new mapping: the held request runs.
    assert_eq!(server.exports.set_epoch(VDISK, EPOCH + 1), Some(EPOCH + 1));
    let (id, status, _) = client.recv();
    assert_eq!((id, status), (7, Status::Ok));
    assert_eq!(file_bytes(&server.tail, 0, 4096), pattern(4096, 1));
    let (status, _) = client.call(VDISK, EPOCH, write_block(4096), &pattern(4096, 2));
    assert_eq!(
        status,
        Status::Nack(Nack::StaleEpoch { current: EPOCH + 1 })
    );
    server.stop().unwrap();
}

#[test]
fn set_epoch_only_ever_raises_the_export_epoch() {
    let server = Server::start();
    assert_eq!(server.exports.set_epoch(VDISK, EPOCH + 3), Some(EPOCH + 3));
    assert_eq!(server.exports.set_epoch(VDISK, EPOCH), Some(EPOCH + 3));
    assert_eq!(server.exports.set_epoch(99, EPOCH), None);
    let mut client = server.connect();
    let (status, _) = client.call(VDISK, EPOCH + 2, Op::Flush, &[]);
    assert_eq!(
        status,
        Status::Nack(Nack::StaleEpoch { current: EPOCH + 3 })
    );
    server.stop().unwrap();
}

#[test]
fn a_peer_that_is_not_admitted_is_refused_everything_until_admitted_again() {
    let server = Server::start();
    let mut client = server.connect();
    let elsewhere = "elsewhere".to_owned();
    server
        .exports
        .admit_only(Some(std::collections::HashSet::from([elsewhere.clone()])));
    let (status, _) = client.call(VDISK, EPOCH, write_block(0), &pattern(4096, 3));
    assert_eq!(status, Status::Nack(Nack::NotAMember));
    assert_eq!(file_bytes(&server.tail, 0, 4096), vec![0; 4096]);
    let (status, _) = client.call(VDISK, EPOCH, Op::Heartbeat, &[]);
    assert_eq!(status, Status::Nack(Nack::NotAMember));

    // Admitted again on the same connection: membership is checked per
    // request.
    server
        .exports
        .admit_only(Some(std::collections::HashSet::from([
            elsewhere,
            "client".to_owned(),
        ])));
    let (status, _) = client.call(VDISK, EPOCH, write_block(0), &pattern(4096, 3));
    assert_eq!(status, Status::Ok);
    assert_eq!(file_bytes(&server.tail, 0, 4096), pattern(4096, 3));
    server.exports.admit_only(None);
    assert_eq!(client.call(VDISK, EPOCH, Op::Heartbeat, &[]).0, Status::Ok);
    server.stop().unwrap();
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

#[test]
fn a_well_formed_request_without_tls_is_neither_run_nor_answered() {
    let server = Server::start();
    let mut plain = server.connect_plain();
    plain
        .write_all(&request(1, VDISK, EPOCH, write_block(0), &pattern(4096, 7)))
        .unwrap();
    // The server reads a TLS handshake that is not one, says so in an alert
    // at most, and closes.
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    let answered = answer
        .first_chunk::<HEADER_LEN>()
        .is_some_and(|head| Header::decode(head).is_ok());
    assert!(!answered, "answered without TLS: {answer:?}");
    assert_eq!(file_bytes(&server.tail, 0, 4096), vec![0; 4096]);
    // The server still serves its members.
    assert_eq!(
        server.connect().call(VDISK, EPOCH, Op::Flush, &[]).0,
        Status::Ok
    );
    server.stop().unwrap();
}

#[test]
fn a_certificate_of_another_cluster_gets_no_byte_and_changes_none() {
    let server = Server::start();
    std::fs::write(&server.tail, pattern(TAIL_SIZE as usize, 9)).unwrap();
    let stranger = identity::NodeIdentity::from_secret("client", b"another cluster's secret")
        .unwrap()
        .client_config("server")
        .unwrap();
    let mut client = server.connect_as(stranger);
    // The stranger refuses the server's certificate, or the server refuses
    // the stranger's: either way, neither request is answered.
    let write = request(1, VDISK, EPOCH, write_block(0), &pattern(4096, 1));
    let read = request(
        2,
        VDISK,
        EPOCH,
        Op::Read {
            offset: 0,
            len: 4096,
        },
        &[],
    );
    let sent = client
        .stream
        .write_all(&[write, read].concat())
        .and_then(|()| client.stream.flush());
    let mut head = [0u8; HEADER_LEN];
    let answered = client.stream.read_exact(&mut head);
    assert!(sent.is_err() || answered.is_err(), "a stranger got a reply");
    assert_eq!(
        file_bytes(&server.tail, 0, TAIL_SIZE as usize),
        pattern(TAIL_SIZE as usize, 9)
    );
    server.stop().unwrap();
}

#[test]
fn an_export_for_one_node_is_no_tail_to_any_other() {
    let server = Server::start();
    // The tail served again, as a mirror's copy is: to node "primary" only.
    let copy = VDISK ^ (1 << 63);
    let (tail, _) = server.exports.get(VDISK).unwrap();
    let only = Clients::Only("primary".to_owned());
    assert!(server.exports.insert_if(copy, EPOCH, tail, only, || true));
    let mut client = server.connect();
    let (status, _) = client.call(copy, EPOCH, write_block(0), &pattern(4096, 4));
    assert_eq!(status, Status::Nack(Nack::NoSuchTail));
    let read = Op::Read {
        offset: 0,
        len: 4096,
    };
    assert_eq!(
        client.call(copy, EPOCH, read, &[]).0,
        Status::Nack(Nack::NoSuchTail)
    );
    assert_eq!(file_bytes(&server.tail, 0, 4096), vec![0; 4096]);

    let mut primary = server.connect_as(support::client_tls("primary", "server"));
    let (status, _) = primary.call(copy, EPOCH, write_block(0), &pattern(4096, 4));
    assert_eq!(status, Status::Ok);
    assert_eq!(file_bytes(&server.tail, 0, 4096), pattern(4096, 4));
    server.stop().unwrap();
}

#[test]
fn a_node_may_keep_only_so_many_connections_open() {
    let server = Server::start();
    let mut open: Vec<Client> = (0..16)
        .map(|_| {
            let mut client = server.connect();
            assert_eq!(client.call(VDISK, EPOCH, Op::Flush, &[]).0, Status::Ok);
            client
        })
        .collect();
    // The seventeenth of the same node is closed unanswered.
    let mut extra = server.connect();
    extra.send(1, VDISK, EPOCH, Op::Flush, &[]);
    let mut head = [0u8; HEADER_LEN];
    assert!(extra.stream.read_exact(&mut head).is_err());
    // Another node is not held back by it.
    let mut other = server.connect_as(support::client_tls("other", "server"));
    assert_eq!(other.call(VDISK, EPOCH, Op::Flush, &[]).0, Status::Ok);
    // One closed, one more may open.
    drop(open.pop());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let mut again = server.connect();
        again.send(2, VDISK, EPOCH, Op::Flush, &[]);
        if again.stream.read_exact(&mut head).is_ok() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no room after a close"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    server.stop().unwrap();
}

#[test]
fn a_request_whose_connection_closes_before_it_starts_never_starts() {
    let server = Server::start();
    let mut client = server.connect();
    // Held: this node's store has not applied the epoch yet.
    client.send(7, VDISK, EPOCH + 1, write_block(0), &pattern(4096, 1));
    std::thread::sleep(std::time::Duration::from_millis(200));
    // The sender gives up on the connection; the store catches up after.
    drop(client);
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(server.exports.set_epoch(VDISK, EPOCH + 1), Some(EPOCH + 1));
    std::thread::sleep(std::time::Duration::from_millis(1200));
    assert_eq!(
        file_bytes(&server.tail, 0, 4096),
        vec![0; 4096],
        "a request of a closed connection started"
    );
    server.stop().unwrap();
}

#[test]
fn a_silent_connection_is_closed_and_its_held_request_never_runs() {
    let server = Server::start();
    let mut client = server.connect();
    let sent = std::time::Instant::now();
    client.send(7, VDISK, EPOCH + 1, write_block(0), &pattern(4096, 1));
    // Nothing more from the client, not even a heartbeat: the server counts
    // it gone after SILENCE, long before the test client's 20 s read
    // timeout would end the wait.
    let replies = client.replies_until_closed();
    assert!(
        sent.elapsed() < std::time::Duration::from_secs(10),
        "a silent connection kept open"
    );
    assert!(!replies.contains(&(7, Status::Ok)), "{replies:?}");
    assert_eq!(file_bytes(&server.tail, 0, 4096), vec![0; 4096]);
    server.stop().unwrap();
}

#[test]
fn a_fence_closes_the_nodes_other_connections_and_answers_once_nothing_of_theirs_can_start() {
    let server = Server::start();
    let mut old = server.connect();
    old.send(7, VDISK, EPOCH + 1, write_block(0), &pattern(4096, 1));
    std::thread::sleep(std::time::Duration::from_millis(100));
    // The same node, on another connection (its other link).
    let mut other = server.connect();
    other.send(8, 0, 0, Op::Fence, &[]);
    // The store catches up while the fence waits for the held request:
    // too late for it, its connection is fenced.
    std::thread::sleep(std::time::Duration::from_millis(200));
    server.exports.set_epoch(VDISK, EPOCH + 1);
    let (id, status, _) = other.recv();
    assert_eq!((id, status), (8, Status::Ok));
    let replies = old.replies_until_closed();
    assert!(!replies.contains(&(7, Status::Ok)), "{replies:?}");
    assert_eq!(file_bytes(&server.tail, 0, 4096), vec![0; 4096]);
    // The fencing connection itself goes on.
    let (status, _) = other.call(VDISK, EPOCH + 1, write_block(0), &pattern(4096, 2));
    assert_eq!(status, Status::Ok);
    assert_eq!(file_bytes(&server.tail, 0, 4096), pattern(4096, 2));
    server.stop().unwrap();
}

#[test]
fn a_node_without_its_lease_touches_none_of_its_tails() {
    let lease = Lease::expired();
    let server = Server::start_leased(lease.clone());
    let mut client = server.connect();
    for op in [
        write_block(0),
        Op::Read {
            offset: 0,
            len: 4096,
        },
        Op::Flush,
    ] {
        let payload = match op {
            Op::Write { .. } => pattern(4096, 1),
            _ => Vec::new(),
        };
        let (status, data) = client.call(VDISK, EPOCH, op, &payload);
        assert_eq!(status, Status::Nack(Nack::NoLease), "{op:?}");
        assert!(data.is_empty());
    }
    // Heartbeats are answered: the link is up, the node only refuses I/O.
    let (status, _) = client.call(0, 0, Op::Heartbeat, &[]);
    assert_eq!(status, Status::Ok);
    assert_eq!(file_bytes(&server.tail, 0, 4096), vec![0; 4096]);

    lease.confirmed(std::time::Instant::now());
    let (status, _) = client.call(VDISK, EPOCH, write_block(0), &pattern(4096, 2));
    assert_eq!(status, Status::Ok);
    assert_eq!(file_bytes(&server.tail, 0, 4096), pattern(4096, 2));
    server.stop().unwrap();
}
