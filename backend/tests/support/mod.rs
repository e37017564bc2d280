//! Identities of the nodes these tests play (certificates of the CA the
//! tests' cluster secret derives, as the daemon's embedded default), and a
//! cable to put between a link and a server.

#![allow(dead_code)] // each test file uses a part

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use identity::rustls::{ClientConfig, ServerConfig};
use identity::NodeIdentity;

pub const SECRET: &[u8] = b"the backend tests' cluster secret";

pub fn node(name: &str) -> NodeIdentity {
    NodeIdentity::from_secret(name, SECRET).unwrap()
}

/// What node `name` serves its tails with.
pub fn server_tls(name: &str) -> Arc<ServerConfig> {
    node(name).server_config().unwrap()
}

/// What node `me` dials node `peer` with.
pub fn client_tls(me: &str, peer: &str) -> Arc<ClientConfig> {
    node(me).client_config(peer).unwrap()
}

/// A cable between a link and a server, carrying each connection's bytes
/// both ways. Cut, it carries nothing and closes nothing, as a pulled
/// cable would. Held, the connections open at the time keep what the
/// link sends, as a congested queue in the network would, and deliver it
/// (and the link's close behind it) once released; later connections
/// flow.
pub struct Cable {
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
    /// Whether each connection's link-to-server bytes are held.
    held: Arc<Mutex<Vec<watch::Sender<bool>>>>,
}

impl Cable {
    pub async fn lay(to: SocketAddr) -> Cable {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let held = Arc::new(Mutex::new(Vec::new()));
        let (cutting, holding) = (cut.clone(), held.clone());
        tokio::spawn(async move {
            while let Ok((near, _)) = listener.accept().await {
                let far = TcpStream::connect(to).await.unwrap();
                let (near_read, near_write) = near.into_split();
                let (far_read, far_write) = far.into_split();
                let (hold, up_held) = watch::channel(false);
                let (_never, down_held) = watch::channel(false);
                holding.lock().unwrap().push(hold);
                tokio::spawn(carry(near_read, far_write, cutting.clone(), up_held));
                tokio::spawn(carry(far_read, near_write, cutting.clone(), down_held));
            }
        });
        Cable { addr, cut, held }
    }

    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
    }

    /// Holds what the links send on the connections open now.
    pub fn hold(&self) {
        for hold in self.held.lock().unwrap().iter() {
            hold.send_replace(true);
        }
    }

    /// Delivers what was held.
    pub fn release(&self) {
        for hold in self.held.lock().unwrap().iter() {
            hold.send_replace(false);
        }
    }
}

async fn carry(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    cut: Arc<AtomicBool>,
    mut held: watch::Receiver<bool>,
) {
    let mut buf = vec![0; 64 << 10];
    let mut queued = Vec::new();
    let (mut open, mut holdable) = (true, true);
    loop {
        tokio::select! {
            read = from.read(&mut buf), if open => match read {
                Ok(n) if n > 0 => queued.extend_from_slice(&buf[..n]),
                _ => open = false,
            },
            changed = held.changed(), if holdable => holdable = changed.is_ok(),
            else => break,
        }
        if cut.load(Ordering::SeqCst) {
            // Nothing gets through any more, not even a close.
            std::future::pending::<()>().await;
        }
        if *held.borrow() {
            continue;
        }
        if to.write_all(&queued).await.is_err() {
            return;
        }
        queued.clear();
        if !open {
            break;
        }
    }
}

/// A cache message as a peer server handed it over: sender, message, data.
pub type Received = (String, backend::wire::CacheMessage, Option<Vec<u8>>);

/// A cache endpoint that keeps what it is handed.
#[derive(Default)]
pub struct Recorder(pub Mutex<Vec<Received>>);

impl backend::peer::CacheEndpoint for Recorder {
    fn receive(
        &self,
        from: &str,
        message: backend::wire::CacheMessage,
        data: Option<Arc<backend::AlignedBuf>>,
    ) {
        let data = data.map(|d| d.to_vec());
        self.0
            .lock()
            .unwrap()
            .push((from.to_owned(), message, data));
    }
}
