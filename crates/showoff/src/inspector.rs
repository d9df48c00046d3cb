//! The client commands' inspector and request lines: settings (flags > `SHOWOFF_*` > file >
//! defaults) to an [`Inspector`], its loopback listener, and the terminal's one line per
//! request (`GET /api/users 200 12 ms 1.2 KB`, coloured by status) or one JSON object per
//! request with `--json`.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use showoff_client::inspect::{Entry, InspectConfig, Inspector, StoreEvent, api};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::cli::InspectArgs;
use crate::settings::parse::size as parse_size;

/// Ports tried after the default one is taken (another client's inspector): 4040 to 4049.
const DEFAULT_PORTS: u16 = 10;

/// The inspector keys of a client config file (each flag and variable wins over its key).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InspectFile {
    /// `false` turns the inspector's page off.
    pub inspect: Option<bool>,
    /// Address of the page and API.
    pub inspect_addr: Option<SocketAddr>,
    /// Memory budget (`64MiB`).
    pub inspect_memory: Option<String>,
    /// Bytes of each body kept (`256KiB`).
    pub inspect_body_cap: Option<String>,
    /// Spill directory.
    pub inspect_spill: Option<PathBuf>,
    /// Disk budget of the spill directory (`1GiB`).
    pub inspect_spill_max: Option<String>,
}

/// The flags with the file's keys under them.
pub fn merge(flags: &InspectArgs, file: &InspectFile) -> anyhow::Result<InspectArgs> {
    let size =
        |flag: Option<u64>, key: &str, text: &Option<String>| -> anyhow::Result<Option<u64>> {
            match (flag, text) {
                (Some(value), _) => Ok(Some(value)),
                (None, Some(text)) => parse_size(text)
                    .map(Some)
                    .map_err(|why| anyhow::anyhow!("config file key {key}: {why}")),
                (None, None) => Ok(None),
            }
        };
    Ok(InspectArgs {
        inspect_addr: flags.inspect_addr.or(file.inspect_addr),
        no_inspect: flags.no_inspect || file.inspect == Some(false),
        inspect_memory: size(flags.inspect_memory, "inspect_memory", &file.inspect_memory)?,
        inspect_body_cap: size(
            flags.inspect_body_cap,
            "inspect_body_cap",
            &file.inspect_body_cap,
        )?,
        inspect_spill: flags
            .inspect_spill
            .clone()
            .or_else(|| file.inspect_spill.clone()),
        inspect_spill_max: size(
            flags.inspect_spill_max,
            "inspect_spill_max",
            &file.inspect_spill_max,
        )?,
        quiet: flags.quiet,
    })
}

/// What the terminal shows for requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lines {
    /// Nothing (quiet, or stdout is not a terminal).
    Off,
    /// One text line per request, coloured when stdout is a terminal.
    Text,
    /// One JSON object per request.
    Json,
}

/// The inspector of a client command, running.
pub struct Running {
    /// Handed to the client library.
    pub inspector: Inspector,
    /// Where the page is, when it is on.
    pub url: Option<String>,
}

/// Starts the inspector when the command has `http` tunnels and something wants it: the page
/// (unless `--no-inspect`) or the request lines. `None` when neither does (no cost at all).
pub async fn start(
    args: &InspectArgs,
    has_http: bool,
    lines: Lines,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<Running>> {
    let page = has_http && !args.no_inspect;
    if !page && (lines == Lines::Off || !has_http) {
        return Ok(None);
    }
    let mut config = InspectConfig::default();
    if let Some(memory) = args.inspect_memory {
        config.memory = usize::try_from(memory).unwrap_or(usize::MAX);
    }
    if let Some(cap) = args.inspect_body_cap {
        config.body_cap = usize::try_from(cap).unwrap_or(usize::MAX);
    }
    if let Some(max) = args.inspect_spill_max {
        config.spill_budget = max;
    }
    config.spill = args.inspect_spill.clone();
    if !page {
        // Request lines only: heads, no bodies, no spill.
        config.body_cap = 0;
        config.spill = None;
    }
    let inspector =
        Inspector::new(&config).context("cannot create the inspector's spill directory")?;
    let mut url = None;
    if page && let Some(listener) = bind(args.inspect_addr).await? {
        let addr = listener.local_addr()?;
        url = Some(format!("http://{addr}"));
        tokio::spawn(api::serve(listener, inspector.clone(), shutdown.clone()));
    }
    if lines != Lines::Off {
        tokio::spawn(print_lines(inspector.clone(), lines, shutdown.clone()));
    }
    Ok(Some(Running { inspector, url }))
}

/// Binds the page's listener: an explicit address must be loopback and free; the default
/// tries 4040 to 4049 and leaves the page off (with a warning) when all are taken.
async fn bind(explicit: Option<SocketAddr>) -> anyhow::Result<Option<TcpListener>> {
    if let Some(addr) = explicit {
        anyhow::ensure!(
            addr.ip().is_loopback(),
            "--inspect-addr {addr}: the inspector shows every request and replays them, so it \
             listens on loopback only (127.0.0.1 or ::1)"
        );
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot bind the inspector to {addr}"))?;
        return Ok(Some(listener));
    }
    let default: SocketAddr = showoff_client::inspect::DEFAULT_INSPECT_ADDR
        .parse()
        .context("default inspector address")?;
    for offset in 0..DEFAULT_PORTS {
        let addr = SocketAddr::new(default.ip(), default.port() + offset);
        if let Ok(listener) = TcpListener::bind(addr).await {
            return Ok(Some(listener));
        }
    }
    tracing::warn!("inspector off: ports 4040 to 4049 are taken; set --inspect-addr");
    Ok(None)
}

/// Which request lines a client command prints.
pub fn lines(quiet: bool, json: bool) -> Lines {
    match (quiet, json) {
        (true, _) => Lines::Off,
        (false, true) => Lines::Json,
        (false, false) if std::io::stdout().is_terminal() => Lines::Text,
        _ => Lines::Off,
    }
}

/// Lines waiting for stdout before new ones are dropped.
const PRINT_QUEUE: usize = 1024;

/// A thread that writes lines to stdout, fed without waiting: a stdout nobody reads (a full
/// pipe) costs request lines, never the relay.
fn printer() -> std::sync::mpsc::SyncSender<String> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<String>(PRINT_QUEUE);
    let spawned = std::thread::Builder::new()
        .name("showoff-lines".into())
        .spawn(move || {
            use std::io::Write;
            while let Ok(line) = rx.recv() {
                let mut out = std::io::stdout().lock();
                if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
                    return;
                }
            }
        });
    if let Err(error) = spawned {
        tracing::warn!(%error, "request lines off: no printer thread");
    }
    tx
}

async fn print_lines(inspector: Inspector, lines: Lines, shutdown: CancellationToken) {
    let mut events = inspector.subscribe();
    let colour = std::io::stdout().is_terminal();
    let out = printer();
    let mut dropped = 0u64;
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return,
            event = events.recv() => event,
        };
        match event {
            Ok(StoreEvent::Entry(entry)) => {
                let line = match lines {
                    Lines::Json => json_line(&entry),
                    _ => text_line(&entry, colour),
                };
                if out.try_send(line).is_err() {
                    dropped += 1;
                    if dropped.is_power_of_two() {
                        tracing::debug!(dropped, "request lines dropped: stdout is not read");
                    }
                }
            }
            Ok(StoreEvent::Cleared) => {}
            Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                tracing::debug!(missed, "request lines skipped: the terminal fell behind");
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// `{"event":"request",...}`: the inspector's summary of the exchange.
pub fn json_line(entry: &Entry) -> String {
    let mut value = api::summary(entry);
    value["event"] = "request".into();
    value.to_string()
}

/// `GET /api/users 200 12 ms 1.2 KB`, the status coloured by class when `colour`.
pub fn text_line(entry: &Entry, colour: bool) -> String {
    let status = match (entry.status(), entry.upgrade) {
        (_, Some(up)) if up.open => "101 open".to_string(),
        (_, Some(up)) => format!(
            "101 closed, {} in {} out",
            size(up.bytes_in),
            size(up.bytes_out)
        ),
        (Some(status), None) => status.to_string(),
        (None, None) => entry.error.unwrap_or("no response").to_string(),
    };
    let status = if colour {
        let code = match entry.status().map(|s| s / 100) {
            Some(2) => "32",
            Some(3) => "36",
            Some(4) => "33",
            Some(1) => "2",
            _ => "31",
        };
        format!("\x1b[{code}m{status}\x1b[0m")
    } else {
        status
    };
    let millis = entry.duration.as_millis();
    format!(
        "{} {} {status} {millis} ms {}",
        entry.request.method,
        entry.request.path,
        size(entry.response_size())
    )
}

/// `512 B`, `1.2 KB`, `3.4 MB`, `1.1 GB` (in 1024s).
fn size(bytes: u64) -> String {
    const UNITS: [&str; 3] = ["KB", "MB", "GB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_binary_units() {
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("256 KiB"), Ok(256 << 10));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5 parsecs").is_err());
        assert!(parse_size("99999999999999999999GiB").is_err());
    }

    #[test]
    fn sizes_print_like_the_page() {
        assert_eq!(size(512), "512 B");
        assert_eq!(size(1229), "1.2 KB");
        assert_eq!(size(3 << 20), "3.0 MB");
    }

    fn bytes_of(text: &'static str) -> showoff_client::inspect::entry::Bytes {
        text.as_bytes().to_vec().into()
    }

    fn entry(status: Option<u16>, body: u64) -> Entry {
        use showoff_client::inspect::entry::{Body, Request, Response};
        let body = Body {
            size: body,
            ..Body::default()
        };
        Entry {
            id: 1,
            tunnel: "demo".into(),
            started: std::time::SystemTime::now(),
            duration: std::time::Duration::from_millis(12),
            request: Request {
                method: "GET".into(),
                path: "/api/users".into(),
                version: "HTTP/1.1",
                head: bytes_of("GET /api/users HTTP/1.1\r\n\r\n"),
                body: Body::default(),
            },
            response: status.map(|status| Response {
                status,
                version: "HTTP/1.1",
                head: bytes_of("HTTP/1.1 200 OK\r\nServer: test\r\n\r\n"),
                body,
                waited: std::time::Duration::from_millis(10),
            }),
            upgrade: None,
            error: status.is_none().then_some("stream_closed"),
            replay_of: None,
        }
    }

    #[test]
    fn request_lines_read_like_the_issue_says() {
        assert_eq!(
            text_line(&entry(Some(200), 1200), false),
            "GET /api/users 200 12 ms 1.2 KB"
        );
        assert_eq!(
            text_line(&entry(Some(503), 0), true),
            "GET /api/users \x1b[31m503\x1b[0m 12 ms 33 B"
        );
        assert_eq!(
            text_line(&entry(None, 0), false),
            "GET /api/users stream_closed 12 ms 0 B"
        );
        let json: serde_json::Value =
            serde_json::from_str(&json_line(&entry(Some(200), 5))).expect("json");
        assert_eq!(
            (json["event"].as_str(), json["status"].as_u64()),
            (Some("request"), Some(200))
        );
    }

    #[test]
    fn flags_win_over_the_file() {
        let file = InspectFile {
            inspect: Some(false),
            inspect_memory: Some("8MiB".into()),
            inspect_body_cap: Some("1KiB".into()),
            ..InspectFile::default()
        };
        let flags = InspectArgs {
            inspect_body_cap: Some(99),
            ..InspectArgs::default()
        };
        let merged = merge(&flags, &file).expect("merged");
        assert!(merged.no_inspect);
        assert_eq!(merged.inspect_memory, Some(8 << 20));
        assert_eq!(merged.inspect_body_cap, Some(99));
        let bad = InspectFile {
            inspect_memory: Some("much".into()),
            ..InspectFile::default()
        };
        let error = merge(&InspectArgs::default(), &bad).expect_err("refused");
        assert!(error.to_string().contains("inspect_memory"), "{error}");
    }
}
