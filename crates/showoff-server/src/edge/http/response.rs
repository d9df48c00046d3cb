//! Response heads from upstream: strict parsing, and the head the visitor receives, without I/O.
//!
//! [`parse_response`] reads one HTTP/1.x response head from the upstream buffer and encodes the
//! visitor's head in the same pass: status line, end-to-end headers (hop-by-hop ones dropped),
//! then the framing and connection headers that fit the visitor's side.

use std::fmt::Write as _;

use bytes::BytesMut;
use http::header;

use super::head::MAX_HEADERS;

/// Largest response head accepted from upstream.
pub(crate) const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// How the upstream delimits a response body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyFraming {
    /// No body (HEAD, 1xx, 204, 304).
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the upstream closes.
    UntilClose,
}

/// How the visitor's copy of the body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VisitorFraming {
    /// No body bytes.
    None,
    /// Body bytes pass unchanged (a `Content-Length` was forwarded).
    Raw,
    /// Re-encoded as chunks (HTTP/1.1 visitor, chunked or close-delimited upstream).
    Chunked,
    /// Sent as-is and ended by closing (HTTP/1.0 visitor).
    UntilClose,
}

/// A parsed upstream response, with the visitor's head already encoded.
#[derive(Debug)]
pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) body: BodyFraming,
    pub(crate) visitor: VisitorFraming,
    /// Whether the upstream connection may carry another request afterwards.
    pub(crate) upstream_reusable: bool,
    /// The target authenticates the connection itself (`WWW-Authenticate: NTLM` or
    /// `Negotiate`): the connection must stay with this visitor connection.
    pub(crate) connection_auth: bool,
    /// Whether the visitor connection may stay open afterwards.
    pub(crate) keep_alive: bool,
    /// Bytes of the upstream head.
    pub(crate) len: usize,
    /// The complete head to send to the visitor.
    pub(crate) visitor_head: BytesMut,
}

impl Response {
    /// Adds a field of Showoff's to the visitor's head.
    pub(crate) fn add_field(&mut self, name: &str, value: &[u8]) {
        let head = &mut self.visitor_head;
        head.truncate(head.len() - 2);
        head.extend_from_slice(name.as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value);
        head.extend_from_slice(b"\r\n\r\n");
    }
}

/// A response head Showoff cannot forward.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid response from the target: {0}")]
pub(crate) struct ResponseError(pub(crate) &'static str);

/// What the visitor asked for, as far as the response head depends on it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Asked {
    pub(crate) head_method: bool,
    pub(crate) visitor_http11: bool,
    pub(crate) visitor_keep_alive: bool,
    pub(crate) upgrade: bool,
}

/// Headers never copied from upstream to the visitor: hop-by-hop, or re-stated by Showoff.
const DROPPED: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Parses a response head; `Ok(None)` means incomplete. Interim 1xx responses (other than 101)
/// are returned too, with `status` < 200; the caller skips them.
pub(crate) fn parse_response(buf: &[u8], asked: Asked) -> Result<Option<Response>, ResponseError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut fields);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > MAX_RESPONSE_HEAD => {
            return Err(ResponseError("response head too large"));
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(ResponseError("malformed response head")),
    };
    let status = resp.code.ok_or(ResponseError("missing status"))?;
    if status == 101 && !asked.upgrade {
        // The target switched protocols nobody asked for: the connection is no longer HTTP.
        return Err(ResponseError(
            "101 Switching Protocols without an upgrade request",
        ));
    }
    let http11 = resp.version == Some(1);
    let headers = resp.headers;
    let connection = tokens(headers, "connection");
    let upstream_close = connection.iter().any(|t| t == "close")
        || (!http11 && !connection.iter().any(|t| t == "keep-alive"));
    let body = body_framing(status, headers, asked.head_method)?;
    let switching = status == 101 && asked.upgrade;
    let visitor = match body {
        _ if switching => VisitorFraming::None,
        BodyFraming::None => VisitorFraming::None,
        BodyFraming::Length(_) => VisitorFraming::Raw,
        BodyFraming::Chunked | BodyFraming::UntilClose if asked.visitor_http11 => {
            VisitorFraming::Chunked
        }
        BodyFraming::Chunked | BodyFraming::UntilClose => VisitorFraming::UntilClose,
    };
    let keep_alive =
        asked.visitor_keep_alive && visitor != VisitorFraming::UntilClose && !switching;
    let mut out = BytesMut::with_capacity(len + 64);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa3(status).as_bytes());
    out.extend_from_slice(b" ");
    out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    write_fields(&mut out, headers, body, &connection, switching);
    let framing = Framing {
        switching,
        visitor,
        keep_alive,
        http11: asked.visitor_http11,
    };
    write_framing(&mut out, headers, framing);
    out.extend_from_slice(b"\r\n");
    Ok(Some(Response {
        status,
        body,
        visitor,
        upstream_reusable: !upstream_close && body != BodyFraming::UntilClose && !switching,
        connection_auth: headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("www-authenticate"))
            .any(|h| connection_scheme(h.value)),
        keep_alive,
        len,
        visitor_head: out,
    }))
}

/// Copies the end-to-end fields. A length beside a chunked or close-delimited body is stale,
/// and two framings are what request smuggling feeds on: only a length-delimited body has a
/// `Content-Length`, and it is the one Showoff parsed (never the target's text).
fn write_fields(
    out: &mut BytesMut,
    headers: &[httparse::Header<'_>],
    body: BodyFraming,
    connection: &[String],
    switching: bool,
) {
    let mut wrote_length = false;
    for field in headers.iter() {
        let value: &[u8] = if field.name.eq_ignore_ascii_case("content-length") {
            match body {
                BodyFraming::Length(n) if !wrote_length => {
                    // The parsed length, formatted straight into the head.
                    wrote_length = true;
                    out.extend_from_slice(field.name.as_bytes());
                    let _ = write!(out, ": {n}\r\n");
                    continue;
                }
                // A bodiless answer (HEAD, 304) keeps the length it describes.
                BodyFraming::None if !switching => field.value,
                _ => continue,
            }
        } else if keep_header(field.name, connection, switching) {
            field.value
        } else {
            continue;
        };
        out.extend_from_slice(field.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
}

/// How the visitor's side of a response is framed.
#[derive(Debug, Clone, Copy)]
struct Framing {
    switching: bool,
    visitor: VisitorFraming,
    keep_alive: bool,
    http11: bool,
}

/// The framing and connection fields of the visitor's head.
fn write_framing(out: &mut BytesMut, headers: &[httparse::Header<'_>], framing: Framing) {
    if framing.switching {
        out.extend_from_slice(b"connection: upgrade\r\n");
        return;
    }
    if framing.visitor == VisitorFraming::Chunked {
        // Codings other than the framing (`gzip, chunked`) stay with the body.
        out.extend_from_slice(b"transfer-encoding: ");
        for coding in content_codings(headers) {
            out.extend_from_slice(coding.as_bytes());
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(b"chunked\r\n");
    }
    if !framing.keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    } else if !framing.http11 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
}

/// Whether an `Authorization` or `WWW-Authenticate` value names a scheme that authenticates
/// the TCP connection rather than the request (NTLM, Negotiate/Kerberos).
pub(crate) fn connection_scheme(value: &[u8]) -> bool {
    let scheme = value
        .split(|&b| b == b' ' || b == b',')
        .next()
        .unwrap_or_default();
    scheme.eq_ignore_ascii_case(b"ntlm") || scheme.eq_ignore_ascii_case(b"negotiate")
}

/// The transfer codings of a response other than its final `chunked` (`gzip` of
/// `gzip, chunked`): they describe the body's bytes and must reach the visitor with them.
fn content_codings(headers: &[httparse::Header<'_>]) -> Vec<String> {
    let mut codings = tokens(headers, header::TRANSFER_ENCODING.as_str());
    if codings.last().is_some_and(|c| c == "chunked") {
        codings.pop();
    }
    codings.retain(|c| c != "chunked");
    codings
}

fn itoa3(status: u16) -> String {
    format!("{status:03}")
}

/// Lowercase tokens of every header called `name`.
fn tokens(headers: &[httparse::Header<'_>], name: &str) -> Vec<String> {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case(name))
        .filter_map(|h| std::str::from_utf8(h.value).ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

fn keep_header(name: &str, connection: &[String], switching: bool) -> bool {
    if switching && name.eq_ignore_ascii_case("upgrade") {
        return true;
    }
    if DROPPED.iter().any(|d| name.eq_ignore_ascii_case(d)) {
        return false;
    }
    // Headers the upstream's Connection header names are hop-by-hop too.
    !connection.iter().any(|t| name.eq_ignore_ascii_case(t))
}

fn body_framing(
    status: u16,
    headers: &[httparse::Header<'_>],
    head_method: bool,
) -> Result<BodyFraming, ResponseError> {
    if head_method || (100..200).contains(&status) || status == 204 || status == 304 {
        return Ok(BodyFraming::None);
    }
    let codings = tokens(headers, header::TRANSFER_ENCODING.as_str());
    if !codings.is_empty() {
        // Transfer-Encoding wins over Content-Length (RFC 9112 §6.3); anything but a final
        // `chunked` is delimited by the close.
        return Ok(if codings.last().is_some_and(|c| c == "chunked") {
            BodyFraming::Chunked
        } else {
            BodyFraming::UntilClose
        });
    }
    let mut length = None;
    for field in headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case(header::CONTENT_LENGTH.as_str()))
    {
        let text = std::str::from_utf8(field.value)
            .map_err(|_| ResponseError("invalid Content-Length"))?;
        for part in text.split(',') {
            let part = part.trim();
            // Digits only: `+5` parses as a number but another proxy may read it otherwise.
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(ResponseError("invalid Content-Length"));
            }
            let n: u64 = part
                .parse()
                .map_err(|_| ResponseError("invalid Content-Length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(ResponseError("conflicting Content-Length values"));
            }
            length = Some(n);
        }
    }
    Ok(length.map_or(BodyFraming::UntilClose, BodyFraming::Length))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain() -> Asked {
        Asked {
            head_method: false,
            visitor_http11: true,
            visitor_keep_alive: true,
            upgrade: false,
        }
    }

    fn visitor_head(raw: &str) -> String {
        let parsed = parse_response(raw.as_bytes(), plain())
            .expect("valid")
            .expect("complete");
        String::from_utf8(parsed.visitor_head.to_vec()).expect("utf8")
    }

    #[test]
    fn edge_rules_of_item_7_hold() {
        // Issue 11, item 7.
        let unasked = parse_response(b"HTTP/1.1 101 Switching\r\nUpgrade: h2c\r\n\r\n", plain());
        assert!(unasked.is_err(), "an unrequested 101 is invalid");
        for bad in ["+5", "-1", "5x", "0x5", ""] {
            let raw = format!("HTTP/1.1 200 OK\r\nContent-Length: {bad}\r\n\r\n");
            assert!(parse_response(raw.as_bytes(), plain()).is_err(), "{bad:?}");
        }
        let head = visitor_head("HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n");
        assert!(
            head.contains("Content-Length: 5\r\n") && !head.contains("5, 5"),
            "{head}"
        );
        let head = visitor_head("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
        assert!(
            head.contains("transfer-encoding: gzip, chunked\r\n"),
            "{head}"
        );
        let head = visitor_head("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert!(head.contains("transfer-encoding: chunked\r\n"), "{head}");
    }
    use proptest::prelude::*;

    const GET11: Asked = Asked {
        head_method: false,
        visitor_http11: true,
        visitor_keep_alive: true,
        upgrade: false,
    };

    fn parse(raw: &str, asked: Asked) -> Response {
        parse_response(raw.as_bytes(), asked)
            .expect("valid")
            .expect("complete")
    }

    fn head(r: &Response) -> String {
        String::from_utf8(r.visitor_head.to_vec()).expect("utf8")
    }

    #[test]
    fn content_length_responses_pass_raw_and_keep_alive() {
        let r = parse(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nKeep-Alive: timeout=5\r\nX-App: 1\r\n\r\nhello",
            GET11,
        );
        assert_eq!(r.body, BodyFraming::Length(5));
        assert_eq!(r.visitor, VisitorFraming::Raw);
        assert!(r.upstream_reusable && r.keep_alive);
        assert_eq!(
            head(&r),
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-App: 1\r\n\r\n"
        );
        assert_eq!(
            r.len,
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nKeep-Alive: timeout=5\r\nX-App: 1\r\n\r\n"
                .len()
        );
    }

    #[test]
    fn chunked_and_close_delimited_bodies_are_rechunked_for_http11() {
        let r = parse(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\n\r\n",
            GET11,
        );
        assert_eq!(
            (r.body, r.visitor),
            (BodyFraming::Chunked, VisitorFraming::Chunked)
        );
        assert_eq!(
            head(&r),
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        let r = parse("HTTP/1.0 200 OK\r\n\r\n", GET11);
        assert_eq!(
            (r.body, r.visitor),
            (BodyFraming::UntilClose, VisitorFraming::Chunked)
        );
        assert!(!r.upstream_reusable);
        let old = Asked {
            visitor_http11: false,
            ..GET11
        };
        let r = parse("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", old);
        assert_eq!(r.visitor, VisitorFraming::UntilClose);
        assert!(!r.keep_alive);
        assert!(head(&r).ends_with("connection: close\r\n\r\n"));
    }

    #[test]
    fn bodiless_statuses_and_head_requests() {
        for raw in [
            "HTTP/1.1 204 No Content\r\n\r\n",
            "HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
        ] {
            assert_eq!(parse(raw, GET11).body, BodyFraming::None, "{raw}");
        }
        let head_req = Asked {
            head_method: true,
            ..GET11
        };
        let r = parse("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", head_req);
        assert_eq!(r.body, BodyFraming::None);
        assert!(
            head(&r).contains("Content-Length: 100"),
            "HEAD keeps the length it describes"
        );
    }

    #[test]
    fn connection_close_and_connection_listed_headers() {
        let r = parse(
            "HTTP/1.1 200 OK\r\nConnection: close, X-Hop\r\nX-Hop: 1\r\nContent-Length: 0\r\n\r\n",
            GET11,
        );
        assert!(!r.upstream_reusable, "upstream said close");
        assert!(r.keep_alive, "the visitor connection can stay");
        assert_eq!(head(&r), "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    }

    #[test]
    fn switching_protocols_keeps_upgrade_headers() {
        let ws = Asked {
            upgrade: true,
            ..GET11
        };
        let r = parse(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: x\r\n\r\n",
            ws,
        );
        assert_eq!(r.status, 101);
        assert!(!r.keep_alive && !r.upstream_reusable);
        assert_eq!(
            head(&r),
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: x\r\nconnection: upgrade\r\n\r\n"
        );
    }

    #[test]
    fn refuses_what_cannot_be_forwarded() {
        for raw in [
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            "NOPE\r\n\r\n",
        ] {
            assert!(parse_response(raw.as_bytes(), GET11).is_err(), "{raw}");
        }
        assert!(matches!(
            parse_response(b"HTTP/1.1 200 OK\r\nX: 1\r\n", GET11),
            Ok(None)
        ));
        let huge = format!("HTTP/1.1 200 OK\r\nX: {}", "a".repeat(MAX_RESPONSE_HEAD));
        assert!(parse_response(huge.as_bytes(), GET11).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = parse_response(&data, GET11);
        }
    }
}
