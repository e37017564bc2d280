//! The cluster's certificate authority: made by `ublkvd ca init` and kept by
//! the admin, or derived from the cluster secret, and the node certificates
//! it issues. A node's name is its certificate's only DNS subject
//! alternative name: that name, not an address, is who a peer is.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, PKCS_ED25519,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::IdentityError;

/// The derived CA's key comes from the cluster secret for this one purpose.
const DERIVED_CA_CONTEXT: &str = "ublkvd 2026 derived cluster CA signing key v1";

/// The prefix of a PKCS#8 v1 document holding an Ed25519 private key
/// (RFC 8410, section 7): the 32-byte seed follows.
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// How long an issued node certificate is valid, by default.
pub const DEFAULT_NODE_DAYS: u32 = 825;
/// How long a CA made by `ca init` is valid.
const CA_DAYS: u32 = 3650;

/// A CA that can issue node certificates: its certificate and its key.
pub struct CertificateAuthority {
    cert: CertificateDer<'static>,
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A node certificate and its private key, as PEM.
pub struct IssuedPem {
    pub cert: String,
    pub key: String,
}

impl CertificateAuthority {
    /// A new CA with a fresh random key, valid ten years from now.
    pub fn generate(cluster: &str) -> Result<CertificateAuthority, IdentityError> {
        let key = KeyPair::generate_for(&PKCS_ED25519)?;
        let now = now();
        let mut params = ca_params(&format!("ublkvd cluster CA {cluster}"));
        params.not_before = now - std::time::Duration::from_secs(3600);
        params.not_after = now + days(CA_DAYS);
        Self::self_signed(params, key)
    }

    /// The CA every holder of the cluster secret derives alike: the same
    /// key, name and certificate bytes on every node, so nodes that share
    /// the secret trust each other's certificates without an admin's CA.
    /// Whoever has the secret can issue a certificate for any name: this
    /// CA is exactly as strong as the secret.
    pub fn derived(secret: &[u8]) -> Result<CertificateAuthority, IdentityError> {
        let seed = blake3::derive_key(DERIVED_CA_CONTEXT, secret);
        let mut pkcs8 = ED25519_PKCS8_PREFIX.to_vec();
        pkcs8.extend_from_slice(&seed);
        let key =
            KeyPair::from_pkcs8_der_and_sign_algo(&PrivatePkcs8KeyDer::from(pkcs8), &PKCS_ED25519)?;
        let mut params = ca_params("ublkvd cluster CA (derived from the cluster secret)");
        // Fixed, so that every node derives the same certificate (the
        // serial too: rcgen derives it from the public key).
        params.not_before = rcgen::date_time_ymd(2025, 1, 1);
        params.not_after = rcgen::date_time_ymd(4000, 1, 1);
        Self::self_signed(params, key)
    }

    /// A CA kept in PEM files (`ca init`'s, or the admin's own PKI's).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<CertificateAuthority, IdentityError> {
        let cert = crate::tls::parse_certificates(cert_pem.as_bytes())?
            .into_iter()
            .next()
            .ok_or(IdentityError::NoCertificate)?;
        let key = KeyPair::from_pem(key_pem)?;
        let issuer = Issuer::from_ca_cert_der(&cert, key)?;
        Ok(CertificateAuthority {
            cert,
            cert_pem: cert_pem.to_owned(),
            issuer,
        })
    }

    fn self_signed(
        params: CertificateParams,
        key: KeyPair,
    ) -> Result<CertificateAuthority, IdentityError> {
        let cert = params.self_signed(&key)?;
        let issuer = Issuer::new(params, key);
        Ok(CertificateAuthority {
            cert: cert.der().clone(),
            cert_pem: cert.pem(),
            issuer,
        })
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// A certificate naming `node`, for a fresh key, valid for `valid_days`
    /// from an hour ago (clocks drift).
    pub fn issue(&self, node: &str, valid_days: u32) -> Result<IssuedPem, IdentityError> {
        let (cert, key) = self.issue_with_key(node, valid_days)?;
        Ok(IssuedPem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }

    pub(crate) fn issue_with_key(
        &self,
        node: &str,
        valid_days: u32,
    ) -> Result<(rcgen::Certificate, KeyPair), IdentityError> {
        crate::tls::check_node_name(node)?;
        let key = KeyPair::generate_for(&PKCS_ED25519)?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, node);
        params.distinguished_name = name;
        params.subject_alt_names = vec![SanType::DnsName(node.try_into()?)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        // A node is a server to the peers that dial it and a client of
        // those it dials: one certificate for both.
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let now = now();
        params.not_before = now - std::time::Duration::from_secs(3600);
        params.not_after = now + days(valid_days);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert, key))
    }
}

/// The key of an issued certificate, in the form rustls takes.
pub(crate) fn private_key(key: &KeyPair) -> PrivateKeyDer<'static> {
    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()))
}

/// A CA's parameters. No certificate here sets a serial: rcgen derives it
/// from the certificate's public key, unique for a fresh key and the same
/// everywhere for the derived CA's.
fn ca_params(common_name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    params.distinguished_name = name;
    // Issues node certificates only, never another CA.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

fn now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

fn days(count: u32) -> std::time::Duration {
    std::time::Duration::from_secs(u64::from(count) * 86_400)
}
