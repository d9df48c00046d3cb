//! Server settings: one table of every setting ([`SERVER_SETTINGS`]) and the pure function that
//! layers them, defaults < config file < `SHOWOFF_*` environment < flags, into a
//! [`ServerConfig`] ([`resolve`]).
//!
//! The table drives everything a person sees: the `showoff server` flags (built from it), the
//! environment variables, the config-file keys (anything else in the file is an error naming
//! the key), `--check-config`, and the test that `docs/operations.md` lists every setting.
//! Each setting carries its own parser ([`Parse`]); settings that only make sense together
//! (ACME, JWT) are assembled once all are read ([`Building::finish`]).
//!
//! Layout: [`table`] (the settings), [`parse`] (parsers and the config being built),
//! [`file`] (config files in TOML, YAML or JSON).

mod file;
mod globals;
pub mod parse;
mod table;

use std::collections::{BTreeMap, HashMap};

use showoff_server::ServerConfig;
use showoff_server::auth::jwt::{JwtConfig, JwtKey};

#[cfg(test)]
use self::file::parse_file;
/// Parses config text of the given format into file values (what `--config` reads).
pub use self::file::parse_file as parse_file_text;
pub use self::file::{FileValues, load_by_extension, load_file, parse_by_extension};
pub use self::globals::{config_path, globals};
use self::parse::list;
pub use self::parse::{Building, parse_duration};

/// Applies a setting's text to the config being built, or says what was expected.
pub type Parse = fn(&mut Building, &str) -> Result<(), String>;

/// One server setting.
#[derive(Clone, Copy)]
pub struct Setting {
    /// Config-file key and flag name (`control_addr` ↔ `--control-addr`).
    pub key: &'static str,
    /// Environment variable.
    pub env: &'static str,
    /// Default as text; empty means "none" (the setting is off or derived).
    pub default: &'static str,
    /// Shown in `--help` and `--check-config`.
    pub help: &'static str,
    /// Masked wherever the resolved value is printed.
    pub secret: bool,
    /// Its parser.
    pub parse: Parse,
}

impl std::fmt::Debug for Setting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Setting")
            .field("key", &self.key)
            .field("env", &self.env)
            .field("default", &self.default)
            .field("secret", &self.secret)
            .finish_non_exhaustive()
    }
}

const fn setting(
    key: &'static str,
    env: &'static str,
    default: &'static str,
    help: &'static str,
    parse: Parse,
) -> Setting {
    Setting {
        key,
        env,
        default,
        help,
        secret: false,
        parse,
    }
}

const fn secret(key: &'static str, env: &'static str, help: &'static str, parse: Parse) -> Setting {
    Setting {
        key,
        env,
        default: "",
        help,
        secret: true,
        parse,
    }
}

pub use self::table::SERVER_SETTINGS;

/// Where a resolved value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The built-in default.
    Default,
    /// The config file.
    File,
    /// A `SHOWOFF_*` variable.
    Env,
    /// A command-line flag.
    Flag,
}

/// Why the settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The path given.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The config file is not valid TOML, YAML or JSON.
    #[error("config file {path} is not valid {format}: {message}")]
    Parse {
        /// The path given.
        path: String,
        /// The format implied by the extension.
        format: &'static str,
        /// The parser's message.
        message: String,
    },
    /// The extension is not `.toml`, `.yaml`, `.yml` or `.json`.
    #[error("config file {0} must end in .toml, .yaml, .yml or .json")]
    Extension(String),
    /// A key the file may not hold.
    #[error(
        "unknown key {key:?} in config file {path}; known keys are listed in docs/operations.md"
    )]
    UnknownKey {
        /// The path given.
        path: String,
        /// The offending key, dotted (`server.contrl_addr`).
        key: String,
    },
    /// A value that does not parse.
    #[error("invalid value {value:?} for {key} (from {layer:?}): {reason}")]
    Invalid {
        /// The setting.
        key: &'static str,
        /// The text given.
        value: String,
        /// Which layer gave it.
        layer: Source,
        /// What was expected.
        reason: String,
    },
}

/// The resolved settings: the server config, and where each value came from.
#[derive(Debug)]
pub struct Resolved {
    /// Ready for [`showoff_server::Server::bind`].
    pub config: ServerConfig,
    /// Each setting's final text and source, in table order.
    pub values: Vec<(Setting, String, Source)>,
}

impl Resolved {
    /// A file the binary opens itself (`token_file`, `audit_log`); `None` when unset.
    pub fn path(&self, key: &str) -> Option<std::path::PathBuf> {
        self.values
            .iter()
            .find(|(s, v, _)| s.key == key && !v.trim().is_empty())
            .map(|(_, v, _)| std::path::PathBuf::from(v.trim()))
    }
}

/// Resolved values as `key = value  # source` lines, secrets masked.
pub fn describe(values: &[(Setting, String, Source)]) -> String {
    let mut out = String::new();
    for (setting, value, source) in values {
        let shown = match (setting.secret, value.is_empty()) {
            (_, true) => "(none)".to_string(),
            (true, false) => "***".to_string(),
            (false, false) => value.clone(),
        };
        out.push_str(&format!(
            "{:<24} = {:<24} # {:?}; {}\n",
            setting.key, shown, source, setting.help
        ));
    }
    out
}

/// Layers defaults < file < env < flags for every server setting, then parses them.
pub fn resolve(
    flags: &BTreeMap<String, String>,
    env: &HashMap<String, String>,
    file: &FileValues,
) -> Result<Resolved, SettingsError> {
    let mut values = Vec::with_capacity(SERVER_SETTINGS.len());
    for setting in SERVER_SETTINGS {
        let layered = [
            (flags.get(setting.key), Source::Flag),
            (env.get(setting.env), Source::Env),
            (file.server.get(setting.key), Source::File),
        ];
        let (value, source) = layered
            .into_iter()
            .find_map(|(v, s)| v.map(|v| (v.clone(), s)))
            .unwrap_or_else(|| (setting.default.to_string(), Source::Default));
        values.push((*setting, value, source));
    }
    let config = build(&values)?;
    Ok(Resolved { config, values })
}

/// Applies every setting with its own parser, then the ones read together.
fn build(values: &[(Setting, String, Source)]) -> Result<ServerConfig, SettingsError> {
    let mut building = Building::default();
    for (setting, text, source) in values {
        (setting.parse)(&mut building, text).map_err(|reason| SettingsError::Invalid {
            key: setting.key,
            value: if setting.secret {
                "***".into()
            } else {
                text.clone()
            },
            layer: *source,
            reason,
        })?;
    }
    Ok(building.finish(values))
}

/// The certificate and key files `tls_cert` and `tls_key` name, paired in order.
pub fn tls_files(
    values: &[(Setting, String, Source)],
) -> Result<Vec<(std::path::PathBuf, std::path::PathBuf)>, String> {
    let certs: Vec<&str> = text_of(values, "tls_cert")
        .map(|t| list(t).collect())
        .unwrap_or_default();
    let keys: Vec<&str> = text_of(values, "tls_key")
        .map(|t| list(t).collect())
        .unwrap_or_default();
    if certs.len() != keys.len() {
        return Err(format!(
            "--tls-cert names {} file(s) and --tls-key {}; give one key per certificate",
            certs.len(),
            keys.len()
        ));
    }
    Ok(certs
        .into_iter()
        .zip(keys)
        .map(|(c, k)| (c.into(), k.into()))
        .collect())
}

/// The trimmed value of `key`, when set.
pub fn text_of<'a>(values: &'a [(Setting, String, Source)], key: &str) -> Option<&'a str> {
    values
        .iter()
        .find(|(s, _, _)| s.key == key)
        .map(|(_, v, _)| v.trim())
        .filter(|v| !v.is_empty())
}

/// JWT settings around `key` (a secret from the settings, or a public key the binary read).
pub fn jwt_config(key: JwtKey, values: &[(Setting, String, Source)]) -> JwtConfig {
    JwtConfig {
        key,
        issuer: text_of(values, "jwt_issuer").map(str::to_string),
        audience: text_of(values, "jwt_audience").map(str::to_string),
        names_claim: text_of(values, "jwt_names_claim")
            .unwrap_or("names")
            .to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn file(pairs: &[(&str, &str)]) -> FileValues {
        FileValues {
            server: map(pairs),
            global: BTreeMap::new(),
        }
    }

    #[test]
    fn precedence_is_flags_then_env_then_file_then_defaults() {
        // (flag, env, file) → expected control port and source.
        type Case<'a> = (
            Option<&'a str>,
            Option<&'a str>,
            Option<&'a str>,
            u16,
            Source,
        );
        let cases: &[Case<'_>] = &[
            (None, None, None, 7000, Source::Default),
            (None, None, Some("127.0.0.1:3"), 3, Source::File),
            (
                None,
                Some("127.0.0.1:2"),
                Some("127.0.0.1:3"),
                2,
                Source::Env,
            ),
            (
                Some("127.0.0.1:1"),
                Some("127.0.0.1:2"),
                Some("127.0.0.1:3"),
                1,
                Source::Flag,
            ),
            (
                Some("127.0.0.1:1"),
                None,
                Some("127.0.0.1:3"),
                1,
                Source::Flag,
            ),
        ];
        assert!(!cases.is_empty());
        for (flag, var, from_file, port, source) in cases {
            let flags = flag
                .map(|v| map(&[("control_addr", v)]))
                .unwrap_or_default();
            let envs = var
                .map(|v| env(&[("SHOWOFF_CONTROL_ADDR", v)]))
                .unwrap_or_default();
            let files = from_file
                .map(|v| file(&[("control_addr", v)]))
                .unwrap_or_default();
            let resolved = resolve(&flags, &envs, &files).expect("valid");
            assert_eq!(
                resolved.config.control_addr.port(),
                *port,
                "{flag:?} {var:?} {from_file:?}"
            );
            let (_, _, got) = resolved
                .values
                .iter()
                .find(|(s, _, _)| s.key == "control_addr")
                .expect("row");
            assert_eq!(got, source);
        }
    }

    #[test]
    fn defaults_match_the_library_defaults() {
        let resolved =
            resolve(&BTreeMap::new(), &HashMap::new(), &FileValues::default()).expect("defaults");
        let lib = ServerConfig::default();
        let c = &resolved.config;
        assert_eq!(
            (
                c.control_addr,
                c.data_addr,
                c.http_addr,
                c.domain.as_str(),
                c.tcp_ports
            ),
            (
                lib.control_addr,
                lib.data_addr,
                lib.http_addr,
                lib.domain.as_str(),
                lib.tcp_ports
            )
        );
        assert_eq!(
            (c.udp_ports, c.udp, c.rates.udp_per_ip),
            (lib.udp_ports, lib.udp, lib.rates.udp_per_ip)
        );
        assert_eq!(
            (c.head_timeout, c.pending_timeout, c.heartbeat_interval),
            (
                lib.head_timeout,
                lib.pending_timeout,
                lib.heartbeat_interval
            )
        );
        assert_eq!(
            (c.shutdown_grace, c.warm_pool, c.max_header_bytes),
            (lib.shutdown_grace, lib.warm_pool, lib.max_header_bytes)
        );
        assert_eq!(c.admin, lib.admin);
    }

    #[test]
    fn the_three_file_formats_agree() {
        let toml = "log_level = \"debug\"\n[server]\ndomain = \"t.example.com\"\ntoken = [\"a\", \"b\"]\nhead_timeout = 5\nwarm_pool = 2\n";
        let yaml = "log_level: debug\nserver:\n  domain: t.example.com\n  token: [a, b]\n  head_timeout: 5\n  warm_pool: 2\n";
        let json = r#"{"log_level":"debug","server":{"domain":"t.example.com","token":["a","b"],"head_timeout":5,"warm_pool":2}}"#;
        let parsed: Vec<FileValues> = [("toml", toml), ("yaml", yaml), ("json", json)]
            .iter()
            .map(|(ext, text)| parse_file("f", ext, text).expect(ext))
            .collect();
        assert!(parsed.windows(2).all(|w| w[0] == w[1]), "{parsed:?}");
        let resolved = resolve(&BTreeMap::new(), &HashMap::new(), &parsed[0]).expect("valid");
        assert_eq!(resolved.config.tokens.len(), 2);
        assert_eq!(resolved.config.head_timeout, Duration::from_secs(5));
        assert_eq!(parsed[0].global["log_level"], "debug");
    }

    #[test]
    fn unknown_keys_are_named() {
        let err =
            parse_file("cfg.toml", "toml", "[server]\ncontrl_addr = \"x\"\n").expect_err("typo");
        assert!(err.to_string().contains("\"server.contrl_addr\""), "{err}");
        let err = parse_file("cfg.yaml", "yaml", "sever:\n  a: 1\n").expect_err("typo");
        assert!(err.to_string().contains("\"sever\""), "{err}");
        assert!(matches!(
            parse_file("cfg.ini", "ini", ""),
            Err(SettingsError::Extension(_))
        ));
    }

    #[test]
    fn invalid_values_name_the_setting_and_hide_secrets() {
        let err = resolve(
            &map(&[("head_timeout", "soon")]),
            &HashMap::new(),
            &FileValues::default(),
        )
        .expect_err("bad");
        let text = err.to_string();
        assert!(
            text.contains("head_timeout") && text.contains("soon") && text.contains("Flag"),
            "{text}"
        );
        let resolved = resolve(
            &BTreeMap::new(),
            &env(&[("SHOWOFF_TOKEN", "hunter2")]),
            &FileValues::default(),
        )
        .expect("ok");
        let described = describe(&resolved.values);
        assert!(
            !described.contains("hunter2") && described.contains("***"),
            "{described}"
        );
    }

    #[test]
    fn durations_accept_units() {
        assert_eq!(parse_duration("15"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
        assert!(parse_duration("2w").is_err());
        assert!(parse_duration("x").is_err());
    }
}
