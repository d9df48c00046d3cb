//! The real `showoff` binary as a child process: started with every listener on
//! `127.0.0.1:0`, its output read line by line on a thread so a test waits with a deadline,
//! and killed when the handle drops (a failing test leaves nothing running).

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Kills the child when dropped.
pub struct Reaper(pub Child);

impl Reaper {
    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Lines of a child's pipe, read on a thread.
pub fn lines(pipe: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// The first line matching `pred` within `limit`; panics naming `what` otherwise.
pub fn wait_line(
    rx: &mpsc::Receiver<String>,
    what: &str,
    limit: Duration,
    pred: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if pred(&line) => return line,
            Ok(_) => continue,
            Err(_) => panic!("timed out waiting for {what}"),
        }
    }
}

/// The value after `key` in a log line (up to a space or quote).
pub fn field<'a>(line: &'a str, key: &str) -> &'a str {
    let start = line.find(key).unwrap_or_else(|| panic!("{key} in {line}")) + key.len();
    line[start..].split([' ', '"']).next().expect("value")
}

/// A running `showoff server`.
pub struct ServerProcess {
    /// The child.
    pub child: Reaper,
    /// Its log lines (JSON).
    pub log: mpsc::Receiver<String>,
    /// Its `server listening` line.
    pub listening: String,
}

impl ServerProcess {
    /// Starts `bin server` with JSON logs, every listener on `127.0.0.1:0`, and `extra` flags.
    pub fn start(bin: &Path, extra: &[&OsStr]) -> Self {
        Self::start_on(bin, ["127.0.0.1:0"; 4], extra)
    }

    /// [`Self::start`] on given control, data, HTTP and admin addresses (a restart on the
    /// same ports).
    pub fn start_on(bin: &Path, addrs: [&str; 4], extra: &[&OsStr]) -> Self {
        Self::spawn(bin, addrs, extra, &[])
    }

    /// [`Self::start`] with variables added to its environment.
    pub fn start_with_env(bin: &Path, extra: &[&OsStr], env: &[(&str, &str)]) -> Self {
        Self::spawn(bin, ["127.0.0.1:0"; 4], extra, env)
    }

    fn spawn(bin: &Path, addrs: [&str; 4], extra: &[&OsStr], env: &[(&str, &str)]) -> Self {
        let [control, data, http, admin] = addrs;
        let mut server = Command::new(bin)
            .args(["server", "--log-format", "json"])
            .args(["--control-addr", control, "--data-addr", data])
            .args(["--http-addr", http, "--admin-addr", admin])
            .args(extra)
            .envs(env.iter().copied())
            .stderr(Stdio::piped())
            .spawn()
            .expect("server starts");
        let log = lines(server.stderr.take().expect("stderr"));
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut before = Vec::new();
        let listening = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match log.recv_timeout(left) {
                Ok(line) if line.contains("server listening") => break line,
                Ok(line) => before.push(line),
                Err(_) => panic!("the server did not start; it said:\n{}", before.join("\n")),
            }
        };
        Self {
            child: Reaper(server),
            log,
            listening,
        }
    }

    /// The address a listener reported in the `server listening` line (`control=`, `http=`…).
    pub fn addr(&self, key: &str) -> std::net::SocketAddr {
        field(&self.listening, &format!("{key}="))
            .parse()
            .expect("address")
    }
}

/// Runs a client subcommand of `bin`; its stdout arrives line by line, stderr is dropped.
pub fn spawn_client(bin: &Path, args: &[&OsStr]) -> (Reaper, mpsc::Receiver<String>) {
    spawn_client_with_env(bin, args, &[])
}

/// [`spawn_client`] with variables added to its environment.
pub fn spawn_client_with_env(
    bin: &Path,
    args: &[&OsStr],
    env: &[(&str, &str)],
) -> (Reaper, mpsc::Receiver<String>) {
    let mut client = Command::new(bin)
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("client starts");
    let out = lines(client.stdout.take().expect("stdout"));
    (Reaper(client), out)
}
