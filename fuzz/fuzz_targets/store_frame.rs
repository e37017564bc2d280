//! Feeds arbitrary bytes to the store's receive path as an authenticated
//! member's session would carry them: the frame reader, the RPC decoder, and
//! for a write, the configuration's session check and apply. None may
//! panic, whatever a member garbles.
#![no_main]

use std::sync::OnceLock;

use configdb::raft::network::read_frame;
use configdb::raft::RaftRpc;
use configdb::Configuration;
use libfuzzer_sys::fuzz_target;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime")
    })
}

fuzz_target!(|data: &[u8]| {
    let mut session = data;
    let mut configuration = Configuration::default();
    runtime().block_on(async {
        // Frames one after another, as a connection reads them, until one
        // is refused or the bytes end.
        while let Ok(Some(rpc)) = read_frame::<_, RaftRpc>(&mut session).await {
            if let RaftRpc::Write(request) = rpc {
                configuration.apply(&request);
            }
        }
    });
});
