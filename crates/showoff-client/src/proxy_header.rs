//! PROXY protocol headers the client sends to a local target before the visitor's bytes, so a
//! TCP service (a database, an SMTP server, nginx with `proxy_protocol`) sees the visitor's
//! address instead of the client's. UDP targets get v2's `DGRAM` form in front of every
//! datagram ([`encode_datagram`]); v1 has no UDP form.

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

/// Whether a tunnel of `kind` can send PROXY protocol `version` to its target: TCP tunnels
/// either version, UDP tunnels v2 (`DGRAM`), others none (HTTP targets get
/// `X-Forwarded-For`; TLS passthrough carries the visitor's own bytes untouched).
pub fn check_applies(
    kind: showoff_proto::TunnelKind,
    version: ProxyVersion,
) -> Result<(), &'static str> {
    use showoff_proto::TunnelKind;
    match (kind, version) {
        (TunnelKind::Tcp, _) | (TunnelKind::Udp, ProxyVersion::V2) => Ok(()),
        (TunnelKind::Udp, ProxyVersion::V1) => {
            Err("PROXY protocol v1 has no UDP form; use v2 for udp tunnels")
        }
        _ => Err(
            "PROXY protocol applies to tcp and udp tunnels; HTTP targets get X-Forwarded-For instead",
        ),
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
    encode_for(version, v2::Protocol::Stream, source, destination)
}

/// The v2 header (`DGRAM`) that goes in front of each datagram of a UDP visitor at `source`
/// reaching `destination`.
pub fn encode_datagram(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    encode_for(
        ProxyVersion::V2,
        v2::Protocol::Datagram,
        Some(source),
        destination,
    )
}

fn encode_for(
    version: ProxyVersion,
    protocol: v2::Protocol,
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
                    protocol,
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
    fn proxy_headers_apply_to_tcp_and_udp_v2_only() {
        use showoff_proto::TunnelKind;
        assert!(check_applies(TunnelKind::Tcp, ProxyVersion::V1).is_ok());
        assert!(check_applies(TunnelKind::Udp, ProxyVersion::V2).is_ok());
        let v1 = check_applies(TunnelKind::Udp, ProxyVersion::V1).expect_err("no UDP form");
        assert!(v1.contains("v2"), "{v1}");
        assert!(check_applies(TunnelKind::Http, ProxyVersion::V2).is_err());
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
        let datagram = encode_datagram(addr("198.51.100.4:5353"), addr("127.0.0.1:53"));
        let parsed = v2::Header::try_from(datagram.as_slice()).expect("valid v2");
        assert_eq!(parsed.command, v2::Command::Proxy);
        assert_eq!(parsed.protocol, v2::Protocol::Datagram);
        assert!(matches!(parsed.addresses, v2::Addresses::IPv4(a) if a.source_port == 5353));
        assert!("v3".parse::<ProxyVersion>().is_err());
    }
}
