//! The client's config file for `showoff client -c showoff.toml`: the server, the token and
//! every tunnel to open, in TOML, YAML or JSON (by extension). Unknown keys are errors that
//! name the key. Flags and `SHOWOFF_SERVER` / `SHOWOFF_TOKEN` / `SHOWOFF_DATA_SERVER` win over
//! the file.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use showoff_client::{ClientConfig, TunnelConfig};
use showoff_proto::{HostHeader, TunnelKind, TunnelSpec, VisitorRules};

use crate::settings::{FileValues, SettingsError};

/// The whole file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientFile {
    /// Server control address, `host:port`.
    pub server: Option<String>,
    /// Data listener address, when it is not the control host with the announced port.
    pub data_server: Option<String>,
    /// The client's token.
    pub token: Option<String>,
    /// Reconnect after losses (default true).
    pub reconnect: Option<bool>,
    /// `pretty` or `json`.
    pub log_format: Option<String>,
    /// Log level or filter.
    pub log_level: Option<String>,
    /// Runtime worker threads.
    pub threads: Option<usize>,
    /// OTLP collector traces are exported to (off when absent).
    pub otlp_endpoint: Option<String>,
    /// `http` or `grpc`.
    pub otlp_protocol: Option<String>,
    /// Headers sent with every export, `name=value,...`.
    pub otlp_headers: Option<String>,
    /// Resource attributes, `key=value,...`.
    pub otlp_resource: Option<String>,
    /// Share of new traces sampled, 0 to 1.
    pub trace_sample: Option<f64>,
    /// Connect over TLS (implied by the other `tls_*` keys).
    pub tls: Option<bool>,
    /// CA PEM file that verifies the server.
    pub tls_ca: Option<PathBuf>,
    /// Name verified instead of the server's host.
    pub tls_server_name: Option<String>,
    /// Client certificate PEM file (mTLS).
    pub tls_cert: Option<PathBuf>,
    /// Key PEM file of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Accept any server certificate (tests only).
    pub dangerously_skip_tls_verify: Option<bool>,
    /// `auto`, `quic`, `mux` or `tcp`.
    pub transport: Option<String>,
    /// UDP port of the server's QUIC listener.
    pub quic_port: Option<u16>,
    /// Seconds between QUIC probes of an `auto` client on mux.
    pub quic_probe_interval: Option<u64>,
    /// `false` turns the inspector's page off.
    pub inspect: Option<bool>,
    /// Address of the inspector's page and API (loopback).
    pub inspect_addr: Option<std::net::SocketAddr>,
    /// Memory the inspector may use (`64MiB`).
    pub inspect_memory: Option<String>,
    /// Bytes of each body the inspector keeps (`256KiB`).
    pub inspect_body_cap: Option<String>,
    /// Directory for bodies past the cap.
    pub inspect_spill: Option<PathBuf>,
    /// Disk the spilled bodies may take (`1GiB`).
    pub inspect_spill_max: Option<String>,
    /// The tunnels to open, at least one.
    pub tunnels: Vec<FileTunnel>,
}

/// One `[[tunnels]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTunnel {
    /// `http` or `tcp`.
    pub kind: TunnelKind,
    /// Local port (`3000`) or address (`192.168.1.5:3000`).
    pub local: String,
    /// Requested name.
    pub name: Option<String>,
    /// Requested public port (tcp).
    pub port: Option<u16>,
    /// `preserve`, `rewrite` or a value (http).
    pub host_header: Option<String>,
    /// Basic auth credentials visitors must give, `user:password` (http).
    pub basic_auth: Option<String>,
    /// CIDRs allowed to visit.
    #[serde(default)]
    pub allow_ips: Vec<String>,
    /// CIDRs refused.
    #[serde(default)]
    pub deny_ips: Vec<String>,
    /// `v1` or `v2`: send the visitor's address to the target in a PROXY header (tcp).
    pub proxy_protocol: Option<String>,
    /// `http1`, `h2c`, `h2` or `auto`: what the target speaks (http).
    pub upstream: Option<String>,
    /// CA (PEM) a TLS target's certificate must chain to (http).
    pub upstream_ca: Option<PathBuf>,
}

/// Reads a client file; the format follows the extension.
pub fn load(path: &Path) -> Result<ClientFile, SettingsError> {
    crate::settings::load_by_extension(path, parse)
}

/// Parses client config text of the given format.
pub fn parse(path: &str, ext: &str, text: &str) -> Result<ClientFile, SettingsError> {
    let file: ClientFile = crate::settings::parse_by_extension(path, ext, text)?;
    if file.tunnels.is_empty() {
        return Err(SettingsError::Parse {
            path: path.to_string(),
            format: "a client config",
            message: "it names no tunnel: add a [[tunnels]] entry".into(),
        });
    }
    for entry in &file.tunnels {
        if let Err(message) = upstream_of(entry) {
            return Err(SettingsError::Parse {
                path: path.to_string(),
                format: "a client config",
                message,
            });
        }
        let Some(version) = &entry.proxy_protocol else {
            continue;
        };
        let wrong = match version.parse::<showoff_client::ProxyVersion>() {
            Err(why) => Some(why),
            Ok(version) => showoff_client::proxy_header::check_applies(entry.kind, version)
                .err()
                .map(str::to_string),
        };
        if let Some(message) = wrong {
            return Err(SettingsError::Parse {
                path: path.to_string(),
                format: "a client config",
                message,
            });
        }
    }
    Ok(file)
}

impl ClientFile {
    /// The inspector's keys.
    pub fn inspect(&self) -> crate::inspector::InspectFile {
        crate::inspector::InspectFile {
            inspect: self.inspect,
            inspect_addr: self.inspect_addr,
            inspect_memory: self.inspect_memory.clone(),
            inspect_body_cap: self.inspect_body_cap.clone(),
            inspect_spill: self.inspect_spill.clone(),
            inspect_spill_max: self.inspect_spill_max.clone(),
        }
    }

    /// The top-level log, thread and trace export settings, for [`crate::settings::globals`].
    pub fn globals(&self) -> FileValues {
        let mut global = BTreeMap::new();
        for (key, value) in [
            ("log_format", self.log_format.clone()),
            ("log_level", self.log_level.clone()),
            ("threads", self.threads.map(|t| t.to_string())),
            ("otlp_endpoint", self.otlp_endpoint.clone()),
            ("otlp_protocol", self.otlp_protocol.clone()),
            ("otlp_headers", self.otlp_headers.clone()),
            ("otlp_resource", self.otlp_resource.clone()),
            ("trace_sample", self.trace_sample.map(|r| r.to_string())),
        ] {
            if let Some(value) = value {
                global.insert(key.to_string(), value);
            }
        }
        FileValues {
            server: BTreeMap::new(),
            global,
        }
    }
}

/// TLS options: each flag wins over the file's key.
pub fn tls_args(file: &ClientFile, flags: &crate::cli::TlsArgs) -> crate::cli::TlsArgs {
    crate::cli::TlsArgs {
        tls: flags.tls || file.tls.unwrap_or(false),
        tls_ca: flags.tls_ca.clone().or_else(|| file.tls_ca.clone()),
        tls_server_name: flags
            .tls_server_name
            .clone()
            .or_else(|| file.tls_server_name.clone()),
        tls_cert: flags.tls_cert.clone().or_else(|| file.tls_cert.clone()),
        tls_key: flags.tls_key.clone().or_else(|| file.tls_key.clone()),
        dangerously_skip_tls_verify: flags.dangerously_skip_tls_verify
            || file.dangerously_skip_tls_verify.unwrap_or(false),
    }
}

/// Flags of `showoff client` that can override the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--server`.
    pub server: Option<String>,
    /// `--data-server`.
    pub data_server: Option<String>,
    /// `--token`.
    pub token: Option<String>,
    /// `--no-reconnect`.
    pub no_reconnect: bool,
}

/// The transport settings: flags (and their `SHOWOFF_*` variables, read by clap) > file.
pub fn transport_args(
    file: &ClientFile,
    flags: &crate::cli::TransportArgs,
) -> Result<crate::cli::TransportArgs, String> {
    let transport = match (&flags.transport, &file.transport) {
        (Some(flag), _) => Some(*flag),
        (None, Some(text)) => Some(
            text.parse()
                .map_err(|reason| format!("config file key transport: {reason}"))?,
        ),
        (None, None) => None,
    };
    Ok(crate::cli::TransportArgs {
        transport,
        quic_port: flags.quic_port.or(file.quic_port),
        quic_probe_interval: flags.quic_probe_interval.or(file.quic_probe_interval),
    })
}

/// Applies the transport settings to a client configuration.
pub fn apply_transport(config: &mut ClientConfig, args: &crate::cli::TransportArgs) {
    config.transport = args.transport.unwrap_or_default();
    config.quic_port = args.quic_port;
    if let Some(secs) = args.quic_probe_interval {
        config.quic_probe_interval = std::time::Duration::from_secs(secs.max(1));
    }
}

/// The tunnel's `upstream` key (absent is `http1`).
fn upstream_of(entry: &FileTunnel) -> Result<showoff_proto::Upstream, String> {
    entry
        .upstream
        .as_deref()
        .map_or(Ok(showoff_proto::Upstream::Http1), str::parse)
}

/// The client configuration: flags > `SHOWOFF_*` environment > file > defaults. Fails when a
/// tunnel's target cannot be resolved (a contradiction, an unreadable `upstream_ca`).
pub fn resolve(
    file: &ClientFile,
    flags: &Overrides,
    env: &HashMap<String, String>,
) -> Result<ClientConfig, String> {
    let pick = |flag: &Option<String>, var: &str, from_file: &Option<String>| {
        flag.clone()
            .or_else(|| env.get(var).cloned())
            .or_else(|| from_file.clone())
    };
    let tunnels = file
        .tunnels
        .iter()
        .map(tunnel)
        .collect::<Result<Vec<_>, _>>()?;
    let server = pick(&flags.server, "SHOWOFF_SERVER", &file.server)
        .unwrap_or_else(|| showoff_client::config::DEFAULT_SERVER.into());
    let mut config = ClientConfig::new(server, tunnels);
    config.data_server = pick(&flags.data_server, "SHOWOFF_DATA_SERVER", &file.data_server);
    config.token = pick(&flags.token, "SHOWOFF_TOKEN", &file.token).unwrap_or_default();
    config.reconnect = !flags.no_reconnect && file.reconnect.unwrap_or(true);
    Ok(config)
}

fn tunnel(entry: &FileTunnel) -> Result<TunnelConfig, String> {
    let upstream = upstream_of(entry)?;
    let (local, tls) = crate::target::resolve(
        entry.kind,
        &entry.local,
        upstream,
        entry.upstream_ca.as_deref(),
    )
    .map_err(|why| format!("the tunnel to {}: {why}", entry.local))?;
    Ok(TunnelConfig {
        spec: TunnelSpec {
            kind: entry.kind,
            name: entry.name.clone(),
            port: entry.port,
            host_header: entry
                .host_header
                .clone()
                .map(HostHeader::from)
                .unwrap_or_default(),
            target: local.clone(),
            visitors: VisitorRules {
                basic_auth: entry.basic_auth.clone(),
                allow_ips: entry.allow_ips.clone(),
                deny_ips: entry.deny_ips.clone(),
            },
            upstream,
        },
        local,
        // Checked by `parse`.
        proxy_protocol: entry.proxy_protocol.as_deref().and_then(|v| v.parse().ok()),
        tls,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOML: &str = r#"
server = "tunnel.example.com:7000"
token = "from-file"
log_level = "debug"

[[tunnels]]
kind = "http"
local = "3000"
name = "web"
host_header = "rewrite"

[[tunnels]]
kind = "tcp"
local = "10.0.0.5:5432"
port = 20001
"#;

    #[test]
    fn the_three_formats_agree() {
        let yaml = "server: tunnel.example.com:7000\ntoken: from-file\nlog_level: debug\ntunnels:\n  - {kind: http, local: \"3000\", name: web, host_header: rewrite}\n  - {kind: tcp, local: \"10.0.0.5:5432\", port: 20001}\n";
        let json = r#"{"server":"tunnel.example.com:7000","token":"from-file","log_level":"debug","tunnels":[{"kind":"http","local":"3000","name":"web","host_header":"rewrite"},{"kind":"tcp","local":"10.0.0.5:5432","port":20001}]}"#;
        let parsed = [
            parse("c", "toml", TOML),
            parse("c", "yaml", yaml),
            parse("c", "json", json),
        ];
        let first = parsed[0].as_ref().expect("toml");
        for other in &parsed[1..] {
            assert_eq!(other.as_ref().expect("parses"), first);
        }
        let config = resolve(first, &Overrides::default(), &HashMap::new()).expect("resolved");
        assert_eq!(config.tunnels.len(), 2);
        assert_eq!(config.tunnels[0].local, "127.0.0.1:3000");
        assert_eq!(config.tunnels[0].spec.host_header, HostHeader::Rewrite);
        assert_eq!(config.tunnels[1].spec.port, Some(20001));
        assert_eq!(first.globals().global["log_level"], "debug");
    }

    #[test]
    fn flags_then_env_then_file() {
        let file = parse("c", "toml", TOML).expect("valid");
        let env: HashMap<String, String> =
            [("SHOWOFF_TOKEN".to_string(), "from-env".to_string())].into();
        let config = resolve(&file, &Overrides::default(), &env).expect("resolved");
        assert_eq!(
            (config.server.as_str(), config.token.as_str()),
            ("tunnel.example.com:7000", "from-env")
        );
        let flags = Overrides {
            token: Some("from-flag".into()),
            server: Some("127.0.0.1:7000".into()),
            ..Overrides::default()
        };
        let config = resolve(&file, &flags, &env).expect("resolved");
        assert_eq!(
            (config.server.as_str(), config.token.as_str()),
            ("127.0.0.1:7000", "from-flag")
        );
    }

    #[test]
    fn unknown_keys_and_empty_files_are_refused() {
        let typo = parse(
            "c.toml",
            "toml",
            "sever = \"x\"\n[[tunnels]]\nkind = \"http\"\nlocal = \"1\"\n",
        )
        .expect_err("typo");
        assert!(typo.to_string().contains("sever"), "{typo}");
        let inner = parse(
            "c.toml",
            "toml",
            "[[tunnels]]\nkind = \"http\"\nlocal = \"1\"\nnmae = \"x\"\n",
        )
        .expect_err("typo");
        assert!(inner.to_string().contains("nmae"), "{inner}");
        let none = parse("c.toml", "toml", "tunnels = []\n").expect_err("empty");
        assert!(none.to_string().contains("no tunnel"), "{none}");
    }
}
