//! Server settings: one table of every setting ([`SERVER_SETTINGS`]) and the pure function that
//! layers them, defaults < config file < `SHOWOFF_*` environment < flags, into a
//! [`ServerConfig`] ([`resolve`]).
//!
//! The table drives everything a person sees: the `showoff server` flags (built from it), the
//! environment variables, the config-file keys (anything else in the file is an error naming
//! the key), `--check-config`, and the test that `docs/operations.md` lists every setting.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use showoff_server::auth::NamePattern;
use showoff_server::auth::jwt::{JwtConfig, JwtKey};
use showoff_server::{AdminConfig, Secret, ServerConfig};

/// One server setting.
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    /// Config-file key and flag name (`control_addr` ↔ `--control-addr`).
    pub key: &'static str,
    /// Environment variable.
    pub env: &'static str,
    /// Default as text; empty means "none" (the setting is off or derived).
    pub default: &'static str,
    /// Shown in `--help` and `--check-config`.
    pub help: &'static str,
    /// Masked wherever the resolved value is printed.
    pub secret: bool,
}

const fn setting(
    key: &'static str,
    env: &'static str,
    default: &'static str,
    help: &'static str,
) -> Setting {
    Setting {
        key,
        env,
        default,
        help,
        secret: false,
    }
}

const fn secret(key: &'static str, env: &'static str, help: &'static str) -> Setting {
    Setting {
        key,
        env,
        default: "",
        help,
        secret: true,
    }
}

/// Every setting of `showoff server`.
pub const SERVER_SETTINGS: &[Setting] = &[
    setting(
        "control_addr",
        "SHOWOFF_CONTROL_ADDR",
        "127.0.0.1:7000",
        "control listener: clients authenticate, open tunnels, heartbeat",
    ),
    setting(
        "data_addr",
        "SHOWOFF_DATA_ADDR",
        "127.0.0.1:7001",
        "data listener: one connection per stream",
    ),
    setting(
        "http_addr",
        "SHOWOFF_HTTP_ADDR",
        "127.0.0.1:8080",
        "public HTTP listener; TCP tunnel ports bind on its IP",
    ),
    setting(
        "admin_addr",
        "SHOWOFF_ADMIN_ADDR",
        "127.0.0.1:9090",
        "admin listener: probes, /metrics, /api/v1, pprof; `off` disables it",
    ),
    setting(
        "domain",
        "SHOWOFF_DOMAIN",
        "localhost",
        "base domain: tunnel `demo` is `demo.<domain>`",
    ),
    setting(
        "public_http_port",
        "SHOWOFF_PUBLIC_HTTP_PORT",
        "",
        "port shown in public URLs (default: the HTTP listener's; omitted when 80)",
    ),
    setting(
        "tcp_ports",
        "SHOWOFF_TCP_PORTS",
        "20000-20999",
        "port range for TCP tunnels, FIRST-LAST (0-0: the OS picks)",
    ),
    setting(
        "tls_cert",
        "SHOWOFF_TLS_CERT",
        "",
        "certificate chain PEM files, comma-separated; with any, control and data speak TLS",
    ),
    setting(
        "tls_key",
        "SHOWOFF_TLS_KEY",
        "",
        "private key PEM files, one per --tls-cert, same order",
    ),
    setting(
        "tls_client_ca",
        "SHOWOFF_TLS_CLIENT_CA",
        "",
        "CA PEM file: control/data clients must present a certificate it signed (mTLS)",
    ),
    setting(
        "https_addr",
        "SHOWOFF_HTTPS_ADDR",
        "",
        "public HTTPS listener, IP:PORT (default: off; needs --tls-cert)",
    ),
    setting(
        "public_https_port",
        "SHOWOFF_PUBLIC_HTTPS_PORT",
        "",
        "port shown in public https URLs (default: the HTTPS listener's; omitted when 443)",
    ),
    setting(
        "redirect_http",
        "SHOWOFF_REDIRECT_HTTP",
        "false",
        "answer plain-HTTP visitors with 308 to the same URL over HTTPS",
    ),
    setting(
        "acme_directory",
        "SHOWOFF_ACME_DIRECTORY",
        "",
        "ACME directory URL: certificates obtained and renewed automatically (default: off)",
    ),
    setting(
        "acme_email",
        "SHOWOFF_ACME_EMAIL",
        "",
        "contact e-mail for the ACME account",
    ),
    setting(
        "acme_storage",
        "SHOWOFF_ACME_STORAGE",
        "showoff-acme",
        "directory for the ACME account and certificates",
    ),
    setting(
        "acme_ca",
        "SHOWOFF_ACME_CA",
        "",
        "CA PEM file that verifies the ACME server itself (private or test ACME servers)",
    ),
    setting(
        "acme_challenge",
        "SHOWOFF_ACME_CHALLENGE",
        "http-01",
        "http-01 (public HTTP listener, port 80) or tls-alpn-01 (HTTPS listener, port 443)",
    ),
    setting(
        "acme_names",
        "SHOWOFF_ACME_NAMES",
        "",
        "names certified at start, comma-separated (e.g. the control listener's name)",
    ),
    setting(
        "acme_on_demand",
        "SHOWOFF_ACME_ON_DEMAND",
        "true",
        "also certify <tunnel>.<domain> when an HTTP tunnel registers",
    ),
    setting(
        "acme_orders_per_hour",
        "SHOWOFF_ACME_ORDERS_PER_HOUR",
        "30",
        "most on-demand orders per hour (0: no guard)",
    ),
    setting(
        "acme_renew_before",
        "SHOWOFF_ACME_RENEW_BEFORE",
        "720h",
        "renew certificates this long before they expire",
    ),
    secret(
        "token",
        "SHOWOFF_TOKEN",
        "accepted client tokens, comma-separated; none = open, loopback only",
    ),
    setting(
        "token_file",
        "SHOWOFF_TOKEN_FILE",
        "",
        "per-client token file (hashes, names, kinds, limits); reloaded on change or SIGHUP",
    ),
    secret(
        "signed_token_secret",
        "SHOWOFF_SIGNED_TOKEN_SECRET",
        "accept HMAC-signed tokens (`showoff token sign`) verified with this secret",
    ),
    secret(
        "jwt_secret",
        "SHOWOFF_JWT_SECRET",
        "accept HS256 JWTs signed with this secret (at least 16 bytes)",
    ),
    setting(
        "jwt_public_key",
        "SHOWOFF_JWT_PUBLIC_KEY",
        "",
        "accept RS256 or ES256 JWTs verified with this PEM public key file",
    ),
    setting(
        "jwt_issuer",
        "SHOWOFF_JWT_ISSUER",
        "",
        "required `iss` of JWTs (default: not checked)",
    ),
    setting(
        "jwt_audience",
        "SHOWOFF_JWT_AUDIENCE",
        "",
        "required `aud` of JWTs (default: not checked)",
    ),
    setting(
        "jwt_names_claim",
        "SHOWOFF_JWT_NAMES_CLAIM",
        "names",
        "JWT claim holding the allowed name patterns (array or comma-separated)",
    ),
    setting(
        "policy_file",
        "SHOWOFF_POLICY_FILE",
        "",
        "Rego policy evaluated in-process for each client (input: token, token_sha256, peer)",
    ),
    setting(
        "policy_rule",
        "SHOWOFF_POLICY_RULE",
        "data.showoff.authz",
        "the policy rule whose value is the decision",
    ),
    setting(
        "auth_webhook",
        "SHOWOFF_AUTH_WEBHOOK",
        "",
        "decision service URL speaking OPA's data API (http://host:port/v1/data/...)",
    ),
    setting(
        "auth_webhook_timeout",
        "SHOWOFF_AUTH_WEBHOOK_TIMEOUT",
        "2s",
        "deadline for one webhook decision (auth_unavailable after)",
    ),
    setting(
        "proxy_protocol",
        "SHOWOFF_PROXY_PROTOCOL",
        "off",
        "PROXY protocol v1/v2 on public listeners: off, optional or required (trusted peers only)",
    ),
    setting(
        "control_proxy_protocol",
        "SHOWOFF_CONTROL_PROXY_PROTOCOL",
        "off",
        "PROXY protocol v1/v2 on the control listener: off, optional or required (trusted peers only)",
    ),
    setting(
        "trusted_proxies",
        "SHOWOFF_TRUSTED_PROXIES",
        "",
        "CIDRs trusted for PROXY headers and incoming X-Forwarded-* (default: none)",
    ),
    secret(
        "admin_token",
        "SHOWOFF_ADMIN_TOKEN",
        "bearer token for /debug/pprof and PUT /api/v1/log-level; none disables them",
    ),
    setting(
        "audit_log",
        "SHOWOFF_AUDIT_LOG",
        "",
        "append-only JSON-lines audit log file: auth, tunnels, takeovers, revocations, refusals",
    ),
    setting(
        "name_allow",
        "SHOWOFF_NAME_ALLOW",
        "",
        "comma-separated name patterns every tunnel name must match (`*` wildcard; default: any)",
    ),
    setting(
        "reserved_names",
        "SHOWOFF_RESERVED_NAMES",
        "",
        "comma-separated names nobody may register (e.g. www,admin)",
    ),
    setting(
        "banned_names",
        "SHOWOFF_BANNED_NAMES",
        "",
        "comma-separated names refused outright",
    ),
    setting(
        "max_header_bytes",
        "SHOWOFF_MAX_HEADER_BYTES",
        "32768",
        "largest request head in bytes (431 above)",
    ),
    setting(
        "head_timeout",
        "SHOWOFF_HEAD_TIMEOUT",
        "15s",
        "time to send a request head (408 after); keep-alive idle limit",
    ),
    setting(
        "io_idle_timeout",
        "SHOWOFF_IO_IDLE_TIMEOUT",
        "60s",
        "longest a body read or response write may stall",
    ),
    setting(
        "pending_timeout",
        "SHOWOFF_PENDING_TIMEOUT",
        "10s",
        "time a visitor waits for the client to open a stream (504 after)",
    ),
    setting(
        "max_pending_per_session",
        "SHOWOFF_MAX_PENDING_PER_SESSION",
        "128",
        "streams being set up at once per client (503 above)",
    ),
    setting(
        "max_pending_total",
        "SHOWOFF_MAX_PENDING_TOTAL",
        "4096",
        "streams being set up at once on the server (503 above)",
    ),
    setting(
        "heartbeat_interval",
        "SHOWOFF_HEARTBEAT_INTERVAL",
        "15s",
        "pings to each client",
    ),
    setting(
        "heartbeat_timeout",
        "SHOWOFF_HEARTBEAT_TIMEOUT",
        "45s",
        "client silence after which its session ends",
    ),
    setting(
        "tunnel_idle_timeout",
        "SHOWOFF_TUNNEL_IDLE_TIMEOUT",
        "",
        "close tunnels without visitors for this long (default: off)",
    ),
    setting(
        "tunnel_lifetime",
        "SHOWOFF_TUNNEL_LIFETIME",
        "",
        "close every tunnel this long after it opened (default: off)",
    ),
    setting(
        "max_sessions",
        "SHOWOFF_MAX_SESSIONS",
        "50000",
        "client sessions at once (limit_reached above)",
    ),
    setting(
        "max_visitors_per_tunnel",
        "SHOWOFF_MAX_VISITORS_PER_TUNNEL",
        "1000",
        "concurrent visitors per tunnel: HTTP requests in flight or TCP connections (503 above)",
    ),
    setting(
        "visitor_rate_per_ip",
        "SHOWOFF_VISITOR_RATE_PER_IP",
        "0",
        "HTTP requests per second from one visitor address (429 above; 0: off)",
    ),
    setting(
        "tunnel_request_rate",
        "SHOWOFF_TUNNEL_REQUEST_RATE",
        "0",
        "HTTP requests per second to one tunnel (429 above; 0: off)",
    ),
    setting(
        "control_rate_per_ip",
        "SHOWOFF_CONTROL_RATE_PER_IP",
        "0",
        "control connections per minute from one client address (rate_limited above; 0: off)",
    ),
    setting(
        "tunnel_rate_per_principal",
        "SHOWOFF_TUNNEL_RATE_PER_PRINCIPAL",
        "0",
        "tunnels opened per minute by one principal, reconnects included (rate_limited above; 0: off)",
    ),
    setting(
        "shutdown_grace",
        "SHOWOFF_SHUTDOWN_GRACE",
        "30s",
        "time in-flight work gets on SIGTERM/SIGINT",
    ),
    setting(
        "warm_pool",
        "SHOWOFF_WARM_POOL",
        "8",
        "pre-dialled data connections per client (0: dial back per stream)",
    ),
    setting(
        "access_log",
        "SHOWOFF_ACCESS_LOG",
        "true",
        "one log line per proxied HTTP request",
    ),
    setting(
        "tunnel_metrics",
        "SHOWOFF_TUNNEL_METRICS",
        "0",
        "per-tunnel request counters for at most this many tunnels (0: off)",
    ),
];

/// Keys a config file may hold besides `[server]`.
const FILE_TOP_LEVEL: &[&str] = &["server", "log_format", "log_level", "threads"];

/// Where a resolved value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The built-in default.
    Default,
    /// The config file.
    File,
    /// A `SHOWOFF_*` variable.
    Env,
    /// A command-line flag.
    Flag,
}

/// Why the settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The path given.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The config file is not valid TOML, YAML or JSON.
    #[error("config file {path} is not valid {format}: {message}")]
    Parse {
        /// The path given.
        path: String,
        /// The format implied by the extension.
        format: &'static str,
        /// The parser's message.
        message: String,
    },
    /// The extension is not `.toml`, `.yaml`, `.yml` or `.json`.
    #[error("config file {0} must end in .toml, .yaml, .yml or .json")]
    Extension(String),
    /// A key the file may not hold.
    #[error(
        "unknown key {key:?} in config file {path}; known keys are listed in docs/operations.md"
    )]
    UnknownKey {
        /// The path given.
        path: String,
        /// The offending key, dotted (`server.contrl_addr`).
        key: String,
    },
    /// A value that does not parse.
    #[error("invalid value {value:?} for {key} (from {layer:?}): {reason}")]
    Invalid {
        /// The setting.
        key: &'static str,
        /// The text given.
        value: String,
        /// Which layer gave it.
        layer: Source,
        /// What was expected.
        reason: String,
    },
}

/// Values from a config file: server settings by key, and the global ones.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FileValues {
    /// `[server]` keys as text.
    pub server: BTreeMap<String, String>,
    /// Top-level `log_format`, `log_level`, `threads`.
    pub global: BTreeMap<String, String>,
}

/// Reads a file and hands its name, extension and text to `parse` (the format follows the
/// extension); shared by the server config, client config and token files.
pub fn load_by_extension<T>(
    path: &Path,
    parse: impl FnOnce(&str, &str, &str) -> Result<T, SettingsError>,
) -> Result<T, SettingsError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
        path: shown.clone(),
        source,
    })?;
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default();
    parse(&shown, ext, &text)
}

/// Reads and validates a server config file.
pub fn load_file(path: &Path) -> Result<FileValues, SettingsError> {
    load_by_extension(path, parse_file)
}

/// Deserializes config text in the format its extension names (`toml`, `yaml`/`yml`, `json`);
/// shared by the server's and the client's config files.
pub fn parse_by_extension<T: serde::de::DeserializeOwned>(
    path: &str,
    ext: &str,
    text: &str,
) -> Result<T, SettingsError> {
    let parse_error = |format: &'static str, message: String| SettingsError::Parse {
        path: path.to_string(),
        format,
        message,
    };
    match ext {
        "toml" => toml::from_str(text).map_err(|e| parse_error("TOML", e.to_string())),
        "yaml" | "yml" => {
            serde_yaml_ng::from_str(text).map_err(|e| parse_error("YAML", e.to_string()))
        }
        "json" => serde_json::from_str(text).map_err(|e| parse_error("JSON", e.to_string())),
        _ => Err(SettingsError::Extension(path.to_string())),
    }
}

/// Parses server config text of the given format (`toml`, `yaml`/`yml`, `json`).
pub fn parse_file(path: &str, ext: &str, text: &str) -> Result<FileValues, SettingsError> {
    let value: serde_json::Value = parse_by_extension(path, ext, text)?;
    let unknown = |key: String| SettingsError::UnknownKey {
        path: path.to_string(),
        key,
    };
    let serde_json::Value::Object(top) = value else {
        return Err(SettingsError::Parse {
            path: path.to_string(),
            format: "a table of settings",
            message: "the file must be a table".into(),
        });
    };
    let mut values = FileValues::default();
    for (key, value) in top {
        if !FILE_TOP_LEVEL.contains(&key.as_str()) {
            return Err(unknown(key));
        }
        if key != "server" {
            values.global.insert(key, scalar_text(&value));
            continue;
        }
        let serde_json::Value::Object(server) = value else {
            return Err(unknown("server (must be a table)".into()));
        };
        for (key, value) in server {
            if !SERVER_SETTINGS.iter().any(|s| s.key == key) {
                return Err(unknown(format!("server.{key}")));
            }
            values.server.insert(key, scalar_text(&value));
        }
    }
    Ok(values)
}

/// A file value as the text a flag would carry: lists join with commas.
fn scalar_text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(items) => {
            items.iter().map(scalar_text).collect::<Vec<_>>().join(",")
        }
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// The resolved settings: the server config, and where each value came from.
#[derive(Debug)]
pub struct Resolved {
    /// Ready for [`showoff_server::Server::bind`].
    pub config: ServerConfig,
    /// Each setting's final text and source, in table order.
    pub values: Vec<(Setting, String, Source)>,
}

impl Resolved {
    /// A file the binary opens itself (`token_file`, `audit_log`); `None` when unset.
    pub fn path(&self, key: &str) -> Option<std::path::PathBuf> {
        self.values
            .iter()
            .find(|(s, v, _)| s.key == key && !v.trim().is_empty())
            .map(|(_, v, _)| std::path::PathBuf::from(v.trim()))
    }
}

/// Resolved values as `key = value  # source` lines, secrets masked.
pub fn describe(values: &[(Setting, String, Source)]) -> String {
    let mut out = String::new();
    for (setting, value, source) in values {
        let shown = match (setting.secret, value.is_empty()) {
            (_, true) => "(none)".to_string(),
            (true, false) => "***".to_string(),
            (false, false) => value.clone(),
        };
        out.push_str(&format!(
            "{:<24} = {:<24} # {:?}; {}\n",
            setting.key, shown, source, setting.help
        ));
    }
    out
}

/// Layers defaults < file < env < flags for every server setting, then parses them.
pub fn resolve(
    flags: &BTreeMap<String, String>,
    env: &HashMap<String, String>,
    file: &FileValues,
) -> Result<Resolved, SettingsError> {
    let mut values = Vec::with_capacity(SERVER_SETTINGS.len());
    for setting in SERVER_SETTINGS {
        let layered = [
            (flags.get(setting.key), Source::Flag),
            (env.get(setting.env), Source::Env),
            (file.server.get(setting.key), Source::File),
        ];
        let (value, source) = layered
            .into_iter()
            .find_map(|(v, s)| v.map(|v| (v.clone(), s)))
            .unwrap_or_else(|| (setting.default.to_string(), Source::Default));
        values.push((*setting, value, source));
    }
    let config = build(&values)?;
    Ok(Resolved { config, values })
}

/// Parses duration text: `15`, `15s`, `500ms`, `2m`, `24h`, `30d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (digits, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = digits
        .parse()
        .map_err(|_| "expected a duration such as 15s, 500ms or 2m".to_string())?;
    match unit {
        "" | "s" => Ok(Duration::from_secs(n)),
        "ms" => Ok(Duration::from_millis(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        "d" => Ok(Duration::from_secs(n * 86400)),
        _ => Err(format!("unknown unit {unit:?}: use ms, s, m, h or d")),
    }
}

fn build(values: &[(Setting, String, Source)]) -> Result<ServerConfig, SettingsError> {
    let mut c = ServerConfig::default();
    let mut admin = AdminConfig::default();
    let mut webhook_timeout = showoff_server::config::DEFAULT_WEBHOOK_TIMEOUT;
    let mut acme = showoff_server::AcmeConfig {
        directory: String::new(),
        contact: Vec::new(),
        storage: "showoff-acme".into(),
        directory_ca: None,
        challenge: showoff_server::AcmeChallenge::Http01,
        names: Vec::new(),
        on_demand: true,
        orders_per_hour: 30,
        renew_before: showoff_server::acme::DEFAULT_RENEW_BEFORE,
        retry_after: std::time::Duration::from_secs(60),
    };
    for (setting, text, source) in values {
        let invalid = |reason: String| SettingsError::Invalid {
            key: setting.key,
            value: if setting.secret {
                "***".into()
            } else {
                text.clone()
            },
            layer: *source,
            reason,
        };
        let addr = || {
            text.parse::<std::net::SocketAddr>()
                .map_err(|_| invalid("expected IP:PORT".into()))
        };
        let duration = || parse_duration(text).map_err(invalid);
        let number = || {
            text.parse::<usize>()
                .map_err(|_| invalid("expected a whole number".into()))
        };
        let rate = || {
            text.parse::<u32>()
                .map_err(|_| invalid("expected a whole number of events".into()))
        };
        let empty = text.trim().is_empty();
        match setting.key {
            "control_addr" => c.control_addr = addr()?,
            "data_addr" => c.data_addr = addr()?,
            "http_addr" => c.http_addr = addr()?,
            "admin_addr" if text == "off" => admin.addr = None,
            "admin_addr" => admin.addr = Some(addr()?),
            "domain" => c.domain = text.clone(),
            "public_http_port" if empty => c.public_http_port = None,
            "public_http_port" => {
                c.public_http_port = Some(
                    text.parse()
                        .map_err(|_| invalid("expected a port".into()))?,
                )
            }
            "tcp_ports" => {
                c.tcp_ports = text
                    .parse()
                    .map_err(|e: showoff_server::ConfigError| invalid(e.to_string()))?
            }
            "token" => {
                c.tokens = text
                    .split(',')
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(Secret::new)
                    .collect()
            }
            "admin_token" => admin.token = (!empty).then(|| Secret::new(text.trim())),
            // Opened by the binary after resolution (files are I/O; this function is pure).
            "token_file" | "audit_log" | "jwt_public_key" | "policy_file" => {}
            "tls_cert" | "tls_key" | "tls_client_ca" => {}
            // Read together below.
            "acme_directory" | "acme_email" | "acme_storage" | "acme_ca" | "acme_names" => {}
            "acme_challenge" => acme.challenge = text.trim().parse().map_err(invalid)?,
            "acme_on_demand" => acme.on_demand = parse_bool(text).map_err(invalid)?,
            "acme_orders_per_hour" => acme.orders_per_hour = rate()?,
            "acme_renew_before" => acme.renew_before = duration()?,
            "https_addr" if empty => c.tls.https_addr = None,
            "https_addr" => c.tls.https_addr = Some(addr()?),
            "public_https_port" if empty => c.public_https_port = None,
            "public_https_port" => {
                c.public_https_port = Some(
                    text.parse()
                        .map_err(|_| invalid("expected a port".into()))?,
                )
            }
            "redirect_http" => c.tls.redirect_http = parse_bool(text).map_err(invalid)?,
            // Read together below.
            "jwt_secret" | "jwt_issuer" | "jwt_audience" | "jwt_names_claim" | "policy_rule" => {}
            "signed_token_secret" => {
                c.auth.signed_secret = (!empty).then(|| Secret::new(text.trim()))
            }
            "auth_webhook" if empty => c.auth.webhook = None,
            "auth_webhook" => {
                c.auth.webhook = Some(showoff_server::WebhookConfig {
                    url: text.trim().to_string(),
                    timeout: showoff_server::config::DEFAULT_WEBHOOK_TIMEOUT,
                })
            }
            "auth_webhook_timeout" => webhook_timeout = duration()?,
            "proxy_protocol" => c.proxy.protocol = text.trim().parse().map_err(invalid)?,
            "control_proxy_protocol" => c.proxy.control = text.trim().parse().map_err(invalid)?,
            "trusted_proxies" => {
                c.proxy.trusted = list(text)
                    .map(|net| {
                        net.parse::<ipnet::IpNet>()
                            .or_else(|_| net.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                            .map_err(|_| invalid(format!("{net:?} is not a CIDR or an address")))
                    })
                    .collect::<Result<_, _>>()?
            }
            "tunnel_rate_per_principal" => c.rates.tunnels_per_principal = rate()?,
            "name_allow" => c.names.allow = list(text).map(NamePattern::new).collect(),
            "reserved_names" => {
                c.names.reserved = list(text).map(str::to_ascii_lowercase).collect()
            }
            "banned_names" => c.names.banned = list(text).map(str::to_ascii_lowercase).collect(),
            "max_header_bytes" => c.max_header_bytes = number()?,
            "head_timeout" => c.head_timeout = duration()?,
            "io_idle_timeout" => c.io_idle_timeout = duration()?,
            "pending_timeout" => c.pending_timeout = duration()?,
            "max_pending_per_session" => c.max_pending_per_session = number()?,
            "max_pending_total" => c.max_pending_total = number()?,
            "heartbeat_interval" => c.heartbeat_interval = duration()?,
            "heartbeat_timeout" => c.heartbeat_timeout = duration()?,
            "tunnel_idle_timeout" if empty || text == "off" => c.tunnel_idle_timeout = None,
            "tunnel_idle_timeout" => c.tunnel_idle_timeout = Some(duration()?),
            "shutdown_grace" => c.shutdown_grace = duration()?,
            "tunnel_lifetime" if empty || text == "off" => c.tunnel_lifetime = None,
            "tunnel_lifetime" => c.tunnel_lifetime = Some(duration()?),
            "max_sessions" => c.max_sessions = number()?,
            "visitor_rate_per_ip" => c.rates.visitor_per_ip = rate()?,
            "tunnel_request_rate" => c.rates.tunnel_requests = rate()?,
            "control_rate_per_ip" => c.rates.control_per_ip = rate()?,
            "max_visitors_per_tunnel" => c.max_visitors_per_tunnel = number()?,
            "warm_pool" => {
                c.warm_pool = text
                    .parse()
                    .map_err(|_| invalid("expected 0 to 65535".into()))?
            }
            "access_log" => admin.access_log = parse_bool(text).map_err(invalid)?,
            "tunnel_metrics" => admin.tunnel_metrics = number()?,
            other => unreachable!("setting {other} has no parser"),
        }
    }
    c.admin = admin;
    if let Some(webhook) = &mut c.auth.webhook {
        webhook.timeout = webhook_timeout;
    }
    if let Some(directory) = text_of(values, "acme_directory") {
        acme.directory = directory.to_string();
        acme.contact = text_of(values, "acme_email")
            .map(|e| vec![format!("mailto:{e}")])
            .unwrap_or_default();
        acme.storage = text_of(values, "acme_storage")
            .unwrap_or("showoff-acme")
            .into();
        acme.directory_ca = text_of(values, "acme_ca").map(Into::into);
        acme.names = text_of(values, "acme_names")
            .map(|t| list(t).map(str::to_ascii_lowercase).collect())
            .unwrap_or_default();
        c.tls.acme = Some(acme);
    }
    if let Some(secret) = text_of(values, "jwt_secret") {
        c.auth.jwt = Some(jwt_config(JwtKey::Secret(Secret::new(secret)), values));
    }
    Ok(c)
}

/// The certificate and key files `tls_cert` and `tls_key` name, paired in order.
pub fn tls_files(
    values: &[(Setting, String, Source)],
) -> Result<Vec<(std::path::PathBuf, std::path::PathBuf)>, String> {
    let certs: Vec<&str> = text_of(values, "tls_cert")
        .map(|t| list(t).collect())
        .unwrap_or_default();
    let keys: Vec<&str> = text_of(values, "tls_key")
        .map(|t| list(t).collect())
        .unwrap_or_default();
    if certs.len() != keys.len() {
        return Err(format!(
            "--tls-cert names {} file(s) and --tls-key {}; give one key per certificate",
            certs.len(),
            keys.len()
        ));
    }
    Ok(certs
        .into_iter()
        .zip(keys)
        .map(|(c, k)| (c.into(), k.into()))
        .collect())
}

/// The trimmed value of `key`, when set.
pub fn text_of<'a>(values: &'a [(Setting, String, Source)], key: &str) -> Option<&'a str> {
    values
        .iter()
        .find(|(s, _, _)| s.key == key)
        .map(|(_, v, _)| v.trim())
        .filter(|v| !v.is_empty())
}

/// JWT settings around `key` (a secret from the settings, or a public key the binary read).
pub fn jwt_config(key: JwtKey, values: &[(Setting, String, Source)]) -> JwtConfig {
    JwtConfig {
        key,
        issuer: text_of(values, "jwt_issuer").map(str::to_string),
        audience: text_of(values, "jwt_audience").map(str::to_string),
        names_claim: text_of(values, "jwt_names_claim")
            .unwrap_or("names")
            .to_string(),
    }
}

/// The non-empty items of a comma-separated list.
fn list(text: &str) -> impl Iterator<Item = &str> {
    text.split(',').map(str::trim).filter(|t| !t.is_empty())
}

fn parse_bool(text: &str) -> Result<bool, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err("expected true or false".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn file(pairs: &[(&str, &str)]) -> FileValues {
        FileValues {
            server: map(pairs),
            global: BTreeMap::new(),
        }
    }

    #[test]
    fn precedence_is_flags_then_env_then_file_then_defaults() {
        // (flag, env, file) → expected control port and source.
        type Case<'a> = (
            Option<&'a str>,
            Option<&'a str>,
            Option<&'a str>,
            u16,
            Source,
        );
        let cases: &[Case<'_>] = &[
            (None, None, None, 7000, Source::Default),
            (None, None, Some("127.0.0.1:3"), 3, Source::File),
            (
                None,
                Some("127.0.0.1:2"),
                Some("127.0.0.1:3"),
                2,
                Source::Env,
            ),
            (
                Some("127.0.0.1:1"),
                Some("127.0.0.1:2"),
                Some("127.0.0.1:3"),
                1,
                Source::Flag,
            ),
            (
                Some("127.0.0.1:1"),
                None,
                Some("127.0.0.1:3"),
                1,
                Source::Flag,
            ),
        ];
        assert!(!cases.is_empty());
        for (flag, var, from_file, port, source) in cases {
            let flags = flag
                .map(|v| map(&[("control_addr", v)]))
                .unwrap_or_default();
            let envs = var
                .map(|v| env(&[("SHOWOFF_CONTROL_ADDR", v)]))
                .unwrap_or_default();
            let files = from_file
                .map(|v| file(&[("control_addr", v)]))
                .unwrap_or_default();
            let resolved = resolve(&flags, &envs, &files).expect("valid");
            assert_eq!(
                resolved.config.control_addr.port(),
                *port,
                "{flag:?} {var:?} {from_file:?}"
            );
            let (_, _, got) = resolved
                .values
                .iter()
                .find(|(s, _, _)| s.key == "control_addr")
                .expect("row");
            assert_eq!(got, source);
        }
    }

    #[test]
    fn defaults_match_the_library_defaults() {
        let resolved =
            resolve(&BTreeMap::new(), &HashMap::new(), &FileValues::default()).expect("defaults");
        let lib = ServerConfig::default();
        let c = &resolved.config;
        assert_eq!(
            (
                c.control_addr,
                c.data_addr,
                c.http_addr,
                c.domain.as_str(),
                c.tcp_ports
            ),
            (
                lib.control_addr,
                lib.data_addr,
                lib.http_addr,
                lib.domain.as_str(),
                lib.tcp_ports
            )
        );
        assert_eq!(
            (c.head_timeout, c.pending_timeout, c.heartbeat_interval),
            (
                lib.head_timeout,
                lib.pending_timeout,
                lib.heartbeat_interval
            )
        );
        assert_eq!(
            (c.shutdown_grace, c.warm_pool, c.max_header_bytes),
            (lib.shutdown_grace, lib.warm_pool, lib.max_header_bytes)
        );
        assert_eq!(c.admin, lib.admin);
    }

    #[test]
    fn the_three_file_formats_agree() {
        let toml = "log_level = \"debug\"\n[server]\ndomain = \"t.example.com\"\ntoken = [\"a\", \"b\"]\nhead_timeout = 5\nwarm_pool = 2\n";
        let yaml = "log_level: debug\nserver:\n  domain: t.example.com\n  token: [a, b]\n  head_timeout: 5\n  warm_pool: 2\n";
        let json = r#"{"log_level":"debug","server":{"domain":"t.example.com","token":["a","b"],"head_timeout":5,"warm_pool":2}}"#;
        let parsed: Vec<FileValues> = [("toml", toml), ("yaml", yaml), ("json", json)]
            .iter()
            .map(|(ext, text)| parse_file("f", ext, text).expect(ext))
            .collect();
        assert!(parsed.windows(2).all(|w| w[0] == w[1]), "{parsed:?}");
        let resolved = resolve(&BTreeMap::new(), &HashMap::new(), &parsed[0]).expect("valid");
        assert_eq!(resolved.config.tokens.len(), 2);
        assert_eq!(resolved.config.head_timeout, Duration::from_secs(5));
        assert_eq!(parsed[0].global["log_level"], "debug");
    }

    #[test]
    fn unknown_keys_are_named() {
        let err =
            parse_file("cfg.toml", "toml", "[server]\ncontrl_addr = \"x\"\n").expect_err("typo");
        assert!(err.to_string().contains("\"server.contrl_addr\""), "{err}");
        let err = parse_file("cfg.yaml", "yaml", "sever:\n  a: 1\n").expect_err("typo");
        assert!(err.to_string().contains("\"sever\""), "{err}");
        assert!(matches!(
            parse_file("cfg.ini", "ini", ""),
            Err(SettingsError::Extension(_))
        ));
    }

    #[test]
    fn invalid_values_name_the_setting_and_hide_secrets() {
        let err = resolve(
            &map(&[("head_timeout", "soon")]),
            &HashMap::new(),
            &FileValues::default(),
        )
        .expect_err("bad");
        let text = err.to_string();
        assert!(
            text.contains("head_timeout") && text.contains("soon") && text.contains("Flag"),
            "{text}"
        );
        let resolved = resolve(
            &BTreeMap::new(),
            &env(&[("SHOWOFF_TOKEN", "hunter2")]),
            &FileValues::default(),
        )
        .expect("ok");
        let described = describe(&resolved.values);
        assert!(
            !described.contains("hunter2") && described.contains("***"),
            "{described}"
        );
    }

    #[test]
    fn durations_accept_units() {
        assert_eq!(parse_duration("15"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
        assert!(parse_duration("2w").is_err());
        assert!(parse_duration("x").is_err());
    }
}

/// Settings every subcommand shares, resolved with the same precedence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Globals {
    /// `pretty` or `json`.
    pub log_format: String,
    /// A level or filter.
    pub log_level: String,
    /// Runtime worker threads; `None` picks per subcommand.
    pub threads: Option<usize>,
}

/// The config file to read: `--config`, else `SHOWOFF_CONFIG`, else none.
pub fn config_path(
    flag: Option<&Path>,
    env: &HashMap<String, String>,
) -> Option<std::path::PathBuf> {
    flag.map(Path::to_path_buf).or_else(|| {
        env.get("SHOWOFF_CONFIG")
            .filter(|p| !p.is_empty())
            .map(Into::into)
    })
}

/// Resolves `--log-format`, `--log-level` and `--threads`: flags > env > file > defaults.
pub fn globals(
    cli: &crate::cli::Cli,
    env: &HashMap<String, String>,
    file: &FileValues,
) -> Result<Globals, SettingsError> {
    let pick = |flag: Option<String>, var: &str, key: &str| {
        flag.map(|v| (v, Source::Flag))
            .or_else(|| env.get(var).map(|v| (v.clone(), Source::Env)))
            .or_else(|| file.global.get(key).map(|v| (v.clone(), Source::File)))
    };
    let log_format = pick(cli.log_format.clone(), "SHOWOFF_LOG_FORMAT", "log_format")
        .map_or("pretty".into(), |(v, _)| v);
    let log_level = pick(cli.log_level.clone(), "SHOWOFF_LOG_LEVEL", "log_level")
        .map_or("info".into(), |(v, _)| v);
    let threads = match pick(
        cli.threads.map(|t| t.to_string()),
        "SHOWOFF_THREADS",
        "threads",
    ) {
        None => None,
        Some((text, source)) => {
            Some(text.parse::<usize>().map_err(|_| SettingsError::Invalid {
                key: "threads",
                value: text.clone(),
                layer: source,
                reason: "expected a whole number".into(),
            })?)
        }
    };
    Ok(Globals {
        log_format,
        log_level,
        threads,
    })
}
