//! The settings every subcommand shares (`--log-format`, `--log-level`, `--threads`) and
//! which config file to read; resolved with the same precedence as server settings.

use std::collections::HashMap;
use std::path::Path;

use super::{FileValues, SettingsError, Source};

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
