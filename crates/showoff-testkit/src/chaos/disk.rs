//! The audit log's disk full, or its file unwritable.

use std::ffi::OsStr;
use std::path::Path;
use std::time::{Duration, Instant};

use super::{ClientProcess, Score, client_args};
use crate::process::ServerProcess;
use crate::visitor::get;

/// Two cases, each once: the audit log on a full disk (`/dev/full`: every write fails with
/// ENOSPC) while the server runs, and an audit log that cannot be opened at start (a file of
/// a read-only filesystem). Invariant: running, the server logs the failed write with its
/// path and reason and goes on serving (the client's session opens, visitors get 200);
/// at start, it refuses with a message naming the file. The figure: the first request served
/// after the failed write, from the client's start.
pub async fn audit_disk(bin: &Path) -> Score {
    let mut score = Score {
        runs: 2,
        ..Score::new(
            "audit log disk full / read-only",
            "full: error with path and reason, serving goes on; unopenable: refused with the file named",
        )
    };
    match full_disk(bin).await {
        Ok(took) => {
            score.held += 1;
            score.worst_recovery = took;
        }
        Err(why) => score.failures.push(format!("full disk: {why}")),
    }
    match unopenable(bin) {
        Ok(()) => score.held += 1,
        Err(why) => score.failures.push(format!("read-only: {why}")),
    }
    score
}

async fn full_disk(bin: &Path) -> Result<Duration, String> {
    let target = crate::target::spawn_target("disk").await;
    let server = ServerProcess::start(bin, &[OsStr::new("--audit-log"), OsStr::new("/dev/full")]);
    let (control, http) = (server.addr("control"), server.addr("http"));
    let started = Instant::now();
    let args = client_args("audited", target.addr.port(), control);
    let mut client = ClientProcess::start(bin, &args.iter().map(OsStr::new).collect::<Vec<_>>());
    client.next("connected", Duration::from_secs(20)).await?;
    let status = get(http, &format!("audited.localhost:{}", http.port()), "/")
        .await
        .status;
    let took = started.elapsed();
    if status != 200 {
        return Err(format!("a visitor got {status} with the audit disk full"));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match server.log.recv_timeout(left) {
            Ok(line) if line.contains("audit log write failed") => {
                let named = line.contains("/dev/full") && line.contains("No space left on device");
                return if named {
                    Ok(took)
                } else {
                    Err(format!("the error does not say where and why: {line}"))
                };
            }
            Ok(_) => continue,
            Err(_) => return Err("no error was logged for the failed audit write".into()),
        }
    }
}

fn unopenable(bin: &Path) -> Result<(), String> {
    let path = "/proc/version/showoff-audit.log";
    let out = std::process::Command::new(bin)
        .args([
            "server",
            "--control-addr",
            "127.0.0.1:0",
            "--data-addr",
            "127.0.0.1:0",
        ])
        .args(["--http-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"])
        .args(["--audit-log", path])
        .output()
        .map_err(|e| e.to_string())?;
    let err = String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        return Err("the server started without its audit log".into());
    }
    if !err.contains(path) {
        return Err(format!("the refusal does not name the file: {err}"));
    }
    Ok(())
}
