//! An in-memory twin of a file that keeps live bytes (what reads see) apart
//! from durable bytes (what a sync made survive a crash), and can fail.

use std::cell::RefCell;
use std::io;
use std::rc::Rc;

use super::MapStorage;
use crate::xorshift::XorShift;

/// The unit a crash keeps or loses whole. Devices promise 512 bytes at
/// best, and not all keep even that promise on power loss; tearing every
/// byte keeps the tests from leaning on it. (With whole sectors, or even
/// 16-byte pieces, a header rewritten in place passes: its generation and
/// checksum change within one piece.)
const TEAR: u64 = 1;

#[derive(Debug, Clone)]
enum Op {
    Write { offset: u64, bytes: Vec<u8> },
    SetLen(u64),
}

/// How the twin fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Faults {
    None,
    /// The process dies after this many more writes, truncations and
    /// syncs: every later one fails and does nothing.
    HaltAfter(u32),
    /// Each write, truncation or sync fails with probability 1/n. A failed
    /// sync loses track of the unsynced writes as Linux does: each may or
    /// may not have reached the disk, and no later sync makes it durable.
    OneIn(u64),
}

#[derive(Debug, Clone)]
pub struct SimDisk {
    live: Vec<u8>,
    durable: Vec<u8>,
    unsynced: Vec<Op>,
    rng: XorShift,
    pub faults: Faults,
    /// Writes and syncs that succeeded, to check what costs I/O.
    pub writes: u32,
    pub syncs: u32,
}

impl SimDisk {
    pub fn new(seed: u64) -> Rc<RefCell<SimDisk>> {
        Rc::new(RefCell::new(SimDisk {
            live: Vec::new(),
            durable: Vec::new(),
            unsynced: Vec::new(),
            rng: XorShift::new(seed),
            faults: Faults::None,
            writes: 0,
            syncs: 0,
        }))
    }

    /// What the disk holds after a crash now: the durable bytes, plus each
    /// unsynced piece of a write, or truncation, kept or lost at random.
    pub fn crash(&self, seed: u64) -> Rc<RefCell<SimDisk>> {
        let mut rng = XorShift::new(seed);
        let mut image = self.durable.clone();
        for op in &self.unsynced {
            apply_some(&mut image, op, &mut rng);
        }
        let disk = SimDisk::new(seed);
        {
            let mut d = disk.borrow_mut();
            d.live = image.clone();
            d.durable = image;
        }
        disk
    }

    pub fn live(&self) -> &[u8] {
        &self.live
    }

    /// Whether this operation fails; a failure does nothing.
    fn fails(&mut self) -> bool {
        match &mut self.faults {
            Faults::None => false,
            Faults::HaltAfter(0) => true,
            Faults::HaltAfter(n) => {
                *n -= 1;
                false
            }
            Faults::OneIn(n) => {
                let n = *n;
                self.rng.one_in(n)
            }
        }
    }
}

fn apply_some(image: &mut Vec<u8>, op: &Op, rng: &mut XorShift) {
    match op {
        Op::SetLen(len) => {
            if rng.one_in(2) {
                image.resize(*len as usize, 0);
            }
        }
        Op::Write { offset, bytes } => {
            let end = offset + bytes.len() as u64;
            let mut at = *offset;
            while at < end {
                let stop = ((at / TEAR + 1) * TEAR).min(end);
                if rng.one_in(2) {
                    write(
                        image,
                        at,
                        &bytes[(at - offset) as usize..(stop - offset) as usize],
                    );
                }
                at = stop;
            }
        }
    }
}

fn apply(image: &mut Vec<u8>, op: &Op) {
    match op {
        Op::SetLen(len) => image.resize(*len as usize, 0),
        Op::Write { offset, bytes } => write(image, *offset, bytes),
    }
}

fn write(image: &mut Vec<u8>, offset: u64, bytes: &[u8]) {
    let end = offset as usize + bytes.len();
    if image.len() < end {
        image.resize(end, 0);
    }
    image[offset as usize..end].copy_from_slice(bytes);
}

fn injected() -> io::Error {
    io::Error::other("injected fault")
}

/// A handle on a shared [`SimDisk`], so that a test keeps the disk when the
/// map that owns the handle is dropped.
#[derive(Debug, Clone)]
pub struct SimStorage(pub Rc<RefCell<SimDisk>>);

impl MapStorage for SimStorage {
    fn size(&self) -> io::Result<u64> {
        Ok(self.0.borrow().live.len() as u64)
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        let mut d = self.0.borrow_mut();
        if d.fails() {
            return Err(injected());
        }
        let op = Op::SetLen(len);
        apply(&mut d.live, &op);
        d.unsynced.push(op);
        Ok(())
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let d = self.0.borrow();
        let src = usize::try_from(offset)
            .ok()
            .and_then(|start| d.live.get(start..start + buf.len()))
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(src);
        Ok(())
    }

    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut d = self.0.borrow_mut();
        if d.fails() {
            return Err(injected());
        }
        let op = Op::Write {
            offset,
            bytes: buf.to_vec(),
        };
        apply(&mut d.live, &op);
        d.unsynced.push(op);
        d.writes += 1;
        Ok(())
    }

    fn sync_data(&mut self) -> io::Result<()> {
        let mut d = self.0.borrow_mut();
        let d = &mut *d;
        let ops = std::mem::take(&mut d.unsynced);
        if d.fails() {
            if matches!(d.faults, Faults::OneIn(_)) {
                // fsyncgate: the writeback failed for some pages, and they
                // are now clean in the page cache.
                for op in &ops {
                    apply_some(&mut d.durable, op, &mut d.rng);
                }
            } else {
                d.unsynced = ops;
            }
            return Err(injected());
        }
        for op in &ops {
            apply(&mut d.durable, op);
        }
        d.syncs += 1;
        Ok(())
    }
}
