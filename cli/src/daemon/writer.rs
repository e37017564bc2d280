//! One writer at a time (the default; `--multi-writer` lifts it): a node's
//! device takes writes only while the store names that node the vdisk's
//! writer. The first write on a node that is not the writer asks the store
//! for the role — granted if nobody holds it, or if gossip says the holder
//! is down — and fails if another live node holds it, so that a filesystem
//! mounted on two nodes cannot corrupt itself. It fails as a SAN fails a
//! write from a host without the reservation: EBADE, which the block layer
//! carries as a reservation conflict (the kernel logs it so) where EROFS
//! would reach the application as a mere EIO. `ublkvd release`
//! (and `detach`) give the role up. Like RBD's exclusive lock, it is taken
//! on the first write rather than on open, which ublk does not tell a
//! server.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use backend::{BlockBackend, IoError};
use configdb::{Command, Store, VdiskName, VdiskRecord};
use tokio::runtime::Handle;
use tokio::sync::{oneshot, watch};

/// Whether this node's device may write a vdisk, and how it asks.
pub struct WriteRole {
    vdisk: VdiskName,
    node: String,
    /// It holds the role, or the vdisk is multi-writer.
    held: AtomicBool,
    /// A refusal was logged since the role last changed.
    refusal_logged: AtomicBool,
    store: Arc<Store>,
    runtime: Handle,
    /// The live members other than this node.
    alive: Option<watch::Receiver<gossip::View>>,
}

impl WriteRole {
    pub fn new(
        record: &VdiskRecord,
        node: &str,
        store: Arc<Store>,
        runtime: Handle,
        alive: Option<watch::Receiver<gossip::View>>,
    ) -> Arc<WriteRole> {
        let role = WriteRole {
            vdisk: record.spec.name.clone(),
            node: node.to_owned(),
            held: AtomicBool::new(false),
            refusal_logged: AtomicBool::new(false),
            store,
            runtime,
            alive,
        };
        role.follow(record);
        Arc::new(role)
    }

    /// Takes the store's word on who writes, as this node applied it.
    pub fn follow(&self, record: &VdiskRecord) {
        let held = record.spec.multi_writer || record.writer.as_deref() == Some(&self.node);
        if self.held.swap(held, Ordering::Relaxed) != held {
            self.refusal_logged.store(false, Ordering::Relaxed);
        }
    }

    /// Ok once this node may write; a reservation conflict (EBADE) if
    /// another live node holds the role, or the store cannot be asked.
    async fn ensure(self: &Arc<Self>) -> Result<(), IoError> {
        if self.held.load(Ordering::Relaxed) {
            return Ok(());
        }
        let (done, claimed) = oneshot::channel();
        let role = self.clone();
        // The store is the daemon's runtime's; the device's queue runs its
        // own executor.
        self.runtime.spawn(async move {
            let _ = done.send(role.claim().await);
        });
        match claimed.await {
            Ok(Ok(())) => {
                self.held.store(true, Ordering::Relaxed);
                Ok(())
            }
            Ok(Err(why)) => {
                if !self.refusal_logged.swap(true, Ordering::Relaxed) {
                    tracing::warn!(vdisk = %self.vdisk, "writes refused here (reservation conflict): {why}");
                }
                Err(IoError::Os(std::io::Error::from_raw_os_error(libc::EBADE)))
            }
            Err(_) => Err(IoError::ShuttingDown),
        }
    }

    async fn claim(&self) -> Result<(), String> {
        let config = self.store.configuration();
        let holder = config
            .vdisks
            .get(&self.vdisk)
            .and_then(|record| record.writer.clone());
        // A holder gossip calls down is taken over: its device, if it
        // still has one, can no longer write (the role moved), and its
        // node cannot be asked.
        let from = holder.filter(|holder| {
            holder != &self.node
                && self
                    .alive
                    .as_ref()
                    .is_some_and(|alive| !alive.borrow().alive.contains_key(holder))
        });
        let claim = Command::ClaimWriter {
            name: self.vdisk.clone(),
            from,
        };
        match self.store.write(claim).await {
            Ok(_) => {
                tracing::info!(vdisk = %self.vdisk, "this node now holds the write role");
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        }
    }
}

/// A device's backend whose writes wait for, or are refused by, its
/// node's [`WriteRole`]; reads and flushes pass.
pub struct Guarded<B> {
    inner: B,
    role: Arc<WriteRole>,
}

impl<B> Guarded<B> {
    pub fn new(inner: B, role: Arc<WriteRole>) -> Self {
        Guarded { inner, role }
    }
}

impl<B: BlockBackend> BlockBackend for Guarded<B> {
    async fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), IoError> {
        self.inner.read(offset, buf).await
    }

    async fn write(&self, offset: u64, buf: &[u8], fua: bool) -> Result<(), IoError> {
        self.role.ensure().await?;
        self.inner.write(offset, buf, fua).await
    }

    async fn flush(&self) -> Result<(), IoError> {
        self.inner.flush().await
    }

    async fn discard(&self, offset: u64, len: u64) -> Result<(), IoError> {
        self.role.ensure().await?;
        self.inner.discard(offset, len).await
    }

    async fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), IoError> {
        self.role.ensure().await?;
        self.inner.write_zeroes(offset, len).await
    }
}
