//! The server killed with SIGKILL under load and started again on the same ports.

use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::{ClientProcess, Score, client_args};
use crate::process::ServerProcess;
use crate::visitor::raw;

/// Clients, each with its own tunnel, through every restart.
const CLIENTS: usize = 3;
/// The longest a visitor request may take, outage or not: it must end (answered, refused or
/// closed) within this.
const VISITOR_DEADLINE: Duration = Duration::from_secs(10);

/// Visitor requests by how they ended.
#[derive(Default)]
struct Tally {
    answered: AtomicU64,
    /// Refused, reset, closed or an error page: a clean end during the outage.
    failed: AtomicU64,
    /// Past [`VISITOR_DEADLINE`] with no end: the invariant breaks.
    hung: AtomicU64,
}

/// Ports picked once, so every start of the server listens on the same ones.
fn fixed_ports() -> [String; 4] {
    std::array::from_fn(|_| format!("127.0.0.1:{}", crate::ports::steady_port()))
}

fn start_server(bin: &Path, ports: &[String; 4]) -> ServerProcess {
    let addrs = [&ports[0], &ports[1], &ports[2], &ports[3]].map(String::as_str);
    ServerProcess::start_on(bin, addrs, &[])
}

/// `restarts` times under visitor load: SIGKILL the server, start it again on the same ports.
/// Invariant: every client is back within its announced backoff (plus slack) with its name,
/// no visitor request hangs past 10 s (each is answered, refused or closed), and afterwards
/// every tunnel answers. The figure: SIGKILL to the last client back.
pub async fn server_restarted(bin: &Path, restarts: usize) -> Score {
    let mut score = Score::new(
        "server SIGKILL and restart under load",
        "clients back within their backoff with their names; no visitor past 10 s",
    );
    let ports = fixed_ports();
    let http: std::net::SocketAddr = ports[2].parse().expect("http addr");
    let target = crate::target::spawn_target("restart").await;
    let mut server = start_server(bin, &ports);
    let control = ports[0].parse().expect("control");
    let (mut clients, urls) = match start_clients(bin, target.addr.port(), control).await {
        Ok(started) => started,
        Err(why) => {
            score.failures.push(why);
            return score;
        }
    };
    let (tally, stop) = (Arc::new(Tally::default()), Arc::new(AtomicBool::new(false)));
    let load: Vec<_> = (0..CLIENTS * 2)
        .map(|i| {
            tokio::spawn(visit(
                http,
                format!("phoenix{}.localhost", i % CLIENTS),
                tally.clone(),
                stop.clone(),
            ))
        })
        .collect();
    for restart in 0..restarts {
        score.runs += 1;
        let killed = Instant::now();
        drop(server); // SIGKILL
        server = start_server(bin, &ports);
        let mut back = Ok(());
        for (client, url) in clients.iter_mut().zip(&urls) {
            match client.back().await {
                Ok((event, _)) if event["public_url"] == *url => {}
                Ok((event, _)) => back = Err(format!("came back as {}", event["public_url"])),
                Err(why) => back = Err(why),
            }
        }
        match back {
            Ok(()) => {
                score.held += 1;
                score.worst_recovery = score.worst_recovery.max(killed.elapsed());
            }
            Err(why) => score.failures.push(format!("restart {restart}: {why}")),
        }
    }
    stop.store(true, Ordering::Relaxed);
    for handle in load {
        let _ = handle.await;
    }
    score.failures.extend(afterwards(http, &tally).await);
    drop(clients);
    score
}

/// The clients, each connected once, and their public URLs.
async fn start_clients(
    bin: &Path,
    target_port: u16,
    control: std::net::SocketAddr,
) -> Result<(Vec<ClientProcess>, Vec<serde_json::Value>), String> {
    let (mut clients, mut urls) = (Vec::new(), Vec::new());
    for i in 0..CLIENTS {
        let args = client_args(&format!("phoenix{i}"), target_port, control);
        let mut client =
            ClientProcess::start(bin, &args.iter().map(OsStr::new).collect::<Vec<_>>());
        let event = client.next("connected", Duration::from_secs(20)).await?;
        urls.push(event["public_url"].clone());
        clients.push(client);
    }
    Ok((clients, urls))
}

/// What broke across the restarts: visitors past the deadline, none ever answered, a tunnel
/// that does not answer at the end.
async fn afterwards(http: std::net::SocketAddr, tally: &Tally) -> Vec<String> {
    let mut failures = Vec::new();
    let hung = tally.hung.load(Ordering::Relaxed);
    if hung > 0 {
        failures.push(format!(
            "{hung} visitor requests hung past {VISITOR_DEADLINE:?}"
        ));
    }
    if tally.answered.load(Ordering::Relaxed) == 0 {
        failures.push("no visitor request was ever answered".into());
    }
    for i in 0..CLIENTS {
        let request =
            format!("GET / HTTP/1.1\r\nhost: phoenix{i}.localhost\r\nconnection: close\r\n\r\n");
        let answer = raw(http, request.as_bytes()).await;
        if !answer.starts_with("HTTP/1.1 200 ") {
            failures.push(format!("phoenix{i} after the restarts: {answer:.60}"));
        }
    }
    failures
}

/// Fresh-connection requests one after another until `stop`, each bounded by the deadline.
async fn visit(http: std::net::SocketAddr, host: String, tally: Arc<Tally>, stop: Arc<AtomicBool>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let request = format!("GET / HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n");
    while !stop.load(Ordering::Relaxed) {
        let once = async {
            let mut stream = tokio::net::TcpStream::connect(http).await.ok()?;
            stream.write_all(request.as_bytes()).await.ok()?;
            let mut answer = Vec::new();
            let _ = stream.read_to_end(&mut answer).await;
            Some(answer.starts_with(b"HTTP/1.1 200 "))
        };
        match tokio::time::timeout(VISITOR_DEADLINE, once).await {
            Ok(Some(true)) => tally.answered.fetch_add(1, Ordering::Relaxed),
            Ok(_) => {
                // Refused while the server is down: wait a little, as a browser's retry would.
                tokio::time::sleep(Duration::from_millis(20)).await;
                tally.failed.fetch_add(1, Ordering::Relaxed)
            }
            Err(_) => tally.hung.fetch_add(1, Ordering::Relaxed),
        };
    }
}
