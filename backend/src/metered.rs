//! What a vdisk's I/O does, measured where every request passes: a
//! [`BlockBackend`] wrapper that counts requests and bytes, times each one
//! and keeps the number in flight. The metrics are Prometheus types shared
//! with whoever exports them; this crate does not export anything.

use std::time::Instant;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

use crate::{BlockBackend, IoError, RegisteredBuf, RegisteredIo};

/// One vdisk's I/O metrics. Clones share the same values.
#[derive(Clone, Debug)]
pub struct IoMetrics {
    pub reads: Counter,
    pub writes: Counter,
    pub flushes: Counter,
    /// Discards and write-zeroes.
    pub discards: Counter,
    pub read_bytes: Counter,
    pub written_bytes: Counter,
    /// Requests that completed with an error.
    pub errors: Counter,
    pub in_flight: Gauge,
    /// Seconds from the request to its completion.
    pub latency: Histogram,
}

impl IoMetrics {
    /// Buckets from 50 µs to about 1.6 s, doubling: a local tail's
    /// microseconds and a failover's stall fit on one scale.
    pub fn latency_histogram() -> Histogram {
        Histogram::new(exponential_buckets(50e-6, 2.0, 16))
    }
}

impl Default for IoMetrics {
    fn default() -> IoMetrics {
        IoMetrics {
            reads: Counter::default(),
            writes: Counter::default(),
            flushes: Counter::default(),
            discards: Counter::default(),
            read_bytes: Counter::default(),
            written_bytes: Counter::default(),
            errors: Counter::default(),
            in_flight: Gauge::default(),
            latency: IoMetrics::latency_histogram(),
        }
    }
}

/// A backend whose every request is measured.
pub struct Metered<B> {
    inner: B,
    metrics: IoMetrics,
}

impl<B> Metered<B> {
    pub fn new(inner: B, metrics: IoMetrics) -> Metered<B> {
        Metered { inner, metrics }
    }

    async fn measure<T>(
        &self,
        requests: &Counter,
        bytes: Option<(&Counter, u64)>,
        request: impl std::future::Future<Output = Result<T, IoError>>,
    ) -> Result<T, IoError> {
        let start = Instant::now();
        self.metrics.in_flight.inc();
        let result = request.await;
        self.metrics.in_flight.dec();
        self.metrics.latency.observe(start.elapsed().as_secs_f64());
        requests.inc();
        match (&result, bytes) {
            (Err(_), _) => {
                self.metrics.errors.inc();
            }
            (Ok(_), Some((counter, len))) => {
                counter.inc_by(len);
            }
            (Ok(_), None) => {}
        }
        result
    }
}

impl<B: BlockBackend> BlockBackend for Metered<B> {
    async fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), IoError> {
        let len = buf.len() as u64;
        let m = &self.metrics;
        self.measure(
            &m.reads,
            Some((&m.read_bytes, len)),
            self.inner.read(offset, buf),
        )
        .await
    }

    async fn write(&self, offset: u64, buf: &[u8], fua: bool) -> Result<(), IoError> {
        let m = &self.metrics;
        let len = buf.len() as u64;
        self.measure(
            &m.writes,
            Some((&m.written_bytes, len)),
            self.inner.write(offset, buf, fua),
        )
        .await
    }

    async fn flush(&self) -> Result<(), IoError> {
        self.measure(&self.metrics.flushes, None, self.inner.flush())
            .await
    }

    async fn discard(&self, offset: u64, len: u64) -> Result<(), IoError> {
        self.measure(
            &self.metrics.discards,
            None,
            self.inner.discard(offset, len),
        )
        .await
    }

    async fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), IoError> {
        let request = self.inner.write_zeroes(offset, len);
        self.measure(&self.metrics.discards, None, request).await
    }
}

impl<B: RegisteredIo> RegisteredIo for Metered<B> {
    async fn read_registered(
        &self,
        offset: u64,
        len: u32,
        buf: RegisteredBuf,
    ) -> Result<(), IoError> {
        let m = &self.metrics;
        let request = self.inner.read_registered(offset, len, buf);
        let bytes = Some((&m.read_bytes, u64::from(len)));
        self.measure(&m.reads, bytes, request).await
    }

    async fn write_registered(
        &self,
        offset: u64,
        len: u32,
        buf: RegisteredBuf,
        fua: bool,
    ) -> Result<(), IoError> {
        let m = &self.metrics;
        let request = self.inner.write_registered(offset, len, buf, fua);
        let bytes = Some((&m.written_bytes, u64::from(len)));
        self.measure(&m.writes, bytes, request).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A backend that succeeds, except reads beyond 1 MiB.
    struct Fake;

    impl BlockBackend for Fake {
        async fn read(&self, offset: u64, _buf: &mut [u8]) -> Result<(), IoError> {
            if offset >= 1 << 20 {
                return Err(IoError::ShortTransfer { offset });
            }
            Ok(())
        }
        async fn write(&self, _offset: u64, _buf: &[u8], _fua: bool) -> Result<(), IoError> {
            Ok(())
        }
        async fn flush(&self) -> Result<(), IoError> {
            Ok(())
        }
        async fn discard(&self, _offset: u64, _len: u64) -> Result<(), IoError> {
            Ok(())
        }
        async fn write_zeroes(&self, _offset: u64, _len: u64) -> Result<(), IoError> {
            Ok(())
        }
    }

    #[test]
    fn every_request_is_counted_with_its_bytes_and_time() {
        let metrics = IoMetrics::default();
        let disk = Metered::new(Fake, metrics.clone());
        let mut buf = vec![0u8; 4096];
        smol::block_on(async {
            disk.write(0, &buf, false).await.unwrap();
            disk.read(0, &mut buf).await.unwrap();
            assert!(disk.read(2 << 20, &mut buf).await.is_err());
            disk.flush().await.unwrap();
            disk.discard(0, 8192).await.unwrap();
            disk.write_zeroes(0, 8192).await.unwrap();
        });
        assert_eq!(metrics.writes.get(), 1);
        assert_eq!(metrics.written_bytes.get(), 4096);
        assert_eq!(metrics.reads.get(), 2);
        assert_eq!(
            metrics.read_bytes.get(),
            4096,
            "a failed read moved no bytes"
        );
        assert_eq!(metrics.errors.get(), 1);
        assert_eq!((metrics.flushes.get(), metrics.discards.get()), (1, 2));
        assert_eq!(metrics.in_flight.get(), 0);
    }
}
