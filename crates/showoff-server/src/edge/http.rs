//! The HTTP edge: one task per visitor connection, one exchange per request.
//!
//! Each request head is read under the head deadline and validated on its own
//! ([`head::parse_head`]), so a keep-alive connection is routed request by request. The
//! request is re-encoded for the target (hop-by-hop headers out, `X-Forwarded-*` set, `Host`
//! per tunnel policy) and sent on a pooled upstream connection ([`pool`], [`client`]); the
//! response head is parsed ([`response`]) and the body relayed as it arrives, both ways through
//! fixed buffers. Upgrades (WebSocket) are spliced after the `101`. Failures before the response
//! head become the error pages of [`crate::edge::error`].
//!
//! Layout: [`conn`] (the connection loop and error pages), [`exchange`] (per-request
//! policy), [`forward`] (one hop to the cluster instance holding the tunnel), [`client`] (the
//! upstream request/response turn), [`pool`] (idle upstream
//! connections), [`relay`] (bodies and upgrades), [`encode`] (what is written towards the
//! target), [`head`], [`body`] and [`response`] (parsers), [`meter`] (byte counts).

pub(crate) mod body;
pub(crate) mod client;
pub(crate) mod conn;
pub(crate) mod encode;
pub(crate) mod exchange;
pub(crate) mod forward;
pub(crate) mod gate;
pub(crate) mod head;
pub(crate) mod meter;
pub(crate) mod pool;
pub(crate) mod relay;
pub(crate) mod response;

use std::time::Duration;

pub(crate) use self::conn::{Conn, Ended};

/// Bytes asked of a socket per read.
const READ_CHUNK: usize = 16 * 1024;
/// Bytes asked of a socket per read while relaying a body.
const BODY_CHUNK: usize = 64 * 1024;
/// Response bytes gathered before a write.
const WRITE_COALESCE: usize = 64 * 1024;
/// How long an error page's connection lingers to drain the visitor's unread request.
const LINGER: Duration = Duration::from_millis(500);
/// Most bytes drained while lingering.
const LINGER_BYTES: usize = 256 * 1024;
/// How long a keep-alive connection that is idle when the drain begins still waits for its
/// next request (answered with `Connection: close`): its client may be writing it right now.
const DRAIN_IDLE: Duration = Duration::from_secs(1);

/// Which public listener a visitor came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scheme {
    /// Plain HTTP.
    Http,
    /// HTTPS, terminated by Showoff.
    Https,
    /// The peer listener: requests another instance of the cluster forwarded, with what it
    /// decided about the visitor in the peer headers; never forwarded again.
    Peer,
}

impl Scheme {
    /// The scheme's name, as in `X-Forwarded-Proto`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Http | Self::Peer => "http",
            Self::Https => "https",
        }
    }
}
