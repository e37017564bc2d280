use super::*;

fn request(op: Op) -> Frame {
    Frame::Request {
        id: 7,
        vdisk: 3,
        epoch: 9,
        op,
    }
}

fn every_kind_of_frame() -> Vec<(Frame, Vec<u8>)> {
    let data = vec![0xa5; 4096];
    vec![
        (
            request(Op::Read {
                offset: 4096,
                len: 8192,
            }),
            vec![],
        ),
        (
            request(Op::Write {
                offset: 0,
                len: 4096,
                fua: false,
            }),
            data.clone(),
        ),
        (
            request(Op::Write {
                offset: 8192,
                len: 4096,
                fua: true,
            }),
            data.clone(),
        ),
        (request(Op::Flush), vec![]),
        (
            request(Op::Discard {
                offset: 1 << 40,
                len: 1 << 20,
            }),
            vec![],
        ),
        (
            request(Op::WriteZeroes {
                offset: 512,
                len: 512,
            }),
            vec![],
        ),
        (request(Op::Heartbeat), vec![]),
        (request(Op::Fence), vec![]),
        (
            Frame::Reply {
                id: 7,
                status: Status::Ok,
            },
            vec![],
        ),
        (
            Frame::Reply {
                id: 7,
                status: Status::Ok,
            },
            data,
        ),
        (
            Frame::Reply {
                id: 8,
                status: Status::Nack(Nack::NoSuchTail),
            },
            vec![],
        ),
        (
            Frame::Reply {
                id: 8,
                status: Status::Nack(Nack::Io { errno: 5 }),
            },
            vec![],
        ),
        (
            Frame::Reply {
                id: 8,
                status: Status::Nack(Nack::StaleEpoch { current: 12 }),
            },
            vec![],
        ),
        (
            Frame::Reply {
                id: 8,
                status: Status::Nack(Nack::ShuttingDown),
            },
            vec![],
        ),
        (
            Frame::Reply {
                id: 8,
                status: Status::Nack(Nack::NotAMember),
            },
            vec![],
        ),
        (
            Frame::Reply {
                id: 9,
                status: Status::Nack(Nack::NoLease),
            },
            vec![],
        ),
    ]
}

/// Recomputes the header checksum after a test tampered with a field.
fn reseal(bytes: &mut [u8; HEADER_LEN]) {
    let crc = crc32c::crc32c(&bytes[..52]);
    bytes[52..56].copy_from_slice(&crc.to_le_bytes());
}

#[test]
fn every_frame_round_trips_with_its_payload() {
    for (frame, payload) in every_kind_of_frame() {
        let bytes = frame.encode(&payload).unwrap();
        let header = Header::decode(&bytes).unwrap();
        assert_eq!(header.frame, frame);
        assert_eq!(header.payload_len as usize, payload.len());
        header.verify_payload(&payload).unwrap();
    }
}

#[test]
fn any_single_bit_flip_in_a_header_is_refused() {
    for (frame, payload) in every_kind_of_frame() {
        let bytes = frame.encode(&payload).unwrap();
        for bit in 0..HEADER_LEN * 8 {
            let mut flipped = bytes;
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert!(Header::decode(&flipped).is_err(), "{frame:?} bit {bit}");
        }
    }
}

#[test]
fn corrupted_or_truncated_payload_is_refused() {
    let frame = request(Op::Write {
        offset: 0,
        len: 4096,
        fua: false,
    });
    let mut payload = vec![1; 4096];
    let header = Header::decode(&frame.encode(&payload).unwrap()).unwrap();
    assert_eq!(
        header.verify_payload(&payload[..4095]),
        Err(WireError::PayloadLength {
            expected: 4096,
            actual: 4095
        })
    );
    payload[100] ^= 0x10;
    assert_eq!(
        header.verify_payload(&payload),
        Err(WireError::PayloadChecksum)
    );
}

#[test]
fn wrong_magic_and_version_are_named() {
    let mut bytes = request(Op::Flush).encode(&[]).unwrap();
    bytes[0] = b'X';
    assert!(matches!(
        Header::decode(&bytes),
        Err(WireError::BadMagic(_))
    ));
    let mut bytes = request(Op::Flush).encode(&[]).unwrap();
    bytes[4] = 2;
    reseal(&mut bytes);
    assert_eq!(
        Header::decode(&bytes),
        Err(WireError::UnsupportedVersion(2))
    );
}

#[test]
fn unknown_kinds_codes_and_reserved_bits_are_refused() {
    let good = request(Op::Flush).encode(&[]).unwrap();
    for (index, value) in [(5, 9), (6, 9), (6, 77), (7, 1)] {
        let mut bytes = good;
        bytes[index] = value;
        reseal(&mut bytes);
        assert!(Header::decode(&bytes).is_err(), "byte {index} = {value}");
    }
}

#[test]
fn reply_codes_past_no_lease_are_unknown() {
    let nack = Frame::Reply {
        id: 1,
        status: Status::Nack(Nack::NoLease),
    };
    let mut bytes = nack.encode(&[]).unwrap();
    assert_eq!(bytes[6], 6);
    bytes[6] = 7;
    reseal(&mut bytes);
    assert_eq!(
        Header::decode(&bytes),
        Err(WireError::UnknownCode {
            kind: "reply",
            code: 7
        })
    );
}

#[test]
fn lengths_are_bounded_and_consistent() {
    let too_long = request(Op::Read {
        offset: 0,
        len: MAX_PAYLOAD + 1,
    });
    assert_eq!(
        too_long.encode(&[]),
        Err(WireError::PayloadTooLong(MAX_PAYLOAD + 1))
    );
    assert!(request(Op::Read { offset: 0, len: 0 }).encode(&[]).is_err());
    assert!(request(Op::Read {
        offset: u64::MAX - 10,
        len: 4096
    })
    .encode(&[])
    .is_err());
    assert!(request(Op::Write {
        offset: 0,
        len: 4096,
        fua: false,
    })
    .encode(&[0; 512])
    .is_err());
    assert!(request(Op::Flush).encode(&[0; 512]).is_err());
    let nack = Frame::Reply {
        id: 1,
        status: Status::Nack(Nack::ShuttingDown),
    };
    assert!(nack.encode(&[0; 512]).is_err());
    assert!(request(Op::Write {
        offset: 0,
        len: MAX_PAYLOAD + 4096,
        fua: false,
    })
    .encode(&vec![0; (MAX_PAYLOAD + 4096) as usize])
    .is_err());
}

#[test]
fn a_header_announcing_an_oversized_payload_is_refused_before_reading_it() {
    let mut bytes = Frame::Reply {
        id: 1,
        status: Status::Ok,
    }
    .encode(&[])
    .unwrap();
    bytes[44..48].copy_from_slice(&u32::MAX.to_le_bytes());
    bytes[48..52].copy_from_slice(&1u32.to_le_bytes());
    reseal(&mut bytes);
    assert_eq!(
        Header::decode(&bytes),
        Err(WireError::PayloadTooLong(u32::MAX))
    );
}

#[test]
fn unused_fields_must_be_zero() {
    let mut bytes = request(Op::Flush).encode(&[]).unwrap();
    bytes[32] = 1; // an offset on a flush
    reseal(&mut bytes);
    assert_eq!(
        Header::decode(&bytes),
        Err(WireError::Inconsistent("unused field is not zero"))
    );
}
