//! Feeds arbitrary datagrams to the gossip receive path: the envelope check,
//! then foca's decoder and state machine. Neither may panic, whatever a
//! stranger sends or a member holding the secret garbles.
//!
//! Random bytes never carry a valid tag, which would stop the fuzzer at the
//! envelope; bit 0 of the first input byte therefore seals the rest with the
//! cluster key, so that foca's handling of authenticated garbage gets
//! explored too. The replay window, which only compares timestamps and
//! nonces, has its own unit tests.
#![no_main]

use std::net::SocketAddr;

use foca::{AccumulatingRuntime, Foca, PostcardCodec};
use gossip::{ClusterKey, NodeId, NodeMeta, Timing};
use libfuzzer_sys::fuzz_target;
use rand::SeedableRng;

fuzz_target!(|data: &[u8]| {
    let Some((&seal, rest)) = data.split_first() else {
        return;
    };
    let key = ClusterKey::from_secret(b"the fuzzing cluster's secret");
    let mut datagram = if seal & 1 != 0 {
        let Ok(sealed) = key.seal(rest, 0) else {
            return;
        };
        sealed
    } else {
        rest.to_vec()
    };
    let Ok(opened) = key.open(&mut datagram) else {
        return;
    };
    let meta = NodeMeta {
        links: vec![SocketAddr::from(([10, 1, 0, 1], 7100))],
        tails: vec!["disk0".into()],
        version: "fuzz".into(),
    };
    let identity = NodeId::new("a".into(), SocketAddr::from(([10, 1, 0, 1], 7000)), meta);
    let rng = rand::rngs::StdRng::seed_from_u64(0);
    let mut foca = Foca::new(identity, Timing::default().foca_config(5), rng, PostcardCodec);
    let mut runtime = AccumulatingRuntime::new();
    let _ = foca.handle_data(opened.packet, &mut runtime);
});
