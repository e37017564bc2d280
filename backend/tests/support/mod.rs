//! Identities of the nodes these tests play: certificates of the CA the
//! tests' cluster secret derives, as the daemon's embedded default.

#![allow(dead_code)] // each test file uses a part

use std::sync::Arc;

use identity::rustls::{ClientConfig, ServerConfig};
use identity::NodeIdentity;

pub const SECRET: &[u8] = b"the backend tests' cluster secret";

pub fn node(name: &str) -> NodeIdentity {
    NodeIdentity::from_secret(name, SECRET).unwrap()
}

/// What node `name` serves its tails with.
pub fn server_tls(name: &str) -> Arc<ServerConfig> {
    node(name).server_config().unwrap()
}

/// What node `me` dials node `peer` with.
pub fn client_tls(me: &str, peer: &str) -> Arc<ClientConfig> {
    node(me).client_config(peer).unwrap()
}
