//! Feeds arbitrary bytes to the wire decoder as a stream of messages: it must
//! never panic, and whatever it accepts must encode back to the same bytes,
//! a cache message's body included.
//!
//! Random bytes almost never carry valid checksums, which would stop the
//! fuzzer at the first check; the first input byte therefore says whether to
//! seal each header (bit 0) and its payload (bit 1) with correct crc32c
//! values, so that the rules behind the checksums get explored too.
#![no_main]

use backend::wire::{CacheMessage, Frame, Header, CACHE_BODY_LEN, HEADER_LEN};
use crc32c::crc32c;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&seal, mut rest)) = data.split_first() else {
        return;
    };
    while let Some((head, after)) = rest.split_first_chunk::<HEADER_LEN>() {
        let mut head = *head;
        let announced = u32::from_le_bytes([head[44], head[45], head[46], head[47]]) as usize;
        let available = &after[..announced.min(after.len())];
        if seal & 2 != 0 {
            let crc = if available.is_empty() { 0 } else { crc32c(available) };
            head[48..52].copy_from_slice(&crc.to_le_bytes());
        }
        if seal & 1 != 0 {
            let crc = crc32c(&head[..52]);
            head[52..56].copy_from_slice(&crc.to_le_bytes());
        }
        let Ok(header) = Header::decode(&head) else {
            return;
        };
        let len = header.payload_len as usize;
        let Some(payload) = after.get(..len) else {
            return;
        };
        if header.verify_payload(payload).is_err() {
            return;
        }
        let encoded = header.frame.encode(payload);
        assert_eq!(encoded, Ok(head), "accepted header does not round-trip");
        if let Frame::Cache { vdisk, .. } = header.frame {
            let (body, data) = payload.split_at(CACHE_BODY_LEN);
            let Ok(body) = <&[u8; CACHE_BODY_LEN]>::try_from(body) else {
                return;
            };
            if let Ok(message) = CacheMessage::decode(&header, body) {
                let encoded = message.encode(vdisk, data);
                assert_eq!(encoded, Ok((head, *body)), "accepted cache message does not round-trip");
            }
        }
        rest = &after[len..];
    }
});
