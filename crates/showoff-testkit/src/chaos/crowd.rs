//! Thousands of idle visitor connections, slowloris heads and slow bodies at once, while a
//! well-behaved visitor keeps being served.

use std::ffi::OsStr;
use std::path::Path;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::{ClientProcess, Score, admin_addr, client_args, drained, until_metrics};
use crate::process::ServerProcess;
use crate::visitor::{get, metric};

/// Server memory allowed on top of its idle size, per connection held open.
const BYTES_PER_CONNECTION: u64 = 24 * 1024;
/// Server memory allowed for everything else (idle server, tunnel, buffers in use).
const BASE_BYTES: u64 = 64 << 20;
/// The longest one request of the well-behaved visitor may take meanwhile.
const SERVED_WITHIN: Duration = Duration::from_secs(2);

/// `idle` connections that send nothing, `idle / 10` that send half a head and stop, and
/// `idle / 100` that drip a declared 1 MiB body, all held at once. Invariant: a well-behaved
/// visitor's 50 requests meanwhile are each answered 200 within 2 s, the server's RSS stays
/// under 64 MiB + 24 KiB per held connection, and once they close nothing is left. The
/// figure: the slowest of the well-behaved requests.
pub async fn crowd(bin: &Path, idle: usize) -> Score {
    let mut score = Score::new(
        "idle crowd, slowloris, slow bodies",
        "others served 200 within 2 s; RSS under 64 MiB + 24 KiB per held connection; nothing left",
    );
    let target = crate::target::spawn_target("crowd").await;
    let server = ServerProcess::start(bin, &[]);
    let (control, http) = (server.addr("control"), server.addr("http"));
    let admin = admin_addr(&server.listening);
    let args = client_args("crowd", target.addr.port(), control);
    let mut client = ClientProcess::start(bin, &args.iter().map(OsStr::new).collect::<Vec<_>>());
    if let Err(why) = client.next("connected", Duration::from_secs(20)).await {
        score.failures.push(why);
        return score;
    }
    let host = format!("crowd.localhost:{}", http.port());
    let held = match hold(http, &host, idle).await {
        Ok(held) => held,
        Err(why) => {
            score.failures.push(why);
            return score;
        }
    };
    if let Err(why) = accepted(admin, held.len()).await {
        score.failures.push(why);
        return score;
    }
    let rss = rss_bytes(server.child.pid());
    let bound = BASE_BYTES + BYTES_PER_CONNECTION * held.len() as u64;
    score.detail = format!(
        "server RSS {} MiB with {} connections held (bound {} MiB)",
        rss >> 20,
        held.len(),
        bound >> 20
    );
    if rss > bound {
        score.failures.push(format!(
            "RSS {} MiB with {} connections held, over the bound of {} MiB",
            rss >> 20,
            held.len(),
            bound >> 20
        ));
    }
    for _ in 0..50 {
        score.runs += 1;
        let started = Instant::now();
        let answer = tokio::time::timeout(SERVED_WITHIN, get(http, &host, "/")).await;
        let took = started.elapsed();
        score.worst_recovery = score.worst_recovery.max(took);
        match answer {
            Ok(reply) if reply.status == 200 => score.held += 1,
            Ok(reply) => score
                .failures
                .push(format!("a visitor got {}", reply.status)),
            Err(_) => score
                .failures
                .push(format!("a visitor waited over {SERVED_WITHIN:?}")),
        }
    }
    drop(held);
    if let Err(why) = drained(admin).await {
        score.failures.push(why);
    }
    score
}

/// The idle, half-head and dripped-body connections, all open.
async fn hold(
    http: std::net::SocketAddr,
    host: &str,
    idle: usize,
) -> Result<Vec<TcpStream>, String> {
    let mut held = Vec::new();
    let heads = format!("GET / HTTP/1.1\r\nhost: {host}\r\nx-slow: ");
    let bodies = format!("POST / HTTP/1.1\r\nhost: {host}\r\ncontent-length: 1048576\r\n\r\nx");
    for (count, opening) in [
        (idle, ""),
        (idle / 10, heads.as_str()),
        (idle / 100, bodies.as_str()),
    ] {
        for _ in 0..count {
            let stream = open(http, opening)
                .await
                .map_err(|why| format!("{} connections held, then: {why}", held.len()))?;
            held.push(stream);
        }
    }
    Ok(held)
}

/// Waits until the server serves at least `count` visitor connections (memory is read then).
async fn accepted(admin: std::net::SocketAddr, count: usize) -> Result<(), String> {
    until_metrics(admin, Duration::from_secs(30), |text| {
        let open = metric(text, "showoff_visitor_connections_active").unwrap_or(0.0);
        if open >= count as f64 {
            return Ok(());
        }
        Err(format!("only {open} of {count} connections accepted"))
    })
    .await
}

async fn open(http: std::net::SocketAddr, opening: &str) -> Result<TcpStream, String> {
    let mut stream = TcpStream::connect(http).await.map_err(|e| e.to_string())?;
    if !opening.is_empty() {
        stream
            .write_all(opening.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(stream)
}

/// Resident memory of a process, from `/proc/PID/status`.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(0);
    kib * 1024
}
