//! What goes on the wire towards the target and back: the request head re-encoded for the
//! target (hop-by-hop headers out, `X-Forwarded-*` set, `Host` per tunnel policy, framing
//! restated) and body bytes in the visitor's framing.

use bytes::BytesMut;
use http::header::{self, HeaderName};
use showoff_core::TraceHeaders;
use showoff_proto::{HostHeader, TunnelSpec};

use super::body::Framing;
use super::head::{self, RequestHead};
use super::response::VisitorFraming;
use crate::edge::forwarded::{Forwarded, PEER_CHAIN, PEER_HOST, PEER_PROTO, PEER_VISITOR};

/// Request headers that never reach the target: hop-by-hop (RFC 9110 §7.6.1), or re-stated by
/// Showoff (framing, `Host`, `Expect`, untrusted `X-Forwarded-*`, the peer headers).
pub(crate) const NOT_FORWARDED: [HeaderName; 18] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::CONTENT_LENGTH,
    header::EXPECT,
    header::HOST,
    HeaderName::from_static("x-forwarded-for"),
    HeaderName::from_static("x-forwarded-proto"),
    HeaderName::from_static("x-forwarded-host"),
    HeaderName::from_static(PEER_VISITOR),
    HeaderName::from_static(PEER_CHAIN),
    HeaderName::from_static(PEER_PROTO),
    HeaderName::from_static(PEER_HOST),
];

/// The W3C trace headers: when Showoff traces, the visitor's are replaced by the span of the
/// hop that sends the request (see [`showoff_core::trace`]); otherwise they pass untouched.
const TRACE_HEADERS: [HeaderName; 2] = [
    HeaderName::from_static("traceparent"),
    HeaderName::from_static("tracestate"),
];

fn put_trace(out: &mut BytesMut, trace: Option<&TraceHeaders>) {
    if let Some(trace) = trace {
        put_header(out, "traceparent", trace.traceparent.as_bytes());
        if let Some(state) = &trace.tracestate {
            put_header(out, "tracestate", state.as_bytes());
        }
    }
}

/// The request head as forwarded to the instance that holds its tunnel: the visitor's head as
/// received (that instance applies the tunnel's rules and policy), framing restated, and what
/// this instance decided about the visitor in the peer headers.
pub(crate) fn encode_forward(
    head: &RequestHead,
    forwarded: &Forwarded,
    trace: Option<&TraceHeaders>,
) -> BytesMut {
    let mut out = BytesMut::with_capacity(head.len + 192);
    out.extend_from_slice(head.method.as_str().as_bytes());
    out.extend_from_slice(b" ");
    out.extend_from_slice(head.target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let restated = [
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
        header::EXPECT,
        HeaderName::from_static(PEER_VISITOR),
        HeaderName::from_static(PEER_CHAIN),
        HeaderName::from_static(PEER_PROTO),
        HeaderName::from_static(PEER_HOST),
    ];
    for (name, value) in &head.headers {
        let retraced = trace.is_some() && TRACE_HEADERS.contains(name);
        if !restated.contains(name) && !retraced {
            put_header(&mut out, name.as_str(), value.as_bytes());
        }
    }
    put_trace(&mut out, trace);
    put_header(
        &mut out,
        PEER_VISITOR,
        forwarded.visitor.to_string().as_bytes(),
    );
    put_header(&mut out, PEER_CHAIN, forwarded.chain.as_bytes());
    put_header(&mut out, PEER_PROTO, forwarded.proto.as_bytes());
    if let Some(host) = &forwarded.host {
        put_header(&mut out, PEER_HOST, host.as_bytes());
    }
    match head.framing {
        Framing::Empty => {}
        Framing::Length(n) => put_header(&mut out, "content-length", n.to_string().as_bytes()),
        Framing::Chunked => put_header(&mut out, "transfer-encoding", b"chunked"),
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// The request head sent to the target.
pub(crate) fn encode_request(
    head: &RequestHead,
    spec: &TunnelSpec,
    forwarded: &Forwarded,
    trace: Option<&TraceHeaders>,
) -> BytesMut {
    let mut out = BytesMut::with_capacity(head.len + 128);
    out.extend_from_slice(head.method.as_str().as_bytes());
    out.extend_from_slice(b" ");
    out.extend_from_slice(head.target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let connection = head::connection_tokens(&head.headers);
    for (name, value) in &head.headers {
        let named_by_connection =
            connection.iter().any(|t| t == name.as_str()) && name != header::UPGRADE;
        let dropped_upgrade = name == header::UPGRADE && !head.upgrade;
        // Credentials for Showoff's own basic auth are not the target's business.
        let consumed_auth = name == header::AUTHORIZATION && spec.visitors.basic_auth.is_some();
        let retraced = trace.is_some() && TRACE_HEADERS.contains(name);
        if NOT_FORWARDED.contains(name)
            || named_by_connection
            || dropped_upgrade
            || consumed_auth
            || retraced
        {
            continue;
        }
        put_header(&mut out, name.as_str(), value.as_bytes());
    }
    let host = match &spec.host_header {
        HostHeader::Preserve => head.raw_host.as_bytes(),
        HostHeader::Rewrite if !spec.target.is_empty() => spec.target.as_bytes(),
        HostHeader::Value(value) if !value.is_empty() => value.as_bytes(),
        _ => head.raw_host.as_bytes(),
    };
    put_header(&mut out, "host", host);
    put_header(&mut out, "x-forwarded-for", forwarded.chain.as_bytes());
    put_header(&mut out, "x-forwarded-proto", forwarded.proto.as_bytes());
    let forwarded_host = match &forwarded.host {
        Some(host) => host.as_bytes(),
        None => head.raw_host.as_bytes(),
    };
    put_header(&mut out, "x-forwarded-host", forwarded_host);
    put_trace(&mut out, trace);
    match head.framing {
        Framing::Empty => {}
        Framing::Length(n) => put_header(&mut out, "content-length", n.to_string().as_bytes()),
        Framing::Chunked => put_header(&mut out, "transfer-encoding", b"chunked"),
    }
    if head.upgrade {
        put_header(&mut out, "connection", b"upgrade");
    }
    out.extend_from_slice(b"\r\n");
    out
}

fn put_header(out: &mut BytesMut, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Appends body bytes in the visitor's framing.
pub(super) fn encode_body(out: &mut BytesMut, data: &[u8], framing: VisitorFraming) {
    if data.is_empty() {
        return;
    }
    if framing == VisitorFraming::Chunked {
        out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    } else {
        out.extend_from_slice(data);
    }
}

/// Appends the end of a chunked body.
pub(super) fn finish_body(out: &mut BytesMut, framing: VisitorFraming) {
    if framing == VisitorFraming::Chunked {
        out.extend_from_slice(b"0\r\n\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge::forwarded::forwarded;
    use crate::edge::http::head::parse_head;
    use showoff_proto::TunnelKind;

    fn head(raw: &str) -> RequestHead {
        parse_head(raw.as_bytes(), 32 * 1024)
            .expect("valid")
            .expect("complete")
    }

    fn spec(policy: HostHeader) -> TunnelSpec {
        TunnelSpec {
            upstream: Default::default(),
            kind: TunnelKind::Http,
            name: None,
            port: None,
            host_header: policy,
            target: "127.0.0.1:3000".into(),
            visitors: Default::default(),
        }
    }

    fn peer() -> Forwarded {
        forwarded(
            &http::HeaderMap::new(),
            "203.0.113.7".parse().expect("ip"),
            "http",
            &crate::config::ProxyConfig::default(),
        )
    }

    /// The encoded request as (request line, lowercase headers).
    fn sent(h: &RequestHead, policy: HostHeader) -> (String, Vec<(String, String)>) {
        let bytes = encode_request(h, &spec(policy), &peer(), None);
        let text = String::from_utf8(bytes.to_vec()).expect("utf8");
        assert!(text.ends_with("\r\n\r\n"), "{text}");
        let mut lines = text.trim_end().split("\r\n");
        let first = lines.next().expect("request line").to_string();
        let headers = lines
            .map(|l| {
                let (n, v) = l.split_once(": ").expect("header");
                (n.to_ascii_lowercase(), v.to_string())
            })
            .collect();
        (first, headers)
    }

    fn value<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn requests_are_sanitised_for_the_target() {
        let h = head(
            "GET /p?q HTTP/1.1\r\nHost: demo.localhost:8080\r\nConnection: keep-alive, X-Secret\r\n\
             X-Secret: 1\r\nKeep-Alive: 5\r\nProxy-Authorization: x\r\nX-Forwarded-For: 6.6.6.6\r\n\
             Upgrade: websocket\r\nAccept: */*\r\nExpect: 100-continue\r\n\r\n",
        );
        let (line, headers) = sent(&h, HostHeader::Preserve);
        assert_eq!(line, "GET /p?q HTTP/1.1");
        assert_eq!(value(&headers, "host"), Some("demo.localhost:8080"));
        assert_eq!(
            value(&headers, "x-forwarded-for"),
            Some("203.0.113.7"),
            "untrusted XFF replaced"
        );
        assert_eq!(value(&headers, "x-forwarded-proto"), Some("http"));
        assert_eq!(
            value(&headers, "x-forwarded-host"),
            Some("demo.localhost:8080")
        );
        assert_eq!(value(&headers, "accept"), Some("*/*"));
        for gone in [
            "connection",
            "x-secret",
            "keep-alive",
            "proxy-authorization",
            "upgrade",
            "expect",
        ] {
            assert_eq!(value(&headers, gone), None, "{gone} must be removed");
        }
        assert_eq!(
            headers
                .iter()
                .filter(|(n, _)| n == "x-forwarded-for")
                .count(),
            1
        );
    }

    #[test]
    fn trace_headers_pass_untouched_when_off_and_are_replaced_when_on() {
        let h = head(
            "GET / HTTP/1.1\r\nHost: a.localhost\r\n\
             traceparent: 00-11111111111111111111111111111111-2222222222222222-01\r\n\
             tracestate: visitor=1\r\n\r\n",
        );
        let (_, off) = sent(&h, HostHeader::Preserve);
        assert_eq!(
            value(&off, "traceparent"),
            Some("00-11111111111111111111111111111111-2222222222222222-01")
        );
        assert_eq!(value(&off, "tracestate"), Some("visitor=1"));
        let ours = TraceHeaders {
            traceparent: "00-33333333333333333333333333333333-4444444444444444-01".into(),
            tracestate: None,
        };
        let bytes = encode_request(&h, &spec(HostHeader::Preserve), &peer(), Some(&ours));
        let text = String::from_utf8(bytes.to_vec()).expect("utf8");
        assert_eq!(text.matches("traceparent").count(), 1, "{text}");
        assert!(text.contains(&format!("traceparent: {}\r\n", ours.traceparent)));
        assert!(!text.contains("tracestate"), "{text}");
        let forwarded = encode_forward(&h, &peer(), Some(&ours));
        let text = String::from_utf8(forwarded.to_vec()).expect("utf8");
        assert_eq!(text.matches("traceparent").count(), 1, "{text}");
        assert!(text.contains(&ours.traceparent));
    }

    #[test]
    fn host_policy_is_applied() {
        let h = head("GET / HTTP/1.1\r\nHost: demo.localhost\r\n\r\n");
        assert_eq!(
            value(&sent(&h, HostHeader::Rewrite).1, "host"),
            Some("127.0.0.1:3000")
        );
        assert_eq!(
            value(&sent(&h, HostHeader::Value("app.test".into())).1, "host"),
            Some("app.test")
        );
    }

    #[test]
    fn framing_is_restated_and_upgrades_keep_their_headers() {
        let h = head("POST / HTTP/1.1\r\nHost: a.localhost\r\nContent-Length: 7\r\n\r\n");
        assert_eq!(
            value(&sent(&h, HostHeader::Preserve).1, "content-length"),
            Some("7")
        );
        let h = head("POST / HTTP/1.1\r\nHost: a.localhost\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(
            value(&sent(&h, HostHeader::Preserve).1, "transfer-encoding"),
            Some("chunked")
        );
        let h = head(
            "GET /ws HTTP/1.1\r\nHost: a.localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        );
        let (_, headers) = sent(&h, HostHeader::Preserve);
        assert_eq!(value(&headers, "upgrade"), Some("websocket"));
        assert_eq!(value(&headers, "connection"), Some("upgrade"));
    }

    #[test]
    fn bodies_are_framed_for_the_visitor() {
        let mut out = BytesMut::new();
        encode_body(&mut out, b"hello", VisitorFraming::Chunked);
        finish_body(&mut out, VisitorFraming::Chunked);
        assert_eq!(&out[..], b"5\r\nhello\r\n0\r\n\r\n");
        let mut raw = BytesMut::new();
        encode_body(&mut raw, b"hello", VisitorFraming::Raw);
        finish_body(&mut raw, VisitorFraming::Raw);
        assert_eq!(&raw[..], b"hello");
    }
}
