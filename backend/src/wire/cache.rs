//! Cached vdisks' coherence messages on the wire (`docs/wire.md`, "Cache
//! messages"). They are one way, as the coherence core's messages are:
//! lost ones are sent again by the core, never answered on the wire. The
//! header names the vdisk and the message; the payload is a fixed body of
//! eight little-endian u64 words, then the data a write or a grant carries.

use super::frame::{Frame, Header, HEADER_LEN};
use super::WireError;
use crate::cache::{Down, Stamped, Up};

/// The body's length: eight u64 words.
pub const CACHE_BODY_LEN: usize = 64;

/// Which way a cache message goes in the tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Toward {
    Parent,
    Child,
}

/// A coherence message as it travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheMessage {
    /// From a child's process `instance` (random, chosen when it starts:
    /// a restarted node is a new holder). A write's data, which follows,
    /// goes at byte `at` of its extent.
    ToParent { instance: u64, msg: Up, at: u32 },
    /// To a child; a grant's data (the whole extent) follows.
    ToChild(Stamped),
}

/// Which messages carry data after the body.
fn carries_data(toward: Toward, code: u8) -> bool {
    matches!((toward, code), (Toward::Parent, 3) | (Toward::Child, 2))
}

/// Checks a cache frame's header: a known code, and a payload of the body
/// alone, or of the body and some data for a write or a grant.
pub(super) fn check_header(toward: Toward, code: u8, payload_len: u32) -> Result<(), WireError> {
    if !(1..=4).contains(&code) {
        let kind = match toward {
            Toward::Parent => "cache message to a parent",
            Toward::Child => "cache message to a child",
        };
        return Err(WireError::UnknownCode { kind, code });
    }
    let body = CACHE_BODY_LEN as u32;
    match (carries_data(toward, code), payload_len) {
        (_, len) if len < body => Err(WireError::Inconsistent("cache message without its body")),
        (true, len) if len == body => {
            Err(WireError::Inconsistent("cache write or grant without data"))
        }
        (false, len) if len > body => Err(WireError::Inconsistent(
            "cache message with data it does not carry",
        )),
        _ => Ok(()),
    }
}

impl CacheMessage {
    /// The header and body of this message about `vdisk`, with `data`
    /// after them (a write's or a grant's; empty for the others). The data
    /// is not copied: the checksum runs over the body, then the data.
    pub fn encode(
        &self,
        vdisk: u64,
        data: &[u8],
    ) -> Result<([u8; HEADER_LEN], [u8; CACHE_BODY_LEN]), WireError> {
        let (toward, code, words) = self.to_words();
        if carries_data(toward, code) == data.is_empty() {
            return Err(WireError::Inconsistent(
                "cache message data does not fit it",
            ));
        }
        let mut body = [0u8; CACHE_BODY_LEN];
        for (slot, word) in body.chunks_exact_mut(8).zip(words) {
            slot.copy_from_slice(&word.to_le_bytes());
        }
        let len = u32::try_from(CACHE_BODY_LEN + data.len())
            .map_err(|_| WireError::PayloadTooLong(u32::MAX))?;
        let crc = crc32c::crc32c_append(crc32c::crc32c(&body), data);
        let frame = Frame::Cache {
            vdisk,
            toward,
            code,
        };
        Ok((frame.encode_announced(len, crc)?, body))
    }

    /// The message a checked cache frame's header and body say; the data,
    /// if any, is the rest of the payload.
    pub fn decode(header: &Header, body: &[u8; CACHE_BODY_LEN]) -> Result<CacheMessage, WireError> {
        let Frame::Cache { toward, code, .. } = header.frame else {
            return Err(WireError::Inconsistent("not a cache message"));
        };
        let mut w = [0u64; 8];
        for (word, bytes) in w.iter_mut().zip(body.chunks_exact(8)) {
            let mut le = [0u8; 8];
            le.copy_from_slice(bytes);
            *word = u64::from_le_bytes(le);
        }
        let flag = |word: u64| match word {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(WireError::Inconsistent("cache flag neither 0 nor 1")),
        };
        let at = |word: u64| {
            u32::try_from(word).map_err(|_| WireError::Inconsistent("cache write offset too large"))
        };
        let message = match (toward, code) {
            (Toward::Parent, 1) => up(w[0], Up::Renew { renewal: w[1] }, 0),
            (Toward::Parent, 2) => up(
                w[0],
                Up::Get {
                    id: w[1],
                    extent: w[2],
                },
                0,
            ),
            (Toward::Parent, 3) => {
                let msg = Up::Write {
                    id: w[1],
                    extent: w[2],
                    oldest: w[3],
                };
                up(w[0], msg, at(w[4])?)
            }
            (Toward::Parent, _) => up(
                w[0],
                Up::Recalled {
                    extent: w[1],
                    seq: w[2],
                },
                0,
            ),
            (Toward::Child, code) => {
                let msg = match code {
                    1 => Down::Renewed {
                        renewal: w[3],
                        generation: w[4],
                        ttl_ms: w[5],
                    },
                    2 => Down::Granted {
                        id: w[3],
                        extent: w[4],
                        version: w[5],
                        holder: flag(w[6])?,
                    },
                    3 => Down::Recall { extent: w[3] },
                    _ => Down::Written {
                        id: w[3],
                        extent: w[4],
                        version: w[5],
                        holder: flag(w[6])?,
                    },
                };
                CacheMessage::ToChild(Stamped {
                    epoch: w[0],
                    seq: w[1],
                    generation: w[2],
                    msg,
                })
            }
        };
        // Words a message does not use are zero, so that each has one
        // encoding.
        if message.to_words().2 != w {
            return Err(WireError::Inconsistent("unused cache word is not zero"));
        }
        Ok(message)
    }

    /// Its direction, code and body words.
    fn to_words(self) -> (Toward, u8, [u64; 8]) {
        match self {
            CacheMessage::ToParent { instance, msg, at } => {
                let (code, words) = match msg {
                    Up::Renew { renewal } => (1, [renewal, 0, 0, 0]),
                    Up::Get { id, extent } => (2, [id, extent, 0, 0]),
                    Up::Write { id, extent, oldest } => (3, [id, extent, oldest, u64::from(at)]),
                    Up::Recalled { extent, seq } => (4, [extent, seq, 0, 0]),
                };
                let [a, b, c, d] = words;
                (Toward::Parent, code, [instance, a, b, c, d, 0, 0, 0])
            }
            CacheMessage::ToChild(Stamped {
                epoch,
                seq,
                generation,
                msg,
            }) => {
                let (code, words) = match msg {
                    Down::Renewed {
                        renewal,
                        generation,
                        ttl_ms,
                    } => (1, [renewal, generation, ttl_ms, 0]),
                    Down::Granted {
                        id,
                        extent,
                        version,
                        holder,
                    } => (2, [id, extent, version, u64::from(holder)]),
                    Down::Recall { extent } => (3, [extent, 0, 0, 0]),
                    Down::Written {
                        id,
                        extent,
                        version,
                        holder,
                    } => (4, [id, extent, version, u64::from(holder)]),
                };
                let [a, b, c, d] = words;
                (Toward::Child, code, [epoch, seq, generation, a, b, c, d, 0])
            }
        }
    }
}

fn up(instance: u64, msg: Up, at: u32) -> CacheMessage {
    CacheMessage::ToParent { instance, msg, at }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_message() -> Vec<(CacheMessage, Vec<u8>)> {
        let to_parent = |msg, at| CacheMessage::ToParent {
            instance: 0x1234_5678_9abc,
            msg,
            at,
        };
        let to_child = |msg| {
            CacheMessage::ToChild(Stamped {
                epoch: 3,
                seq: 41,
                generation: 2,
                msg,
            })
        };
        vec![
            (to_parent(Up::Renew { renewal: 9 }, 0), vec![]),
            (to_parent(Up::Get { id: 5, extent: 77 }, 0), vec![]),
            (
                to_parent(
                    Up::Write {
                        id: 6,
                        extent: 77,
                        oldest: 4,
                    },
                    8192,
                ),
                vec![0x5a; 4096],
            ),
            (
                to_parent(
                    Up::Recalled {
                        extent: 77,
                        seq: 40,
                    },
                    0,
                ),
                vec![],
            ),
            (
                to_child(Down::Renewed {
                    renewal: 9,
                    generation: 2,
                    ttl_ms: 740,
                }),
                vec![],
            ),
            (
                to_child(Down::Granted {
                    id: 5,
                    extent: 77,
                    version: 12,
                    holder: true,
                }),
                vec![0xa5; 65536],
            ),
            (to_child(Down::Recall { extent: 77 }), vec![]),
            (
                to_child(Down::Written {
                    id: 6,
                    extent: 77,
                    version: 13,
                    holder: false,
                }),
                vec![],
            ),
        ]
    }

    /// Encodes, then decodes as a receiver does: header, payload check,
    /// body.
    fn round_trip(message: CacheMessage, data: &[u8]) -> Result<CacheMessage, WireError> {
        let (head, body) = message.encode(7, data)?;
        let header = Header::decode(&head)?;
        let payload: Vec<u8> = body.iter().chain(data).copied().collect();
        header.verify_payload(&payload)?;
        assert!(matches!(header.frame, Frame::Cache { vdisk: 7, .. }));
        CacheMessage::decode(&header, &body)
    }

    #[test]
    fn every_cache_message_round_trips() {
        for (message, data) in every_message() {
            assert_eq!(round_trip(message, &data), Ok(message));
        }
    }

    #[test]
    fn data_goes_with_writes_and_grants_only() {
        let recall = CacheMessage::ToChild(Stamped {
            epoch: 1,
            seq: 1,
            generation: 1,
            msg: Down::Recall { extent: 1 },
        });
        assert!(recall.encode(7, &[1; 512]).is_err());
        let write = CacheMessage::ToParent {
            instance: 1,
            msg: Up::Write {
                id: 1,
                extent: 1,
                oldest: 1,
            },
            at: 0,
        };
        assert!(write.encode(7, &[]).is_err());
    }

    #[test]
    fn a_body_with_a_stray_word_or_flag_is_refused() {
        for (message, data) in every_message() {
            let (head, body) = message.encode(7, &data).unwrap();
            let header = Header::decode(&head).unwrap();
            // Every word a message does not use, and a flag of 2.
            for word in 0..8 {
                let mut bad = body;
                bad[word * 8] ^= 2;
                let decoded = CacheMessage::decode(&header, &bad);
                assert!(
                    decoded.is_err() || decoded.is_ok_and(|m| m != message),
                    "{message:?}: word {word} changed and decoded the same"
                );
            }
        }
        let (head, mut body) = every_message()[5].0.encode(7, &[1; 64]).unwrap();
        body[48] = 2;
        let header = Header::decode(&head).unwrap();
        assert_eq!(
            CacheMessage::decode(&header, &body),
            Err(WireError::Inconsistent("cache flag neither 0 nor 1"))
        );
        body[48] = 0;
        body[56] = 1;
        assert_eq!(
            CacheMessage::decode(&header, &body),
            Err(WireError::Inconsistent("unused cache word is not zero"))
        );
    }
}
