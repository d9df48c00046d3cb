//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`, never on in a release):
//! each runs the real parser or the real session over in-memory pipes and panics when an
//! invariant breaks, so the fuzzer reports it as a crash. Nothing but `fuzz/` may use this
//! module; it is here because the code it drives is private to the crate.
//!
//! - Parsers: [`frame_codec`], [`request_head`], [`chunked`], [`response`], [`proxy_header`],
//!   [`client_hello`], [`names`], [`signed_token`], [`jwt`].
//! - Stateful: [`session::control_session`] (a script of client frames against a control
//!   session) and [`visitor::visitor_connection`] (visitor bytes through the HTTP edge to a
//!   target that checks it only ever receives whole, well-framed requests).
//! - Differential: [`visitor::http1_differential`] (the edge's idea of where each request ends
//!   against hyper's).

pub mod session;
pub mod visitor;

use std::sync::LazyLock;

use bytes::BytesMut;
use showoff_proto::{ClientMessage, FrameCodec, ServerMessage};
use tokio_util::codec::{Decoder, Encoder};

use crate::auth::jwt::Jwt;
use crate::auth::{NamePattern, Principal};
use crate::config::{JwtConfig, JwtKey, NamePolicy, Secret};
use crate::edge::http::body::{ChunkedDecoder, Decoded};
use crate::edge::http::head::parse_head;
use crate::edge::http::response::{Asked, parse_response};
use crate::edge::https::{Hello, client_hello_sni};
use crate::listen::proxy_protocol::{Scan, scan};

/// The head size cap the targets use (the server's default).
const MAX_HEAD: usize = crate::config::DEFAULT_MAX_HEADER_BYTES;

/// Control and data frames (a length prefix and JSON), both directions: decoding never
/// panics, and a frame that decodes re-encodes to one that decodes to the same message.
pub fn frame_codec(data: &[u8]) {
    let mut buf = BytesMut::from(data);
    let mut server_side = FrameCodec::<ClientMessage, ServerMessage>::new();
    while let Ok(Some(message)) = server_side.decode(&mut buf) {
        let mut client_side = FrameCodec::<ServerMessage, ClientMessage>::new();
        let mut encoded = BytesMut::new();
        client_side
            .encode(message.clone(), &mut encoded)
            .expect("a decoded frame encodes");
        let again = server_side
            .decode(&mut encoded)
            .expect("decodes")
            .expect("whole");
        assert_eq!(again, message);
    }
    let mut buf = BytesMut::from(data);
    let mut client_side = FrameCodec::<ServerMessage, ClientMessage>::new();
    while let Ok(Some(_)) = client_side.decode(&mut buf) {}
}

/// A request head: a head that parses says how long it was, and the same bytes cut at that
/// length parse to the same request.
pub fn request_head(data: &[u8]) {
    let Ok(Some(head)) = parse_head(data, MAX_HEAD) else {
        return;
    };
    assert!(head.len <= data.len(), "a head longer than its input");
    let again = parse_head(&data[..head.len], MAX_HEAD)
        .expect("the same head parses twice")
        .expect("the head is complete at its own length");
    assert_eq!(
        (&again.method, &again.target, again.framing, again.len),
        (&head.method, &head.target, head.framing, head.len)
    );
}

/// A chunked body, decoded in one piece and in pieces cut where the first byte says: both
/// give the same body bytes, the same end and the same error.
pub fn chunked(data: &[u8]) {
    let Some((&step, body)) = data.split_first() else {
        return;
    };
    let whole = decode_chunked(body, body.len().max(1));
    let pieces = decode_chunked(body, usize::from(step % 16) + 1);
    assert_eq!(
        whole, pieces,
        "the decoder depends on how the input was cut"
    );
}

/// What decoding a chunked body gave: the body, where it ended, or that it failed.
#[derive(Debug, PartialEq, Eq)]
struct ChunkedOutcome {
    body: Vec<u8>,
    /// Bytes of input consumed when the body ended.
    end: Option<usize>,
    error: bool,
}

fn decode_chunked(input: &[u8], step: usize) -> ChunkedOutcome {
    let mut decoder = ChunkedDecoder::default();
    let mut buf = BytesMut::new();
    let mut fed = 0;
    let mut outcome = ChunkedOutcome {
        body: Vec::new(),
        end: None,
        error: false,
    };
    loop {
        match decoder.decode(&mut buf) {
            Ok(Decoded::Data(bytes)) => outcome.body.extend_from_slice(&bytes),
            Ok(Decoded::End) => {
                outcome.end = Some(fed - buf.len());
                return outcome;
            }
            Ok(Decoded::NeedMore) if fed < input.len() => {
                let next = (fed + step).min(input.len());
                buf.extend_from_slice(&input[fed..next]);
                fed = next;
            }
            Ok(Decoded::NeedMore) => return outcome,
            Err(_) => {
                outcome.error = true;
                return outcome;
            }
        }
    }
}

/// An upstream response head, for every combination of what the visitor asked: the head
/// Showoff writes to the visitor is itself a valid HTTP/1.1 response head.
pub fn response(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let asked = Asked {
        head_method: flags & 1 != 0,
        visitor_http11: flags & 2 != 0,
        visitor_keep_alive: flags & 4 != 0,
        upgrade: flags & 8 != 0,
    };
    let Ok(Some(parsed)) = parse_response(rest, asked) else {
        return;
    };
    assert!(parsed.len <= rest.len(), "a head longer than its input");
    let mut fields = [httparse::EMPTY_HEADER; 160];
    let mut written = httparse::Response::new(&mut fields);
    let status = written
        .parse(&parsed.visitor_head)
        .unwrap_or_else(|e| panic!("the visitor's head does not parse: {e}"));
    assert!(status.is_complete(), "the visitor's head is incomplete");
    assert_eq!(written.code, Some(parsed.status));
}

/// A PROXY protocol v1/v2 header: a header that parses fits in its input and parses the same
/// at its own length.
pub fn proxy_header(data: &[u8]) {
    if let Scan::Header { len, source } = scan(data) {
        assert!(len <= data.len(), "a header longer than its input");
        match scan(&data[..len]) {
            Scan::Header {
                len: again,
                source: same,
            } => {
                assert_eq!((again, same), (len, source));
            }
            other => panic!("the header at its own length scans as {other:?}"),
        }
    }
}

/// A TLS ClientHello (one or several records): once complete, more bytes behind it change
/// nothing.
pub fn client_hello(data: &[u8]) {
    if let Hello::Complete(sni) = client_hello_sni(data) {
        let mut longer = data.to_vec();
        longer.extend_from_slice(b"\x16\x03\x01\x00\x01\x01");
        assert_eq!(client_hello_sni(&longer), Hello::Complete(sni));
    }
}

/// Host values and tunnel names: a name the naming rules accept is a valid lowercase DNS
/// label, and a parsed host is lowercase without a trailing dot.
pub fn names(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (pattern, name) = text.split_once('\n').unwrap_or(("*", &text));
    let principal = Principal {
        names: vec![NamePattern::new(pattern)],
        ..Principal::unrestricted("fuzz")
    };
    let policy = NamePolicy {
        allow: vec![NamePattern::new("*")],
        reserved: vec!["www".into()],
        banned: vec!["admin".into()],
    };
    if crate::state::names::check_name(&policy, &principal, name).is_ok() {
        showoff_proto::host::validate_name(name).expect("an accepted name is a valid label");
        assert!(principal.may_use_name(name) && name != "www" && name != "admin");
    }
    if let Ok(host) = showoff_proto::host::parse_host(data) {
        assert!(!host.name.ends_with('.') && host.name == host.name.to_ascii_lowercase());
    }
}

/// A signed token around any payload: the payload parser never panics, and a token that
/// verifies says what its payload said.
pub fn signed_token(data: &[u8]) {
    let secret = Secret::new("fuzzing-secret");
    let tokens = crate::auth::signed::SignedTokens::new(&secret);
    let _ = tokens.verify(&String::from_utf8_lossy(data), 0);
    let token = crate::auth::signed::sign_payload(&secret, data);
    if let Ok(claims) = tokens.verify(&token, 0) {
        let again = crate::auth::signed::sign(&secret, &claims);
        assert_eq!(tokens.verify(&again, 0).ok(), Some(claims));
    }
}

/// The HS256 secret of the [`jwt`] target.
const JWT_SECRET: &str = "fuzzing-jwt-secret";

static JWT: LazyLock<Jwt> = LazyLock::new(|| {
    Jwt::new(&JwtConfig {
        key: JwtKey::Secret(Secret::new(JWT_SECRET)),
        issuer: Some("showoff-fuzz".into()),
        audience: None,
        names_claim: "names".into(),
    })
    .expect("an HS256 verifier")
});

/// JWT verification: raw tokens, and tokens correctly signed around any JSON claims, so the
/// claim checks and the names claim parser are reached. An accepted token's principal is
/// `jwt:`-prefixed.
pub fn jwt(data: &[u8]) {
    let _ = JWT.verify(&String::from_utf8_lossy(data));
    let Ok(claims) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let key = jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes());
    let Ok(token) = jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key) else {
        return;
    };
    if let Ok(principal) = JWT.verify(&token) {
        assert!(principal.id.starts_with("jwt:"), "{}", principal.id);
    }
}
