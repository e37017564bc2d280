//! A node's identity in TLS: its certificate chain and key, the CA it
//! trusts, and the rustls configurations every link, peer server and store
//! connection of ublkvd uses: TLS 1.3 only, both sides authenticated, the
//! peer known by the node name its certificate carries.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_cert_signed_by_trust_anchor, Resumption};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{NoServerSessionStorage, ParsedCertificate, WebPkiClientVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig,
    SignatureScheme,
};

use crate::ca::{private_key, CertificateAuthority, DEFAULT_NODE_DAYS};
use crate::IdentityError;

/// The longest node name a certificate may carry (the config's limit).
const MAX_NAME_LEN: usize = 64;

/// Who this node is to its peers, and whom it trusts.
#[derive(Clone)]
pub struct NodeIdentity {
    name: String,
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
    /// How this identity was made, for `status` and logs.
    source: Source,
}

/// Where a node's identity comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The `[tls]` section's CA, certificate and key.
    Files,
    /// The CA derived from the cluster secret, with a certificate issued
    /// to this node at start.
    ClusterSecret,
}

impl NodeIdentity {
    /// The embedded default: a certificate for `name`, issued at start by
    /// the CA every holder of `secret` derives alike
    /// ([`CertificateAuthority::derived`]).
    pub fn from_secret(name: &str, secret: &[u8]) -> Result<NodeIdentity, IdentityError> {
        let ca = CertificateAuthority::derived(secret)?;
        NodeIdentity::issued_by(&ca, name, Source::ClusterSecret)
    }

    /// A certificate for `name`, issued now by `ca` (tests, and the
    /// derived default).
    pub fn issued_by(
        ca: &CertificateAuthority,
        name: &str,
        source: Source,
    ) -> Result<NodeIdentity, IdentityError> {
        let (cert, key) = ca.issue_with_key(name, DEFAULT_NODE_DAYS)?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.cert_der().clone())?;
        Ok(NodeIdentity {
            name: name.to_owned(),
            chain: vec![cert.der().clone()],
            key: Arc::new(private_key(&key)),
            roots: Arc::new(roots),
            provider: provider(),
            source,
        })
    }

    /// An identity from PEM files: the CA certificates to trust, this
    /// node's certificate (chain), and its key, which other users must not
    /// be able to read. The certificate must name `name` and chain to the
    /// CA now, so that a wrong file fails the start, not every link.
    pub fn load(
        name: &str,
        ca: &Path,
        cert: &Path,
        key: &Path,
    ) -> Result<NodeIdentity, IdentityError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| IdentityError::Read {
                path: path.display().to_string(),
                source,
            })
        };
        check_private(key)?;
        let mut roots = RootCertStore::empty();
        for root in parse_certificates(&read(ca)?)? {
            roots.add(root)?;
        }
        let chain = parse_certificates(&read(cert)?)?;
        let key_der =
            PrivateKeyDer::from_pem_slice(&read(key)?).map_err(|e| IdentityError::Pem {
                path: key.display().to_string(),
                reason: e.to_string(),
            })?;
        let identity = NodeIdentity {
            name: name.to_owned(),
            chain,
            key: Arc::new(key_der),
            roots: Arc::new(roots),
            provider: provider(),
            source: Source::Files,
        };
        let (leaf, intermediates) = identity
            .chain
            .split_first()
            .ok_or(IdentityError::NoCertificate)?;
        let named = node_name(leaf)?;
        if named != name {
            return Err(IdentityError::WrongName {
                named,
                node: name.to_owned(),
            });
        }
        identity.check_chain(leaf, intermediates)?;
        // The key must be the certificate's: rustls checks when it builds
        // a configuration.
        identity.server_config()?;
        Ok(identity)
    }

    /// This node's name, as its certificate carries it.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn source(&self) -> Source {
        self.source
    }

    /// What the peer server and the store's listener accept with: TLS 1.3,
    /// a client certificate of the cluster's CA required.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, IdentityError> {
        let clients =
            WebPkiClientVerifier::builder_with_provider(self.roots.clone(), self.provider.clone())
                .build()
                .map_err(|e| IdentityError::Config(e.to_string()))?;
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(clients)
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        // Every connection proves both certificates afresh: links live
        // long, and a resumed session would carry a name no certificate
        // shows any more.
        config.session_storage = Arc::new(NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        // For the hand-off of a link's session to the kernel.
        config.enable_secret_extraction = true;
        Ok(Arc::new(config))
    }

    /// What this node dials `peer` with: TLS 1.3, this node's certificate,
    /// and a server certificate of the cluster's CA that names `peer`, not
    /// merely any member.
    pub fn client_config(&self, peer: &str) -> Result<Arc<ClientConfig>, IdentityError> {
        self.dialler(Some(peer.to_owned()))
    }

    /// What this node dials a node of the cluster with when it knows the
    /// node only by address: any certificate of the cluster's CA is taken,
    /// and the caller checks the name ([`peer_name`]) before it trusts the
    /// node with anything.
    pub fn client_config_any_member(&self) -> Result<Arc<ClientConfig>, IdentityError> {
        self.dialler(None)
    }

    fn dialler(&self, peer: Option<String>) -> Result<Arc<ClientConfig>, IdentityError> {
        let verifier = PeerVerifier {
            peer,
            roots: self.roots.clone(),
            provider: self.provider.clone(),
        };
        let mut config = ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())?;
        config.resumption = Resumption::disabled();
        // Peers are dialled by address; the name checked is the one above.
        config.enable_sni = false;
        config.enable_secret_extraction = true;
        Ok(Arc::new(config))
    }

    fn check_chain(
        &self,
        leaf: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> Result<(), IdentityError> {
        let parsed = ParsedCertificate::try_from(leaf)?;
        verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            UnixTime::now(),
            self.provider.signature_verification_algorithms.all,
        )?;
        Ok(())
    }
}

/// The node name of a connection's authenticated peer: the one DNS name
/// of the certificate it proved it holds the key of.
pub fn peer_name(connection: &rustls::CommonState) -> Result<String, IdentityError> {
    let leaf = connection
        .peer_certificates()
        .and_then(|chain| chain.first())
        .ok_or(IdentityError::NoCertificate)?;
    node_name(leaf)
}

/// The node a certificate names: its one DNS subject alternative name.
pub fn node_name(cert: &CertificateDer<'_>) -> Result<String, IdentityError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert)
        .map_err(|e| IdentityError::BadCertificate(e.to_string()))?;
    let names = parsed
        .subject_alternative_name()
        .map_err(|e| IdentityError::BadCertificate(e.to_string()))?
        .map(|ext| ext.value.general_names.clone())
        .unwrap_or_default();
    let mut dns = names.iter().filter_map(|name| match name {
        x509_parser::extensions::GeneralName::DNSName(name) => Some(*name),
        _ => None,
    });
    match (dns.next(), dns.next()) {
        (Some(name), None) => {
            check_node_name(name)?;
            Ok(name.to_owned())
        }
        _ => Err(IdentityError::BadCertificate(
            "a node certificate carries exactly one DNS name, the node's".to_owned(),
        )),
    }
}

/// Node names are 1 to 64 letters, digits, '.', '_' or '-'.
pub(crate) fn check_node_name(name: &str) -> Result<(), IdentityError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if name.is_empty() || name.len() > MAX_NAME_LEN || !name.chars().all(allowed) {
        return Err(IdentityError::BadName(name.to_owned()));
    }
    Ok(())
}

pub(crate) fn parse_certificates(
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| IdentityError::BadCertificate(e.to_string()))?;
    if certs.is_empty() {
        return Err(IdentityError::NoCertificate);
    }
    Ok(certs)
}

/// A private key file must be readable by its owner alone.
fn check_private(path: &Path) -> Result<(), IdentityError> {
    use std::os::unix::fs::PermissionsExt;
    let metadata = std::fs::metadata(path).map_err(|source| IdentityError::Read {
        path: path.display().to_string(),
        source,
    })?;
    if metadata.permissions().mode() & 0o077 != 0 {
        return Err(IdentityError::Exposed {
            path: path.display().to_string(),
        });
    }
    Ok(())
}

/// The cipher suite sessions prefer: AES-128-GCM, the cheapest where the
/// CPU has AES instructions, and one the kernel's TLS has.
pub(crate) const PREFERRED_SUITE: rustls::SupportedCipherSuite =
    rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256;

/// aws-lc-rs, with the TLS 1.3 suites the kernel's TLS also has, in order
/// of speed on a CPU with AES instructions.
fn provider() -> Arc<CryptoProvider> {
    use rustls::crypto::aws_lc_rs::cipher_suite::{
        TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256,
    };
    Arc::new(CryptoProvider {
        cipher_suites: vec![
            PREFERRED_SUITE,
            TLS13_AES_256_GCM_SHA384,
            TLS13_CHACHA20_POLY1305_SHA256,
        ],
        ..rustls::crypto::aws_lc_rs::default_provider()
    })
}

/// Checks a dialled peer: its certificate chains to the cluster's CA and,
/// with `peer`, names the node this link is for.
#[derive(Debug)]
struct PeerVerifier {
    peer: Option<String>,
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        match node_name(end_entity) {
            Ok(name) if self.peer.as_ref().is_none_or(|peer| *peer == name) => {
                Ok(ServerCertVerified::assertion())
            }
            _ => Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
