//! `Host` values and tunnel names: parsing, validation and routing, all pure.
//!
//! The HTTP edge calls [`parse_host`] on every request's `Host` (or HTTP/2 `:authority`) and
//! [`route_name`] to find the tunnel; the server calls [`validate_name`] on every requested name.

/// Longest DNS name accepted in `Host` (RFC 1035: 253 characters without the trailing dot).
pub const MAX_HOST_LEN: usize = 253;

/// Longest DNS label, and so the longest tunnel name (RFC 1035).
pub const MAX_LABEL_LEN: usize = 63;

/// Why a `Host` value or a name was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    /// Empty value.
    #[error("empty host")]
    Empty,
    /// Longer than [`MAX_HOST_LEN`].
    #[error("host longer than {MAX_HOST_LEN} characters")]
    TooLong,
    /// A label is empty, too long, starts or ends with `-`, or has a character outside
    /// `[A-Za-z0-9-]`.
    #[error("invalid DNS label {0:?}")]
    BadLabel(String),
    /// The port is not a number in 1..=65535.
    #[error("invalid port {0:?}")]
    BadPort(String),
    /// Bytes that are not printable ASCII.
    #[error("host contains non-ASCII or control bytes")]
    NotAscii,
}

/// A parsed `Host`: lowercase name without trailing dot, and the port if one was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// Lowercase DNS name or IP literal (IPv6 keeps its brackets).
    pub name: String,
    /// Explicit port, if any.
    pub port: Option<u16>,
}

/// Parses a `Host` header value strictly: a DNS name (or IPv4 / bracketed IPv6 literal) with an
/// optional port. Uppercase is folded to lowercase and one trailing dot is dropped.
pub fn parse_host(raw: &[u8]) -> Result<Host, HostError> {
    let raw = std::str::from_utf8(raw).map_err(|_| HostError::NotAscii)?;
    if !raw.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(HostError::NotAscii);
    }
    if raw.is_empty() {
        return Err(HostError::Empty);
    }
    let (name, port) = split_port(raw)?;
    let name = name.to_ascii_lowercase();
    if name.starts_with('[') {
        return parse_ipv6_literal(&name).map(|name| Host { name, port });
    }
    let name = name.strip_suffix('.').unwrap_or(&name).to_string();
    if name.is_empty() {
        return Err(HostError::Empty);
    }
    if name.len() > MAX_HOST_LEN {
        return Err(HostError::TooLong);
    }
    for label in name.split('.') {
        check_label(label)?;
    }
    Ok(Host { name, port })
}

fn split_port(raw: &str) -> Result<(&str, Option<u16>), HostError> {
    let colon = if raw.starts_with('[') {
        raw.find(']')
            .and_then(|end| raw[end..].find(':').map(|c| end + c))
    } else {
        raw.rfind(':')
    };
    let Some(colon) = colon else {
        return Ok((raw, None));
    };
    let digits = &raw[colon + 1..];
    let port =
        (!digits.is_empty() && digits.len() <= 5 && digits.bytes().all(|b| b.is_ascii_digit()))
            .then(|| digits.parse::<u16>().ok())
            .flatten()
            .filter(|p| *p != 0)
            .ok_or_else(|| HostError::BadPort(digits.to_string()))?;
    Ok((&raw[..colon], Some(port)))
}

fn parse_ipv6_literal(name: &str) -> Result<String, HostError> {
    let inner = name
        .strip_prefix('[')
        .and_then(|n| n.strip_suffix(']'))
        .ok_or_else(|| HostError::BadLabel(name.to_string()))?;
    inner
        .parse::<std::net::Ipv6Addr>()
        .map(|_| name.to_string())
        .map_err(|_| HostError::BadLabel(name.to_string()))
}

fn check_label(label: &str) -> Result<(), HostError> {
    let ok = !label.is_empty()
        && label.len() <= MAX_LABEL_LEN
        && !label.starts_with('-')
        && !label.ends_with('-')
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(HostError::BadLabel(label.to_string()))
    }
}

/// Checks that a requested tunnel name is one lowercase DNS label (`[a-z0-9-]`, 1 to 63
/// characters, no leading or trailing `-`).
pub fn validate_name(name: &str) -> Result<(), HostError> {
    check_label(name)?;
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(HostError::BadLabel(name.to_string()));
    }
    Ok(())
}

/// The tunnel name a host routes to: `Some("demo")` for `demo.<domain>`, `None` otherwise.
/// Both arguments are expected lowercase and without trailing dot (as [`parse_host`] returns).
pub fn route_name<'h>(host: &'h str, domain: &str) -> Option<&'h str> {
    let name = host.strip_suffix(domain)?.strip_suffix('.')?;
    (!name.is_empty() && !name.contains('.')).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn host(name: &str, port: Option<u16>) -> Host {
        Host {
            name: name.into(),
            port,
        }
    }

    #[test]
    fn parses_names_ports_and_case() {
        let cases: &[(&str, Host)] = &[
            ("demo.localhost", host("demo.localhost", None)),
            ("Demo.LocalHost:8080", host("demo.localhost", Some(8080))),
            ("demo.localhost.", host("demo.localhost", None)),
            ("127.0.0.1:80", host("127.0.0.1", Some(80))),
            ("[::1]:8080", host("[::1]", Some(8080))),
            ("[::1]", host("[::1]", None)),
            ("a-b.c", host("a-b.c", None)),
        ];
        assert!(!cases.is_empty());
        for (raw, want) in cases {
            assert_eq!(parse_host(raw.as_bytes()).as_ref(), Ok(want), "{raw}");
        }
    }

    #[test]
    fn rejects_malformed_hosts() {
        let bad: &[&str] = &[
            "",
            ":80",
            "demo..localhost",
            "-demo.localhost",
            "demo-.localhost",
            "de mo.localhost",
            "demo.localhost:",
            "demo.localhost:0",
            "demo.localhost:65536",
            "demo.localhost:8x",
            "demo.localhost:80:80",
            "demo_x.localhost",
            "demo.localhost/evil",
            "user@demo.localhost",
            "[::1",
            "[zz::1]:80",
            "é.localhost",
            ".",
            "demo.localhost\t",
        ];
        assert!(!bad.is_empty());
        for raw in bad {
            assert!(
                parse_host(raw.as_bytes()).is_err(),
                "{raw:?} should be rejected"
            );
        }
        assert_eq!(
            parse_host(format!("{}.test", "a".repeat(250)).as_bytes()),
            Err(HostError::TooLong)
        );
    }

    #[test]
    fn names_follow_dns_label_rules() {
        for good in ["demo", "a", "my-app-2", &"x".repeat(63)] {
            assert_eq!(validate_name(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "-demo",
            "demo-",
            "Demo",
            "de.mo",
            "de_mo",
            &"x".repeat(64),
            "dé",
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn routes_only_single_label_subdomains() {
        assert_eq!(route_name("demo.localhost", "localhost"), Some("demo"));
        assert_eq!(route_name("demo.example.com", "example.com"), Some("demo"));
        assert_eq!(route_name("localhost", "localhost"), None);
        assert_eq!(route_name("a.demo.localhost", "localhost"), None);
        assert_eq!(route_name("demolocalhost", "localhost"), None);
        assert_eq!(route_name("demo.otherhost", "localhost"), None);
    }

    proptest! {
        #[test]
        fn parse_host_never_panics(raw in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse_host(&raw);
        }

        #[test]
        fn parsed_hosts_are_lowercase_and_reparse(raw in "[A-Za-z0-9.:-]{1,40}") {
            if let Ok(h) = parse_host(raw.as_bytes()) {
                prop_assert_eq!(h.name.to_ascii_lowercase(), h.name.clone());
                let again = match h.port {
                    Some(p) => format!("{}:{p}", h.name),
                    None => h.name.clone(),
                };
                prop_assert_eq!(parse_host(again.as_bytes()), Ok(h));
            }
        }
    }
}
