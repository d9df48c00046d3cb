//! The parsers settings carry, and [`Building`]: the config as it is being built, with the
//! parts that are assembled once every setting was read (ACME, the webhook's deadline, JWT).

use std::net::SocketAddr;
use std::time::Duration;

use showoff_server::auth::jwt::JwtKey;
use showoff_server::{AcmeChallenge, AcmeConfig, Secret, ServerConfig, WebhookConfig};

use super::{Setting, Source, jwt_config, text_of};

/// The config being built from the settings' texts.
pub struct Building {
    /// Everything that has a field of its own.
    pub config: ServerConfig,
    /// The decision webhook's deadline (applied when a webhook is configured).
    pub webhook_timeout: Duration,
    /// ACME settings read one by one; used when `acme_directory` is set.
    pub acme: AcmeConfig,
}

impl Default for Building {
    fn default() -> Self {
        Self {
            config: ServerConfig::default(),
            webhook_timeout: showoff_server::config::DEFAULT_WEBHOOK_TIMEOUT,
            acme: AcmeConfig {
                directory: String::new(),
                contact: Vec::new(),
                storage: DEFAULT_ACME_STORAGE.into(),
                directory_ca: None,
                challenge: AcmeChallenge::Http01,
                names: Vec::new(),
                on_demand: true,
                orders_per_hour: 30,
                renew_before: showoff_server::config::DEFAULT_RENEW_BEFORE,
                retry_after: Duration::from_secs(60),
            },
        }
    }
}

/// Where ACME keeps its account and certificates unless `acme_storage` says otherwise.
const DEFAULT_ACME_STORAGE: &str = "showoff-acme";

impl Building {
    /// Assembles what is read together: the webhook's deadline, ACME, the JWT secret.
    pub fn finish(mut self, values: &[(Setting, String, Source)]) -> ServerConfig {
        let c = &mut self.config;
        if let Some(webhook) = &mut c.auth.webhook {
            webhook.timeout = self.webhook_timeout;
        }
        if let Some(directory) = text_of(values, "acme_directory") {
            let mut acme = self.acme;
            acme.directory = directory.to_string();
            acme.contact = text_of(values, "acme_email")
                .map(|e| vec![format!("mailto:{e}")])
                .unwrap_or_default();
            acme.storage = text_of(values, "acme_storage")
                .unwrap_or(DEFAULT_ACME_STORAGE)
                .into();
            acme.directory_ca = text_of(values, "acme_ca").map(Into::into);
            acme.names = text_of(values, "acme_names")
                .map(lowercase_list)
                .unwrap_or_default();
            c.tls.acme = Some(acme);
        }
        if let Some(secret) = text_of(values, "jwt_secret") {
            c.auth.jwt = Some(jwt_config(JwtKey::Secret(Secret::new(secret)), values));
        }
        self.config
    }
}

/// Stores a parsed value in its field.
pub fn set<T>(field: &mut T, parsed: Result<T, String>) -> Result<(), String> {
    *field = parsed?;
    Ok(())
}

/// For settings the binary reads itself after resolution (files are I/O; resolving is pure).
pub fn read_by_binary(_: &mut Building, _: &str) -> Result<(), String> {
    Ok(())
}

/// For settings read together once every setting is known ([`Building::finish`]).
pub fn read_together(_: &mut Building, _: &str) -> Result<(), String> {
    Ok(())
}

/// `IP:PORT`.
pub fn addr(text: &str) -> Result<SocketAddr, String> {
    text.parse().map_err(|_| "expected IP:PORT".to_string())
}

/// A port number.
pub fn port(text: &str) -> Result<u16, String> {
    text.parse().map_err(|_| "expected a port".to_string())
}

/// A count or size.
pub fn number(text: &str) -> Result<usize, String> {
    text.parse()
        .map_err(|_| "expected a whole number".to_string())
}

/// Events per period of a rate limit.
pub fn rate(text: &str) -> Result<u32, String> {
    text.parse()
        .map_err(|_| "expected a whole number of events".to_string())
}

/// `None` for empty text, else the parsed value.
pub fn optional<T>(text: &str, parse: fn(&str) -> Result<T, String>) -> Result<Option<T>, String> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    parse(text).map(Some)
}

/// `None` for empty text or `off`, else the parsed value.
pub fn off_or<T>(text: &str, parse: fn(&str) -> Result<T, String>) -> Result<Option<T>, String> {
    if text == "off" {
        return Ok(None);
    }
    optional(text, parse)
}

/// A secret, `None` when empty.
pub fn secret(text: &str) -> Option<Secret> {
    let text = text.trim();
    (!text.is_empty()).then(|| Secret::new(text))
}

/// A decision webhook with the default deadline (`auth_webhook_timeout` applies later).
pub fn webhook(text: &str) -> Option<WebhookConfig> {
    let url = text.trim();
    (!url.is_empty()).then(|| WebhookConfig {
        url: url.to_string(),
        timeout: showoff_server::config::DEFAULT_WEBHOOK_TIMEOUT,
    })
}

/// CIDRs or single addresses, comma-separated.
pub fn networks(text: &str) -> Result<Vec<ipnet::IpNet>, String> {
    list(text)
        .map(|net| {
            net.parse::<ipnet::IpNet>()
                .or_else(|_| net.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| format!("{net:?} is not a CIDR or an address"))
        })
        .collect()
}

/// Parses duration text: `15`, `15s`, `500ms`, `2m`, `24h`, `30d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (digits, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = digits
        .parse()
        .map_err(|_| "expected a duration such as 15s, 500ms or 2m".to_string())?;
    match unit {
        "" | "s" => Ok(Duration::from_secs(n)),
        "ms" => Ok(Duration::from_millis(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        "d" => Ok(Duration::from_secs(n * 86400)),
        _ => Err(format!("unknown unit {unit:?}: use ms, s, m, h or d")),
    }
}

/// The non-empty items of a comma-separated list.
pub fn list(text: &str) -> impl Iterator<Item = &str> {
    text.split(',').map(str::trim).filter(|t| !t.is_empty())
}

/// The items of a list, lowercased (names).
pub fn lowercase_list(text: &str) -> Vec<String> {
    list(text).map(str::to_ascii_lowercase).collect()
}

/// `true`/`false` and the usual spellings.
pub fn parse_bool(text: &str) -> Result<bool, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err("expected true or false".into()),
    }
}

/// `1048576`, `64MiB`, `256KiB`, `1GiB` (also `KB`/`MB`/`GB` and `K`/`M`/`G`, in 1024s).
pub fn size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let number: u64 = digits.parse().map_err(|_| {
        format!("{text:?} is not a size: give bytes, or a number with KiB, MiB or GiB")
    })?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => return Err(format!("unknown size unit {other:?}: use KiB, MiB or GiB")),
    };
    number
        .checked_mul(scale)
        .ok_or_else(|| format!("{text:?} is too large"))
}
