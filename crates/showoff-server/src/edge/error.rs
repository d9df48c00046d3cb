//! The one place that decides what a visitor sees when something fails: status, stable code
//! (sent as `X-Showoff-Error`), message, `Retry-After`. Failures are classified by origin —
//! the visitor's request, the tunnel (client or its target), or Showoff's own limits — so logs
//! and, later, metrics label them the same way.

use crate::edge::http::head::HeadError;
use crate::listen::ProxyError;
use crate::state::Full;
use crate::transport::OpenError;

/// Response header carrying the stable error code.
pub const ERROR_HEADER: &str = "x-showoff-error";

/// Seconds a visitor is asked to wait after `over_capacity`.
const RETRY_AFTER_SECS: u32 = 1;

/// Who caused a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// The visitor sent something wrong.
    Visitor,
    /// The client or its local target failed.
    Tunnel,
    /// A Showoff limit or state refused the request.
    Showoff,
}

/// Everything that ends a visitor request with an error page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum EdgeError {
    /// No tunnel serves this host.
    NotFound,
    /// A request another instance forwarded here names a tunnel this instance does not hold
    /// (it moved meanwhile): `421`, which tells the forwarding instance to look again.
    NotHere,
    /// The instance holding the tunnel does not answer on its peer listener.
    PeerUnreachable,
    /// The head was refused by [`crate::edge::http::head`].
    Head(HeadError),
    /// The head did not arrive before the deadline.
    HeadTimeout,
    /// The body broke its framing.
    BadBody,
    /// The body fell behind its minimum rate or stalled past the idle timeout.
    BodyTimeout,
    /// The tunnel could not produce a stream.
    Open(OpenError),
    /// The stream broke before the target answered.
    TunnelBroken,
    /// The target answered with something that is not a usable HTTP/1.x response.
    BadResponse,
    /// The tunnel's IP rules refuse this visitor.
    IpForbidden,
    /// A rate limit refused the request; retry after the given seconds.
    RateLimited(u32),
    /// The visitor's address has its share of the tunnel's concurrent visitors.
    VisitorOverCapacity,
    /// The tunnel wants basic auth and the request lacks the right credentials.
    AuthRequired,
    /// The PROXY protocol policy refused the connection.
    Proxy(ProxyError),
    /// An HTTPS visitor's first bytes are not a TLS ClientHello (or one too large).
    BadTlsHello,
    /// The TLS handshake with an HTTPS visitor failed.
    TlsHandshake,
    /// The tunnel was opened to speak HTTP/2 to its target, which does not.
    NotHttp2,
    /// A gRPC call came over HTTP/1.1, which cannot carry it.
    GrpcOverHttp1,
    /// A gRPC call for a tunnel whose target is reached over HTTP/1.1.
    GrpcToHttp1Target,
    /// An HTTP/1.1 upgrade (WebSocket) for a tunnel whose target is reached over HTTP/2.
    UpgradeOverHttp2,
}

impl From<Full> for EdgeError {
    fn from(full: Full) -> Self {
        match full {
            Full::Tunnel => Self::Open(OpenError::OverCapacity),
            Full::Address => Self::VisitorOverCapacity,
        }
    }
}

/// What to send for an [`EdgeError`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ErrorPage {
    pub(crate) status: u16,
    pub(crate) code: &'static str,
    pub(crate) message: String,
    pub(crate) retry_after: Option<u32>,
    /// Ask for basic auth (`WWW-Authenticate`).
    pub(crate) challenge: bool,
    pub(crate) origin: Origin,
}

impl EdgeError {
    /// Maps the failure to its page; `host` is named in messages where it helps.
    pub(crate) fn page(&self, host: &str) -> ErrorPage {
        use Origin::*;
        let page = |status, code, message: String, origin| ErrorPage {
            status,
            code,
            message,
            retry_after: None,
            challenge: false,
            origin,
        };
        match self {
            Self::NotFound => page(
                404,
                "tunnel_not_found",
                format!("no tunnel is registered for {host}"),
                Visitor,
            ),
            Self::NotHere => page(
                421,
                "tunnel_not_found",
                format!("this instance does not hold {host}"),
                Visitor,
            ),
            Self::PeerUnreachable => page(
                502,
                "peer_unreachable",
                format!("the server instance holding {host} does not answer"),
                Showoff,
            ),
            Self::Head(HeadError::TooLarge) => page(
                431,
                "header_too_large",
                "the request head is larger than this server accepts".into(),
                Visitor,
            ),
            Self::Head(HeadError::Bad(why)) => page(400, "bad_request", (*why).into(), Visitor),
            Self::Head(HeadError::UnsupportedCoding) => page(
                501,
                "unsupported_transfer_coding",
                "only Transfer-Encoding: chunked is supported".into(),
                Visitor,
            ),
            Self::Head(HeadError::Connect) => page(
                405,
                "method_not_allowed",
                "CONNECT is not proxied".into(),
                Visitor,
            ),
            Self::HeadTimeout => page(
                408,
                "header_timeout",
                "the request head did not arrive in time".into(),
                Visitor,
            ),
            Self::BadBody => page(400, "bad_request", "malformed request body".into(), Visitor),
            Self::BodyTimeout => page(
                408,
                "body_timeout",
                "the request body did not arrive in time".into(),
                Visitor,
            ),
            Self::BadTlsHello => page(
                400,
                "bad_tls_hello",
                "the connection did not start with a TLS ClientHello".into(),
                Visitor,
            ),
            Self::TlsHandshake => page(
                400,
                "tls_handshake",
                "the TLS handshake failed".into(),
                Visitor,
            ),
            Self::Proxy(error) => {
                let (status, message) = match error {
                    ProxyError::Required => (
                        400,
                        "this listener only accepts connections from trusted proxies sending a \
                         PROXY protocol header",
                    ),
                    ProxyError::Malformed => (400, "the PROXY protocol header is malformed"),
                    ProxyError::Timeout => {
                        (408, "the PROXY protocol header did not arrive in time")
                    }
                };
                page(status, error.code(), message.into(), Visitor)
            }
            Self::Open(OpenError::ClientGone) => page(
                502,
                "tunnel_unavailable",
                format!("the client serving {host} is not connected"),
                Tunnel,
            ),
            Self::Open(OpenError::Timeout) => page(
                504,
                "tunnel_timeout",
                format!("the client serving {host} did not answer in time"),
                Tunnel,
            ),
            Self::Open(OpenError::TargetUnreachable(why)) => page(
                502,
                "upstream_unreachable",
                format!("the client serving {host} could not reach its target: {why}"),
                Tunnel,
            ),
            Self::TunnelBroken => page(
                502,
                "tunnel_unavailable",
                format!("the connection to the client serving {host} broke"),
                Tunnel,
            ),
            Self::BadResponse => page(
                502,
                "upstream_invalid_response",
                format!("the target behind {host} sent an invalid HTTP response"),
                Tunnel,
            ),
            Self::NotHttp2 => page(
                502,
                "upstream_not_http2",
                format!(
                    "the target behind {host} does not speak HTTP/2 (its tunnel was opened with \
                     --upstream h2c or h2)"
                ),
                Tunnel,
            ),
            Self::GrpcOverHttp1 => page(
                505,
                "grpc_needs_http2",
                "gRPC needs HTTP/2 end to end and this request came over HTTP/1.1: call over \
                 HTTP/2 (TLS with ALPN h2, or h2c prior knowledge)"
                    .into(),
                Visitor,
            ),
            Self::GrpcToHttp1Target => page(
                502,
                "grpc_needs_http2",
                format!(
                    "the target behind {host} is reached over HTTP/1.1 (--upstream http1); gRPC \
                     needs a tunnel opened with --upstream h2c, h2 or auto"
                ),
                Tunnel,
            ),
            Self::UpgradeOverHttp2 => page(
                501,
                "upgrade_not_supported",
                format!(
                    "the target behind {host} is reached over HTTP/2, which carries no HTTP/1.1 \
                     upgrade (WebSocket): open its tunnel with --upstream http1"
                ),
                Visitor,
            ),
            Self::RateLimited(secs) => ErrorPage {
                retry_after: Some(*secs),
                ..page(
                    429,
                    "rate_limited",
                    format!("too many requests for {host}; retry in {secs}s"),
                    Showoff,
                )
            },
            Self::VisitorOverCapacity => ErrorPage {
                retry_after: Some(RETRY_AFTER_SECS),
                ..page(
                    429,
                    "visitor_over_capacity",
                    format!(
                        "too many requests from this address for {host} at once; retry shortly"
                    ),
                    Visitor,
                )
            },
            Self::IpForbidden => page(
                403,
                "ip_forbidden",
                format!("{host} does not accept visitors from this address"),
                Visitor,
            ),
            Self::AuthRequired => ErrorPage {
                challenge: true,
                ..page(
                    401,
                    "auth_required",
                    format!("{host} needs a user name and password"),
                    Visitor,
                )
            },
            Self::Open(OpenError::OverCapacity) => ErrorPage {
                retry_after: Some(RETRY_AFTER_SECS),
                ..page(
                    503,
                    "over_capacity",
                    format!("too many requests for {host} are waiting; retry shortly"),
                    Showoff,
                )
            },
        }
    }
}

impl EdgeError {
    /// The stable code alone, for edges that cannot send a page (TCP, TLS before the
    /// handshake): the same code an HTTP visitor would see in `X-Showoff-Error`.
    pub(crate) fn code(&self) -> &'static str {
        self.page("").code
    }
}

impl ErrorPage {
    /// The complete HTTP/1.1 response, closing the connection.
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        let reason = http::StatusCode::from_u16(self.status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("Error");
        let body = format!("{} {}: {}\n", self.status, self.code, self.message);
        let mut retry = self
            .retry_after
            .map(|s| format!("retry-after: {s}\r\n"))
            .unwrap_or_default();
        if self.challenge {
            retry.push_str("www-authenticate: Basic realm=\"showoff\", charset=\"UTF-8\"\r\n");
        }
        format!(
            "HTTP/1.1 {} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\n{ERROR_HEADER}: {}\r\n{retry}content-length: {}\r\nconnection: close\r\n\r\n{body}",
            self.status,
            self.code,
            body.len(),
        )
        .into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_of_statuses_and_codes() {
        let cases = [
            (EdgeError::NotFound, 404, "tunnel_not_found"),
            (EdgeError::NotHere, 421, "tunnel_not_found"),
            (EdgeError::PeerUnreachable, 502, "peer_unreachable"),
            (
                EdgeError::Head(HeadError::TooLarge),
                431,
                "header_too_large",
            ),
            (EdgeError::Head(HeadError::Bad("x")), 400, "bad_request"),
            (EdgeError::HeadTimeout, 408, "header_timeout"),
            (
                EdgeError::Open(OpenError::ClientGone),
                502,
                "tunnel_unavailable",
            ),
            (EdgeError::Open(OpenError::Timeout), 504, "tunnel_timeout"),
            (
                EdgeError::Open(OpenError::OverCapacity),
                503,
                "over_capacity",
            ),
            (
                EdgeError::Open(OpenError::TargetUnreachable("refused".into())),
                502,
                "upstream_unreachable",
            ),
        ];
        for (error, status, code) in cases {
            let page = error.page("demo.localhost");
            assert_eq!((page.status, page.code), (status, code), "{error:?}");
        }
    }

    #[test]
    fn pages_are_complete_responses() {
        let page = EdgeError::Open(OpenError::OverCapacity).page("demo.localhost");
        let text = String::from_utf8(page.to_bytes()).expect("utf8");
        assert!(
            text.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{text}"
        );
        assert!(
            text.contains("x-showoff-error: over_capacity\r\n"),
            "{text}"
        );
        assert!(text.contains("retry-after: 1\r\n"), "{text}");
        let (head, body) = text.split_once("\r\n\r\n").expect("head");
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{text}"
        );
    }
}
