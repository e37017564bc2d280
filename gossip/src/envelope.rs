//! Authenticated gossip packets: every datagram carries a keyed BLAKE3 tag
//! under the cluster secret, so a node without the secret can neither join
//! nor disturb membership. Pure functions over bytes; the agent counts
//! what fails.

use std::path::Path;

/// Marks a ublkvd gossip datagram, version 1 of this envelope.
const MAGIC: [u8; 4] = *b"UVG1";
/// 128-bit tags: forging one is out of reach, and a datagram stays small.
const TAG_LEN: usize = 16;
/// What the envelope adds to foca's packet.
pub const OVERHEAD: usize = MAGIC.len() + TAG_LEN;
/// A secret shorter than this is refused: it could be guessed.
const MIN_SECRET_LEN: usize = 16;
/// Keys are derived from the secret file's bytes for this one purpose.
const KEY_CONTEXT: &str = "ublkvd 2026 gossip packet authentication v1";

/// Why a datagram was dropped.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OpenError {
    #[error("datagram of {len} bytes is shorter than the envelope")]
    Short { len: usize },
    #[error("not a ublkvd gossip datagram")]
    BadMagic,
    #[error("tag does not verify: wrong cluster secret, or altered")]
    BadTag,
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
pub struct ClusterKey([u8; 32]);

impl ClusterKey {
    /// Derives the key from a secret's bytes (any length ≥ 16).
    pub fn from_secret(secret: &[u8]) -> ClusterKey {
        ClusterKey(blake3::derive_key(KEY_CONTEXT, secret))
    }

    /// Reads the secret file and derives the key from it.
    pub fn load(path: &Path) -> Result<ClusterKey, SecretError> {
        read_secret(path).map(|secret| ClusterKey::from_secret(&secret))
    }

    fn tag(&self, packet: &[u8]) -> [u8; TAG_LEN] {
        let mut tag = [0; TAG_LEN];
        let hash = blake3::keyed_hash(&self.0, packet);
        tag.copy_from_slice(&hash.as_bytes()[..TAG_LEN]);
        tag
    }

    /// Wraps foca's packet for the wire: magic, packet, tag over both.
    pub fn seal(&self, packet: &[u8]) -> Vec<u8> {
        let mut datagram = Vec::with_capacity(packet.len() + OVERHEAD);
        datagram.extend_from_slice(&MAGIC);
        datagram.extend_from_slice(packet);
        let tag = self.tag(&datagram);
        datagram.extend_from_slice(&tag);
        datagram
    }

    /// Checks a datagram and returns foca's packet inside it.
    pub fn open<'a>(&self, datagram: &'a [u8]) -> Result<&'a [u8], OpenError> {
        if datagram.len() < OVERHEAD {
            return Err(OpenError::Short {
                len: datagram.len(),
            });
        }
        let (signed, tag) = datagram.split_at(datagram.len() - TAG_LEN);
        if signed[..MAGIC.len()] != MAGIC {
            return Err(OpenError::BadMagic);
        }
        // Constant-time comparison: a timing difference must not let a
        // sender find a valid tag byte by byte.
        let expected = self.tag(signed);
        let equal = expected
            .iter()
            .zip(tag)
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0;
        if !equal {
            return Err(OpenError::BadTag);
        }
        Ok(&signed[MAGIC.len()..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"correct horse battery staple";

    #[test]
    fn a_sealed_packet_opens_under_the_same_secret() {
        let key = ClusterKey::from_secret(SECRET);
        let datagram = key.seal(b"foca packet");
        assert_eq!(datagram.len(), 11 + OVERHEAD);
        assert_eq!(key.open(&datagram), Ok(&b"foca packet"[..]));
    }

    #[test]
    fn another_secret_or_any_altered_byte_is_refused() {
        let key = ClusterKey::from_secret(SECRET);
        let datagram = key.seal(b"foca packet");
        let stranger = ClusterKey::from_secret(b"some other cluster's secret");
        assert_eq!(stranger.open(&datagram), Err(OpenError::BadTag));
        for i in MAGIC.len()..datagram.len() {
            let mut altered = datagram.clone();
            altered[i] ^= 0x01;
            assert_eq!(key.open(&altered), Err(OpenError::BadTag), "byte {i}");
        }
        let mut altered = datagram.clone();
        altered[0] = b'X';
        assert_eq!(key.open(&altered), Err(OpenError::BadMagic));
        assert_eq!(
            key.open(&datagram[..OVERHEAD - 1]),
            Err(OpenError::Short { len: OVERHEAD - 1 })
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
        assert_eq!(same.open(&key.seal(b"x")), Ok(&b"x"[..]));
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
