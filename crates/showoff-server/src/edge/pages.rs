//! The request-level edge's error pages as responses: the plain-text
//! page every HTTP client gets, or, for a gRPC call, a trailers-only response (HTTP 200, one
//! HEADERS frame that ends the stream) whose `grpc-status` follows gRPC's mapping of HTTP
//! statuses and whose `grpc-message` is the page's message; `x-showoff-error` carries the
//! stable code in both.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, header};
use http_body_util::{BodyExt, Empty, Full};
use showoff_core::trace::Decision;

use super::EdgeContext;
use super::body::Body;
use super::error::{ERROR_HEADER, EdgeError, ErrorPage};
use super::http::conn::report_failure;

/// gRPC's status codes used here.
mod code {
    pub(super) const UNKNOWN: u16 = 2;
    pub(super) const PERMISSION_DENIED: u16 = 7;
    pub(super) const UNIMPLEMENTED: u16 = 12;
    pub(super) const INTERNAL: u16 = 13;
    pub(super) const UNAVAILABLE: u16 = 14;
    pub(super) const UNAUTHENTICATED: u16 = 16;
}

/// Whether a request is a gRPC call: `content-type: application/grpc` or `application/grpc+…`
/// (gRPC-Web, `application/grpc-web…`, is plain HTTP and is not).
pub(crate) fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .map(HeaderValue::as_bytes)
        .is_some_and(|value| {
            let rest = value
                .get(..16)
                .filter(|p| p.eq_ignore_ascii_case(b"application/grpc"))
                .map(|_| &value[16..]);
            matches!(rest, Some(r) if r.is_empty() || r[0] == b'+' || r[0] == b';')
        })
}

/// The gRPC status for a page: gRPC's mapping of HTTP statuses ("HTTP to gRPC Status Code
/// Mapping"), except that a tunnel that cannot carry gRPC is `UNIMPLEMENTED`.
pub(crate) fn grpc_status(page: &ErrorPage) -> u16 {
    if page.code == "grpc_needs_http2" {
        return code::UNIMPLEMENTED;
    }
    match page.status {
        400 => code::INTERNAL,
        401 => code::UNAUTHENTICATED,
        403 => code::PERMISSION_DENIED,
        404 => code::UNIMPLEMENTED,
        429 | 502 | 503 | 504 => code::UNAVAILABLE,
        _ => code::UNKNOWN,
    }
}

/// The response a visitor gets for `page`; `grpc` when the request was a gRPC call.
pub(crate) fn response(page: &ErrorPage, grpc: bool) -> Response<Body> {
    let mut builder = Response::builder().header(ERROR_HEADER, page.code);
    if let Some(secs) = page.retry_after {
        builder = builder.header(header::RETRY_AFTER, secs);
    }
    let built = if grpc {
        builder
            .status(200)
            .header(header::CONTENT_TYPE, "application/grpc")
            .header("grpc-status", grpc_status(page))
            .header("grpc-message", percent_encode(&page.message))
            .body(Empty::new().map_err(|never| match never {}).boxed())
    } else {
        if page.challenge {
            builder = builder.header(
                header::WWW_AUTHENTICATE,
                "Basic realm=\"showoff\", charset=\"UTF-8\"",
            );
        }
        let text = format!("{} {}: {}\n", page.status, page.code, page.message);
        builder
            .status(page.status)
            .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .body(
                Full::new(Bytes::from(text))
                    .map_err(|never| match never {})
                    .boxed(),
            )
    };
    built.unwrap_or_else(|_| {
        let mut fallback = Response::new(Empty::new().map_err(|never| match never {}).boxed());
        *fallback.status_mut() = http::StatusCode::BAD_GATEWAY;
        fallback
    })
}

/// Reports a request Showoff refused or failed (span, exchange event, log line, as
/// [`report_failure`] does for every edge) and answers it with `error`'s page.
pub(crate) fn refusal(
    ctx: &EdgeContext,
    peer: SocketAddr,
    host: &str,
    tunnel: Option<&str>,
    decision: &Decision,
    grpc: bool,
    error: EdgeError,
) -> Response<Body> {
    let page = error.page(host);
    report_failure(ctx, peer, host, tunnel, &page, decision);
    response(&page, grpc)
}

/// `grpc-message` encoding: percent-encoding of everything outside printable ASCII and `%`.
fn percent_encode(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for byte in message.bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge::error::EdgeError;

    fn with_type(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, value.parse().expect("value"));
        headers
    }

    #[test]
    fn grpc_calls_are_told_from_grpc_web_and_the_rest() {
        assert!(is_grpc(&with_type("application/grpc")));
        assert!(is_grpc(&with_type("application/grpc+proto")));
        assert!(is_grpc(&with_type("Application/GRPC;charset=utf-8")));
        assert!(!is_grpc(&with_type("application/grpc-web")));
        assert!(!is_grpc(&with_type("application/grpc-web-text")));
        assert!(!is_grpc(&with_type("application/json")));
        assert!(!is_grpc(&HeaderMap::new()));
    }

    #[test]
    fn a_grpc_call_gets_a_trailers_only_status_with_the_code() {
        let page = EdgeError::NotFound.page("demo.localhost");
        let response = response(&page, true);
        assert_eq!(response.status(), 200);
        let headers = response.headers();
        assert_eq!(headers["grpc-status"], "12");
        assert_eq!(headers[ERROR_HEADER], "tunnel_not_found");
        assert_eq!(
            headers["grpc-message"],
            "no tunnel is registered for demo.localhost"
        );
        assert!(
            http_body::Body::is_end_stream(response.body()),
            "trailers-only: no body"
        );
        let limited = EdgeError::RateLimited(3).page("demo.localhost");
        let response = super::response(&limited, true);
        assert_eq!(response.headers()["grpc-status"], "14");
        assert_eq!(response.headers()[header::RETRY_AFTER], "3");
        let http1 = EdgeError::GrpcToHttp1Target.page("demo.localhost");
        assert_eq!(grpc_status(&http1), code::UNIMPLEMENTED);
    }

    #[test]
    fn other_visitors_get_the_page() {
        let page = EdgeError::AuthRequired.page("demo.localhost");
        let response = response(&page, false);
        assert_eq!(response.status(), 401);
        assert!(response.headers().contains_key(header::WWW_AUTHENTICATE));
        assert_eq!(response.headers()[ERROR_HEADER], "auth_required");
    }

    #[test]
    fn grpc_messages_are_percent_encoded() {
        assert_eq!(percent_encode("a b%c"), "a b%25c");
        assert_eq!(percent_encode("é\n"), "%C3%A9%0A");
    }
}
