//! SIGTERM under keep-alive and streaming load.

use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::{ClientProcess, Score, admin_addr, client_args, until_metrics};
use crate::process::ServerProcess;
use crate::visitor::{KeepAlive, keep_alive_loop, metric};

/// Keep-alive connections sending back to back during each drain.
const LOOPS: usize = 16;
/// Downloads in flight during each drain, and their size.
const DOWNLOADS: usize = 4;
const DOWNLOAD_BYTES: u64 = 16 << 20;

/// `rounds` times: a fresh server and client, 16 keep-alive loops and 4 slow 16 MiB downloads
/// through the tunnel, then SIGTERM. Invariant: no request written on a keep-alive connection
/// goes unanswered, no answer is other than 200, every download arrives whole, and the server
/// exits 0 after a clean drain. The figure is the drain's length, SIGTERM to exit.
pub async fn sigterm_under_load(bin: &Path, rounds: usize) -> Score {
    let mut score = Score::new(
        "SIGTERM under load",
        "zero keep-alive requests lost, downloads whole, clean drain and exit 0",
    );
    let target = crate::target::spawn_target("drain").await;
    for round in 0..rounds {
        score.runs += 1;
        match drain_once(bin, target.addr.port()).await {
            Ok(took) => {
                score.held += 1;
                score.worst_recovery = score.worst_recovery.max(took);
            }
            Err(why) => score.failures.push(format!("round {round}: {why}")),
        }
    }
    score
}

async fn drain_once(bin: &Path, target_port: u16) -> Result<Duration, String> {
    let server = ServerProcess::start(bin, &[]);
    let (control, http) = (server.addr("control"), server.addr("http"));
    let admin = admin_addr(&server.listening);
    let args = client_args("busy", target_port, control);
    let mut client = ClientProcess::start(bin, &args.iter().map(OsStr::new).collect::<Vec<_>>());
    client.next("connected", Duration::from_secs(20)).await?;
    let host = format!("busy.localhost:{}", http.port());
    let loops: Vec<_> = (0..LOOPS)
        .map(|_| tokio::spawn(keep_alive_loop(http, host.clone(), 10_000_000)))
        .collect();
    let progress: Vec<Arc<AtomicU64>> = (0..DOWNLOADS).map(|_| Arc::default()).collect();
    let downloads: Vec<_> = progress
        .iter()
        .map(|seen| tokio::spawn(slow_download(http, host.clone(), seen.clone())))
        .collect();
    // Under way: requests answered and every download part-way through.
    until_metrics(admin, Duration::from_secs(20), |text| {
        let answered = metric(text, "showoff_http_requests_total{class=\"2xx\"}").unwrap_or(0.0);
        let started = progress
            .iter()
            .all(|p| p.load(Ordering::Relaxed) >= 1 << 20);
        if answered >= 2_000.0 && started {
            return Ok(());
        }
        Err(format!("the load never got going ({answered} answered)"))
    })
    .await?;
    let sent = Instant::now();
    let pid = server.child.pid().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status();
    if !killed.is_ok_and(|s| s.success()) {
        return Err("kill -TERM failed".into());
    }
    let mut total = KeepAlive::default();
    for handle in loops {
        total.add(&handle.await.map_err(|e| e.to_string())?);
    }
    let mut short = Vec::new();
    for handle in downloads {
        let got = handle.await.map_err(|e| e.to_string())?;
        if got != DOWNLOAD_BYTES {
            short.push(got);
        }
    }
    let (code, clean) = exit_of(server).await?;
    let took = sent.elapsed();
    drop(client);
    if total.lost != 0 || total.failed != 0 {
        return Err(format!("keep-alive load lost requests: {total:?}"));
    }
    if !short.is_empty() {
        return Err(format!(
            "downloads cut short: {short:?} of {DOWNLOAD_BYTES} bytes"
        ));
    }
    if code != Some(0) || !clean {
        return Err(format!("exit {code:?}, clean drain logged: {clean}"));
    }
    Ok(took)
}

/// The server's exit code and whether it logged a clean drain, waiting at most a minute.
pub(super) async fn exit_of(server: ServerProcess) -> Result<(Option<i32>, bool), String> {
    let waited = tokio::task::spawn_blocking(move || {
        let mut server = server;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match server.child.0.try_wait() {
                Ok(Some(status)) => {
                    let clean = server
                        .log
                        .try_iter()
                        .any(|l| l.contains("drain finished cleanly"));
                    return Ok((status.code(), clean));
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Ok(None) => return Err("the server did not exit within 60 s of SIGTERM".into()),
                Err(error) => return Err(error.to_string()),
            }
        }
    });
    waited.await.map_err(|e| e.to_string())?
}

/// Reads a 16 MiB body slowly (64 KiB, then 5 ms), so it is in flight when the drain begins;
/// returns the body bytes received before the connection closed.
async fn slow_download(http: std::net::SocketAddr, host: String, seen: Arc<AtomicU64>) -> u64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut stream) = tokio::net::TcpStream::connect(http).await else {
        return 0;
    };
    let request = format!(
        "GET /big?bytes={DOWNLOAD_BYTES}&cl=1 HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n"
    );
    if stream.write_all(request.as_bytes()).await.is_err() {
        return 0;
    }
    let (mut head, mut body) = (Vec::new(), 0u64);
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let read = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut chunk)).await;
        let n = match read {
            Ok(Ok(n)) if n > 0 => n,
            _ => return body,
        };
        if body == 0 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
            head.extend_from_slice(&chunk[..n]);
            if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                body = (head.len() - end - 4) as u64;
            }
        } else {
            body += n as u64;
        }
        seen.store(body, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
