//! What each subcommand does: turn flags into library configs and run them.

use std::collections::HashMap;

use anyhow::Context;
use showoff_client::{ClientConfig, ClientEvent, TunnelConfig};
use showoff_proto::{HostHeader, TunnelKind, TunnelSpec, VisitorRules};
use showoff_server::auth::TokenTable;
use showoff_server::{BuildInfo, LogControl, Server, ServerConfig, Services};
use tokio_util::sync::CancellationToken;

use crate::cli::{Cli, Command, ServerArgs, TokenCommand, TokenSignArgs, TunnelArgs};
use crate::client_file::{self, ClientFile};
use crate::settings::{self, FileValues};
use crate::token_file;

/// Runs the chosen subcommand to completion.
pub async fn run(
    cli: Cli,
    env: HashMap<String, String>,
    file: FileValues,
    client_file: Option<ClientFile>,
    log_control: LogControl,
    trace: Option<f64>,
) -> anyhow::Result<()> {
    match cli.command {
        Command::Server(args) => server(args, &env, &file, log_control, trace).await,
        Command::Http(args) => client(TunnelKind::Http, args, trace).await,
        Command::Tcp(args) => client(TunnelKind::Tcp, args, trace).await,
        Command::Tls(args) => client(TunnelKind::Tls, args, trace).await,
        Command::Udp(args) => client(TunnelKind::Udp, args, trace).await,
        Command::Token(TokenCommand::Sign(args)) => sign_token(&args, &env),
        Command::Token(TokenCommand::New(args)) => {
            parse_kinds(&args.kinds)?;
            let (token, entry) =
                token_file::new_token(&args.name, &args.names, &args.kinds, args.max_tunnels);
            println!("token (shown once; give it to the client):\n  {token}\n");
            println!("add to the server's token file:\n{entry}");
            Ok(())
        }
        Command::Client(args) => {
            let file = client_file.context("showoff client needs a config file")?;
            let overrides = client_file::Overrides {
                server: args.server,
                data_server: args.data_server,
                token: args.token,
                no_reconnect: args.no_reconnect,
            };
            let mut config =
                client_file::resolve(&file, &overrides, &env).map_err(anyhow::Error::msg)?;
            config.tls = load_tls(&client_file::tls_args(&file, &args.tls))?;
            let transport =
                client_file::transport_args(&file, &args.transport).map_err(anyhow::Error::msg)?;
            client_file::apply_transport(&mut config, &transport);
            config.trace = trace;
            let inspect = crate::inspector::merge(&args.inspect, &file.inspect())?;
            run_client(config, args.json, &inspect).await
        }
    }
}

/// `--kinds` values as tunnel kinds; only the kinds a server opens are accepted.
fn parse_kinds(kinds: &[String]) -> anyhow::Result<Vec<TunnelKind>> {
    kinds
        .iter()
        .map(|kind| match kind.as_str() {
            "http" => Ok(TunnelKind::Http),
            "tcp" => Ok(TunnelKind::Tcp),
            "tls" => Ok(TunnelKind::Tls),
            _ => anyhow::bail!("unknown tunnel kind {kind:?}: use http, tcp or tls"),
        })
        .collect()
}

/// `showoff token sign`: prints a signed token valid for `--ttl`.
fn sign_token(args: &TokenSignArgs, env: &HashMap<String, String>) -> anyhow::Result<()> {
    use showoff_server::auth::Grant;
    use showoff_server::auth::signed::{SignedClaims, sign};
    let grant = &args.grant;
    let kinds = parse_kinds(&grant.kinds)?;
    let secret = env
        .get("SHOWOFF_SIGNED_TOKEN_SECRET")
        .filter(|s| !s.is_empty())
        .context("set SHOWOFF_SIGNED_TOKEN_SECRET to the server's signed_token_secret")?;
    let ttl = settings::parse_duration(&args.ttl)
        .map_err(|e| anyhow::anyhow!("invalid --ttl {:?}: {e}", args.ttl))?;
    anyhow::ensure!(!ttl.is_zero(), "--ttl must be longer than zero");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("the clock is before 1970")?;
    let claims = SignedClaims {
        sub: grant.name.clone(),
        exp: (now + ttl).as_secs(),
        grant: Grant {
            names: grant.names.clone(),
            kinds,
            max_tunnels: grant.max_tunnels,
        },
    };
    println!("{}", sign(&showoff_server::Secret::new(secret), &claims));
    eprintln!(
        "signed token for {} (principal signed:{}), valid for {}",
        grant.name, grant.name, args.ttl
    );
    Ok(())
}

/// What this binary reports in `/version` and `showoff_build_info`.
pub fn build_info() -> BuildInfo {
    BuildInfo {
        version: env!("CARGO_PKG_VERSION").into(),
        commit: env!("SHOWOFF_GIT_COMMIT").into(),
        build_date: env!("SHOWOFF_BUILD_DATE").into(),
        rustc: env!("SHOWOFF_RUSTC").into(),
    }
}

/// This machine's name, the default instance name in a cluster (a Kubernetes pod's name).
fn host_name(env: &HashMap<String, String>) -> String {
    let from_kernel = std::fs::read_to_string("/proc/sys/kernel/hostname").ok();
    [env.get("HOSTNAME").cloned(), from_kernel]
        .into_iter()
        .flatten()
        .map(|name| name.trim().to_string())
        .find(|name| !name.is_empty())
        .unwrap_or_else(|| format!("showoff-{}", std::process::id()))
}

/// The shared registry of a cluster: leases in the Redis at `url` (connected lazily, so the
/// server starts while Redis is still coming up).
fn cluster_registry(
    cluster: &showoff_server::config::ClusterConfig,
    url: showoff_server::Secret,
    tls: showoff_cluster::RedisTls,
) -> anyhow::Result<std::sync::Arc<dyn showoff_server::Registry>> {
    let mut settings = showoff_cluster::RedisSettings::new(url, &cluster.instance);
    settings.lease_ttl = cluster.lease_ttl;
    settings.prefix = cluster.prefix.clone();
    settings.tls = tls;
    let registry =
        showoff_cluster::RedisRegistry::connect(&settings).context("cannot use --cluster-redis")?;
    Ok(std::sync::Arc::new(registry))
}

/// The CA and client certificate for a `rediss://` cluster Redis, read from the files the
/// settings name; a certificate needs its key and a key its certificate.
fn redis_tls(
    values: &[(settings::Setting, String, settings::Source)],
) -> anyhow::Result<showoff_cluster::RedisTls> {
    let read = |key: &str| -> anyhow::Result<Option<Vec<u8>>> {
        settings::text_of(values, key)
            .map(|path| std::fs::read(path).with_context(|| format!("cannot read {key} {path}")))
            .transpose()
    };
    let client = match (read("cluster_redis_cert")?, read("cluster_redis_key")?) {
        (Some(cert), Some(key)) => {
            let key = String::from_utf8(key).context("cluster_redis_key is not PEM text")?;
            Some((cert, showoff_server::Secret::new(key)))
        }
        (None, None) => None,
        _ => anyhow::bail!("cluster_redis_cert and cluster_redis_key go together"),
    };
    Ok(showoff_cluster::RedisTls {
        ca: read("cluster_redis_ca")?,
        client,
    })
}

/// The server's configuration with every file it names read, and its services.
struct Loaded {
    config: ServerConfig,
    services: Services,
    values: Vec<(settings::Setting, String, settings::Source)>,
    token_path: Option<std::path::PathBuf>,
    tls_files: Vec<(std::path::PathBuf, std::path::PathBuf)>,
}

/// Resolves the settings and reads the files they name (keys, policies, certificates, the
/// token file, the audit log).
fn load_server(
    args: &ServerArgs,
    env: &HashMap<String, String>,
    file: &FileValues,
) -> anyhow::Result<Loaded> {
    let resolved = settings::resolve(&args.values, env, file)?;
    let token_path = resolved.path("token_file");
    let audit_path = resolved.path("audit_log");
    let mut config = resolved.config;
    attach_auth_files(&mut config, &resolved.values)?;
    let tls_files = settings::tls_files(&resolved.values).map_err(anyhow::Error::msg)?;
    config.tls.certificates = read_pem_pairs(&tls_files)?;
    if let Some(path) = settings::text_of(&resolved.values, "tls_client_ca") {
        config.tls.client_ca = Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read tls_client_ca {path}"))?,
        );
    }
    let mut services = Services::default();
    if let Some(path) = &token_path {
        services.token_table = Some(TokenTable::new(token_file::load(path)?));
    }
    if let Some(path) = audit_path {
        services.audit = crate::audit_file::open(&path)?;
    }
    if let Some(url) = config.cluster.redis.clone() {
        if config.cluster.instance.is_empty() {
            config.cluster.instance = host_name(env);
        }
        let tls = redis_tls(&resolved.values)?;
        services.registry = Some(cluster_registry(&config.cluster, url, tls)?);
    } else if redis_tls(&resolved.values)?.is_set() {
        anyhow::bail!("cluster_redis_ca, _cert and _key need cluster_redis (a rediss:// URL)");
    }
    Ok(Loaded {
        config,
        services,
        values: resolved.values,
        token_path,
        tls_files,
    })
}

async fn server(
    args: ServerArgs,
    env: &HashMap<String, String>,
    file: &FileValues,
    log_control: LogControl,
    trace: Option<f64>,
) -> anyhow::Result<()> {
    let Loaded {
        mut config,
        mut services,
        values,
        token_path,
        tls_files,
    } = load_server(&args, env, file)?;
    config.trace.enabled = trace.is_some();
    config.trace.sample = trace.unwrap_or(1.0);
    if args.check_config {
        print!("{}", settings::describe(&values));
        if let Some(table) = &services.token_table {
            println!("# token file: {} token(s)", table.len());
        }
        showoff_server::validate(&config, &services)
            .context("the resolved configuration cannot run")?;
        return Ok(());
    }
    config.build = build_info();
    services.log_control = Some(log_control);
    let table = services.token_table.clone();
    let server = Server::bind_with(config, services)
        .await
        .context("failed to start the server")?;
    let shutdown = CancellationToken::new();
    crate::signals::spawn_handler(shutdown.clone())?;
    if let (Some(path), Some(table)) = (token_path, table) {
        tokio::spawn(token_file::watch(
            path,
            table,
            server.handle(),
            shutdown.clone(),
        ));
    }
    if !tls_files.is_empty() {
        watch_certificates(tls_files, server.handle(), shutdown.clone());
    }
    let report = server.run(shutdown).await;
    if !report.clean {
        tracing::warn!("shutdown grace expired before every visitor finished");
    }
    Ok(())
}

/// Reloads the certificates whenever one of their files changes.
fn watch_certificates(
    tls_files: Vec<(std::path::PathBuf, std::path::PathBuf)>,
    handle: showoff_server::ServerHandle,
    shutdown: CancellationToken,
) {
    let watched = tls_files
        .iter()
        .flat_map(|(c, k)| [c.clone(), k.clone()])
        .collect();
    tokio::spawn(crate::watch::on_change(
        watched,
        "certificates",
        shutdown,
        move || match read_pem_pairs(&tls_files).map_err(|e| format!("{e:#}")) {
            Ok(pairs) => {
                if let Err(error) = handle.reload_certificates(&pairs) {
                    tracing::error!(%error, "certificates not reloaded; the previous ones stay in force");
                }
            }
            Err(error) => {
                tracing::error!(%error, "certificates not reloaded; the previous ones stay in force")
            }
        },
    ));
}

/// The client's TLS settings, with the files they name read; `None` for plain TCP.
fn load_tls(args: &crate::cli::TlsArgs) -> anyhow::Result<Option<showoff_client::ClientTls>> {
    let wanted = args.tls
        || args.tls_ca.is_some()
        || args.tls_cert.is_some()
        || args.tls_server_name.is_some()
        || args.dangerously_skip_tls_verify;
    if !wanted {
        return Ok(None);
    }
    let read = |path: &std::path::Path| {
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
    };
    let identity = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some((read(cert)?, read(key)?)),
        (None, None) => None,
        _ => anyhow::bail!("--tls-cert and --tls-key go together"),
    };
    Ok(Some(showoff_client::ClientTls {
        ca: args.tls_ca.as_deref().map(read).transpose()?,
        server_name: args.tls_server_name.clone(),
        identity,
        dangerously_skip_verify: args.dangerously_skip_tls_verify,
    }))
}

/// Reads certificate/key PEM files, paired in order.
fn read_pem_pairs(
    files: &[(std::path::PathBuf, std::path::PathBuf)],
) -> anyhow::Result<Vec<showoff_server::PemPair>> {
    files
        .iter()
        .map(|(cert, key)| {
            let read = |path: &std::path::Path| {
                std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read {}", path.display()))
            };
            Ok(showoff_server::PemPair {
                cert: read(cert)?,
                key: read(key)?,
            })
        })
        .collect()
}

/// Reads the JWT public key and the Rego policy the settings name.
fn attach_auth_files(
    config: &mut showoff_server::ServerConfig,
    values: &[(settings::Setting, String, settings::Source)],
) -> anyhow::Result<()> {
    if let Some(path) = settings::text_of(values, "jwt_public_key") {
        anyhow::ensure!(
            config.auth.jwt.is_none(),
            "set jwt_secret or jwt_public_key, not both"
        );
        let pem = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read jwt_public_key {path}"))?;
        let key = showoff_server::auth::jwt::JwtKey::PublicPem(pem);
        config.auth.jwt = Some(settings::jwt_config(key, values));
    }
    if let Some(path) = settings::text_of(values, "policy_file") {
        let rego = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read policy_file {path}"))?;
        config.auth.policy = Some(showoff_server::PolicyConfig {
            path: path.to_string(),
            rego,
            rule: settings::text_of(values, "policy_rule")
                .unwrap_or("data.showoff.authz")
                .to_string(),
        });
    }
    Ok(())
}

async fn client(kind: TunnelKind, args: TunnelArgs, trace: Option<f64>) -> anyhow::Result<()> {
    if let Some(version) = args.proxy_protocol {
        showoff_client::proxy_header::check_applies(kind, version)
            .map_err(|why| anyhow::anyhow!("--proxy-protocol: {why}"))?;
    }
    let (local, tls) = crate::target::resolve(
        kind,
        &args.target,
        args.upstream,
        args.upstream_ca.as_deref(),
    )
    .map_err(anyhow::Error::msg)?;
    let spec = TunnelSpec {
        kind,
        name: args.name.clone(),
        port: args.port,
        host_header: HostHeader::from(args.host_header.clone()),
        target: local.clone(),
        visitors: VisitorRules {
            basic_auth: args.basic_auth.clone(),
            allow_ips: args.allow_ip.clone(),
            deny_ips: args.deny_ip.clone(),
        },
        upstream: args.upstream,
    };
    let mut config = ClientConfig::new(
        args.server
            .clone()
            .unwrap_or_else(|| showoff_client::config::DEFAULT_SERVER.into()),
        vec![TunnelConfig {
            spec,
            local,
            proxy_protocol: args.proxy_protocol,
            tls,
        }],
    );
    config.data_server = args.data_server.clone();
    config.token = args.token.clone();
    config.reconnect = !args.no_reconnect;
    config.tls = load_tls(&args.tls)?;
    client_file::apply_transport(&mut config, &args.transport);
    config.trace = trace;
    run_client(config, args.json, &args.inspect).await
}

/// Runs the client library, printing its events, until a signal or a permanent error. The
/// inspector's page line follows the first tunnel lines.
async fn run_client(
    mut config: ClientConfig,
    json: bool,
    inspect: &crate::cli::InspectArgs,
) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    crate::signals::spawn_handler(shutdown.clone())?;
    let has_http = config
        .tunnels
        .iter()
        .any(|t| t.spec.kind == TunnelKind::Http);
    let lines = crate::inspector::lines(inspect.quiet, json);
    let running = crate::inspector::start(inspect, has_http, lines, &shutdown).await?;
    let mut page = running.as_ref().and_then(|r| r.url.clone());
    config.inspector = running.map(|r| r.inspector);
    if inspect.quiet {
        page = None;
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let printer = tokio::spawn(async move {
        while let Some(event) = rx.recv().await {
            print_event(&event, json);
            if matches!(event, ClientEvent::Connected { .. })
                && let Some(url) = page.take()
            {
                if json {
                    println!("{}", serde_json::json!({"event": "inspector", "url": url}));
                } else {
                    println!("inspector: {url}");
                }
            }
        }
    });
    let result = showoff_client::run(config, tx, shutdown).await;
    let _ = printer.await;
    result.map_err(anyhow::Error::from)
}

fn print_event(event: &ClientEvent, json: bool) {
    match event {
        ClientEvent::Connected {
            tunnels,
            transport,
            max_udp_payload,
        } => {
            for (info, local) in tunnels {
                let shown_local = match info.kind {
                    TunnelKind::Http => format!("http://{local}"),
                    _ => local.clone(),
                };
                let udp_limit = max_udp_payload.filter(|_| info.kind == TunnelKind::Udp);
                if json {
                    let mut line = serde_json::json!({
                        "event": "connected", "name": info.name, "kind": info.kind,
                        "public_url": info.public_url, "local": shown_local,
                        "transport": transport.as_str(),
                    });
                    if let Some(limit) = udp_limit {
                        line["max_datagram"] = limit.into();
                    }
                    println!("{line}");
                } else if let Some(limit) = udp_limit {
                    println!(
                        "{} -> {shown_local} (datagrams up to {limit} bytes)",
                        info.public_url
                    );
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
        ClientEvent::Switched { from, to } if json => {
            println!(
                "{}",
                serde_json::json!({"event": "switched", "from": from.as_str(), "to": to.as_str()})
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

    fn server_args(argv: &[&str]) -> ServerArgs {
        let mut full = vec!["showoff", "server"];
        full.extend_from_slice(argv);
        let cli = Cli::try_parse_from(full).expect("parse");
        let Command::Server(args) = cli.command else {
            panic!("server")
        };
        args
    }

    #[test]
    fn generated_flags_reach_the_config() {
        let args = server_args(&[
            "--http-addr",
            "127.0.0.1:9999",
            "--token",
            "a,b",
            "--pending-timeout",
            "3",
        ]);
        let resolved = settings::resolve(&args.values, &HashMap::new(), &FileValues::default())
            .expect("config");
        let config = resolved.config;
        assert_eq!(config.http_addr.port(), 9999);
        assert_eq!(config.tokens.len(), 2);
        assert_eq!(config.pending_timeout, std::time::Duration::from_secs(3));
        assert_eq!(
            config.control_addr,
            showoff_server::ServerConfig::default().control_addr
        );
    }

    #[test]
    fn bad_values_are_named_in_the_error() {
        let args = server_args(&["--control-addr", "nope"]);
        let err = settings::resolve(&args.values, &HashMap::new(), &FileValues::default())
            .expect_err("invalid")
            .to_string();
        assert!(
            err.contains("control_addr") && err.contains("nope"),
            "{err}"
        );
    }

    #[test]
    fn check_config_and_config_flags_parse() {
        let args = server_args(&["--check-config", "-c", "showoff.toml"]);
        assert!(args.check_config);
        assert_eq!(
            args.config.as_deref(),
            Some(std::path::Path::new("showoff.toml"))
        );
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

    /// Every server setting's flag, variable, file key and default is in the table of
    /// docs/operations.md.
    #[test]
    fn operations_doc_lists_every_server_setting() {
        let doc = include_str!("../../../docs/operations.md");
        let settings = crate::settings::SERVER_SETTINGS;
        assert!(!settings.is_empty());
        for setting in settings {
            let row = doc
                .lines()
                .find(|l| l.starts_with(&format!("| `--{}`", setting.key.replace('_', "-"))))
                .unwrap_or_else(|| panic!("no row for --{} in docs/operations.md", setting.key));
            assert!(
                row.contains(&format!("`{}`", setting.env)),
                "{} missing in: {row}",
                setting.env
            );
            assert!(
                row.contains(&format!("`{}`", setting.key)),
                "file key {} missing in: {row}",
                setting.key
            );
            if !setting.default.is_empty() {
                assert!(
                    row.contains(setting.default),
                    "default {} missing in: {row}",
                    setting.default
                );
            }
        }
        for extra in [
            "SHOWOFF_CONFIG",
            "SHOWOFF_LOG_FORMAT",
            "SHOWOFF_LOG_LEVEL",
            "SHOWOFF_THREADS",
            "--check-config",
        ] {
            assert!(
                doc.contains(extra),
                "{extra} missing from docs/operations.md"
            );
        }
    }
}
