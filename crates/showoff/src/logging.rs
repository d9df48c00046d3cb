//! Log setup: `tracing` to stderr as human-readable text or one JSON object per line, behind a
//! reloadable filter so the admin API can change the level at run time; and, when trace export
//! is on, the OpenTelemetry layer beside it ([`crate::telemetry`]), with its own filter, so the
//! log level never decides which spans are exported.

use showoff_server::LogControl;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, reload};

use crate::telemetry::{self, ExportSettings, Telemetry};

/// Installs the global subscriber and returns the handle that changes its filter, and the
/// trace exporter when `otlp` is set (for `service`). An unparsable level falls back to `info`
/// with a warning; an unknown format to `pretty`. Must run inside the runtime when `otlp` is set.
pub fn init(
    format: &str,
    level: &str,
    otlp: Option<(&ExportSettings, &'static str)>,
) -> Result<(LogControl, Option<Telemetry>), String> {
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| {
        eprintln!("warning: invalid log level {level:?}, using info");
        EnvFilter::new("info")
    });
    let (filter, handle) = reload::Layer::new(filter);
    let output = match format {
        "json" => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_writer(std::io::stderr)
            .boxed(),
        other => {
            if other != "pretty" {
                eprintln!("warning: unknown log format {other:?}, using pretty");
            }
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .boxed()
        }
    };
    let (traces, telemetry) = match otlp {
        Some((settings, service)) => {
            let (layer, telemetry) = telemetry::layer(settings, service)?;
            (Some(layer), Some(telemetry))
        }
        None => (None, None),
    };
    tracing_subscriber::registry()
        .with(output.with_filter(filter))
        .with(traces)
        .init();
    let control = LogControl::new(move |level| {
        let filter = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
        handle.reload(filter).map_err(|e| e.to_string())
    });
    Ok((control, telemetry))
}
