//! A real `redis-server` on loopback for the cluster tests: no persistence (a restart loses
//! every key, like a Redis without a volume), a port found free just before, killed on drop.
//! [`RedisServer::stop`] and [`RedisServer::start_again`] take it away and bring it back on
//! the same port, for outage tests.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::pebble::free_port;

/// How long Redis may take to answer `PING` after it starts.
const START_DEADLINE: Duration = Duration::from_secs(10);

/// A running `redis-server`.
pub struct RedisServer {
    /// Where it listens.
    pub addr: SocketAddr,
    child: Option<Child>,
    dir: PathBuf,
}

impl RedisServer {
    /// Starts Redis on a free loopback port and waits until it answers `PING`.
    pub fn start() -> Self {
        for _ in 0..5 {
            let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let dir = std::env::temp_dir().join(format!(
                "showoff-redis-{}-{}",
                std::process::id(),
                addr.port()
            ));
            std::fs::create_dir_all(&dir).expect("redis dir");
            let mut server = Self {
                addr,
                child: None,
                dir,
            };
            if server.spawn() {
                return server;
            }
        }
        panic!("redis-server did not start on any of five free ports");
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Kills Redis (its data goes with it).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts Redis again on the same port, empty; panics if it does not answer in time.
    pub fn start_again(&mut self) {
        self.stop();
        assert!(
            self.spawn(),
            "redis-server did not start again on {}",
            self.addr
        );
    }

    /// Runs one command given as words and returns Redis's raw answer (RESP), for tests
    /// that read what the cluster stored.
    pub fn command(&self, words: &[&str]) -> String {
        let mut stream = TcpStream::connect_timeout(&self.addr, Duration::from_secs(2))
            .expect("connect to redis");
        stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let mut request = format!("*{}\r\n", words.len());
        for word in words {
            request.push_str(&format!("${}\r\n{word}\r\n", word.len()));
        }
        stream.write_all(request.as_bytes()).expect("send");
        let mut answer = vec![0u8; 64 * 1024];
        let n = stream.read(&mut answer).expect("answer");
        String::from_utf8_lossy(&answer[..n]).into_owned()
    }

    /// Spawns the process and waits for `PING`; false when it exited (the port was taken).
    fn spawn(&mut self) -> bool {
        let port = self.addr.port().to_string();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (scripts/test installs Debian's redis-server)");
        self.child = Some(child);
        let deadline = Instant::now() + START_DEADLINE;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && matches!(child.try_wait(), Ok(Some(_)))
            {
                self.child = None;
                return false;
            }
            if self.pong() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.stop();
        false
    }

    fn pong(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200))
        else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
        let mut answer = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut answer).is_ok()
            && &answer == b"+PONG\r\n"
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
