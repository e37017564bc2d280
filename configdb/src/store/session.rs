//! This store's client session: the numbers its writes carry, so that the
//! store applies each once and forgets the answers the client has.

use std::collections::BTreeSet;

use crate::model::Client;

/// This store's side of its client session ([`Request`]): numbers its
/// writes and tells the store which answers it has.
pub(super) struct ClientSession {
    pub(super) client: Client,
    numbers: std::sync::Mutex<Numbers>,
}

struct Numbers {
    next: u64,
    /// Writes not yet answered (or given up on), by number.
    in_flight: BTreeSet<u64>,
}

/// A write's number, held until the write is answered or given up.
pub(super) struct Numbered<'a> {
    session: &'a ClientSession,
    pub(super) seq: u64,
    pub(super) acked_below: u64,
}

impl ClientSession {
    pub(super) fn new(node: &str) -> ClientSession {
        // A later start of the daemon has a later time: its session
        // replaces the earlier life's, whose late requests are refused.
        let incarnation = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        ClientSession {
            client: Client {
                node: node.to_owned(),
                incarnation,
            },
            numbers: std::sync::Mutex::new(Numbers {
                next: 1,
                in_flight: BTreeSet::new(),
            }),
        }
    }

    pub(super) fn begin(&self) -> Numbered<'_> {
        let mut numbers = self.numbers.lock().unwrap_or_else(|p| p.into_inner());
        let seq = numbers.next;
        numbers.next += 1;
        numbers.in_flight.insert(seq);
        let acked_below = numbers.in_flight.first().copied().unwrap_or(seq);
        Numbered {
            session: self,
            seq,
            acked_below,
        }
    }
}

impl Drop for Numbered<'_> {
    fn drop(&mut self) {
        let mut numbers = self
            .session
            .numbers
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        numbers.in_flight.remove(&self.seq);
    }
}
