//! Request heads: strict parsing and validation of one HTTP/1.x request head, without I/O.
//!
//! [`parse_head`] is called on the connection's read buffer after every read until it returns
//! a head, so heads arriving in any number of pieces parse the same. Everything a smuggling or
//! routing attack needs is refused here: a second `Host`, a malformed `Host`, an absolute-form
//! target whose authority disagrees with `Host`, `Content-Length` beside `Transfer-Encoding`,
//! conflicting lengths, codings other than `chunked`, and heads over the size cap.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Version};
use showoff_proto::host::{Host, parse_host};

use super::body::Framing;

/// Most header fields in one head (431 above it).
pub(crate) const MAX_HEADERS: usize = 128;

/// Why a head was refused; mapped to a status by [`crate::edge::error`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HeadError {
    /// The head (or its number of fields) exceeds the cap: 431.
    TooLarge,
    /// Malformed or ambiguous: 400, with the reason shown to the visitor.
    Bad(&'static str),
    /// A transfer coding other than `chunked`: 501.
    UnsupportedCoding,
    /// `CONNECT` is not proxied: 405.
    Connect,
}

/// A validated request head.
#[derive(Debug)]
pub(crate) struct RequestHead {
    pub(crate) method: Method,
    /// Origin-form target (`/path?query`), also for requests that arrived in absolute form.
    pub(crate) target: String,
    pub(crate) version: Version,
    pub(crate) headers: HeaderMap,
    pub(crate) host: Host,
    /// The `Host` value as received (for `X-Forwarded-Host`).
    pub(crate) raw_host: HeaderValue,
    pub(crate) framing: Framing,
    /// Whether the visitor wants the connection kept open after this exchange.
    pub(crate) keep_alive: bool,
    /// `Connection: upgrade` with an `Upgrade` header (WebSocket and friends).
    pub(crate) upgrade: bool,
    pub(crate) expect_continue: bool,
    /// Bytes the head occupied in the buffer.
    pub(crate) len: usize,
}

/// Parses one head from the start of `buf`. `Ok(None)`: incomplete, read more.
pub(crate) fn parse_head(buf: &[u8], max_len: usize) -> Result<Option<RequestHead>, HeadError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut fields);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > max_len => return Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(_) => return Err(HeadError::Bad("malformed request head")),
    };
    if len > max_len {
        return Err(HeadError::TooLarge);
    }
    let method = Method::from_bytes(req.method.unwrap_or_default().as_bytes())
        .map_err(|_| HeadError::Bad("invalid method"))?;
    if method == Method::CONNECT {
        return Err(HeadError::Connect);
    }
    let version = match req.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let headers = collect_headers(req.headers)?;
    let (host, raw_host) = single_host(&headers)?;
    let target = origin_form(req.path.unwrap_or_default(), &host)?;
    let framing = body_framing(&headers)?;
    let connection = connection_tokens(&headers);
    let has = |token: &str| connection.iter().any(|t| t.eq_ignore_ascii_case(token));
    let http10 = version == Version::HTTP_10;
    // HTTP/1.0 has neither transfer codings nor upgrades nor 100-continue: a 1.0 request that
    // uses them is answered, then its connection closes (RFC 9112 §6.1, RFC 9110 §10.1.1).
    let keep_alive = match version {
        Version::HTTP_10 => has("keep-alive") && framing != Framing::Chunked,
        _ => !has("close"),
    };
    let upgrade = !http10 && has("upgrade") && headers.contains_key(header::UPGRADE);
    let expect_continue = !http10
        && headers
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    Ok(Some(RequestHead {
        method,
        target,
        version,
        headers,
        host,
        raw_host,
        framing,
        keep_alive,
        upgrade,
        expect_continue,
        len,
    }))
}

impl RequestHead {
    /// The head of a request another parser read (hyper's HTTP/2 and HTTP/1.1 servers),
    /// checked like one read here: the host from `:authority` (or `Host`, which must then agree
    /// with it), the target in origin form. The body's framing is the parser's business:
    /// `Length` when a `content-length` was given, otherwise `Chunked` (a streamed body). The
    /// fields move into the head (`parts.headers` is left empty), they are not copied.
    pub(crate) fn of_request(parts: &mut http::request::Parts) -> Result<RequestHead, HeadError> {
        if parts.method == Method::CONNECT {
            return Err(HeadError::Connect);
        }
        let mut hosts = parts.headers.get_all(header::HOST).iter();
        let field = match (hosts.next(), hosts.next()) {
            (_, Some(_)) => return Err(HeadError::Bad("exactly one Host header is required")),
            (field, None) => field,
        };
        let raw_host = match (parts.uri.authority(), field) {
            (Some(authority), Some(field))
                if !field
                    .as_bytes()
                    .eq_ignore_ascii_case(authority.as_str().as_bytes()) =>
            {
                return Err(HeadError::Bad("the host field disagrees with :authority"));
            }
            (Some(authority), _) => HeaderValue::from_str(authority.as_str())
                .map_err(|_| HeadError::Bad("malformed :authority"))?,
            (None, Some(field)) => field.clone(),
            (None, None) => return Err(HeadError::Bad("a request needs :authority or Host")),
        };
        let host =
            parse_host(raw_host.as_bytes()).map_err(|_| HeadError::Bad("malformed authority"))?;
        let target = parts
            .uri
            .path_and_query()
            .map_or_else(|| "/".to_string(), |pq| pq.as_str().to_string());
        let framing = match parts.headers.get(header::CONTENT_LENGTH) {
            Some(_) => body_framing(&parts.headers)?,
            None => Framing::Chunked,
        };
        let upgrade = parts.headers.contains_key(header::UPGRADE);
        Ok(RequestHead {
            method: parts.method.clone(),
            target,
            version: parts.version,
            headers: std::mem::take(&mut parts.headers),
            host,
            raw_host,
            framing,
            keep_alive: true,
            upgrade,
            expect_continue: false,
            len: 0,
        })
    }
}

fn collect_headers(fields: &[httparse::Header<'_>]) -> Result<HeaderMap, HeadError> {
    let mut headers = HeaderMap::with_capacity(fields.len());
    for field in fields {
        let name = HeaderName::from_bytes(field.name.as_bytes())
            .map_err(|_| HeadError::Bad("invalid header name"))?;
        let value = HeaderValue::from_bytes(field.value)
            .map_err(|_| HeadError::Bad("invalid header value"))?;
        headers.append(name, value);
    }
    Ok(headers)
}

fn single_host(headers: &HeaderMap) -> Result<(Host, HeaderValue), HeadError> {
    let mut hosts = headers.get_all(header::HOST).iter();
    let (Some(raw), None) = (hosts.next(), hosts.next()) else {
        return Err(HeadError::Bad("exactly one Host header is required"));
    };
    let host = parse_host(raw.as_bytes()).map_err(|_| HeadError::Bad("malformed Host header"))?;
    Ok((host, raw.clone()))
}

/// Reduces the request target to origin form, checking an absolute-form authority against Host.
fn origin_form(target: &str, host: &Host) -> Result<String, HeadError> {
    if target.starts_with('/') {
        return Ok(target.to_string());
    }
    if target == "*" {
        return Ok(target.to_string());
    }
    let uri: http::Uri = target
        .parse()
        .map_err(|_| HeadError::Bad("malformed request target"))?;
    let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        return Err(HeadError::Bad("malformed request target"));
    };
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return Err(HeadError::Bad("unsupported scheme in request target"));
    }
    let target_host = parse_host(authority.as_str().as_bytes())
        .map_err(|_| HeadError::Bad("malformed authority in request target"))?;
    if target_host.name != host.name || target_host.port != host.port {
        return Err(HeadError::Bad(
            "request target authority does not match Host",
        ));
    }
    Ok(uri
        .path_and_query()
        .map_or_else(|| "/".to_string(), |pq| pq.as_str().to_string()))
}

fn body_framing(headers: &HeaderMap) -> Result<Framing, HeadError> {
    let has_te = headers.contains_key(header::TRANSFER_ENCODING);
    let mut lengths = headers.get_all(header::CONTENT_LENGTH).iter().peekable();
    if has_te && lengths.peek().is_some() {
        return Err(HeadError::Bad(
            "Content-Length and Transfer-Encoding together",
        ));
    }
    if has_te {
        let mut codings = headers.get_all(header::TRANSFER_ENCODING).iter();
        let only_chunked = codings
            .next()
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"chunked"))
            && codings.next().is_none();
        return if only_chunked {
            Ok(Framing::Chunked)
        } else {
            Err(HeadError::UnsupportedCoding)
        };
    }
    let mut length = None;
    for value in lengths {
        // A list such as `5, 5` is as ambiguous as two fields: each must be one equal number.
        let text = value
            .to_str()
            .map_err(|_| HeadError::Bad("invalid Content-Length"))?;
        for part in text.split(',') {
            let part = part.trim();
            if part.is_empty() || part.len() > 19 || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(HeadError::Bad("invalid Content-Length"));
            }
            let n: u64 = part
                .parse()
                .map_err(|_| HeadError::Bad("invalid Content-Length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(HeadError::Bad("conflicting Content-Length values"));
            }
            length = Some(n);
        }
    }
    Ok(match length {
        Some(0) | None => Framing::Empty,
        Some(n) => Framing::Length(n),
    })
}

/// Lowercase-insensitive tokens of every `Connection` header.
pub(crate) fn connection_tokens(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAX: usize = 32 * 1024;

    fn parse(raw: &str) -> Result<Option<RequestHead>, HeadError> {
        parse_head(raw.as_bytes(), MAX)
    }

    fn ok(raw: &str) -> RequestHead {
        parse(raw).expect("valid").expect("complete")
    }

    #[test]
    fn parses_a_simple_head() {
        let head = ok("GET /x?y=1 HTTP/1.1\r\nHost: Demo.Localhost:8080\r\n\r\nBODY");
        assert_eq!(head.method, Method::GET);
        assert_eq!(head.target, "/x?y=1");
        assert_eq!(head.host.name, "demo.localhost");
        assert_eq!(head.host.port, Some(8080));
        assert_eq!(head.framing, Framing::Empty);
        assert!(head.keep_alive);
        assert_eq!(
            head.len,
            "GET /x?y=1 HTTP/1.1\r\nHost: Demo.Localhost:8080\r\n\r\n".len()
        );
    }

    #[test]
    fn every_prefix_of_a_head_is_incomplete() {
        let raw = "POST /upload HTTP/1.1\r\nHost: demo.localhost\r\nContent-Length: 5\r\n\r\n";
        for cut in 0..raw.len() {
            assert!(matches!(parse(&raw[..cut]), Ok(None)), "cut at {cut}");
        }
        assert_eq!(ok(raw).framing, Framing::Length(5));
    }

    #[test]
    fn refuses_ambiguous_and_malformed_heads() {
        let cases: &[(&str, HeadError)] = &[
            (
                "GET / HTTP/1.1\r\nHost: a.localhost\r\nHost: b.localhost\r\n\r\n",
                HeadError::Bad("exactly one Host header is required"),
            ),
            (
                "GET / HTTP/1.1\r\n\r\n",
                HeadError::Bad("exactly one Host header is required"),
            ),
            (
                "GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
                HeadError::Bad("malformed Host header"),
            ),
            (
                "GET / HTTP/1.1\r\nHost: a..localhost\r\n\r\n",
                HeadError::Bad("malformed Host header"),
            ),
            (
                "POST / HTTP/1.1\r\nHost: a.localhost\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
                HeadError::Bad("Content-Length and Transfer-Encoding together"),
            ),
            (
                "POST / HTTP/1.1\r\nHost: a.localhost\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
                HeadError::Bad("conflicting Content-Length values"),
            ),
            (
                "POST / HTTP/1.1\r\nHost: a.localhost\r\nContent-Length: -1\r\n\r\n",
                HeadError::Bad("invalid Content-Length"),
            ),
            (
                "POST / HTTP/1.1\r\nHost: a.localhost\r\nTransfer-Encoding: gzip\r\n\r\n",
                HeadError::UnsupportedCoding,
            ),
            (
                "GET http://b.localhost/ HTTP/1.1\r\nHost: a.localhost\r\n\r\n",
                HeadError::Bad("request target authority does not match Host"),
            ),
            (
                "CONNECT a.localhost:443 HTTP/1.1\r\nHost: a.localhost\r\n\r\n",
                HeadError::Connect,
            ),
            ("GARBAGE\r\n\r\n", HeadError::Bad("malformed request head")),
        ];
        assert!(!cases.is_empty());
        for (raw, want) in cases {
            assert_eq!(parse(raw).err().as_ref(), Some(want), "{raw:?}");
        }
    }

    #[test]
    fn absolute_form_with_matching_authority_becomes_origin_form() {
        let head = ok("GET http://a.localhost:8080/p?q HTTP/1.1\r\nHost: A.localhost:8080\r\n\r\n");
        assert_eq!(head.target, "/p?q");
    }

    #[test]
    fn equal_repeated_lengths_are_accepted() {
        let head = ok("POST / HTTP/1.1\r\nHost: a.localhost\r\nContent-Length: 7, 7\r\n\r\n");
        assert_eq!(head.framing, Framing::Length(7));
    }

    #[test]
    fn oversized_heads_are_refused_complete_or_not() {
        let big = format!(
            "GET / HTTP/1.1\r\nHost: a.localhost\r\nX: {}\r\n\r\n",
            "a".repeat(MAX)
        );
        assert_eq!(parse(&big).err(), Some(HeadError::TooLarge));
        assert_eq!(parse(&big[..MAX + 10]).err(), Some(HeadError::TooLarge));
        let many: String = (0..MAX_HEADERS + 1)
            .map(|i| format!("X-{i}: v\r\n"))
            .collect();
        let raw = format!("GET / HTTP/1.1\r\nHost: a.localhost\r\n{many}\r\n");
        assert_eq!(parse(&raw).err(), Some(HeadError::TooLarge));
    }

    #[test]
    fn http10_gets_no_codings_upgrades_or_continue() {
        // Issue 11, item 7.
        let te = ok(
            "POST / HTTP/1.0\r\nHost: a.localhost\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        assert!(!te.keep_alive, "closes after the response");
        let ws = ok(
            "GET / HTTP/1.0\r\nHost: a.localhost\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
        );
        assert!(!ws.upgrade);
        let cont = ok(
            "POST / HTTP/1.0\r\nHost: a.localhost\r\nContent-Length: 1\r\nExpect: 100-continue\r\n\r\n",
        );
        assert!(!cont.expect_continue);
    }

    #[test]
    fn keep_alive_follows_version_and_connection() {
        assert!(!ok("GET / HTTP/1.1\r\nHost: a.localhost\r\nConnection: close\r\n\r\n").keep_alive);
        assert!(!ok("GET / HTTP/1.0\r\nHost: a.localhost\r\n\r\n").keep_alive);
        assert!(
            ok("GET / HTTP/1.0\r\nHost: a.localhost\r\nConnection: Keep-Alive\r\n\r\n").keep_alive
        );
        let ws = ok(
            "GET / HTTP/1.1\r\nHost: a.localhost\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n",
        );
        assert!(ws.upgrade);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = parse_head(&data, 1024);
        }

        #[test]
        fn header_soup_never_panics(lines in proptest::collection::vec("[ -~]{0,40}", 0..20)) {
            let raw = format!("GET / HTTP/1.1\r\n{}\r\n\r\n", lines.join("\r\n"));
            let _ = parse_head(raw.as_bytes(), 4096);
        }
    }
}
