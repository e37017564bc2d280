//! Serving: requests round trip to the tail, and what is malformed closes only its own connection.

use super::*;

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
            fua: false,
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
                    len: 8192,
                    fua: false,
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
                    len: 512,
                    fua: false,
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
            fua: false,
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
