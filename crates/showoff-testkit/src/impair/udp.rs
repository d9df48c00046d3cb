//! The UDP side of the impairment relay: datagrams from each client address go to the
//! upstream from a socket of their own, and answers come back, with one-way delay and jitter,
//! random loss, a bandwidth cap, a black hole, and [`UdpRelay::rebind`] — every flow moves to
//! a fresh source port, which is how a NAT rebinding or a client's new network looks to the
//! server (QUIC connection migration).
//!
//! Each direction of each flow is one queue and one task that sends each datagram when its
//! time has come, so delay adds latency without capping throughput.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// What the relay does to datagrams now.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct UdpFaults {
    /// Added to each datagram, each way.
    pub delay: Duration,
    /// Up to this much more, drawn per datagram.
    pub jitter: Duration,
    /// Share of datagrams dropped, each way (0.01: 1 %).
    pub loss: f64,
    /// Bytes per second each way; 0: unlimited.
    pub rate: u64,
    /// Every datagram is dropped (UDP blocked).
    pub blocked: bool,
}

/// Datagrams queued per direction of a flow before more are dropped (a router's queue).
const QUEUE: usize = 4096;

struct Shared {
    faults: watch::Sender<UdpFaults>,
    /// Client address → the flow's upstream socket, replaced by [`UdpRelay::rebind`].
    flows: Mutex<HashMap<SocketAddr, Arc<UdpSocket>>>,
    front: Arc<UdpSocket>,
    upstream: SocketAddr,
    forwarded: AtomicU64,
    dropped: AtomicU64,
    rebinds: AtomicU64,
    stop: CancellationToken,
}

/// A running UDP relay; it stops when dropped.
pub struct UdpRelay {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl UdpRelay {
    /// Starts a relay to `upstream` on `127.0.0.1:0`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind relay"));
        let addr = front.local_addr().expect("relay addr");
        let shared = Arc::new(Shared {
            faults: watch::Sender::new(UdpFaults::default()),
            flows: Mutex::new(HashMap::new()),
            front,
            upstream,
            forwarded: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            rebinds: AtomicU64::new(0),
            stop: CancellationToken::new(),
        });
        tokio::spawn(front_loop(shared.clone()));
        Self { addr, shared }
    }

    /// Where clients send.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Switches to `faults` for every flow.
    pub fn set(&self, faults: UdpFaults) {
        self.shared.faults.send_replace(faults);
    }

    /// Moves every flow to a fresh source port towards the upstream.
    pub async fn rebind(&self) {
        let clients: Vec<SocketAddr> = self.shared.flows().keys().copied().collect();
        for client in clients {
            let socket = upstream_socket(&self.shared).await;
            self.shared.flows().insert(client, socket.clone());
            tokio::spawn(back_loop(self.shared.clone(), socket, client));
        }
        self.shared.rebinds.fetch_add(1, Ordering::Relaxed);
    }

    /// Datagrams forwarded and dropped so far, both ways.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.shared.forwarded.load(Ordering::Relaxed),
            self.shared.dropped.load(Ordering::Relaxed),
        )
    }
}

impl Drop for UdpRelay {
    fn drop(&mut self) {
        self.shared.stop.cancel();
    }
}

impl Shared {
    fn flows(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Arc<UdpSocket>>> {
        self.flows.lock().unwrap_or_else(|p| p.into_inner())
    }
}

async fn upstream_socket(shared: &Shared) -> Arc<UdpSocket> {
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind flow");
    socket.connect(shared.upstream).await.expect("connect flow");
    Arc::new(socket)
}

/// Client → upstream: finds (or makes) the datagram's flow and queues it.
async fn front_loop(shared: Arc<Shared>) {
    let mut buf = vec![0u8; 65_536];
    let mut queues: HashMap<SocketAddr, mpsc::Sender<(Instant, Vec<u8>)>> = HashMap::new();
    loop {
        let (n, client) = tokio::select! {
            _ = shared.stop.cancelled() => return,
            got = shared.front.recv_from(&mut buf) => match got {
                Ok(got) => got,
                Err(_) => continue,
            },
        };
        let queue = match queues.get(&client) {
            Some(queue) => queue.clone(),
            None => {
                let socket = upstream_socket(&shared).await;
                shared.flows().insert(client, socket.clone());
                tokio::spawn(back_loop(shared.clone(), socket, client));
                let (tx, rx) = mpsc::channel(QUEUE);
                tokio::spawn(send_loop(shared.clone(), rx, Target::Upstream(client)));
                queues.insert(client, tx.clone());
                tx
            }
        };
        admit(&shared, &queue, &buf[..n]);
    }
}

/// Upstream → client, for one flow socket (a rebound flow's old socket ends when replaced).
async fn back_loop(shared: Arc<Shared>, socket: Arc<UdpSocket>, client: SocketAddr) {
    let (tx, rx) = mpsc::channel(QUEUE);
    tokio::spawn(send_loop(shared.clone(), rx, Target::Client(client)));
    let mut buf = vec![0u8; 65_536];
    loop {
        let n = tokio::select! {
            _ = shared.stop.cancelled() => return,
            got = socket.recv(&mut buf) => match got {
                Ok(n) => n,
                Err(_) => continue,
            },
        };
        admit(&shared, &tx, &buf[..n]);
    }
}

/// Drops or queues one datagram with the time it may leave.
fn admit(shared: &Shared, queue: &mpsc::Sender<(Instant, Vec<u8>)>, datagram: &[u8]) {
    let faults = *shared.faults.borrow();
    if faults.blocked || (faults.loss > 0.0 && rand::random::<f64>() < faults.loss) {
        shared.dropped.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let jitter = faults.jitter.mul_f64(rand::random::<f64>());
    let due = Instant::now() + faults.delay + jitter;
    if queue.try_send((due, datagram.to_vec())).is_err() {
        shared.dropped.fetch_add(1, Ordering::Relaxed);
    }
}

enum Target {
    /// Out of the client's flow socket of the moment.
    Upstream(SocketAddr),
    /// Out of the front socket to this client.
    Client(SocketAddr),
}

/// Sends queued datagrams at their time, paced to the rate cap.
async fn send_loop(shared: Arc<Shared>, mut rx: mpsc::Receiver<(Instant, Vec<u8>)>, to: Target) {
    let mut next_free = Instant::now();
    while let Some((due, datagram)) = rx.recv().await {
        let rate = shared.faults.borrow().rate;
        let at = due.max(next_free);
        if at > Instant::now() {
            tokio::time::sleep_until(at).await;
        }
        if rate > 0 {
            next_free = at + Duration::from_secs_f64(datagram.len() as f64 / rate as f64);
        }
        let sent = match &to {
            Target::Client(client) => shared.front.send_to(&datagram, client).await.is_ok(),
            Target::Upstream(client) => {
                let socket = shared.flows().get(client).cloned();
                match socket {
                    Some(socket) => socket.send(&datagram).await.is_ok(),
                    None => false,
                }
            }
        };
        if sent {
            shared.forwarded.fetch_add(1, Ordering::Relaxed);
        }
    }
}
