//! Debian's `pebble` ACME test server, started for real on loopback: a fresh root per run, a
//! fake DNS (`pebble-challtestsrv`) that resolves every name to 127.0.0.1, and validation sent
//! to the ports of the Showoff server under test.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use crate::pki::TestCa;
use crate::ports::steady_port;
use crate::{eventually, visitor};

/// A running pebble and its fake DNS; both are killed on drop.
pub struct Pebble {
    /// The ACME directory URL.
    pub directory: String,
    /// PEM file of the CA that signed pebble's own HTTPS certificate (for the ACME client).
    pub api_ca: PathBuf,
    /// The same CA, as text.
    pub api_ca_pem: String,
    management: SocketAddr,
    children: Vec<Child>,
    dir: PathBuf,
}

impl Pebble {
    /// The directory URL a pebble started later by [`Pebble::start`] on `port` will serve.
    pub fn directory_for(port: u16) -> String {
        format!("https://127.0.0.1:{port}/dir")
    }

    /// Starts pebble on `port`, validating HTTP-01 against `http_port` and TLS-ALPN-01 against
    /// `tls_port` on 127.0.0.1; waits until its directory answers.
    pub async fn start(port: u16, http_port: u16, tls_port: u16) -> Self {
        let dir =
            std::env::temp_dir().join(format!("showoff-pebble-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("pebble dir");
        let ca = TestCa::new("pebble API CA");
        let api = ca.server(&["127.0.0.1", "localhost"]);
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).expect("write");
            path
        };
        let api_ca = write("api-ca.pem", &ca.cert_pem);
        let cert = write("cert.pem", &api.cert);
        let key = write("key.pem", &api.key);
        let management = SocketAddr::from(([127, 0, 0, 1], steady_port()));
        let config = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{port}"),
            "managementListenAddress": management.to_string(),
            "certificate": cert,
            "privateKey": key,
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        }});
        let config_path = write("pebble.json", &config.to_string());
        let dns_port = std::net::UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .map(|a| a.port())
            .expect("a free UDP port");
        let dns = format!("127.0.0.1:{dns_port}");
        let challtestsrv = Command::new("pebble-challtestsrv")
            .args([
                "-dns01",
                &dns,
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
            ])
            .args(["-management", &format!("127.0.0.1:{}", steady_port())])
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pebble-challtestsrv runs (apt-get install pebble; .ci/run installs it)");
        let pebble = Command::new("pebble")
            .arg("-config")
            .arg(&config_path)
            .args(["-dnsserver", &dns])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pebble runs (apt-get install pebble; .ci/run installs it)");
        let listening = SocketAddr::from(([127, 0, 0, 1], port));
        eventually("pebble listening", || {
            std::net::TcpStream::connect(listening).is_ok()
        })
        .await;
        eventually("pebble management listening", || {
            std::net::TcpStream::connect(management).is_ok()
        })
        .await;
        Self {
            directory: Self::directory_for(port),
            api_ca,
            api_ca_pem: ca.cert_pem,
            management,
            children: vec![challtestsrv, pebble],
            dir,
        }
    }

    /// The root certificate pebble issues under (new on every start), PEM.
    pub async fn root_pem(&self) -> String {
        let reply = visitor::https_get(
            self.management,
            "127.0.0.1",
            &self.api_ca_pem,
            &[],
            "/roots/0",
        )
        .await
        .expect("pebble management API");
        assert_eq!(reply.reply.status, 200, "{}", reply.reply.body);
        reply.reply.body
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
