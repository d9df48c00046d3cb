//! PROXY protocol v1/v2 on public listeners: a trusted load balancer states the visitor's real
//! address in a header before the traffic, and every later rule (IP allow/deny, rate limits,
//! `X-Forwarded-For`, logs) sees that address.
//!
//! Policy ([`ProxyProtocol`]): `off` never reads a header; `optional` reads one from trusted
//! peers when the connection starts with one and serves everyone else as they are (a header
//! from an untrusted peer is then just bytes, which the HTTP edge refuses as a bad request);
//! `required` refuses connections from untrusted peers and trusted ones without a header.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::BytesMut;
use ppp::{HeaderResult, PartialResult, v1, v2};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::config::{ProxyConfig, ProxyProtocol};

/// v2's fixed signature.
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
/// v1's prefix.
const V1_PREFIX: &[u8] = b"PROXY ";
/// Longest header read: v1 is at most 107 bytes; v2 carries a 16-bit length (TLVs included),
/// but load balancers send a few hundred bytes at most.
const MAX_HEADER: usize = 4096;

/// Why a connection was refused before its traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProxyError {
    /// `required`, and the peer is not a trusted proxy or sent no header.
    Required,
    /// A trusted peer sent a header that does not parse.
    Malformed,
    /// The header did not arrive in time.
    Timeout,
}

impl ProxyError {
    /// The stable error code (HTTP page, metrics).
    pub(crate) fn code(self) -> &'static str {
        match self {
            Self::Required => "proxy_header_required",
            Self::Malformed => "bad_proxy_header",
            Self::Timeout => "header_timeout",
        }
    }
}

/// Reads the PROXY header `policy` calls for (public listeners use `config.protocol`, the
/// control listener `config.control`); returns the visitor's address (the header's source, or
/// the TCP peer) and the traffic read past the header.
pub(crate) async fn read_header(
    stream: &mut TcpStream,
    peer: SocketAddr,
    policy: ProxyProtocol,
    config: &ProxyConfig,
    deadline: Duration,
) -> Result<(SocketAddr, BytesMut), ProxyError> {
    let plain = |prefix| (peer, prefix);
    let trusted = config.trusts(peer.ip());
    match (policy, trusted) {
        (ProxyProtocol::Off, _) | (ProxyProtocol::Optional, false) => {
            return Ok(plain(BytesMut::new()));
        }
        (ProxyProtocol::Required, false) => return Err(ProxyError::Required),
        _ => {}
    }
    let required = policy == ProxyProtocol::Required;
    let mut buf = BytesMut::with_capacity(512);
    let read = async {
        loop {
            match scan(&buf) {
                Scan::NotProxy if required => return Err(ProxyError::Required),
                Scan::NotProxy => return Ok(plain(std::mem::take(&mut buf))),
                Scan::Malformed => return Err(ProxyError::Malformed),
                Scan::Header { len, source } => {
                    let _ = buf.split_to(len);
                    // LOCAL commands and UNKNOWN addresses keep the TCP peer.
                    return Ok((source.unwrap_or(peer), buf));
                }
                Scan::Incomplete if buf.len() >= MAX_HEADER => return Err(ProxyError::Malformed),
                Scan::Incomplete => {}
            }
            buf.reserve(512);
            match stream.read_buf(&mut buf).await {
                Ok(0) | Err(_) if buf.is_empty() => return Ok(plain(BytesMut::new())),
                Ok(0) | Err(_) => return Err(ProxyError::Malformed),
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(deadline, read)
        .await
        .unwrap_or(Err(ProxyError::Timeout))
}

/// What the bytes read so far are.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Scan {
    /// Not (the start of) a PROXY header.
    NotProxy,
    /// A PROXY header's start; more bytes are needed.
    Incomplete,
    /// A header of `len` bytes; `source` is `None` for LOCAL/UNKNOWN.
    Header {
        len: usize,
        source: Option<SocketAddr>,
    },
    /// Claims to be a header and is not a valid one.
    Malformed,
}

pub(crate) fn scan(buf: &[u8]) -> Scan {
    let starts = |sig: &[u8]| {
        let n = buf.len().min(sig.len());
        buf[..n] == sig[..n]
    };
    if buf.is_empty() {
        return Scan::Incomplete;
    }
    let v2 = starts(V2_SIGNATURE);
    let v1 = starts(V1_PREFIX);
    if !v1 && !v2 {
        return Scan::NotProxy;
    }
    if (v2 && buf.len() < V2_SIGNATURE.len()) || (v1 && buf.len() < V1_PREFIX.len()) {
        return Scan::Incomplete;
    }
    if v1 {
        // v1 ends at the first CRLF, within 107 bytes.
        let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
            return if buf.len() > 107 {
                Scan::Malformed
            } else {
                Scan::Incomplete
            };
        };
        return match v1::Header::try_from(&buf[..end + 2]) {
            Ok(header) => Scan::Header {
                len: end + 2,
                source: v1_source(&header.addresses),
            },
            Err(_) => Scan::Malformed,
        };
    }
    match HeaderResult::parse(buf) {
        result if result.is_incomplete() => Scan::Incomplete,
        HeaderResult::V2(Ok(header)) => Scan::Header {
            len: header.len(),
            source: match header.command {
                v2::Command::Local => None,
                v2::Command::Proxy => v2_source(&header.addresses),
            },
        },
        _ => Scan::Malformed,
    }
}

fn v1_source(addresses: &v1::Addresses) -> Option<SocketAddr> {
    match addresses {
        v1::Addresses::Tcp4(a) => Some((IpAddr::V4(a.source_address), a.source_port).into()),
        v1::Addresses::Tcp6(a) => Some((IpAddr::V6(a.source_address), a.source_port).into()),
        v1::Addresses::Unknown => None,
    }
}

fn v2_source(addresses: &v2::Addresses) -> Option<SocketAddr> {
    match addresses {
        v2::Addresses::IPv4(a) => Some((IpAddr::V4(a.source_address), a.source_port).into()),
        v2::Addresses::IPv6(a) => Some((IpAddr::V6(a.source_address), a.source_port).into()),
        v2::Addresses::Unspecified | v2::Addresses::Unix(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2_header(source: &str, destination: &str) -> Vec<u8> {
        let source: SocketAddr = source.parse().expect("addr");
        let destination: SocketAddr = destination.parse().expect("addr");
        v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Proxy,
            v2::Protocol::Stream,
            (source, destination),
        )
        .build()
        .expect("header")
    }

    #[test]
    fn v1_and_v2_headers_give_the_source_and_their_length() {
        let v1 = b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 80\r\nGET / HTTP/1.1\r\n";
        assert_eq!(
            scan(v1),
            Scan::Header {
                len: 42,
                source: Some("203.0.113.7:51234".parse().expect("addr"))
            }
        );
        let mut v2 = v2_header("[2001:db8::7]:4000", "[2001:db8::1]:443");
        let len = v2.len();
        v2.extend_from_slice(b"GET");
        assert_eq!(
            scan(&v2),
            Scan::Header {
                len,
                source: Some("[2001:db8::7]:4000".parse().expect("addr"))
            }
        );
        assert_eq!(
            scan(b"PROXY UNKNOWN\r\n"),
            Scan::Header {
                len: 15,
                source: None
            }
        );
    }

    #[test]
    fn partial_headers_wait_and_other_traffic_passes() {
        let whole = v2_header("192.0.2.1:1", "192.0.2.2:2");
        for cut in [1, 5, 12, 15, whole.len() - 1] {
            assert_eq!(scan(&whole[..cut]), Scan::Incomplete, "cut at {cut}");
        }
        assert_eq!(scan(b"PROX"), Scan::Incomplete);
        assert_eq!(scan(b"PROXY TCP4 1.2.3.4"), Scan::Incomplete);
        assert_eq!(scan(b"GET / HTTP/1.1\r\n"), Scan::NotProxy);
        assert_eq!(scan(b"\x16\x03\x01"), Scan::NotProxy);
    }

    #[test]
    fn malformed_headers_are_refused() {
        for bad in [
            &b"PROXY TCP4 999.1.1.1 10.0.0.1 1 2\r\n"[..],
            b"PROXY TCP4 1.1.1.1 10.0.0.1 70000 2\r\n",
            b"PROXY SCTP 1.1.1.1 10.0.0.1 1 2\r\n",
            b"PROXY TCP4 1.1.1.1\r\n",
        ] {
            assert_eq!(
                scan(bad),
                Scan::Malformed,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = [b"PROXY ".as_slice(), &[b'1'; 120]].concat();
        assert_eq!(scan(&long), Scan::Malformed);
        let mut wrong_version = v2_header("192.0.2.1:1", "192.0.2.2:2");
        wrong_version[12] = 0x31; // version 3
        assert_eq!(scan(&wrong_version), Scan::Malformed);
    }
}
