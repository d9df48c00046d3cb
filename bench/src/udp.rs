//! UDP load for the UDP tunnel benchmark:
//!
//! - `udp-echo ADDR`: a UDP echo server (each datagram back to its sender);
//! - `udp-load TARGET FLOWS WINDOW SECONDS SIZE`: FLOWS sockets, each keeping WINDOW datagrams of
//!   SIZE bytes in flight towards TARGET for SECONDS; prints one JSON line with datagrams sent,
//!   echoed and lost, echoes per second, and the round trip's p50 and p99 in microseconds;
//! - `udp-idle-flows TARGET COUNT [BATCHES]`: COUNT sockets, opened in BATCHES equal batches,
//!   that each get one echo through TARGET and then stay silent. After each batch it prints the
//!   flows answered so far as one JSON line and waits for a line on standard input (the harness
//!   reads the server's memory meanwhile); standard input closed ends it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::UdpSocket;

/// How long a flow waits for an echo before it counts its window as lost and sends again.
const LOSS_WAIT: Duration = Duration::from_millis(200);

/// Receive buffer of the echo's socket: a thousand flows' datagrams arrive at once, more than the
/// kernel's default (about a hundred small datagrams) holds.
const ECHO_BUFFER: usize = 4 << 20;

pub async fn echo(addr: SocketAddr) -> Result<(), String> {
    let raw = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        None,
    )
    .map_err(|e| e.to_string())?;
    let _ = raw.set_recv_buffer_size(ECHO_BUFFER);
    raw.bind(&addr.into()).map_err(|e| e.to_string())?;
    raw.set_nonblocking(true).map_err(|e| e.to_string())?;
    let socket = UdpSocket::from_std(raw.into()).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 65_536];
    loop {
        let (len, from) = socket
            .recv_from(&mut buf)
            .await
            .map_err(|e| e.to_string())?;
        let _ = socket.send_to(&buf[..len], from).await;
    }
}

/// One flow's figures.
#[derive(Default)]
struct Flow {
    sent: u64,
    received: u64,
    rtts_us: Vec<u32>,
}

async fn one_flow(
    target: SocketAddr,
    window: usize,
    size: usize,
    epoch: Instant,
    until: Instant,
) -> Result<Flow, String> {
    let socket = UdpSocket::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    socket.connect(target).await.map_err(|e| e.to_string())?;
    let (mut flow, mut in_flight) = (Flow::default(), 0usize);
    let mut payload = vec![0x5a_u8; size.max(8)];
    let mut buf = vec![0u8; 65_536];
    // After the deadline nothing new is sent; what is in flight is waited for, so only
    // datagrams that never came back count as lost.
    while in_flight > 0 || Instant::now() < until {
        while in_flight < window && Instant::now() < until {
            let sent_at = epoch.elapsed().as_nanos() as u64;
            payload[..8].copy_from_slice(&sent_at.to_be_bytes());
            socket.send(&payload).await.map_err(|e| e.to_string())?;
            flow.sent += 1;
            in_flight += 1;
        }
        match tokio::time::timeout(LOSS_WAIT, socket.recv(&mut buf)).await {
            Ok(Ok(len)) if len >= 8 => {
                let sent_at = u64::from_be_bytes(buf[..8].try_into().unwrap_or_default());
                let rtt = epoch.elapsed().as_nanos() as u64 - sent_at.min(u64::MAX / 2);
                flow.rtts_us
                    .push((rtt / 1_000).min(u64::from(u32::MAX)) as u32);
                flow.received += 1;
                in_flight -= 1;
            }
            Ok(_) => {}
            // The window's datagrams are presumed lost: send a fresh window.
            Err(_) => in_flight = 0,
        }
    }
    Ok(flow)
}

pub async fn load(
    target: SocketAddr,
    flows: usize,
    window: usize,
    seconds: f64,
    size: usize,
) -> Result<(), String> {
    let epoch = Instant::now();
    let until = epoch + Duration::from_secs_f64(seconds);
    let runs = (0..flows).map(|_| tokio::spawn(one_flow(target, window, size, epoch, until)));
    let (mut sent, mut received, mut rtts) = (0u64, 0u64, Vec::new());
    for run in futures_util::future::join_all(runs).await {
        let flow = run.map_err(|e| e.to_string())??;
        sent += flow.sent;
        received += flow.received;
        rtts.extend(flow.rtts_us);
    }
    let took = epoch.elapsed().as_secs_f64();
    rtts.sort_unstable();
    let percentile = |p: f64| {
        rtts.get(((rtts.len() as f64 * p) as usize).min(rtts.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    let line = serde_json::json!({
        "flows": flows, "window": window, "size": size, "seconds": took,
        "sent": sent, "received": received, "lost": sent.saturating_sub(received),
        "pps": received as f64 / took, "p50_us": percentile(0.50), "p99_us": percentile(0.99),
    });
    println!("{line}");
    Ok(())
}

pub async fn idle_flows(target: SocketAddr, count: usize, batches: usize) -> Result<(), String> {
    let batches = batches.max(1);
    let mut input = BufReader::new(tokio::io::stdin()).lines();
    let mut sockets = Vec::with_capacity(count);
    let mut answered = 0;
    for batch in 0..batches {
        let size = count / batches + usize::from(batch < count % batches);
        let mut fresh = Vec::with_capacity(size);
        for _ in 0..size {
            let socket = UdpSocket::bind("127.0.0.1:0")
                .await
                .map_err(|e| e.to_string())?;
            socket.connect(target).await.map_err(|e| e.to_string())?;
            fresh.push(socket);
        }
        let asks = fresh.iter().map(|socket| async move {
            let mut buf = [0u8; 64];
            for _ in 0..5 {
                if socket.send(b"hello").await.is_err() {
                    return false;
                }
                let wait = tokio::time::timeout(Duration::from_secs(1), socket.recv(&mut buf));
                if matches!(wait.await, Ok(Ok(_))) {
                    return true;
                }
            }
            false
        });
        answered += futures_util::future::join_all(asks)
            .await
            .into_iter()
            .filter(|ok| *ok)
            .count();
        sockets.extend(fresh);
        println!("{}", serde_json::json!({"flows": answered}));
        // The harness reads the server's memory, then asks for the next batch with a line; at
        // the end it closes standard input.
        if !matches!(input.next_line().await, Ok(Some(_))) {
            break;
        }
    }
    drop(sockets);
    Ok(())
}
