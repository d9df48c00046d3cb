//! Command-line flags. Every server and client setting is a flag whose help names its
//! `SHOWOFF_*` variable and default; flags win over the environment.

use clap::{Args, Parser, Subcommand};

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
    #[arg(
        long,
        global = true,
        env = "SHOWOFF_LOG_FORMAT",
        default_value = "pretty",
        hide_env = true,
        hide_default_value = true
    )]
    pub log_format: String,
    /// Log level or filter (`error` … `trace`, or `showoff_server=debug`) [env: SHOWOFF_LOG_LEVEL] [default: info]
    #[arg(
        long,
        global = true,
        env = "SHOWOFF_LOG_LEVEL",
        default_value = "info",
        hide_env = true,
        hide_default_value = true
    )]
    pub log_level: String,
    /// Runtime worker threads [env: SHOWOFF_THREADS] [default: all cores for the server, 1 for clients]
    #[arg(long, global = true, env = "SHOWOFF_THREADS", hide_env = true)]
    pub threads: Option<usize>,
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server: control, data and public listeners.
    Server(ServerArgs),
    /// Expose a local HTTP service: `showoff http 3000`.
    Http(TunnelArgs),
    /// Expose a local TCP service on a public port: `showoff tcp 5432`.
    Tcp(TunnelArgs),
}

/// `showoff server` flags.
#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Control listener [env: SHOWOFF_CONTROL_ADDR] [default: 127.0.0.1:7000]
    #[arg(long, env = "SHOWOFF_CONTROL_ADDR", hide_env = true)]
    pub control_addr: Option<String>,
    /// Data (dial-back) listener [env: SHOWOFF_DATA_ADDR] [default: 127.0.0.1:7001]
    #[arg(long, env = "SHOWOFF_DATA_ADDR", hide_env = true)]
    pub data_addr: Option<String>,
    /// Public HTTP listener [env: SHOWOFF_HTTP_ADDR] [default: 127.0.0.1:8080]
    #[arg(long, env = "SHOWOFF_HTTP_ADDR", hide_env = true)]
    pub http_addr: Option<String>,
    /// Base domain of tunnel hostnames [env: SHOWOFF_DOMAIN] [default: localhost]
    #[arg(long, env = "SHOWOFF_DOMAIN", hide_env = true)]
    pub domain: Option<String>,
    /// Port shown in public HTTP URLs [env: SHOWOFF_PUBLIC_HTTP_PORT] [default: the HTTP listener's port]
    #[arg(long, env = "SHOWOFF_PUBLIC_HTTP_PORT", hide_env = true)]
    pub public_http_port: Option<u16>,
    /// Port range for TCP tunnels, FIRST-LAST [env: SHOWOFF_TCP_PORTS] [default: 20000-20999]
    #[arg(long, env = "SHOWOFF_TCP_PORTS", hide_env = true)]
    pub tcp_ports: Option<String>,
    /// Accepted client token; repeat or comma-separate for several [env: SHOWOFF_TOKEN] [default: none, open on loopback only]
    #[arg(long, env = "SHOWOFF_TOKEN", hide_env = true, value_delimiter = ',')]
    pub token: Vec<String>,
    /// Largest request head in bytes [env: SHOWOFF_MAX_HEADER_BYTES] [default: 32768]
    #[arg(long, env = "SHOWOFF_MAX_HEADER_BYTES", hide_env = true)]
    pub max_header_bytes: Option<usize>,
    /// Seconds a visitor has to send a request head; also the keep-alive idle limit [env: SHOWOFF_HEAD_TIMEOUT] [default: 15]
    #[arg(long, env = "SHOWOFF_HEAD_TIMEOUT", hide_env = true)]
    pub head_timeout: Option<u64>,
    /// Seconds a visitor body read or response write may stall [env: SHOWOFF_IO_IDLE_TIMEOUT] [default: 60]
    #[arg(long, env = "SHOWOFF_IO_IDLE_TIMEOUT", hide_env = true)]
    pub io_idle_timeout: Option<u64>,
    /// Seconds a visitor waits for the client to open a stream [env: SHOWOFF_PENDING_TIMEOUT] [default: 10]
    #[arg(long, env = "SHOWOFF_PENDING_TIMEOUT", hide_env = true)]
    pub pending_timeout: Option<u64>,
    /// Streams being set up at once per session [env: SHOWOFF_MAX_PENDING_PER_SESSION] [default: 128]
    #[arg(long, env = "SHOWOFF_MAX_PENDING_PER_SESSION", hide_env = true)]
    pub max_pending_per_session: Option<usize>,
    /// Streams being set up at once on the server [env: SHOWOFF_MAX_PENDING_TOTAL] [default: 4096]
    #[arg(long, env = "SHOWOFF_MAX_PENDING_TOTAL", hide_env = true)]
    pub max_pending_total: Option<usize>,
    /// Seconds between pings to each client [env: SHOWOFF_HEARTBEAT_INTERVAL] [default: 15]
    #[arg(long, env = "SHOWOFF_HEARTBEAT_INTERVAL", hide_env = true)]
    pub heartbeat_interval: Option<u64>,
    /// Seconds of client silence before its session is dropped [env: SHOWOFF_HEARTBEAT_TIMEOUT] [default: 45]
    #[arg(long, env = "SHOWOFF_HEARTBEAT_TIMEOUT", hide_env = true)]
    pub heartbeat_timeout: Option<u64>,
    /// Close tunnels without visitors for this many seconds [env: SHOWOFF_TUNNEL_IDLE_TIMEOUT] [default: off]
    #[arg(long, env = "SHOWOFF_TUNNEL_IDLE_TIMEOUT", hide_env = true)]
    pub tunnel_idle_timeout: Option<u64>,
    /// Seconds in-flight requests get to finish on shutdown [env: SHOWOFF_SHUTDOWN_GRACE] [default: 30]
    #[arg(long, env = "SHOWOFF_SHUTDOWN_GRACE", hide_env = true)]
    pub shutdown_grace: Option<u64>,
    /// Pre-dialled data connections per client [env: SHOWOFF_WARM_POOL] [default: 8]
    #[arg(long, env = "SHOWOFF_WARM_POOL", hide_env = true)]
    pub warm_pool: Option<u16>,
}

/// `showoff http` / `showoff tcp` flags.
#[derive(Debug, Args)]
pub struct TunnelArgs {
    /// Local port (`3000`) or address (`192.168.1.5:3000`) to expose
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
    /// Requested public port (tcp only) [default: one from the server's range]
    #[arg(long)]
    pub port: Option<u16>,
    /// Host header sent to the target (http only): `preserve`, `rewrite` or a value [default: preserve]
    #[arg(long, default_value = "preserve", hide_default_value = true)]
    pub host_header: String,
    /// Print one JSON object per event instead of text
    #[arg(long)]
    pub json: bool,
    /// Exit on the first lost connection instead of reconnecting
    #[arg(long)]
    pub no_reconnect: bool,
}
