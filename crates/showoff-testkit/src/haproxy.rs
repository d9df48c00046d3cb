//! Debian's HAProxy as the plain L4 balancer in front of a cluster's instances: one TCP
//! frontend per [`Pool`], round robin over its servers, a server taken out while its
//! `/readyz` (on the admin port) fails, and a connection that cannot reach a dead server sent
//! to another one. It listens on loopback ports found free just before, and is killed on drop.

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::ports::steady_port;

/// How long HAProxy may take to listen.
const START_DEADLINE: Duration = Duration::from_secs(10);

/// One frontend's servers: where traffic goes, and the admin listener whose `/readyz` says
/// whether it should.
#[derive(Debug, Clone)]
pub struct Pool {
    /// (traffic address, admin address) of each server.
    pub servers: Vec<(SocketAddr, SocketAddr)>,
}

/// A running HAProxy.
pub struct Haproxy {
    /// The frontend of each pool, in order.
    pub frontends: Vec<SocketAddr>,
    child: Child,
    dir: PathBuf,
}

impl Haproxy {
    /// Starts HAProxy with one frontend per pool and waits until every frontend accepts.
    pub fn start(pools: &[Pool]) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "showoff-haproxy-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).expect("haproxy dir");
        let frontends: Vec<SocketAddr> = pools
            .iter()
            .map(|_| SocketAddr::from(([127, 0, 0, 1], steady_port())))
            .collect();
        let config = dir.join("haproxy.cfg");
        std::fs::write(&config, render(pools, &frontends)).expect("haproxy config");
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("haproxy runs (scripts/test installs Debian's haproxy)");
        let mut haproxy = Self {
            frontends,
            child,
            dir,
        };
        haproxy.wait_listening();
        haproxy
    }

    fn wait_listening(&mut self) {
        let deadline = Instant::now() + START_DEADLINE;
        for frontend in self.frontends.clone() {
            loop {
                if let Ok(Some(status)) = self.child.try_wait() {
                    panic!("haproxy exited at start: {status}");
                }
                if TcpStream::connect_timeout(&frontend, Duration::from_millis(200)).is_ok() {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "haproxy did not listen on {frontend}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// The configuration: TCP mode, short connect timeouts with redispatch, `/readyz` checks
/// every 200 ms (two failures take a server out, one success brings it back).
fn render(pools: &[Pool], frontends: &[SocketAddr]) -> String {
    let mut config = String::from(
        "global\n  maxconn 4000\n\ndefaults\n  mode tcp\n  timeout connect 500ms\n  \
         timeout client 120s\n  timeout server 120s\n  timeout check 500ms\n  retries 3\n  \
         option redispatch\n",
    );
    for (i, (pool, frontend)) in pools.iter().zip(frontends).enumerate() {
        config.push_str(&format!(
            "\nfrontend f{i}\n  bind {frontend}\n  default_backend b{i}\n\nbackend b{i}\n  \
             balance roundrobin\n  option httpchk GET /readyz\n  \
             default-server inter 200ms fall 2 rise 1\n"
        ));
        for (j, (traffic, admin)) in pool.servers.iter().enumerate() {
            config.push_str(&format!(
                "  server s{j} {traffic} check port {}\n",
                admin.port()
            ));
        }
    }
    config
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configuration_names_every_server_and_its_health_check() {
        let addr = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        let pools = [Pool {
            servers: vec![(addr(7101), addr(9101)), (addr(7201), addr(9201))],
        }];
        let config = render(&pools, &[addr(7000)]);
        assert!(config.contains("bind 127.0.0.1:7000"), "{config}");
        assert!(
            config.contains("server s0 127.0.0.1:7101 check port 9101"),
            "{config}"
        );
        assert!(
            config.contains("server s1 127.0.0.1:7201 check port 9201"),
            "{config}"
        );
        assert!(config.contains("option httpchk GET /readyz"), "{config}");
    }
}
