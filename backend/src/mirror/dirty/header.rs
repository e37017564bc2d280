//! The dirty map's on-disk header, without I/O.
//!
//! The file starts with two copies ("slots") of a 64-byte header, at bytes
//! 0 and 512, and the bitmap at byte 4096. A header is rewritten only into
//! the slot not in use, so a torn or lost write can damage at most the copy
//! being replaced: the other still describes the file. The valid slot with
//! the higher generation wins.
//!
//! Slot layout, little-endian:
//!
//! | bytes  | field                                   |
//! |--------|-----------------------------------------|
//! | 0..8   | magic `UBLKDMAP`                        |
//! | 8..12  | format version, 1                       |
//! | 12..16 | reserved, 0                             |
//! | 16..24 | device size in bytes                    |
//! | 24..32 | region size in bytes                    |
//! | 32..40 | generation                              |
//! | 40..44 | CRC32C of bytes 0..40                   |
//! | 44..64 | reserved, 0                             |

use super::OpenError;

pub(super) const SLOT_LEN: usize = 64;
pub(super) const SLOT_OFFSETS: [u64; 2] = [0, 512];
/// Past both slots and page-aligned, so that no bitmap write shares a page
/// (nor a device sector) with a header.
pub(super) const BITMAP_OFFSET: u64 = 4096;

const MAGIC: [u8; 8] = *b"UBLKDMAP";
const VERSION: u32 = 1;
const CRC_AT: usize = 40;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Header {
    pub device_size: u64,
    pub region_size: u64,
    pub generation: u64,
}

/// What one slot holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Slot {
    Valid(Header),
    /// A well-formed header of another format version.
    Unsupported(u32),
    /// The magic, but a wrong checksum: a torn write, or damage.
    Damaged,
    /// No magic: never written.
    Blank,
}

impl Header {
    pub fn encode(&self) -> [u8; SLOT_LEN] {
        let mut b = [0u8; SLOT_LEN];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        b[16..24].copy_from_slice(&self.device_size.to_le_bytes());
        b[24..32].copy_from_slice(&self.region_size.to_le_bytes());
        b[32..40].copy_from_slice(&self.generation.to_le_bytes());
        let crc = crc32c::crc32c(&b[..CRC_AT]);
        b[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8; SLOT_LEN]) -> Slot {
        if b[0..8] != MAGIC {
            return Slot::Blank;
        }
        if crc32c::crc32c(&b[..CRC_AT]) != u32_at(b, CRC_AT) {
            return Slot::Damaged;
        }
        let version = u32_at(b, 8);
        if version != VERSION {
            return Slot::Unsupported(version);
        }
        Slot::Valid(Header {
            device_size: u64_at(b, 16),
            region_size: u64_at(b, 24),
            generation: u64_at(b, 32),
        })
    }
}

/// The header in force and the slot holding it.
pub(super) fn choose(slots: [Slot; 2]) -> Result<(usize, Header), OpenError> {
    // A newer format in either slot means a newer build has taken the file
    // over; the older slot beside it is stale.
    for slot in slots {
        if let Slot::Unsupported(version) = slot {
            return Err(OpenError::UnsupportedVersion { version });
        }
    }
    let valid = slots.iter().enumerate().filter_map(|(i, s)| match s {
        Slot::Valid(h) => Some((i, *h)),
        _ => None,
    });
    if let Some(best) = valid.max_by_key(|(i, h)| (h.generation, std::cmp::Reverse(*i))) {
        return Ok(best);
    }
    if slots.contains(&Slot::Damaged) {
        Err(OpenError::Corrupt)
    } else {
        Err(OpenError::NotADirtyMap)
    }
}

fn u32_at(b: &[u8; SLOT_LEN], at: usize) -> u32 {
    let mut v = [0u8; 4];
    v.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(v)
}

fn u64_at(b: &[u8; SLOT_LEN], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: Header = Header {
        device_size: 1 << 30,
        region_size: 1 << 20,
        generation: 7,
    };

    fn with_generation(generation: u64) -> Slot {
        Slot::Valid(Header { generation, ..H })
    }

    #[test]
    fn a_header_round_trips() {
        assert_eq!(Header::decode(&H.encode()), Slot::Valid(H));
    }

    #[test]
    fn any_flipped_bit_is_detected() {
        let good = H.encode();
        for byte in 8..44 {
            for bit in 0..8 {
                let mut b = good;
                b[byte] ^= 1 << bit;
                assert_eq!(Header::decode(&b), Slot::Damaged, "byte {byte} bit {bit}");
            }
        }
    }

    #[test]
    fn zeros_are_blank() {
        assert_eq!(Header::decode(&[0; SLOT_LEN]), Slot::Blank);
    }

    #[test]
    fn another_version_is_unsupported() {
        let mut b = H.encode();
        b[8..12].copy_from_slice(&2u32.to_le_bytes());
        let crc = crc32c::crc32c(&b[..CRC_AT]);
        b[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(Header::decode(&b), Slot::Unsupported(2));
        assert!(matches!(
            choose([with_generation(9), Slot::Unsupported(2)]),
            Err(OpenError::UnsupportedVersion { version: 2 })
        ));
    }

    #[test]
    fn the_valid_slot_with_the_higher_generation_wins() {
        assert_eq!(
            choose([with_generation(3), with_generation(4)]).ok(),
            Some((1, Header { generation: 4, ..H }))
        );
        assert_eq!(
            choose([with_generation(5), with_generation(4)]).ok(),
            Some((0, Header { generation: 5, ..H }))
        );
        assert_eq!(
            choose([Slot::Damaged, with_generation(2)])
                .ok()
                .map(|c| c.0),
            Some(1)
        );
        assert_eq!(
            choose([with_generation(2), Slot::Blank]).ok().map(|c| c.0),
            Some(0)
        );
    }

    #[test]
    fn no_valid_slot_is_corrupt_or_not_a_map() {
        assert!(matches!(
            choose([Slot::Damaged, Slot::Blank]),
            Err(OpenError::Corrupt)
        ));
        assert!(matches!(
            choose([Slot::Blank, Slot::Blank]),
            Err(OpenError::NotADirtyMap)
        ));
    }
}
