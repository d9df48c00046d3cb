//! What a forwarding instance asks for when it opens a *stream* over a peer link (a TCP or
//! TLS passthrough visitor, or a UDP tunnel's datagrams), and what the holder answers. The
//! request rides on the handshake's answer line, after the proof:
//! `<instance> <proof> <kind> <target> <visitor>`, where `kind` is `tcp`, `tls` or `udp`,
//! `target` the public port (`tcp`, `udp`) or the tunnel name (`tls`), and `visitor` the
//! visitor's address as the forwarding instance saw it. Without the three words the link
//! carries HTTP/1.1 requests. Pure: parsing and formatting only.

use std::fmt;
use std::net::SocketAddr;

use showoff_core::LeaseKey;

/// Which kind of stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StreamKind {
    /// A raw TCP tunnel's visitor, by public port.
    Tcp,
    /// A TLS passthrough visitor, by tunnel name; its ClientHello follows the holder's `OK`.
    Tls,
    /// A UDP tunnel's datagrams, by public port, framed ([`super::datagrams`]).
    Udp,
}

/// A stream request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Opening {
    pub(crate) kind: StreamKind,
    /// The lease the stream is for: the port, or the name of a TLS tunnel.
    pub(crate) key: LeaseKey,
    /// The visitor (for UDP, the first one; each datagram names its own).
    pub(crate) visitor: SocketAddr,
}

impl Opening {
    /// Parses the words after the proof.
    pub(crate) fn parse(words: &str) -> Option<Self> {
        let mut words = words.split(' ');
        let (kind, target, visitor) = (words.next()?, words.next()?, words.next()?);
        if words.next().is_some() {
            return None;
        }
        let (kind, key) = match kind {
            "tcp" => (StreamKind::Tcp, LeaseKey::Port(target.parse().ok()?)),
            "udp" => (StreamKind::Udp, LeaseKey::UdpPort(target.parse().ok()?)),
            "tls" if !target.is_empty() => (StreamKind::Tls, LeaseKey::Name(target.to_string())),
            _ => return None,
        };
        Some(Self {
            kind,
            key,
            visitor: visitor.parse().ok()?,
        })
    }
}

impl fmt::Display for Opening {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (kind, target) = match (&self.kind, &self.key) {
            (StreamKind::Tcp, LeaseKey::Port(port)) => ("tcp", port.to_string()),
            (StreamKind::Udp, LeaseKey::UdpPort(port)) => ("udp", port.to_string()),
            (_, LeaseKey::Name(name)) => ("tls", name.clone()),
            (_, key) => ("tcp", key.to_string()),
        };
        write!(f, "{kind} {target} {}", self.visitor)
    }
}

/// The holder's answer to a stream request, one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answer {
    /// Relaying starts.
    Ok,
    /// This instance does not hold the tunnel (any more): look again.
    NotHere,
    /// The name is an HTTP tunnel here: terminate TLS where the visitor is and forward its
    /// requests instead.
    Terminate,
}

impl Answer {
    pub(crate) fn line(self) -> &'static [u8] {
        match self {
            Self::Ok => b"OK\r\n",
            Self::NotHere => b"NOT-HERE\r\n",
            Self::Terminate => b"TERMINATE\r\n",
        }
    }

    pub(crate) fn parse(line: &str) -> Option<Self> {
        match line {
            "OK" => Some(Self::Ok),
            "NOT-HERE" => Some(Self::NotHere),
            "TERMINATE" => Some(Self::Terminate),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openings_round_trip_and_nonsense_is_refused() {
        let visitor: SocketAddr = "[2001:db8::1]:5353".parse().expect("addr");
        for (kind, key) in [
            (StreamKind::Tcp, LeaseKey::Port(30_001)),
            (StreamKind::Udp, LeaseKey::UdpPort(53)),
            (StreamKind::Tls, LeaseKey::Name("db".into())),
        ] {
            let opening = Opening { kind, key, visitor };
            assert_eq!(Opening::parse(&opening.to_string()), Some(opening));
        }
        for junk in [
            "",
            "tcp",
            "tcp 1",
            "tcp x 127.0.0.1:1",
            "tcp 70000 127.0.0.1:1",
            "sctp 1 127.0.0.1:1",
            "tcp 1 nowhere",
            "tcp 1 127.0.0.1:1 extra",
            "tls  127.0.0.1:1",
        ] {
            assert_eq!(Opening::parse(junk), None, "{junk:?}");
        }
        for answer in [Answer::Ok, Answer::NotHere, Answer::Terminate] {
            let line = std::str::from_utf8(answer.line()).expect("ascii");
            assert_eq!(Answer::parse(line.trim_end()), Some(answer));
        }
        assert_eq!(Answer::parse("MAYBE"), None);
    }
}
