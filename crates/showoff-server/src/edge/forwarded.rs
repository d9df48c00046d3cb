//! `X-Forwarded-*`: what the edge tells the target about the visitor, and when it believes what
//! an earlier proxy said.
//!
//! From an untrusted peer, incoming `X-Forwarded-For`, `-Proto` and `-Host` are dropped and
//! replaced: the visitor is the peer. From a trusted proxy (`trusted_proxies`), the chain is
//! kept and the peer appended; the visitor is the rightmost address in it that is not itself a
//! trusted proxy, so a client cannot spoof its address by sending the header through a trusted
//! proxy that appends to it. `-Proto` (`http` or `https`) and `-Host` are kept from trusted
//! proxies.

use std::net::IpAddr;

use http::HeaderMap;

use crate::config::ProxyConfig;

/// What the target is told about the visitor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Forwarded {
    /// The visitor, for IP rules, rate limits and logs.
    pub(crate) visitor: IpAddr,
    /// The `X-Forwarded-For` value sent on.
    pub(crate) chain: String,
    /// The `X-Forwarded-Proto` value sent on.
    pub(crate) proto: &'static str,
    /// The `X-Forwarded-Host` value sent on; `None` means the request's `Host`.
    pub(crate) host: Option<String>,
}

/// What the instance that forwards a request decided about its visitor, for the instance that
/// holds the tunnel (trusted only on the peer listener, never sent to a target).
pub(crate) const PEER_VISITOR: &str = "x-showoff-peer-visitor";
/// The `X-Forwarded-For` chain the forwarding instance computed.
pub(crate) const PEER_CHAIN: &str = "x-showoff-peer-chain";
/// The scheme the visitor used at the forwarding instance (`http` or `https`).
pub(crate) const PEER_PROTO: &str = "x-showoff-peer-proto";
/// The `X-Forwarded-Host` the forwarding instance computed, when it differs from `Host`.
pub(crate) const PEER_HOST: &str = "x-showoff-peer-host";

/// The forwarding decision another instance of the cluster made for a request it forwarded
/// here (its peer headers); `None` when they are missing or malformed. Trusted only on the
/// peer listener, whose connections proved the cluster secret.
pub(crate) fn peer_forwarded(headers: &HeaderMap) -> Option<Forwarded> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let visitor: IpAddr = text(PEER_VISITOR)?.parse().ok()?;
    let proto = match text(PEER_PROTO)? {
        "https" => "https",
        "http" => "http",
        _ => return None,
    };
    Some(Forwarded {
        visitor: visitor.to_canonical(),
        chain: text(PEER_CHAIN)?.to_string(),
        proto,
        host: text(PEER_HOST).map(str::to_string),
    })
}

/// Decides the forwarding headers of a request that arrived from `peer` over `scheme`.
pub(crate) fn forwarded(
    headers: &HeaderMap,
    peer: IpAddr,
    scheme: &'static str,
    proxy: &ProxyConfig,
) -> Forwarded {
    let peer = peer.to_canonical();
    let untrusted = || Forwarded {
        visitor: peer,
        chain: peer.to_string(),
        proto: scheme,
        host: None,
    };
    if !proxy.trusts(peer) {
        return untrusted();
    }
    let mut entries: Vec<&str> = Vec::new();
    for value in headers.get_all("x-forwarded-for") {
        let Ok(text) = value.to_str() else {
            return untrusted();
        };
        entries.extend(text.split(',').map(str::trim).filter(|e| !e.is_empty()));
    }
    let mut visitor = peer;
    for entry in entries.iter().rev() {
        let Some(ip) = parse_entry(entry) else { break };
        visitor = ip;
        if !proxy.trusts(ip) {
            break;
        }
    }
    let mut chain = entries.join(", ");
    if !chain.is_empty() {
        chain.push_str(", ");
    }
    chain.push_str(&peer.to_string());
    let proto = match headers.get("x-forwarded-proto").map(|v| v.as_bytes()) {
        Some(b"https") => "https",
        Some(b"http") => "http",
        _ => scheme,
    };
    let host = headers
        .get("x-forwarded-host")
        .and_then(|v| v.to_str().ok())
        .filter(|h| !h.is_empty())
        .map(str::to_string);
    Forwarded {
        visitor,
        chain,
        proto,
        host,
    }
}

/// An `X-Forwarded-For` entry: an IP, optionally with a port (`[::1]:80`, `1.2.3.4:80`).
fn parse_entry(entry: &str) -> Option<IpAddr> {
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    entry
        .parse::<std::net::SocketAddr>()
        .ok()
        .map(|a| a.ip().to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn proxy(trusted: &[&str]) -> ProxyConfig {
        ProxyConfig {
            trusted: trusted.iter().map(|t| t.parse().expect("cidr")).collect(),
            ..ProxyConfig::default()
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("ip")
    }

    #[test]
    fn untrusted_peers_cannot_spoof() {
        let h = headers(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.example"),
        ]);
        let f = forwarded(&h, ip("198.51.100.9"), "http", &proxy(&["10.0.0.0/8"]));
        assert_eq!(
            f,
            Forwarded {
                visitor: ip("198.51.100.9"),
                chain: "198.51.100.9".into(),
                proto: "http",
                host: None
            }
        );
    }

    #[test]
    fn trusted_proxies_extend_the_chain_and_name_the_visitor() {
        let trusted = proxy(&["10.0.0.0/8"]);
        let h = headers(&[
            ("x-forwarded-for", "203.0.113.5, 10.1.1.1"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "app.example"),
        ]);
        let f = forwarded(&h, ip("10.0.0.2"), "http", &trusted);
        assert_eq!(f.visitor, ip("203.0.113.5"));
        assert_eq!(f.chain, "203.0.113.5, 10.1.1.1, 10.0.0.2");
        assert_eq!((f.proto, f.host.as_deref()), ("https", Some("app.example")));
        // A visitor who sends its own header through the proxy only adds to the left.
        let spoofed = headers(&[("x-forwarded-for", "127.0.0.1, 198.51.100.7")]);
        let f = forwarded(&spoofed, ip("10.0.0.2"), "http", &trusted);
        assert_eq!(f.visitor, ip("198.51.100.7"));
        // No header: the proxy itself is the visitor; garbage stops the walk.
        assert_eq!(
            forwarded(&HeaderMap::new(), ip("10.0.0.2"), "http", &trusted).visitor,
            ip("10.0.0.2")
        );
        let garbage = headers(&[("x-forwarded-for", "198.51.100.7, not-an-ip")]);
        assert_eq!(
            forwarded(&garbage, ip("10.0.0.2"), "http", &trusted).visitor,
            ip("10.0.0.2")
        );
        let bad_proto = headers(&[("x-forwarded-proto", "gopher")]);
        assert_eq!(
            forwarded(&bad_proto, ip("10.0.0.2"), "http", &trusted).proto,
            "http"
        );
    }
}
