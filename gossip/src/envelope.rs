//! Encrypted gossip packets: every datagram is sealed with
//! XChaCha20-Poly1305 under a key derived from the cluster secret, so a node
//! without the secret can neither read the membership (names, addresses,
//! tails) nor join or disturb it. Each datagram also carries its sender's
//! clock and a random nonce, for the receiver's [`crate::ReplayWindow`].
//! Pure functions over bytes; the agent counts what fails.
//!
//! Layout: magic (4) | sent at, ms since the Unix epoch (u64 LE, 8) |
//! nonce (24) | ciphertext of foca's packet | tag (16). The magic and the
//! timestamp are authenticated as associated data; the nonce is
//! authenticated by being the nonce.

use std::path::Path;

use chacha20poly1305::{AeadInOut, KeyInit, Tag, XChaCha20Poly1305, XNonce};

/// Marks a ublkvd gossip datagram, version 2 of this envelope (version 1
/// was authenticated, not encrypted, and had no timestamp nor nonce).
const MAGIC: [u8; 4] = *b"UVG2";
/// Magic and timestamp: sent in the clear, authenticated.
const HEADER_LEN: usize = MAGIC.len() + 8;
/// XChaCha20's 192-bit nonce: drawn at random for each datagram, it never
/// repeats in practice, so no counter has to survive a restart.
const NONCE_LEN: usize = 24;
/// Poly1305's 128-bit tag.
const TAG_LEN: usize = 16;
/// What the envelope adds to foca's packet: 52 bytes.
pub const OVERHEAD: usize = HEADER_LEN + NONCE_LEN + TAG_LEN;
/// The largest payload of a UDP datagram over IPv4.
const MAX_DATAGRAM: usize = 65_507;
/// A secret shorter than this is refused: it could be guessed.
const MIN_SECRET_LEN: usize = 16;
/// Keys are derived from the secret file's bytes for this one purpose.
const KEY_CONTEXT: &str = "ublkvd 2026 gossip packet encryption v2";

/// A datagram's nonce, unique to it.
pub type Nonce = [u8; NONCE_LEN];

/// Why a datagram was dropped before its contents were looked at.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OpenError {
    #[error("datagram of {len} bytes is shorter than the envelope")]
    Short { len: usize },
    #[error("not a ublkvd gossip datagram of this version")]
    BadMagic,
    #[error("does not authenticate: wrong cluster secret, or altered")]
    BadTag,
}

/// Why a packet cannot be sealed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    #[error("a packet of {len} bytes does not fit in a UDP datagram")]
    TooLong { len: usize },
}

/// What an authenticated datagram holds.
#[derive(Debug, PartialEq, Eq)]
pub struct Opened<'a> {
    /// When the sender sealed it, in ms since the Unix epoch by its clock.
    pub sent_at_ms: u64,
    pub nonce: Nonce,
    /// foca's packet, decrypted.
    pub packet: &'a [u8],
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read the cluster secret {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("the cluster secret {path} is readable by other users: chmod 600 it")]
    Exposed { path: String },
    #[error("the cluster secret {path} has {len} bytes: it needs at least {MIN_SECRET_LEN}")]
    TooShort { path: String, len: usize },
}

/// Reads the cluster secret from `path`, without surrounding whitespace;
/// refuses a file that other users can read or that is too short to be a
/// secret. Other keys of the cluster (the store's) derive from it too.
pub fn read_secret(path: &Path) -> Result<Vec<u8>, SecretError> {
    use std::os::unix::fs::PermissionsExt;
    let shown = path.display().to_string();
    let read_error = |source| SecretError::Read {
        path: shown.clone(),
        source,
    };
    let metadata = std::fs::metadata(path).map_err(read_error)?;
    if metadata.permissions().mode() & 0o007 != 0 {
        return Err(SecretError::Exposed { path: shown });
    }
    let secret = std::fs::read(path).map_err(read_error)?;
    let trimmed = secret.trim_ascii();
    if trimmed.len() < MIN_SECRET_LEN {
        return Err(SecretError::TooShort {
            path: shown,
            len: trimmed.len(),
        });
    }
    Ok(trimmed.to_vec())
}

/// The key every member of one cluster shares.
#[derive(Clone)]
pub struct ClusterKey(XChaCha20Poly1305);

impl ClusterKey {
    /// Derives the key from a secret's bytes (any length ≥ 16).
    pub fn from_secret(secret: &[u8]) -> ClusterKey {
        let key = blake3::derive_key(KEY_CONTEXT, secret);
        ClusterKey(XChaCha20Poly1305::new(&key.into()))
    }

    /// Reads the secret file and derives the key from it.
    pub fn load(path: &Path) -> Result<ClusterKey, SecretError> {
        read_secret(path).map(|secret| ClusterKey::from_secret(&secret))
    }

    /// Wraps foca's packet for the wire, stamped `sent_at_ms` (ms since the
    /// Unix epoch). The nonce comes from the thread's CSPRNG, not from the
    /// caller, so that no caller can reuse one: a repeated nonce would leak
    /// the two plaintexts' difference and allow forgeries.
    pub fn seal(&self, packet: &[u8], sent_at_ms: u64) -> Result<Vec<u8>, SealError> {
        let too_long = SealError::TooLong { len: packet.len() };
        if packet.len() > MAX_DATAGRAM - OVERHEAD {
            return Err(too_long);
        }
        let nonce: Nonce = rand::random();
        let mut datagram = Vec::with_capacity(packet.len() + OVERHEAD);
        datagram.extend_from_slice(&MAGIC);
        datagram.extend_from_slice(&sent_at_ms.to_le_bytes());
        datagram.extend_from_slice(&nonce);
        datagram.extend_from_slice(packet);
        let (header, rest) = datagram.split_at_mut(HEADER_LEN);
        let plaintext = &mut rest[NONCE_LEN..];
        let tag = self
            .0
            .encrypt_inout_detached(&XNonce::from(nonce), header, plaintext.into())
            .map_err(|_| too_long)?;
        datagram.extend_from_slice(&tag);
        Ok(datagram)
    }

    /// Authenticates a datagram and decrypts it in place; the tag is checked
    /// (in constant time) before anything is decrypted.
    pub fn open<'a>(&self, datagram: &'a mut [u8]) -> Result<Opened<'a>, OpenError> {
        let len = datagram.len();
        let short = || OpenError::Short { len };
        let (header, rest) = datagram
            .split_first_chunk_mut::<HEADER_LEN>()
            .ok_or_else(short)?;
        let (nonce, rest) = rest
            .split_first_chunk_mut::<NONCE_LEN>()
            .ok_or_else(short)?;
        let (ciphertext, tag) = rest.split_last_chunk_mut::<TAG_LEN>().ok_or_else(short)?;
        let (magic, sent_at) = header
            .split_first_chunk::<{ MAGIC.len() }>()
            .ok_or_else(short)?;
        if *magic != MAGIC {
            return Err(OpenError::BadMagic);
        }
        let sent_at_ms = u64::from_le_bytes(*sent_at.first_chunk().ok_or_else(short)?);
        self.0
            .decrypt_inout_detached(
                &XNonce::from(*nonce),
                header,
                ciphertext.into(),
                &Tag::from(*tag),
            )
            .map_err(|_| OpenError::BadTag)?;
        Ok(Opened {
            sent_at_ms,
            nonce: *nonce,
            packet: ciphertext,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"correct horse battery staple";

    /// Some time in 2026, in milliseconds since the epoch.
    const SENT_AT: u64 = 1_780_000_000_000;

    #[test]
    fn a_sealed_packet_opens_under_the_same_secret_with_its_timestamp() {
        let key = ClusterKey::from_secret(SECRET);
        let mut datagram = key.seal(b"foca packet", SENT_AT).unwrap();
        assert_eq!(datagram.len(), 11 + OVERHEAD);
        let opened = key.open(&mut datagram).unwrap();
        assert_eq!(opened.packet, b"foca packet");
        assert_eq!(opened.sent_at_ms, SENT_AT);
    }

    #[test]
    fn the_packet_is_encrypted_under_a_fresh_nonce_each_time() {
        let key = ClusterKey::from_secret(SECRET);
        let packet = b"node-name-alpha at 10.1.0.1:7100 holds alpha-disk0";
        let mut first = key.seal(packet, SENT_AT).unwrap();
        let mut second = key.seal(packet, SENT_AT).unwrap();
        assert_ne!(first, second);
        for datagram in [&first, &second] {
            assert!(!contains(datagram, b"node-name-alpha"));
            assert!(!contains(datagram, b"alpha-disk0"));
        }
        let first = key.open(&mut first).unwrap();
        let second = key.open(&mut second).unwrap();
        assert_ne!(first.nonce, second.nonce);
        assert_eq!((first.packet, second.packet), (&packet[..], &packet[..]));
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn another_secret_or_any_altered_byte_is_refused() {
        let key = ClusterKey::from_secret(SECRET);
        let datagram = key.seal(b"foca packet", SENT_AT).unwrap();
        let stranger = ClusterKey::from_secret(b"some other cluster's secret");
        assert_eq!(stranger.open(&mut datagram.clone()), Err(OpenError::BadTag));
        // The timestamp, the nonce, the ciphertext and the tag: a bit
        // flipped in any of them is caught.
        for i in MAGIC.len()..datagram.len() {
            let mut altered = datagram.clone();
            altered[i] ^= 0x01;
            assert_eq!(key.open(&mut altered), Err(OpenError::BadTag), "byte {i}");
        }
        let mut altered = datagram.clone();
        altered[0] = b'X';
        assert_eq!(key.open(&mut altered), Err(OpenError::BadMagic));
        let mut truncated = datagram[..datagram.len() - 1].to_vec();
        assert_eq!(key.open(&mut truncated), Err(OpenError::BadTag));
        let mut short = datagram[..OVERHEAD - 1].to_vec();
        assert_eq!(
            key.open(&mut short),
            Err(OpenError::Short { len: OVERHEAD - 1 })
        );
    }

    #[test]
    fn a_timestamp_moved_to_look_fresh_is_refused() {
        let key = ClusterKey::from_secret(SECRET);
        let mut datagram = key.seal(b"foca packet", SENT_AT).unwrap();
        let later = SENT_AT + 3_600_000;
        datagram[MAGIC.len()..HEADER_LEN].copy_from_slice(&later.to_le_bytes());
        assert_eq!(key.open(&mut datagram), Err(OpenError::BadTag));
    }

    #[test]
    fn an_empty_packet_seals_and_an_oversized_one_does_not() {
        let key = ClusterKey::from_secret(SECRET);
        let mut datagram = key.seal(b"", SENT_AT).unwrap();
        assert_eq!(datagram.len(), OVERHEAD);
        assert_eq!(key.open(&mut datagram).unwrap().packet, b"");
        let len = MAX_DATAGRAM - OVERHEAD + 1;
        assert_eq!(
            key.seal(&vec![0; len], SENT_AT),
            Err(SealError::TooLong { len })
        );
    }

    #[test]
    fn secret_files_must_be_private_and_long_enough() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, b"0123456789abcdef0123\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            ClusterKey::load(&path),
            Err(SecretError::Exposed { .. })
        ));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let key = ClusterKey::load(&path).unwrap();
        // The trailing newline an editor adds is not part of the secret.
        let same = ClusterKey::from_secret(b"0123456789abcdef0123");
        let mut datagram = key.seal(b"x", SENT_AT).unwrap();
        assert_eq!(same.open(&mut datagram).unwrap().packet, b"x");
        std::fs::write(&path, b"short\n").unwrap();
        assert!(matches!(
            ClusterKey::load(&path),
            Err(SecretError::TooShort { len: 5, .. })
        ));
        assert!(matches!(
            ClusterKey::load(&dir.path().join("missing")),
            Err(SecretError::Read { .. })
        ));
    }
}
