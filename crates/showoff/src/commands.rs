//! What each subcommand does: turn flags into library configs and run them.

use std::time::Duration;

use anyhow::Context;
use showoff_client::{ClientConfig, ClientEvent, TunnelConfig};
use showoff_proto::{HostHeader, TunnelKind, TunnelSpec};
use showoff_server::{Secret, Server, ServerConfig};
use tokio_util::sync::CancellationToken;

use crate::cli::{Cli, Command, ServerArgs, TunnelArgs};

/// Runs the chosen subcommand to completion.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Server(args) => server(args).await,
        Command::Http(args) => client(TunnelKind::Http, args).await,
        Command::Tcp(args) => client(TunnelKind::Tcp, args).await,
    }
}

fn addr(value: &str, what: &str) -> anyhow::Result<std::net::SocketAddr> {
    value
        .parse()
        .with_context(|| format!("invalid {what} {value:?}: expected IP:PORT"))
}

/// Builds the server config: flags (and their env variables) over the defaults.
pub fn server_config(args: &ServerArgs) -> anyhow::Result<ServerConfig> {
    let mut c = ServerConfig::default();
    let secs = Duration::from_secs;
    if let Some(v) = &args.control_addr {
        c.control_addr = addr(v, "--control-addr")?;
    }
    if let Some(v) = &args.data_addr {
        c.data_addr = addr(v, "--data-addr")?;
    }
    if let Some(v) = &args.http_addr {
        c.http_addr = addr(v, "--http-addr")?;
    }
    if let Some(v) = &args.domain {
        c.domain = v.clone();
    }
    if let Some(v) = &args.tcp_ports {
        c.tcp_ports = v.parse()?;
    }
    c.public_http_port = args.public_http_port;
    c.tokens = args
        .token
        .iter()
        .filter(|t| !t.is_empty())
        .map(Secret::new)
        .collect();
    c.max_header_bytes = args.max_header_bytes.unwrap_or(c.max_header_bytes);
    c.head_timeout = args.head_timeout.map_or(c.head_timeout, secs);
    c.io_idle_timeout = args.io_idle_timeout.map_or(c.io_idle_timeout, secs);
    c.pending_timeout = args.pending_timeout.map_or(c.pending_timeout, secs);
    c.max_pending_per_session = args
        .max_pending_per_session
        .unwrap_or(c.max_pending_per_session);
    c.max_pending_total = args.max_pending_total.unwrap_or(c.max_pending_total);
    c.heartbeat_interval = args.heartbeat_interval.map_or(c.heartbeat_interval, secs);
    c.heartbeat_timeout = args.heartbeat_timeout.map_or(c.heartbeat_timeout, secs);
    c.tunnel_idle_timeout = args.tunnel_idle_timeout.map(secs);
    c.shutdown_grace = args.shutdown_grace.map_or(c.shutdown_grace, secs);
    c.warm_pool = args.warm_pool.unwrap_or(c.warm_pool);
    Ok(c)
}

async fn server(args: ServerArgs) -> anyhow::Result<()> {
    let config = server_config(&args)?;
    let server = Server::bind(config)
        .await
        .context("failed to start the server")?;
    let shutdown = CancellationToken::new();
    crate::signals::spawn_handler(shutdown.clone())?;
    let report = server.run(shutdown).await;
    if !report.clean {
        tracing::warn!("shutdown grace expired before every visitor finished");
    }
    Ok(())
}

/// `3000` → `127.0.0.1:3000`; anything with a colon is used as given.
pub fn local_target(target: &str) -> String {
    if target.contains(':') {
        target.to_string()
    } else {
        format!("127.0.0.1:{target}")
    }
}

async fn client(kind: TunnelKind, args: TunnelArgs) -> anyhow::Result<()> {
    let local = local_target(&args.target);
    let spec = TunnelSpec {
        kind,
        name: args.name.clone(),
        port: args.port,
        host_header: HostHeader::from(args.host_header.clone()),
        target: local.clone(),
    };
    let mut config = ClientConfig::new(
        args.server
            .clone()
            .unwrap_or_else(|| showoff_client::config::DEFAULT_SERVER.into()),
        vec![TunnelConfig { spec, local }],
    );
    config.data_server = args.data_server.clone();
    config.token = args.token.clone();
    config.reconnect = !args.no_reconnect;
    let shutdown = CancellationToken::new();
    crate::signals::spawn_handler(shutdown.clone())?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let json = args.json;
    let printer = tokio::spawn(async move {
        while let Some(event) = rx.recv().await {
            print_event(&event, json);
        }
    });
    let result = showoff_client::run(config, tx, shutdown).await;
    let _ = printer.await;
    result.map_err(anyhow::Error::from)
}

fn print_event(event: &ClientEvent, json: bool) {
    match event {
        ClientEvent::Connected { tunnels } => {
            for (info, local) in tunnels {
                let shown_local = match info.kind {
                    TunnelKind::Http => format!("http://{local}"),
                    _ => local.clone(),
                };
                if json {
                    let line = serde_json::json!({
                        "event": "connected", "name": info.name, "kind": info.kind,
                        "public_url": info.public_url, "local": shown_local,
                    });
                    println!("{line}");
                } else {
                    println!("{} -> {shown_local}", info.public_url);
                }
            }
        }
        ClientEvent::Disconnected { error, retry_in } if json => {
            let line = serde_json::json!({"event": "disconnected", "error": error, "retry_in_ms": retry_in.as_millis() as u64});
            println!("{line}");
        }
        ClientEvent::TunnelClosed { tunnel, reason } if json => {
            println!(
                "{}",
                serde_json::json!({"event": "tunnel_closed", "name": tunnel, "reason": reason})
            );
        }
        ClientEvent::GoAway { reason } if json => {
            println!(
                "{}",
                serde_json::json!({"event": "go_away", "reason": reason})
            );
        }
        // Text mode: these are logged on stderr by the client library.
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn bare_ports_mean_loopback() {
        assert_eq!(local_target("3000"), "127.0.0.1:3000");
        assert_eq!(local_target("10.0.0.2:80"), "10.0.0.2:80");
    }

    #[test]
    fn flags_override_defaults() {
        let cli = Cli::try_parse_from([
            "showoff",
            "server",
            "--http-addr",
            "127.0.0.1:9999",
            "--token",
            "a,b",
            "--pending-timeout",
            "3",
        ])
        .expect("parse");
        let Command::Server(args) = cli.command else {
            panic!("server")
        };
        let config = server_config(&args).expect("config");
        assert_eq!(config.http_addr.port(), 9999);
        assert_eq!(config.tokens.len(), 2);
        assert_eq!(config.pending_timeout, Duration::from_secs(3));
        assert_eq!(config.control_addr, ServerConfig::default().control_addr);
    }

    #[test]
    fn bad_addresses_are_named_in_the_error() {
        let cli =
            Cli::try_parse_from(["showoff", "server", "--control-addr", "nope"]).expect("parse");
        let Command::Server(args) = cli.command else {
            panic!("server")
        };
        let err = server_config(&args).expect_err("invalid").to_string();
        assert!(err.contains("--control-addr"), "{err}");
    }
}

#[cfg(test)]
mod docs_tests {
    use clap::CommandFactory;

    /// Every flag and environment variable of every subcommand is documented.
    #[test]
    fn operations_doc_lists_every_setting() {
        let doc = include_str!("../../../docs/operations.md");
        let command = crate::cli::Cli::command();
        let mut checked = 0;
        let mut commands = vec![&command];
        commands.extend(command.get_subcommands());
        for cmd in commands {
            for arg in cmd.get_arguments() {
                if let Some(long) = arg.get_long() {
                    if long == "help" || long == "version" {
                        continue;
                    }
                    assert!(
                        doc.contains(&format!("`--{long}`")),
                        "--{long} is missing from docs/operations.md"
                    );
                    checked += 1;
                }
                if let Some(env) = arg.get_env() {
                    let env = env.to_string_lossy();
                    assert!(
                        doc.contains(&format!("`{env}`")),
                        "{env} is missing from docs/operations.md"
                    );
                }
            }
        }
        assert!(checked > 20, "only {checked} flags found");
    }
}
