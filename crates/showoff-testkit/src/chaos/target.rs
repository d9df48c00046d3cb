//! A target that hangs, resets, answers garbage or closes half-way.

use std::ffi::OsStr;
use std::path::Path;
use std::time::{Duration, Instant};

use super::{ClientProcess, RECONNECT_SLACK, Score, admin_addr, client_args, drained};
use crate::process::ServerProcess;
use crate::visitor::{get, raw};

/// How the scripted target misbehaves, chosen by the request path.
const FAULTS: [(&str, u16, &str); 4] = [
    // Never answers: the edge gives up after the I/O idle timeout.
    ("/hang", 502, "tunnel_unavailable"),
    // Resets the connection after reading the request.
    ("/reset", 502, "tunnel_unavailable"),
    // Answers something that is not HTTP.
    ("/garbage", 502, "upstream_invalid_response"),
    // Promises 100 bytes, sends 10, closes: the visitor gets the head and a cut body.
    ("/half", 200, ""),
];

/// A target that reads one request head and misbehaves as its path says.
async fn faulty_target() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(misbehave(stream));
        }
    });
    addr
}

async fn misbehave(mut stream: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut chunk).await {
            Ok(n) if n > 0 => head.extend_from_slice(&chunk[..n]),
            _ => return,
        }
    }
    let path = String::from_utf8_lossy(&head);
    let path = path.split(' ').nth(1).unwrap_or("/").to_string();
    match path.as_str() {
        "/hang" => std::future::pending::<()>().await,
        "/reset" => {
            let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
        }
        "/garbage" => {
            let _ = stream.write_all(b"NOT HTTP AT ALL\r\n\r\n").await;
        }
        "/ok" => {
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await;
        }
        _ => {
            let head = b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789";
            let _ = stream.write_all(head).await;
        }
    }
}

/// The target hangs, resets, answers garbage or closes half-way, `rounds` times each, a few
/// visitors at once. Invariant: every visitor gets the documented answer (502 with its code, or
/// the head and a cut body) within the I/O idle timeout plus slack, and afterwards no visitor
/// connection or pending stream is left on the server and the tunnel still answers.
pub async fn target_faults(bin: &Path, rounds: usize) -> Score {
    let mut score = Score::new(
        "target misbehaves",
        "documented 502 code (or head + cut body) within the idle timeout; nothing left open",
    );
    let idle = Duration::from_secs(2);
    let server = ServerProcess::start(bin, &[OsStr::new("--io-idle-timeout"), OsStr::new("2s")]);
    let (control, http) = (server.addr("control"), server.addr("http"));
    let admin = admin_addr(&server.listening);
    let target = faulty_target().await;
    let args = client_args("faulty", target.port(), control);
    let mut client = ClientProcess::start(bin, &args.iter().map(OsStr::new).collect::<Vec<_>>());
    if let Err(why) = client.next("connected", Duration::from_secs(20)).await {
        score.failures.push(why);
        return score;
    }
    let host = format!("faulty.localhost:{}", http.port());
    for round in 0..rounds {
        let visits = FAULTS.iter().map(|(path, status, code)| {
            let host = host.clone();
            async move {
                let started = Instant::now();
                let request =
                    format!("GET {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n");
                let reply =
                    tokio::time::timeout(idle + RECONNECT_SLACK * 2, raw(http, request.as_bytes()))
                        .await;
                (path, *status, *code, reply, started.elapsed())
            }
        });
        for (path, status, code, reply, took) in futures_util::future::join_all(visits).await {
            score.runs += 1;
            score.worst_recovery = score.worst_recovery.max(took);
            let Ok(reply) = reply else {
                score
                    .failures
                    .push(format!("round {round} {path}: no answer in time"));
                continue;
            };
            let (got, body) = answer_of(&reply);
            let got = (got.0, got.1.as_str());
            let body_cut = path != &"/half" || body < 100;
            if got == (status, code) && body_cut {
                score.held += 1;
            } else {
                score.failures.push(format!(
                    "round {round} {path}: got {got:?}, want {:?}",
                    (status, code)
                ));
            }
        }
    }
    if let Err(why) = drained(admin).await {
        score.failures.push(why);
    }
    let after = get(http, &host, "/ok").await.status;
    if after != 200 {
        score
            .failures
            .push(format!("the tunnel answered {after} after the faults"));
    }
    score
}

/// Status, error code and body length of a raw answer read to its close.
fn answer_of(text: &str) -> ((u16, String), usize) {
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text, ""));
    let code = head
        .lines()
        .find_map(|l| l.strip_prefix("x-showoff-error: "))
        .unwrap_or("")
        .to_string();
    ((status, code), body.len())
}
