//! Command-line flags. Server flags are generated from the settings table
//! ([`crate::settings::SERVER_SETTINGS`]) and layered over the environment and the config file
//! by [`crate::settings::resolve`]; client flags read their `SHOWOFF_*` variables through clap.
//! Every flag's help names its variable and default.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::{Arg, ArgAction, ArgMatches, Args, Parser, Subcommand};

use crate::settings::SERVER_SETTINGS;

/// Version string: version, commit, build date, compiler.
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("SHOWOFF_GIT_COMMIT"),
    ", built ",
    env!("SHOWOFF_BUILD_DATE"),
    ", ",
    env!("SHOWOFF_RUSTC"),
    ")"
);

/// Expose local services through a Showoff server.
#[derive(Debug, Parser)]
#[command(name = "showoff", version = LONG_VERSION, about)]
pub struct Cli {
    /// Log format: `pretty` or `json` [env: SHOWOFF_LOG_FORMAT] [default: pretty]
    #[arg(long, global = true)]
    pub log_format: Option<String>,
    /// Log level or filter (`error` … `trace`, or `showoff_server=debug`) [env: SHOWOFF_LOG_LEVEL] [default: info]
    #[arg(long, global = true)]
    pub log_level: Option<String>,
    /// Runtime worker threads [env: SHOWOFF_THREADS] [default: all cores for the server, 1 for clients]
    #[arg(long, global = true)]
    pub threads: Option<usize>,
    /// Export traces to this OpenTelemetry collector (OTLP): `http://collector:4318` (spans go to `/v1/traces`) or, with `--otlp-protocol grpc`, `http://collector:4317` [env: SHOWOFF_OTLP_ENDPOINT] [default: off]
    #[arg(long, global = true)]
    pub otlp_endpoint: Option<String>,
    /// OTLP transport: `http` (protobuf) or `grpc` [env: SHOWOFF_OTLP_PROTOCOL] [default: http]
    #[arg(long, global = true)]
    pub otlp_protocol: Option<String>,
    /// Headers sent with every export, `name=value,...` (a collector's API key) [env: SHOWOFF_OTLP_HEADERS]
    #[arg(long, global = true)]
    pub otlp_headers: Option<String>,
    /// Resource attributes beside service.name/version/instance.id, `key=value,...` [env: SHOWOFF_OTLP_RESOURCE]
    #[arg(long, global = true)]
    pub otlp_resource: Option<String>,
    /// Share of new traces sampled, 0 to 1 (a continued trace follows its parent's decision) [env: SHOWOFF_TRACE_SAMPLE] [default: 1]
    #[arg(long, global = true)]
    pub trace_sample: Option<String>,
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server: control, data, public and admin listeners.
    Server(ServerArgs),
    /// Expose a local HTTP service: `showoff http 3000`.
    Http(TunnelArgs),
    /// Expose a local TCP service on a public port: `showoff tcp 5432`.
    Tcp(TunnelArgs),
    /// Expose a local TLS service by name, unterminated (SNI routing): `showoff tls 8443`.
    Tls(TunnelArgs),
    /// Expose a local UDP service on a public UDP port: `showoff udp 53`.
    Udp(TunnelArgs),
    /// Run every tunnel named in a client config file: `showoff client -c showoff.toml`.
    Client(ClientArgs),
    /// Manage per-client tokens: `showoff token new --name alice --names 'alice-*'`.
    #[command(subcommand)]
    Token(TokenCommand),
}

/// `showoff token` subcommands.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Mint a token: prints it once, and the entry for the server's token file.
    New(GrantArgs),
    /// Sign a self-contained token with SHOWOFF_SIGNED_TOKEN_SECRET (no token file needed).
    Sign(TokenSignArgs),
}

/// What a minted or signed token grants: its principal and permissions.
#[derive(Debug, Args)]
pub struct GrantArgs {
    /// Id of the principal the token stands for (shown in logs and the admin API; signed
    /// tokens appear as `signed:<id>`)
    #[arg(long)]
    pub name: String,
    /// Name patterns the token may register, comma-separated (`alice-*`) [default: any]
    #[arg(long, value_delimiter = ',')]
    pub names: Vec<String>,
    /// Tunnel kinds the token may open, comma-separated (`http,tcp,tls`) [default: all]
    #[arg(long, value_delimiter = ',')]
    pub kinds: Vec<String>,
    /// Most tunnels open at once [default: no limit]
    #[arg(long)]
    pub max_tunnels: Option<usize>,
}

/// `showoff token sign` flags; the secret comes from `SHOWOFF_SIGNED_TOKEN_SECRET` only, so it
/// never shows in the process list.
#[derive(Debug, Args)]
pub struct TokenSignArgs {
    /// The token's principal and permissions
    #[command(flatten)]
    pub grant: GrantArgs,
    /// How long the token is valid: 90m, 12h, 30d
    #[arg(long, default_value = "24h")]
    pub ttl: String,
}

/// How a client speaks TLS to the server.
#[derive(Debug, Clone, Default, Args)]
pub struct TlsArgs {
    /// Connect to the server over TLS (implied by the other --tls options)
    #[arg(long)]
    pub tls: bool,
    /// CA certificate PEM file to verify the server with, instead of the webpki roots
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
    /// Name to verify the server's certificate for [default: the server address's host]
    #[arg(long)]
    pub tls_server_name: Option<String>,
    /// Client certificate PEM file, for servers that require one (mTLS)
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Private key PEM file of --tls-cert
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Accept any server certificate: for tests only, warns on every connection
    #[arg(long)]
    pub dangerously_skip_tls_verify: bool,
}

/// How the client's streams travel; shared by every client command.
#[derive(Debug, Clone, Default, Args)]
pub struct TransportArgs {
    /// How streams travel: `auto` (QUIC when the server offers it and UDP gets through, else mux), `quic`, `mux` (multiplexed on the control connection) or `tcp` (one data connection per stream) [env: SHOWOFF_TRANSPORT] [default: tcp]
    #[arg(long, env = "SHOWOFF_TRANSPORT", hide_env = true)]
    pub transport: Option<showoff_client::TransportChoice>,
    /// UDP port of the server's QUIC listener, for `--transport quic` before the server has said it [env: SHOWOFF_QUIC_PORT] [default: learned from the server, else the control port]
    #[arg(long, env = "SHOWOFF_QUIC_PORT", hide_env = true)]
    pub quic_port: Option<u16>,
    /// Seconds between QUIC probes of an `auto` client that runs on mux [env: SHOWOFF_QUIC_PROBE_INTERVAL] [default: 300]
    #[arg(long, env = "SHOWOFF_QUIC_PROBE_INTERVAL", hide_env = true)]
    pub quic_probe_interval: Option<u64>,
}

/// The traffic inspector of `http` tunnels and what the terminal shows; shared by `http` and
/// `client`.
#[derive(Debug, Clone, Default, Args)]
pub struct InspectArgs {
    /// Address of the inspector's web page and API; loopback only [env: SHOWOFF_INSPECT_ADDR] [default: 127.0.0.1:4040, else the next free port up to 4049]
    #[arg(long, env = "SHOWOFF_INSPECT_ADDR", hide_env = true)]
    pub inspect_addr: Option<std::net::SocketAddr>,
    /// Turn the inspector's page off (the terminal's request lines stay) [env: SHOWOFF_NO_INSPECT]
    #[arg(long, env = "SHOWOFF_NO_INSPECT", hide_env = true)]
    pub no_inspect: bool,
    /// Memory the captured requests may use in all: bytes, or with KiB, MiB, GiB [env: SHOWOFF_INSPECT_MEMORY] [default: 64MiB]
    #[arg(long, env = "SHOWOFF_INSPECT_MEMORY", hide_env = true, value_parser = crate::settings::parse::size)]
    pub inspect_memory: Option<u64>,
    /// Bytes of each body kept in memory; the rest is cut with a mark, or spilled [env: SHOWOFF_INSPECT_BODY_CAP] [default: 256KiB]
    #[arg(long, env = "SHOWOFF_INSPECT_BODY_CAP", hide_env = true, value_parser = crate::settings::parse::size)]
    pub inspect_body_cap: Option<u64>,
    /// Write bodies past the cap whole into a new directory under DIR (downloads and replays get every byte) [env: SHOWOFF_INSPECT_SPILL] [default: off]
    #[arg(
        long,
        env = "SHOWOFF_INSPECT_SPILL",
        hide_env = true,
        value_name = "DIR"
    )]
    pub inspect_spill: Option<PathBuf>,
    /// Bytes the spilled bodies may take on disk in all [env: SHOWOFF_INSPECT_SPILL_MAX] [default: 1GiB]
    #[arg(long, env = "SHOWOFF_INSPECT_SPILL_MAX", hide_env = true, value_parser = crate::settings::parse::size)]
    pub inspect_spill_max: Option<u64>,
    /// Print only the tunnel lines: no request lines, no inspector line
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

/// `showoff client` flags; they win over `SHOWOFF_*` variables, which win over the file.
#[derive(Debug, Args)]
pub struct ClientArgs {
    /// Client config file: TOML, YAML or JSON by extension [env: SHOWOFF_CONFIG]
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
    /// Server control address, HOST:PORT [env: SHOWOFF_SERVER] [default: the file's, else 127.0.0.1:7000]
    #[arg(long)]
    pub server: Option<String>,
    /// Data listener address when it is not the server host with the announced port [env: SHOWOFF_DATA_SERVER]
    #[arg(long)]
    pub data_server: Option<String>,
    /// Token to authenticate with [env: SHOWOFF_TOKEN] [default: the file's]
    #[arg(long)]
    pub token: Option<String>,
    /// TLS towards the server (flags win over the file's `tls*` keys)
    #[command(flatten)]
    pub tls: TlsArgs,
    /// The transport (flags and variables win over the file's keys)
    #[command(flatten)]
    pub transport: TransportArgs,
    /// The inspector (flags and variables win over the file's keys)
    #[command(flatten)]
    pub inspect: InspectArgs,
    /// Print one JSON object per event instead of text
    #[arg(long)]
    pub json: bool,
    /// Exit on the first lost connection instead of reconnecting
    #[arg(long)]
    pub no_reconnect: bool,
}

/// `showoff server` flags: one per entry of [`SERVER_SETTINGS`], plus `--config` and
/// `--check-config`. Values stay text here; [`crate::settings::resolve`] parses them.
#[derive(Debug, Default)]
pub struct ServerArgs {
    /// Flag values by setting key.
    pub values: BTreeMap<String, String>,
    /// `--config`.
    pub config: Option<PathBuf>,
    /// `--check-config`.
    pub check_config: bool,
}

impl clap::FromArgMatches for ServerArgs {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let mut args = Self::default();
        args.update_from_arg_matches(matches)?;
        Ok(args)
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        for setting in SERVER_SETTINGS {
            if let Some(value) = matches.get_one::<String>(setting.key) {
                self.values.insert(setting.key.to_string(), value.clone());
            }
        }
        self.config = matches.get_one::<PathBuf>("config").cloned();
        self.check_config = matches.get_flag("check_config");
        Ok(())
    }
}

impl Args for ServerArgs {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        let cmd = cmd
            .arg(
                Arg::new("config")
                    .long("config")
                    .short('c')
                    .value_name("FILE")
                    .value_parser(clap::value_parser!(PathBuf))
                    .help("Config file: TOML, YAML or JSON by extension [env: SHOWOFF_CONFIG]"),
            )
            .arg(
                Arg::new("check_config")
                    .long("check-config")
                    .action(ArgAction::SetTrue)
                    .help(
                        "Print the resolved settings (secrets masked) with their sources, and exit",
                    ),
            );
        SERVER_SETTINGS.iter().fold(cmd, |cmd, setting| {
            let default = if setting.default.is_empty() {
                "none"
            } else {
                setting.default
            };
            cmd.arg(
                Arg::new(setting.key)
                    .long(setting.key.replace('_', "-"))
                    .value_name("VALUE")
                    .help(format!(
                        "{} [env: {}] [default: {default}]",
                        capitalise(setting.help),
                        setting.env
                    )),
            )
        })
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

fn capitalise(text: &str) -> String {
    let mut chars = text.chars();
    chars
        .next()
        .map(|c| c.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

/// `showoff http` / `tcp` / `tls` / `udp` flags.
#[derive(Debug, Args)]
pub struct TunnelArgs {
    /// Local port (`3000`) or address (`192.168.1.5:3000`) to expose; http tunnels also take `https://host:port` for a TLS target
    pub target: String,
    /// Server control address, HOST:PORT [env: SHOWOFF_SERVER] [default: 127.0.0.1:7000]
    #[arg(long, env = "SHOWOFF_SERVER", hide_env = true)]
    pub server: Option<String>,
    /// Data listener address when it is not the server host with the announced port [env: SHOWOFF_DATA_SERVER] [default: derived]
    #[arg(long, env = "SHOWOFF_DATA_SERVER", hide_env = true)]
    pub data_server: Option<String>,
    /// Token to authenticate with [env: SHOWOFF_TOKEN] [default: none]
    #[arg(
        long,
        env = "SHOWOFF_TOKEN",
        hide_env = true,
        default_value = "",
        hide_default_value = true
    )]
    pub token: String,
    /// Requested tunnel name (a DNS label) [default: a random readable name]
    #[arg(long)]
    pub name: Option<String>,
    /// Requested public port (tcp and udp only) [default: one from the server's range]
    #[arg(long)]
    pub port: Option<u16>,
    /// Host header sent to the target (http only): `preserve`, `rewrite` or a value [default: preserve]
    #[arg(long, default_value = "preserve", hide_default_value = true)]
    pub host_header: String,
    /// What the target speaks (http only): `http1`, `h2c` (HTTP/2 prior knowledge), `h2` (HTTP/2 over TLS) or `auto` (probed); gRPC needs HTTP/2 [default: http1]
    #[arg(long, default_value = "http1", hide_default_value = true)]
    pub upstream: showoff_proto::Upstream,
    /// Check a TLS target's certificate against this CA (PEM) and the target's name [default: a TLS target's certificate is not checked]
    #[arg(long)]
    pub upstream_ca: Option<std::path::PathBuf>,
    /// Visitors must log in with these HTTP basic auth credentials, USER:PASSWORD (http only)
    #[arg(long)]
    pub basic_auth: Option<String>,
    /// Only these visitor addresses may connect: CIDRs, repeat or comma-separate [default: all]
    #[arg(long, value_delimiter = ',')]
    pub allow_ip: Vec<String>,
    /// These visitor addresses are refused: CIDRs, repeat or comma-separate (checked first)
    #[arg(long, value_delimiter = ',')]
    pub deny_ip: Vec<String>,
    /// Send each visitor's address to the target in a PROXY protocol header: v1 or v2 (tcp), v2 in front of each datagram (udp)
    #[arg(long)]
    pub proxy_protocol: Option<showoff_client::ProxyVersion>,
    /// TLS towards the server
    #[command(flatten)]
    pub tls: TlsArgs,
    /// The transport
    #[command(flatten)]
    pub transport: TransportArgs,
    /// The inspector (http)
    #[command(flatten)]
    pub inspect: InspectArgs,
    /// Print one JSON object per event instead of text
    #[arg(long)]
    pub json: bool,
    /// Exit on the first lost connection instead of reconnecting
    #[arg(long)]
    pub no_reconnect: bool,
}
