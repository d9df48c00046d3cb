//! The settings every subcommand shares (`--log-format`, `--log-level`, `--threads`, trace
//! export) and which config file to read; resolved with the same precedence as server
//! settings.

use std::collections::HashMap;
use std::path::Path;

use super::{FileValues, SettingsError, Source};
use crate::telemetry::{ExportSettings, OtlpProtocol};

/// Settings every subcommand shares, resolved with the same precedence.
#[derive(Debug, Clone, PartialEq)]
pub struct Globals {
    /// `pretty` or `json`.
    pub log_format: String,
    /// A level or filter.
    pub log_level: String,
    /// Runtime worker threads; `None` picks per subcommand.
    pub threads: Option<usize>,
    /// Trace export; `None`: off.
    pub otlp: Option<ExportSettings>,
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
    let otlp = otlp(cli, &pick)?;
    Ok(Globals {
        log_format,
        log_level,
        threads,
        otlp,
    })
}

/// The trace export settings; `None` without an endpoint (the others are still checked).
/// A setting's text and where it came from: flag, then variable, then file key.
type Pick<'a> = dyn Fn(Option<String>, &str, &str) -> Option<(String, Source)> + 'a;

fn otlp(flags: &crate::cli::Cli, pick: &Pick<'_>) -> Result<Option<ExportSettings>, SettingsError> {
    let cli = |key: &str| -> Option<String> {
        match key {
            "otlp_endpoint" => flags.otlp_endpoint.clone(),
            "otlp_protocol" => flags.otlp_protocol.clone(),
            "otlp_headers" => flags.otlp_headers.clone(),
            "otlp_resource" => flags.otlp_resource.clone(),
            "trace_sample" => flags.trace_sample.clone(),
            _ => None,
        }
    };
    let invalid = |key: &'static str, (value, layer): (String, Source), reason: String| {
        SettingsError::Invalid {
            key,
            value,
            layer,
            reason,
        }
    };
    let protocol = match pick(
        cli("otlp_protocol"),
        "SHOWOFF_OTLP_PROTOCOL",
        "otlp_protocol",
    ) {
        None => OtlpProtocol::Http,
        Some(picked) => match picked.0.parse() {
            Ok(protocol) => protocol,
            Err(reason) => return Err(invalid("otlp_protocol", picked, reason)),
        },
    };
    let sample = match pick(cli("trace_sample"), "SHOWOFF_TRACE_SAMPLE", "trace_sample") {
        None => 1.0,
        Some(picked) => match picked.0.parse::<f64>() {
            Ok(ratio) if (0.0..=1.0).contains(&ratio) => ratio,
            _ => {
                let reason = "expected a ratio from 0 to 1 (0.01 is 1 %)".into();
                return Err(invalid("trace_sample", picked, reason));
            }
        },
    };
    let pairs = |key: &'static str, var: &str| -> Result<Vec<(String, String)>, SettingsError> {
        match pick(cli(key), var, key) {
            None => Ok(Vec::new()),
            Some(picked) => parse_pairs(&picked.0).map_err(|reason| invalid(key, picked, reason)),
        }
    };
    let headers = pairs("otlp_headers", "SHOWOFF_OTLP_HEADERS")?;
    let resource = pairs("otlp_resource", "SHOWOFF_OTLP_RESOURCE")?;
    let Some((endpoint, layer)) = pick(
        cli("otlp_endpoint"),
        "SHOWOFF_OTLP_ENDPOINT",
        "otlp_endpoint",
    )
    .filter(|(e, _)| !e.is_empty() && e != "off") else {
        return Ok(None);
    };
    if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
        let reason = "expected an http:// or https:// URL".into();
        return Err(invalid("otlp_endpoint", (endpoint, layer), reason));
    }
    Ok(Some(ExportSettings {
        endpoint,
        protocol,
        sample,
        headers,
        resource,
    }))
}

/// `key=value,key=value` (values may hold `=`; blanks around items are trimmed).
fn parse_pairs(text: &str) -> Result<Vec<(String, String)>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(|item| match item.split_once('=') {
            Some((key, value)) if !key.trim().is_empty() => {
                Ok((key.trim().to_string(), value.trim().to_string()))
            }
            _ => Err(format!("expected key=value, got {item:?}")),
        })
        .collect()
}
