//! Log setup: `tracing` to stderr as human-readable text or one JSON object per line.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. An unparsable level falls back to `info` with a warning.
pub fn init(format: &str, level: &str) {
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| {
        eprintln!("warning: invalid log level {level:?}, using info");
        EnvFilter::new("info")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        "json" => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init(),
        "pretty" => builder.init(),
        other => {
            builder.init();
            tracing::warn!(format = other, "unknown log format, using pretty");
        }
    }
}
