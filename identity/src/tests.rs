use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;

const SECRET: &[u8] = b"a cluster secret of some length";

/// Accepts one connection with `server` and answers with the client's
/// authenticated name, through the sessions links use ([`accept`],
/// [`connect`]); returns what the client read, or the error either
/// side saw.
async fn handshake(
    server: &NodeIdentity,
    client: Option<(&NodeIdentity, &str)>,
) -> Result<String, String> {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(server.server_config().unwrap());
    let accepting = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let (mut tls, name) = accept(&acceptor, stream).await.map_err(|e| e.to_string())?;
        assert_eq!(tls.in_kernel(), kernel_tls().await);
        tls.write_all(name.as_bytes()).await.unwrap();
        tls.shutdown().await.unwrap();
        Ok::<_, String>(name)
    });
    let stream = TcpStream::connect(addr).await.unwrap();
    let config = match client {
        Some((identity, peer)) => identity.client_config(peer).unwrap(),
        // A client that offers no certificate at all.
        None => {
            let mut roots = rustls::RootCertStore::empty();
            let ca = CertificateAuthority::derived(SECRET).unwrap();
            roots.add(ca.cert_der().clone()).unwrap();
            Arc::new(
                rustls::ClientConfig::builder_with_provider(Arc::new(
                    rustls::crypto::aws_lc_rs::default_provider(),
                ))
                .with_protocol_versions(&[&rustls::version::TLS13])
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
            )
        }
    };
    let connector = TlsConnector::from(config);
    let name = ServerName::try_from(server.name().to_owned()).unwrap();
    let client_side = async {
        let mut tls = connect(&connector, name, stream)
            .await
            .map_err(|e| e.to_string())?;
        let mut answer = String::new();
        tls.read_to_string(&mut answer)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(answer)
    };
    let answer = client_side.await;
    let accepted = accepting.await.unwrap();
    answer.and(accepted)
}

#[tokio::test]
async fn members_of_one_secret_know_each_other_by_name() {
    let a = NodeIdentity::from_secret("a", SECRET).unwrap();
    let b = NodeIdentity::from_secret("b", SECRET).unwrap();
    assert_eq!(handshake(&b, Some((&a, "b"))).await, Ok("a".to_owned()));
}

#[tokio::test]
async fn a_dialler_refuses_a_member_that_is_not_the_peer_it_dialled() {
    let a = NodeIdentity::from_secret("a", SECRET).unwrap();
    let c = NodeIdentity::from_secret("c", SECRET).unwrap();
    let refused = handshake(&c, Some((&a, "b"))).await.unwrap_err();
    assert!(refused.contains("NotValidForName"), "{refused}");
}

#[tokio::test]
async fn another_clusters_certificate_is_refused_both_ways() {
    let a = NodeIdentity::from_secret("a", SECRET).unwrap();
    let stranger = NodeIdentity::from_secret("a", b"another cluster's secret").unwrap();
    assert!(handshake(&a, Some((&stranger, "a"))).await.is_err());
    assert!(handshake(&stranger, Some((&a, "a"))).await.is_err());
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused() {
    let a = NodeIdentity::from_secret("a", SECRET).unwrap();
    let refused = handshake(&a, None).await.unwrap_err();
    assert!(refused.to_lowercase().contains("certificate"), "{refused}");
}

#[test]
fn the_derived_ca_is_the_same_on_every_node() {
    let one = CertificateAuthority::derived(SECRET).unwrap();
    let two = CertificateAuthority::derived(SECRET).unwrap();
    assert_eq!(one.cert_der(), two.cert_der());
    let other = CertificateAuthority::derived(b"another cluster's secret").unwrap();
    assert_ne!(one.cert_der(), other.cert_der());
}

fn write(dir: &std::path::Path, name: &str, text: &str, mode: u32) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

#[tokio::test]
async fn an_admins_ca_issues_certificates_nodes_load_from_files() {
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::generate("test").unwrap();
    // Reloaded from its files, as `ca issue` does.
    let ca = CertificateAuthority::from_pem(ca.cert_pem(), &ca.key_pem()).unwrap();
    let ca_path = write(dir.path(), "ca.pem", ca.cert_pem(), 0o644);
    let load = |node: &str, as_node: &str| {
        let issued = ca.issue(node, 30).unwrap();
        let cert = write(dir.path(), &format!("{node}.pem"), &issued.cert, 0o644);
        let key = write(dir.path(), &format!("{node}.key"), &issued.key, 0o600);
        NodeIdentity::load(as_node, &ca_path, &cert, &key)
    };
    let a = load("a", "a").unwrap();
    let b = load("b", "b").unwrap();
    assert_eq!(a.source(), Source::Files);
    assert_eq!(handshake(&b, Some((&a, "b"))).await, Ok("a".to_owned()));

    let wrong = load("c", "d").err().unwrap().to_string();
    assert!(wrong.contains("names node \"c\""), "{wrong}");

    let issued = ca.issue("e", 30).unwrap();
    let cert = write(dir.path(), "e.pem", &issued.cert, 0o644);
    let key = write(dir.path(), "e.key", &issued.key, 0o644);
    let exposed = NodeIdentity::load("e", &ca_path, &cert, &key)
        .err()
        .unwrap()
        .to_string();
    assert!(exposed.contains("chmod 600"), "{exposed}");

    // A certificate of another CA does not chain to this one.
    let other = CertificateAuthority::generate("other").unwrap();
    let issued = other.issue("f", 30).unwrap();
    let cert = write(dir.path(), "f.pem", &issued.cert, 0o644);
    let key = write(dir.path(), "f.key", &issued.key, 0o600);
    assert!(NodeIdentity::load("f", &ca_path, &cert, &key).is_err());
}

#[test]
fn node_names_are_checked_before_issuing() {
    let ca = CertificateAuthority::derived(SECRET).unwrap();
    assert!(ca.issue("no spaces", 1).is_err());
    assert!(ca.issue("", 1).is_err());
    assert!(ca.issue(&"x".repeat(65), 1).is_err());
    assert!(ca.issue("node-1.rack_2", 1).is_ok());
}

/// Both ends prefer AES-128-GCM, and let a session's secrets go to the
/// kernel.
#[test]
fn sessions_prefer_aes_128_gcm_and_may_go_to_the_kernel() {
    let a = NodeIdentity::from_secret("a", SECRET).unwrap();
    let server = a.server_config().unwrap();
    let client = a.client_config("b").unwrap();
    for provider in [server.crypto_provider(), client.crypto_provider()] {
        assert_eq!(provider.cipher_suites[0], crate::tls::PREFERRED_SUITE);
    }
    assert!(server.enable_secret_extraction && client.enable_secret_extraction);
}
