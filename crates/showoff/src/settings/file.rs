//! Config files: TOML, YAML or JSON by extension, read into [`FileValues`] (text per key, as a
//! flag would carry it); any key the settings table does not know is an error naming it.

use std::collections::BTreeMap;
use std::path::Path;

use super::{SERVER_SETTINGS, SettingsError};

/// Keys a config file may hold besides `[server]`.
const FILE_TOP_LEVEL: &[&str] = &[
    "server",
    "log_format",
    "log_level",
    "threads",
    "otlp_endpoint",
    "otlp_protocol",
    "otlp_headers",
    "otlp_resource",
    "trace_sample",
];

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
