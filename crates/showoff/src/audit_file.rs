//! The audit log file: one JSON object per line, appended.
//!
//! Each event is serialised first and written with a single `write(2)` on a file opened with
//! `O_APPEND`, so lines never interleave and a crash of the process loses at most the line being
//! written. The server never truncates or rewrites it; rotate it with logrotate's
//! `copytruncate`, or move it aside and restart the server.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::Context;
use showoff_server::audit::{AuditEvent, AuditLog, AuditSink};

struct FileSink {
    file: Mutex<File>,
    path: PathBuf,
}

impl AuditSink for FileSink {
    fn record(&self, event: &AuditEvent) {
        let Ok(mut line) = serde_json::to_vec(event) else {
            return;
        };
        line.push(b'\n');
        // Sync I/O under a sync mutex, never across an await: events are per session and tunnel,
        // not per request.
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        // A full or read-only disk loses the event, never the service: the error says which.
        if let Err(error) = file.write_all(&line) {
            let path = self.path.display();
            tracing::error!(%error, %path, event = event.event, "audit log write failed; the event is lost, serving goes on");
        }
    }
}

/// Opens (or creates) the audit log for appending.
pub fn open(path: &Path) -> anyhow::Result<AuditLog> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open the audit log {}", path.display()))?;
    Ok(AuditLog::new(FileSink {
        file: Mutex::new(file),
        path: path.to_path_buf(),
    }))
}
