//! The client process killed with SIGKILL in the middle of a visitor's upload or download.

use std::ffi::OsStr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{ClientProcess, Score, admin_addr, client_args, drained, until_metrics};
use crate::process::ServerProcess;
use crate::visitor::metric;

/// How long a visitor may wait for its answer or its close after the client died.
const VISITOR_DEADLINE: Duration = Duration::from_secs(10);

/// Which half of an exchange the client dies in.
#[derive(Debug, Clone, Copy)]
enum Moment {
    /// The visitor is sending a 16 MiB body.
    Upload,
    /// The visitor is reading a 256 MiB body.
    Download,
}

/// `rounds` times each, mid-upload and mid-download: the client is killed with SIGKILL.
/// Invariant: the visitor gets a clean end within 10 s (a 502 `tunnel_unavailable` while
/// uploading, a closed connection with a short body while downloading), the server drops the
/// session and holds no visitor connection or pending stream, and a new client gets the name
/// back. The figure is the visitor's wait from the kill to its answer or close.
pub async fn client_killed(bin: &Path, rounds: usize) -> Score {
    let mut score = Score::new(
        "client SIGKILL mid-transfer",
        "visitor gets 502 or a clean close within 10 s; nothing left; next client gets the name",
    );
    let target = crate::target::spawn_target("killed").await;
    let server = ServerProcess::start(bin, &[]);
    let (control, http) = (server.addr("control"), server.addr("http"));
    let admin = admin_addr(&server.listening);
    let args = client_args("victim", target.addr.port(), control);
    let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    for round in 0..rounds {
        for moment in [Moment::Upload, Moment::Download] {
            score.runs += 1;
            match kill_once(bin, &args, (admin, http), &target, moment).await {
                Ok(waited) => {
                    score.held += 1;
                    score.worst_recovery = score.worst_recovery.max(waited);
                }
                Err(why) => score
                    .failures
                    .push(format!("round {round} {moment:?}: {why}")),
            }
        }
    }
    score
}

async fn kill_once(
    bin: &Path,
    args: &[&OsStr],
    (admin, http): (std::net::SocketAddr, std::net::SocketAddr),
    target: &crate::target::Target,
    moment: Moment,
) -> Result<Duration, String> {
    let mut client = ClientProcess::start(bin, args);
    let first = client.next("connected", Duration::from_secs(20)).await?;
    let host = format!("victim.localhost:{}", http.port());
    let mut visitor = start_transfer(http, &host, target, moment).await?;
    client.kill();
    let killed = Instant::now();
    let answer = tokio::time::timeout(VISITOR_DEADLINE, async {
        let mut rest = Vec::new();
        let _ = visitor.read_to_end(&mut rest).await;
        rest
    })
    .await
    .map_err(|_| "the visitor was left hanging".to_string())?;
    let waited = killed.elapsed();
    if let Moment::Upload = moment {
        let text = String::from_utf8_lossy(&answer);
        let ok = text.starts_with("HTTP/1.1 502 ")
            && text.contains("x-showoff-error: tunnel_unavailable\r\n");
        if !ok && !answer.is_empty() {
            return Err(format!(
                "the visitor got {:?}",
                &text[..text.len().min(120)]
            ));
        }
    }
    drained(admin).await?;
    sessions_become(admin, 0.0).await?;
    let mut next = ClientProcess::start(bin, args);
    let again = next.next("connected", Duration::from_secs(20)).await?;
    if again["public_url"] != first["public_url"] {
        return Err(format!("the next client got {}", again["public_url"]));
    }
    next.kill();
    sessions_become(admin, 0.0).await?;
    Ok(waited)
}

async fn sessions_become(admin: std::net::SocketAddr, want: f64) -> Result<(), String> {
    until_metrics(admin, Duration::from_secs(20), |text| {
        let sessions = metric(text, "showoff_sessions_active");
        if sessions == Some(want) {
            return Ok(());
        }
        Err(format!("sessions stayed at {sessions:?}, not {want}"))
    })
    .await
}

/// A visitor connection part-way through its transfer: 1 MiB of an upload sent and seen by the
/// target, or 1 MiB of a download read.
async fn start_transfer(
    http: std::net::SocketAddr,
    host: &str,
    target: &crate::target::Target,
    moment: Moment,
) -> Result<tokio::net::TcpStream, String> {
    let before = target.stats.requests.load(Ordering::Relaxed);
    let mut visitor = tokio::net::TcpStream::connect(http)
        .await
        .map_err(|e| e.to_string())?;
    let request = match moment {
        Moment::Upload => format!(
            "POST /upload HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
            16 << 20
        ),
        Moment::Download => {
            let path = format!("/big?bytes={}&cl=1", 256 << 20);
            format!("GET {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n")
        }
    };
    visitor
        .write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    // Part-way: 1 MiB sent, or the head and some body read.
    let mut got = 0;
    match moment {
        Moment::Upload => {
            let chunk = vec![b'u'; 64 * 1024];
            for _ in 0..16 {
                visitor.write_all(&chunk).await.map_err(|e| e.to_string())?;
            }
            // The target is reading the body: the request is through the tunnel.
            let deadline = Instant::now() + Duration::from_secs(10);
            while target.stats.requests.load(Ordering::Relaxed) == before {
                if Instant::now() > deadline {
                    return Err("the upload never reached the target".into());
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        Moment::Download => {
            let mut chunk = vec![0u8; 64 * 1024];
            while got < 1 << 20 {
                let n = visitor.read(&mut chunk).await.map_err(|e| e.to_string())?;
                if n == 0 {
                    return Err("the download ended before the kill".into());
                }
                got += n;
            }
        }
    }
    Ok(visitor)
}
