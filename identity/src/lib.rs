//! Who a ublkvd node is, and how it proves it: a cluster CA (an admin's, or
//! one derived from the cluster secret), node certificates that carry the
//! node's name, and mutually authenticated TLS 1.3 for every TCP surface
//! between nodes. A peer is the name in the certificate it proved, never
//! an address.

mod ca;
mod session;
mod tls;

pub use ca::{CertificateAuthority, IssuedPem, DEFAULT_NODE_DAYS};
pub use rustls;
pub use rustls::pki_types::ServerName;
pub use session::{accept, connect, kernel_tls, use_kernel_tls, SecureStream, SessionError};
pub use tls::{node_name, peer_name, NodeIdentity, Source};
pub use tokio_rustls::{client, server, TlsAcceptor, TlsConnector};

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("the private key {path} is readable by other users: chmod 600 it")]
    Exposed { path: String },
    #[error("{path}: {reason}")]
    Pem { path: String, reason: String },
    #[error("no certificate")]
    NoCertificate,
    #[error("bad certificate: {0}")]
    BadCertificate(String),
    #[error("the certificate names node {named:?}, but this node is {node:?}")]
    WrongName { named: String, node: String },
    #[error("node name {0:?} must be 1 to 64 letters, digits, '.', '_' or '-'")]
    BadName(String),
    #[error("certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error("TLS configuration: {0}")]
    Config(String),
}

#[cfg(test)]
mod tests;
