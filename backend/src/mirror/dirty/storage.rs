use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// The bytes a dirty map lives in. A file in production; tests use an
/// in-memory twin that remembers which writes a sync made durable, to
/// rebuild what a crash leaves.
pub trait MapStorage {
    /// Current length in bytes.
    fn size(&self) -> io::Result<u64>;
    /// Truncates or extends with zeros.
    fn set_len(&mut self, len: u64) -> io::Result<()>;
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Not durable until [`sync_data`](Self::sync_data) returns `Ok`.
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes every completed write (and the length) durable.
    fn sync_data(&mut self) -> io::Result<()>;
}

impl MapStorage for File {
    fn size(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        File::set_len(self, len)
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(self, buf, offset)
    }

    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        FileExt::write_all_at(self, buf, offset)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        File::sync_data(self)
    }
}
