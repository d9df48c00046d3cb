//! An impairment relay for chaos tests: it listens on `127.0.0.1:0` and forwards every
//! connection to one upstream address, with faults switched on and off while traffic runs —
//! delay added to each chunk, traffic dropped (a black hole: bytes are read and discarded),
//! reading stalled (the peer's writes back up), new connections refused, and every live
//! connection cut at once (reset, as a lost link looks to the peers). One task per direction
//! per connection; no timers of its own beyond the delay asked for. [`udp`] is the same for
//! datagrams (QUIC), with loss, jitter, a rate cap and rebinding.

pub mod udp;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// What the relay does to traffic now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Faults {
    /// Added before each chunk is forwarded, both ways.
    pub delay: Duration,
    /// Bytes are read and thrown away instead of forwarded.
    pub drop: bool,
    /// Nothing is read (the sender's buffers fill and its writes block).
    pub stall: bool,
    /// New connections are closed as soon as they are accepted.
    pub refuse: bool,
}

struct Shared {
    faults: watch::Sender<Faults>,
    /// Cancelled by [`Relay::cut`]; replaced by a fresh one for later connections.
    cut: Mutex<CancellationToken>,
    accepted: AtomicU64,
    cuts: AtomicU64,
}

/// A running relay; it stops when dropped.
pub struct Relay {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
}

impl Relay {
    /// Starts a relay to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let addr = listener.local_addr().expect("relay addr");
        let shared = Arc::new(Shared {
            faults: watch::Sender::new(Faults::default()),
            cut: Mutex::new(CancellationToken::new()),
            accepted: AtomicU64::new(0),
            cuts: AtomicU64::new(0),
        });
        let stop = CancellationToken::new();
        tokio::spawn(accept(listener, upstream, shared.clone(), stop.clone()));
        Self { addr, shared, stop }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Switches to `faults` for all traffic, live connections included.
    pub fn set(&self, faults: Faults) {
        self.shared.faults.send_replace(faults);
    }

    /// Resets every live connection; later connections pass again.
    pub fn cut(&self) {
        let mut token = self.shared.cut.lock().expect("cut lock");
        token.cancel();
        *token = CancellationToken::new();
        self.shared.cuts.fetch_add(1, Ordering::Relaxed);
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.cancel();
        self.cut();
    }
}

async fn accept(
    listener: TcpListener,
    upstream: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    loop {
        let (client, _) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(_) => continue,
            },
        };
        shared.accepted.fetch_add(1, Ordering::Relaxed);
        if shared.faults.borrow().refuse {
            continue;
        }
        let cut = shared.cut.lock().expect("cut lock").clone();
        let faults = shared.faults.subscribe();
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(upstream).await else {
                return;
            };
            relay(client, server, faults, cut).await;
        });
    }
}

async fn relay(
    client: TcpStream,
    server: TcpStream,
    faults: watch::Receiver<Faults>,
    cut: CancellationToken,
) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let up = pump(&mut client_read, &mut server_write, faults.clone());
    let down = pump(&mut server_read, &mut client_write, faults);
    let was_cut = tokio::select! {
        _ = async { tokio::join!(up, down) } => false,
        _ = cut.cancelled() => true,
    };
    if was_cut {
        // A zero linger turns the close into a reset, as a lost link looks to both peers.
        for half in [client_read.as_ref(), server_read.as_ref()] {
            let _ = socket2::SockRef::from(half).set_linger(Some(Duration::ZERO));
        }
    }
}

/// Forwards one direction under the faults of the moment, until either side ends.
async fn pump(
    from: &mut tokio::net::tcp::OwnedReadHalf,
    to: &mut tokio::net::tcp::OwnedWriteHalf,
    mut faults: watch::Receiver<Faults>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let now = *faults.borrow_and_update();
        if now.stall {
            if faults.changed().await.is_err() {
                return;
            }
            continue;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let now = *faults.borrow();
        if !now.delay.is_zero() {
            tokio::time::sleep(now.delay).await;
        }
        if now.drop {
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
    let _ = to.shutdown().await;
}
