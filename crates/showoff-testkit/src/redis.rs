//! A real `redis-server` on loopback for the cluster tests: no persistence (a restart loses
//! every key, like a Redis without a volume), a port found free just before, killed on drop.
//! [`RedisServer::stop`] and [`RedisServer::start_again`] take it away and bring it back on
//! the same port, for outage tests. [`RedisServer::start_with`] adds a TLS port (certificates
//! from [`crate::pki`]) and an ACL user, for the tests of `rediss://` and authentication.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::pki::TestCa;
use crate::ports::steady_port;

/// How long Redis may take to answer `PING` after it starts.
const START_DEADLINE: Duration = Duration::from_secs(10);

/// What a Redis started by [`RedisServer::start_with`] asks of its clients.
#[derive(Default)]
pub struct RedisOptions {
    /// A TLS port beside the plain one, with a certificate for `127.0.0.1` signed by this CA.
    pub tls: Option<RedisTlsOptions>,
    /// An ACL user (name, password) with every right; the default user is then off.
    pub user: Option<(String, String)>,
}

/// The TLS side of a test Redis.
pub struct RedisTlsOptions {
    /// Signs the server's certificate (and the clients' it accepts).
    pub ca: TestCa,
    /// Whether clients must present a certificate the CA signed (`tls-auth-clients yes`).
    pub client_certificates: bool,
}

/// A running `redis-server`.
pub struct RedisServer {
    /// Where it listens (plain TCP).
    pub addr: SocketAddr,
    /// Where it listens with TLS, when started with [`RedisOptions::tls`].
    pub tls_addr: Option<SocketAddr>,
    /// The CA's certificate (PEM), when started with [`RedisOptions::tls`].
    pub ca_pem: Option<String>,
    /// A client certificate the CA signed, when started with [`RedisOptions::tls`].
    pub client_pair: Option<showoff_server::PemPair>,
    /// The ACL user, when started with one.
    pub user: Option<(String, String)>,
    args: Vec<String>,
    child: Option<Child>,
    dir: PathBuf,
}

impl RedisServer {
    /// Starts Redis on a free loopback port and waits until it answers `PING`.
    pub fn start() -> Self {
        Self::start_with(RedisOptions::default())
    }

    /// Starts Redis with a TLS port and/or an ACL user, as `options` say.
    pub fn start_with(options: RedisOptions) -> Self {
        for _ in 0..5 {
            let addr = SocketAddr::from(([127, 0, 0, 1], steady_port()));
            let dir = std::env::temp_dir().join(format!(
                "showoff-redis-{}-{}",
                std::process::id(),
                addr.port()
            ));
            std::fs::create_dir_all(&dir).expect("redis dir");
            let mut server = Self {
                addr,
                tls_addr: None,
                ca_pem: None,
                client_pair: None,
                user: options.user.clone(),
                args: Vec::new(),
                child: None,
                dir,
            };
            server.args = server.options_args(&options);
            if server.spawn() {
                return server;
            }
        }
        panic!("redis-server did not start on any of five free ports");
    }

    /// The command-line words of `options`; writes the TLS files into the server's directory.
    fn options_args(&mut self, options: &RedisOptions) -> Vec<String> {
        let mut args = Vec::new();
        if let Some((name, password)) = &options.user {
            // A directive's words follow it as separate arguments.
            let user = format!("--user {name} on >{password} ~* &* +@all --user default off");
            args.extend(user.split(' ').map(String::from));
        }
        if let Some(tls) = &options.tls {
            let pair = tls.ca.server(&["127.0.0.1"]);
            let file = |name: &str, text: &str| {
                let path = self.dir.join(name);
                std::fs::write(&path, text).expect("redis TLS file");
                path.display().to_string()
            };
            let port = steady_port();
            self.tls_addr = Some(SocketAddr::from(([127, 0, 0, 1], port)));
            self.ca_pem = Some(tls.ca.cert_pem.clone());
            self.client_pair = Some(tls.ca.client("showoff"));
            let auth = if tls.client_certificates { "yes" } else { "no" };
            args.extend([
                "--tls-port".into(),
                port.to_string(),
                "--tls-cert-file".into(),
                file("redis.crt", &pair.cert),
                "--tls-key-file".into(),
                file("redis.key", &pair.key),
                "--tls-ca-cert-file".into(),
                file("ca.crt", &tls.ca.cert_pem),
                "--tls-auth-clients".into(),
                auth.into(),
            ]);
        }
        args
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
        if let Some((name, password)) = &self.user {
            stream
                .write_all(&resp(&["AUTH", name, password]))
                .expect("send");
            let mut ok = [0u8; 5];
            stream.read_exact(&mut ok).expect("AUTH answered");
            assert_eq!(&ok, b"+OK\r\n", "AUTH as the test's own user");
        }
        stream.write_all(&resp(words)).expect("send");
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
            .args(&self.args)
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
        // `+PONG`, or `-NOAUTH …` from a Redis with ACL users: either way it is up.
        let mut answer = [0u8; 1];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut answer).is_ok()
            && matches!(answer[0], b'+' | b'-')
    }
}

/// `words` as one RESP command.
fn resp(words: &[&str]) -> Vec<u8> {
    let mut request = format!("*{}\r\n", words.len());
    for word in words {
        request.push_str(&format!("${}\r\n{word}\r\n", word.len()));
    }
    request.into_bytes()
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
