//! Fencing: who may reach a tail (TLS identity, exports, admission, connection caps), under which epoch and lease, and when a lost connection's requests can no longer start.

use super::*;

fn write_block(offset: u64) -> Op {
    Op::Write {
        offset,
        len: 4096,
        fua: false,
    }
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
