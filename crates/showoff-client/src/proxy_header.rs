//! PROXY protocol headers the client sends to a local target before the visitor's bytes, so a
//! TCP service (a database, an SMTP server, nginx with `proxy_protocol`) sees the visitor's
//! address instead of the client's.

use std::net::SocketAddr;

use ppp::{v1, v2};

/// Which PROXY protocol version a tunnel sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyVersion {
    /// The text form (`PROXY TCP4 …\r\n`).
    V1,
    /// The binary form.
    V2,
}

impl std::str::FromStr for ProxyVersion {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "v1" | "1" => Ok(Self::V1),
            "v2" | "2" => Ok(Self::V2),
            _ => Err(format!(
                "unknown PROXY protocol version {s:?}: use v1 or v2"
            )),
        }
    }
}

/// The header for a visitor at `source` (as the server reported it) reaching `destination`.
/// An unknown source, or one of another address family than the destination, is sent as
/// `UNKNOWN` (v1) or `LOCAL` (v2), which targets treat as "no address information".
pub fn encode(
    version: ProxyVersion,
    source: Option<SocketAddr>,
    destination: SocketAddr,
) -> Vec<u8> {
    let destination = match (source, destination) {
        (Some(SocketAddr::V4(_)), SocketAddr::V6(d)) => match d.ip().to_ipv4_mapped() {
            Some(ip) => SocketAddr::from((ip, d.port())),
            None => destination,
        },
        _ => destination,
    };
    let pair = source.filter(|s| s.is_ipv4() == destination.is_ipv4());
    match version {
        ProxyVersion::V1 => {
            let addresses = match pair {
                Some(source) => v1::Addresses::from((source, destination)),
                None => v1::Addresses::Unknown,
            };
            addresses.to_string().into_bytes()
        }
        ProxyVersion::V2 => {
            let built = match pair {
                Some(source) => v2::Builder::with_addresses(
                    v2::Version::Two | v2::Command::Proxy,
                    v2::Protocol::Stream,
                    (source, destination),
                )
                .build(),
                None => v2::Builder::new(
                    v2::Version::Two | v2::Command::Local,
                    v2::AddressFamily::Unspecified | v2::Protocol::Unspecified,
                )
                .build(),
            };
            // Building into a Vec cannot fail.
            built.unwrap_or_default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().expect("addr")
    }

    #[test]
    fn v1_headers_name_both_ends() {
        let header = encode(
            ProxyVersion::V1,
            Some(addr("203.0.113.7:51234")),
            addr("127.0.0.1:5432"),
        );
        assert_eq!(header, b"PROXY TCP4 203.0.113.7 127.0.0.1 51234 5432\r\n");
        let unknown = encode(ProxyVersion::V1, None, addr("127.0.0.1:5432"));
        assert_eq!(unknown, b"PROXY UNKNOWN\r\n");
    }

    #[test]
    fn v2_headers_parse_back() {
        let header = encode(
            ProxyVersion::V2,
            Some(addr("[2001:db8::7]:4000")),
            addr("[::1]:8080"),
        );
        let parsed = v2::Header::try_from(header.as_slice()).expect("valid v2");
        assert_eq!(parsed.command, v2::Command::Proxy);
        assert!(matches!(parsed.addresses, v2::Addresses::IPv6(a) if a.source_port == 4000));
        let mixed = encode(
            ProxyVersion::V2,
            Some(addr("192.0.2.1:1")),
            addr("[2001:db8::1]:2"),
        );
        let parsed = v2::Header::try_from(mixed.as_slice()).expect("valid v2");
        assert_eq!(parsed.command, v2::Command::Local);
        assert_eq!("v2".parse::<ProxyVersion>(), Ok(ProxyVersion::V2));
        assert!("v3".parse::<ProxyVersion>().is_err());
    }
}
