//! A link's TLS 1.3 session on TCP. rustls runs the handshake; after it,
//! where the kernel can (its `tls` module is loaded and it has the
//! session's cipher), the kernel seals and opens the records (kTLS): the
//! data goes from the caller's buffer to the socket with no copy into
//! rustls's record buffers and no user-space cipher. Elsewhere rustls goes
//! on doing it. Either end may use either way: the bytes on the wire are
//! the same TLS records.
//!
//! A kTLS session cannot take a key update (kernels before 6.13 cannot
//! rekey at all, and the `ktls` crate takes none), and rustls sends one
//! once it has sealed 2^24 AES-GCM records: so no session may come near
//! that. The dialling end replaces a session long before (backend's
//! `HealthConfig::records_per_session`), whichever way each end seals.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::OnceCell;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::{peer_name, IdentityError};

/// Whether this process may hand sessions to the kernel: the admin's say
/// ([`use_kernel_tls`]), and cleared for good once a hand-off fails.
static KERNEL_ALLOWED: AtomicBool = AtomicBool::new(true);

/// Whether this kernel can seal and open AES-GCM TLS 1.3 records, probed
/// once.
static KERNEL_CAPABLE: OnceCell<bool> = OnceCell::const_new();

/// Lets this process hand sessions to the kernel where it can (the
/// default), or keeps every session in rustls.
pub fn use_kernel_tls(allowed: bool) {
    KERNEL_ALLOWED.store(allowed, Ordering::Relaxed);
}

/// Whether new sessions are handed to the kernel.
pub async fn kernel_tls() -> bool {
    if !KERNEL_ALLOWED.load(Ordering::Relaxed) {
        return false;
    }
    *KERNEL_CAPABLE
        .get_or_init(|| async {
            match probe() {
                Ok(()) => true,
                Err(e) => {
                    tracing::debug!("no kernel TLS: {e}");
                    false
                }
            }
        })
        .await
}

/// Hands a loopback connection of this network namespace to the kernel's
/// TLS with an AES-GCM key of zeroes, as a session would be: the `tls`
/// module is there (else ENOENT) and has the cipher.
fn probe() -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let listener = std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))?;
    let socket = std::net::TcpStream::connect(listener.local_addr()?)?;
    let _accepted = listener.accept()?;
    let fd = socket.as_raw_fd();
    let ulp = b"tls";
    // SAFETY: `fd` is open for the call; the option value is `ulp`, of
    // the length given.
    let set = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_TCP,
            libc::TCP_ULP,
            ulp.as_ptr().cast(),
            ulp.len() as libc::socklen_t,
        )
    };
    if set != 0 {
        return Err(io::Error::last_os_error());
    }
    // AES-256: rustls makes no 16-byte key for AES-128, and the kernel
    // seals either with the same gcm(aes).
    let secrets = rustls::ConnectionTrafficSecrets::Aes256Gcm {
        key: rustls::crypto::cipher::AeadKey::from([0; 32]),
        iv: rustls::crypto::cipher::Iv::new([0; 12]),
    };
    let suite = rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_256_GCM_SHA384;
    let info = ktls::CryptoInfo::from_rustls(suite, (0, secrets))
        .map_err(|e| io::Error::new(io::ErrorKind::Unsupported, e.to_string()))?;
    // SAFETY: as above; `info` is the kernel's crypto info struct, of the
    // size it gives.
    let set = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_TLS,
            libc::TLS_TX,
            info.as_ptr(),
            info.size() as libc::socklen_t,
        )
    };
    match set {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

/// A session's records as the kernel or rustls seals them.
pub enum SecureStream {
    User(Box<tokio_rustls::TlsStream<TcpStream>>),
    Kernel(ktls::KtlsStream<TcpStream>),
}

impl SecureStream {
    /// Whether the kernel seals this session's records.
    pub fn in_kernel(&self) -> bool {
        matches!(self, SecureStream::Kernel(_))
    }
}

/// Why a session could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("TLS handshake failed: {0}")]
    Handshake(io::Error),
    #[error(transparent)]
    Peer(#[from] IdentityError),
    /// The kernel refused the session after the handshake; later sessions
    /// stay in rustls.
    #[error("cannot hand the session to the kernel: {0}")]
    Kernel(ktls::Error),
}

/// Dials: completes the handshake on `tcp` as `connector` says (the
/// peer's certificate is checked there) and hands the session to the
/// kernel if it can take it.
pub async fn connect(
    connector: &TlsConnector,
    name: ServerName<'static>,
    tcp: TcpStream,
) -> Result<SecureStream, SessionError> {
    if !kernel_tls().await {
        let tls = connector
            .connect(name, tcp)
            .await
            .map_err(SessionError::Handshake)?;
        return Ok(SecureStream::User(Box::new(tls.into())));
    }
    let tls = connector
        .connect(name, ktls::CorkStream::new(tcp))
        .await
        .map_err(SessionError::Handshake)?;
    ktls::config_ktls_client(tls)
        .await
        .map(SecureStream::Kernel)
        .map_err(kernel_refused)
}

/// Answers: completes the handshake on `tcp` (the client's certificate is
/// checked there), reads the peer's node name off it, and hands the
/// session to the kernel if it can take it.
pub async fn accept(
    acceptor: &TlsAcceptor,
    tcp: TcpStream,
) -> Result<(SecureStream, String), SessionError> {
    if !kernel_tls().await {
        let tls = acceptor
            .accept(tcp)
            .await
            .map_err(SessionError::Handshake)?;
        let peer = peer_name(tls.get_ref().1)?;
        return Ok((SecureStream::User(Box::new(tls.into())), peer));
    }
    let tls = acceptor
        .accept(ktls::CorkStream::new(tcp))
        .await
        .map_err(SessionError::Handshake)?;
    // Before the hand-off, which consumes the connection that proved it.
    let peer = peer_name(tls.get_ref().1)?;
    let stream = ktls::config_ktls_server(tls)
        .await
        .map_err(kernel_refused)?;
    Ok((SecureStream::Kernel(stream), peer))
}

/// A hand-off the probe said would work failed (a cipher module that
/// cannot load, say): this session is lost with its secrets, and the next
/// ones stay in rustls rather than fail the same way for ever.
fn kernel_refused(e: ktls::Error) -> SessionError {
    tracing::warn!("kernel TLS refused a session, using rustls from now on: {e}");
    KERNEL_ALLOWED.store(false, Ordering::Relaxed);
    SessionError::Kernel(e)
}

impl AsyncRead for SecureStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            SecureStream::User(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            SecureStream::Kernel(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for SecureStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            SecureStream::User(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            SecureStream::Kernel(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            SecureStream::User(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            SecureStream::Kernel(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            SecureStream::User(s) => s.is_write_vectored(),
            SecureStream::Kernel(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            SecureStream::User(s) => Pin::new(s.as_mut()).poll_flush(cx),
            SecureStream::Kernel(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            SecureStream::User(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            SecureStream::Kernel(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
