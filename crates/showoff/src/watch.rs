//! Reloading files the server reads (token file, certificates): on SIGHUP, or when any of the
//! files' modification times changes (checked every two seconds).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// How often modification times are checked.
const POLL: Duration = Duration::from_secs(2);

/// Calls `reload` whenever one of `paths` changes or SIGHUP arrives, until `stop`.
pub async fn on_change(
    paths: Vec<PathBuf>,
    what: &'static str,
    stop: CancellationToken,
    mut reload: impl FnMut(),
) {
    let mut hangup = signal(SignalKind::hangup()).ok();
    let mut seen: Vec<_> = paths.iter().map(|p| modified(p)).collect();
    loop {
        let hup = async {
            match hangup.as_mut() {
                Some(h) => h.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = hup => tracing::info!(what, "SIGHUP: reloading"),
            _ = tokio::time::sleep(POLL) => {
                let now: Vec<_> = paths.iter().map(|p| modified(p)).collect();
                if now == seen {
                    continue;
                }
                seen = now;
            }
        }
        reload();
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}
