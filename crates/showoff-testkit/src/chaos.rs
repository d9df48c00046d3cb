//! Chaos scenarios against the real `showoff` binaries, each with a named invariant and a
//! figure ([`Score`]). `showoff-chaos` (this crate's binary, run by `bench/chaos.sh`) runs them
//! at full size and prints the scorecard; the fast ones also run in the test suite at a small
//! size (`crates/showoff/tests/chaos.rs`).

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::process::Reaper;
use crate::visitor::{get, metric};

mod cluster;
mod cluster_drain;
mod crowd;
mod cuts;
mod disk;
mod drain;
mod kill;
mod restart;
mod target;

pub use self::cluster::cluster_failover;
pub use self::cluster_drain::cluster_drain;
pub use self::crowd::crowd;
pub use self::cuts::control_cuts;
pub use self::disk::audit_disk;
pub use self::drain::sigterm_under_load;
pub use self::kill::client_killed;
pub use self::restart::server_restarted;
pub use self::target::target_faults;

/// Slack on top of the client's announced backoff for a reconnect: dial, TLS-free handshake,
/// `Welcome` (loopback, a loaded machine).
pub(crate) const RECONNECT_SLACK: Duration = Duration::from_secs(3);

/// What one scenario showed.
#[derive(Debug, Clone)]
pub struct Score {
    /// Scenario name.
    pub scenario: &'static str,
    /// The invariant, in words.
    pub invariant: &'static str,
    /// How many times it was exercised.
    pub runs: u32,
    /// How many of those kept the invariant.
    pub held: u32,
    /// The longest recovery seen.
    pub worst_recovery: Duration,
    /// What broke, when something did.
    pub failures: Vec<String>,
    /// Another figure worth a line (memory held, say); empty when none.
    pub detail: String,
}

impl Score {
    /// A score with nothing run yet.
    pub fn new(scenario: &'static str, invariant: &'static str) -> Self {
        Self {
            scenario,
            invariant,
            runs: 0,
            held: 0,
            worst_recovery: Duration::ZERO,
            failures: Vec::new(),
            detail: String::new(),
        }
    }

    /// Whether every run kept the invariant.
    pub fn passed(&self) -> bool {
        self.held == self.runs && self.failures.is_empty()
    }

    /// One scorecard row (Markdown).
    pub fn row(&self) -> String {
        format!(
            "| {} | {} | {} | {} / {} | {} ms | {} |",
            self.scenario,
            self.invariant,
            self.runs,
            self.held,
            self.runs,
            self.worst_recovery.as_millis(),
            self.detail
        )
    }
}

/// A small deterministic generator for the random moments (xorshift64*), so a run can be
/// repeated with its seed.
pub struct Moments(u64);

impl Moments {
    /// Moments from `seed` (not zero).
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    /// A duration in `[0, max)`.
    pub fn below(&mut self, max: Duration) -> Duration {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
        Duration::from_micros(x % (max.as_micros().max(1) as u64))
    }
}

/// A client process whose JSON events arrive on a channel.
pub(crate) struct ClientProcess {
    child: Reaper,
    events: mpsc::UnboundedReceiver<serde_json::Value>,
}

impl ClientProcess {
    pub(crate) fn start(bin: &Path, args: &[&OsStr]) -> Self {
        let mut child = Command::new(bin)
            .args(args)
            .arg("--json")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("client starts");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, events) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if let Ok(event) = serde_json::from_str(&line)
                    && tx.send(event).is_err()
                {
                    return;
                }
            }
        });
        Self {
            child: Reaper(child),
            events,
        }
    }

    /// After a loss: the `connected` event that ends it. Each `disconnected` on the way
    /// (a failed attempt) sets the deadline to the backoff it announces plus
    /// [`RECONNECT_SLACK`]; the first must come within 20 s. Returns the event and the longest
    /// backoff announced.
    pub(crate) async fn back(&mut self) -> Result<(serde_json::Value, Duration), String> {
        let mut deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let mut longest = Duration::ZERO;
        let mut seen_loss = false;
        loop {
            let event = match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(event)) => event,
                Ok(None) => return Err("the client exited".into()),
                Err(_) if seen_loss => {
                    return Err(format!("not back within its backoff ({longest:?}) + slack"));
                }
                Err(_) => return Err("no disconnected event within 20 s".into()),
            };
            if event["event"] == "disconnected" {
                let backoff = Duration::from_millis(event["retry_in_ms"].as_u64().unwrap_or(0));
                longest = longest.max(backoff);
                seen_loss = true;
                deadline = tokio::time::Instant::now() + backoff + RECONNECT_SLACK;
            } else if event["event"] == "connected" && seen_loss {
                return Ok((event, longest));
            }
        }
    }

    /// SIGKILL, and the exit reaped.
    pub(crate) fn kill(&mut self) {
        let _ = self.child.0.kill();
        let _ = self.child.0.wait();
    }

    /// The next event named `name` within `limit`.
    pub(crate) async fn next(
        &mut self,
        name: &str,
        limit: Duration,
    ) -> Result<serde_json::Value, String> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(event)) if event["event"] == name => return Ok(event),
                Ok(Some(_)) => continue,
                Ok(None) => return Err(format!("the client exited before {name}")),
                Err(_) => return Err(format!("no {name} within {}s", limit.as_secs())),
            }
        }
    }
}

/// The admin address of a `server listening` JSON line.
pub(crate) fn admin_addr(listening: &str) -> std::net::SocketAddr {
    crate::process::field(listening, "\"admin\":\"")
        .parse()
        .expect("admin address")
}

pub(crate) fn client_args(name: &str, port: u16, server: std::net::SocketAddr) -> Vec<String> {
    let server = server.to_string();
    let port = port.to_string();
    ["http", &port, "--name", name, "--server", &server]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// Reads the server's `/metrics` every 50 ms until `check` passes; after `limit`, the last
/// thing `check` said is the error.
pub(crate) async fn until_metrics(
    admin: std::net::SocketAddr,
    limit: Duration,
    mut check: impl FnMut(&str) -> Result<(), String>,
) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    loop {
        let text = get(admin, "localhost", "/metrics").await.body;
        match check(&text) {
            Ok(()) => return Ok(()),
            Err(why) if Instant::now() > deadline => return Err(why),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// No visitor connection and no pending stream left on the server.
pub(crate) async fn drained(admin: std::net::SocketAddr) -> Result<(), String> {
    until_metrics(admin, Duration::from_secs(20), |text| {
        let visitors = metric(text, "showoff_visitor_connections_active");
        let pending = metric(text, "showoff_pending_streams");
        if visitors == Some(0.0) && pending == Some(0.0) {
            return Ok(());
        }
        Err(format!(
            "left open: visitors {visitors:?}, pending {pending:?}"
        ))
    })
    .await
}
