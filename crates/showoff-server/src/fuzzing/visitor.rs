//! A visitor connection through the real HTTP edge, and the edge's request boundaries against
//! hyper's.
//!
//! [`visitor_connection`] feeds arbitrary bytes to the edge as one visitor connection. The
//! tunnel's target is scripted: it parses what reaches it with a strict reference parser and
//! answers each request. The invariant: the target only ever receives whole, well-framed
//! requests (the last one may be cut short when the visitor stopped) — never bytes the edge
//! did not parse as a request.
//!
//! [`http1_differential`] splits the same bytes into requests twice, with the edge's parser and
//! chunked decoder and with hyper's HTTP/1.1 server: where both accept a request, both must
//! agree on its method and where its body ends, or one of them could be smuggled past the other.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::BytesMut;
use http_body_util::BodyExt;
use showoff_core::{OpenError, StreamMeta, StreamOpener, TunnelStream};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use crate::edge::http::body::{ChunkedDecoder, Decoded, Framing};
use crate::edge::http::head::parse_head;
use crate::edge::http::{Conn, Scheme};

/// Longest a fuzz input may keep the paused clock running.
const DEADLINE: Duration = Duration::from_secs(3600);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime")
}

/// What the scripted target saw.
#[derive(Default)]
struct Seen {
    /// A violation: bytes that are not a whole, well-framed request.
    broken: Option<String>,
}

/// Opens a stream to a scripted target task per visitor request.
struct Scripted(Arc<Mutex<Seen>>);

#[async_trait]
impl StreamOpener for Scripted {
    async fn open(&self, _meta: &StreamMeta) -> Result<TunnelStream, OpenError> {
        let (edge, target) = tokio::io::duplex(64 * 1024);
        tokio::spawn(serve_target(target, self.0.clone()));
        Ok(TunnelStream::boxed(BytesMut::new(), edge))
    }
}

async fn serve_target(mut io: DuplexStream, seen: Arc<Mutex<Seen>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match reference_request(&buf) {
            Ok(Some(len)) => {
                buf.drain(..len);
                let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                if io.write_all(answer).await.is_err() {
                    return;
                }
                continue;
            }
            Ok(None) => {}
            Err(why) => {
                let text = String::from_utf8_lossy(&buf[..buf.len().min(200)]).into_owned();
                let mut seen = seen.lock().expect("seen");
                seen.broken.get_or_insert(format!("{why}: {text:?}"));
                return;
            }
        }
        match io.read(&mut chunk).await {
            Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return,
        }
    }
}

/// The strict reading of what the edge sends a target: one request head (httparse, no
/// leniency), then a body framed by digits-only `Content-Length` or canonical chunks (hex size,
/// CRLF, data, CRLF; `0`, CRLF, CRLF at the end). `Ok(None)`: incomplete.
fn reference_request(buf: &[u8]) -> Result<Option<usize>, &'static str> {
    let mut fields = [httparse::EMPTY_HEADER; 160];
    let mut request = httparse::Request::new(&mut fields);
    let head = match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err("not a request head"),
    };
    let field = |name: &str| {
        let mut values = request
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name));
        values.next().map(|h| (h.value, values.next().is_some()))
    };
    let body = &buf[head..];
    let length = match (field("content-length"), field("transfer-encoding")) {
        (Some(_), Some(_)) => return Err("both Content-Length and Transfer-Encoding"),
        (Some((_, true)), None) => return Err("two Content-Length fields"),
        (Some((value, false)), None) => {
            if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
                return Err("a Content-Length that is not digits");
            }
            let n: usize = std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.parse().ok())
                .ok_or("an oversized Content-Length")?;
            return Ok((body.len() >= n).then_some(head + n));
        }
        (None, Some((value, false))) if value.eq_ignore_ascii_case(b"chunked") => {
            canonical_chunks(body)?
        }
        (None, Some(_)) => return Err("a transfer coding other than chunked"),
        (None, None) => Some(0),
    };
    Ok(length.map(|n| head + n))
}

/// Length of a canonically chunked body at the start of `body`, `None` when incomplete.
fn canonical_chunks(body: &[u8]) -> Result<Option<usize>, &'static str> {
    let mut at = 0;
    loop {
        let Some(end) = body[at..].windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let line = &body[at..at + end];
        if line.is_empty() || !line.iter().all(u8::is_ascii_hexdigit) {
            return Err("a chunk-size line that is not bare hex");
        }
        let size = usize::from_str_radix(std::str::from_utf8(line).map_err(|_| "hex")?, 16)
            .map_err(|_| "an oversized chunk")?;
        at += end + 2;
        if size == 0 {
            return match body.get(at..at + 2) {
                None => Ok(None),
                Some(b"\r\n") => Ok(Some(at + 2)),
                Some(_) => Err("trailers or garbage after the last chunk"),
            };
        }
        match body.get(at + size..at + size + 2) {
            None => return Ok(None),
            Some(b"\r\n") => at += size + 2,
            Some(_) => return Err("chunk data not followed by CRLF"),
        }
    }
}

/// Feeds `data` to the HTTP edge as one visitor connection (see the module's invariant).
pub fn visitor_connection(data: &[u8]) {
    let (_, broken) = runtime().block_on(through_edge(data));
    if let Some(broken) = broken {
        panic!("the target received what the edge did not parse as a request: {broken}");
    }
}

/// What the visitor read back, and the target's complaint if it got something broken.
async fn through_edge(data: &[u8]) -> (Vec<u8>, Option<String>) {
    let ctx = crate::edge::tests::context();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut tunnel = crate::state::tunnel::tests::tunnel("demo", "s1", "fuzz");
    tunnel.opener = Arc::new(Scripted(seen.clone()));
    ctx.routes.insert(Arc::new(tunnel));
    let (mut visitor, edge) = tokio::io::duplex(64 * 1024);
    let peer: SocketAddr = ([192, 0, 2, 7], 50000).into();
    let conn = tokio::spawn(async move {
        Conn::new(edge, peer, BytesMut::new(), Scheme::Http, ctx)
            .run()
            .await;
    });
    let talk = async {
        let _ = visitor.write_all(data).await;
        let _ = visitor.shutdown().await;
        let mut answers = Vec::new();
        let _ = visitor.read_to_end(&mut answers).await;
        answers
    };
    let answers = tokio::time::timeout(DEADLINE, talk)
        .await
        .expect("the edge never finished with the visitor");
    tokio::time::timeout(DEADLINE, conn)
        .await
        .expect("the connection task never ended")
        .expect("the connection task panicked");
    let broken = seen.lock().expect("seen").broken.take();
    (answers, broken)
}

/// One request as a parser delimited it: method and body length.
type Delimited = (String, usize);

/// Splits `data` into requests with the edge's head parser and chunked decoder and with hyper;
/// both must agree wherever both accepted.
pub fn http1_differential(data: &[u8]) {
    let edge = edge_requests(data);
    let hyper = runtime().block_on(hyper_requests(data));
    for (i, (ours, strict)) in edge.iter().enumerate() {
        match hyper.get(i) {
            Some(theirs) => assert_eq!(
                ours, theirs,
                "request {i}: the edge and hyper disagree on where it ends"
            ),
            // The edge took a whole request where hyper saw none: a boundary hyper places
            // elsewhere (or a request hyper refuses) — unless hyper stops for its own reasons
            // (HTTP/1.0, an upgrade), which `strict` rules out.
            None if *strict => {
                panic!("request {i}: the edge took {ours:?} as a whole request, hyper did not")
            }
            None => return,
        }
    }
}

/// The requests the edge delimits, each with whether hyper must agree it is whole: HTTP/1.1,
/// no upgrade (after one hyper reads no further request) and a target hyper's URI parser takes.
fn edge_requests(data: &[u8]) -> Vec<(Delimited, bool)> {
    let mut out = Vec::new();
    let mut rest = data;
    while let Ok(Some(head)) = parse_head(rest, super::MAX_HEAD) {
        rest = &rest[head.len..];
        // hyper also refuses targets its URI parser does not take (a backtick, say) — a
        // difference of syntax, not of where the request ends.
        let strict = head.version == http::Version::HTTP_11
            && !head.upgrade
            && head.target.parse::<http::Uri>().is_ok();
        // (body bytes, input bytes the body took)
        let (body, used) = match head.framing {
            Framing::Empty => (0, 0),
            Framing::Length(n) => match usize::try_from(n) {
                Ok(n) if n <= rest.len() => (n, n),
                _ => break,
            },
            Framing::Chunked => {
                let mut decoder = ChunkedDecoder::default();
                let mut buf = BytesMut::from(rest);
                let mut body = 0;
                loop {
                    match decoder.decode(&mut buf) {
                        Ok(Decoded::Data(bytes)) => body += bytes.len(),
                        Ok(Decoded::End) => break,
                        Ok(Decoded::NeedMore) | Err(_) => return out,
                    }
                }
                (body, rest.len() - buf.len())
            }
        };
        rest = &rest[used..];
        out.push(((head.method.to_string(), body), strict));
        if !head.keep_alive || !strict {
            break;
        }
    }
    out
}

async fn hyper_requests(data: &[u8]) -> Vec<Delimited> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let service =
        hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
            let record = record.clone();
            async move {
                let method = request.method().to_string();
                let body = request.into_body().collect().await?.to_bytes().len();
                record.lock().expect("seen").push((method, body));
                Ok::<_, hyper::Error>(http::Response::new(
                    http_body_util::Empty::<bytes::Bytes>::new(),
                ))
            }
        });
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    // Half-close: the input ends with a shutdown, and pipelined requests behind it still count.
    // The edge's own field cap, so a head hyper refuses only for its count does not count.
    let connection = hyper::server::conn::http1::Builder::new()
        .half_close(true)
        .max_headers(128)
        .serve_connection(hyper_util::rt::TokioIo::new(server), service);
    let serve = tokio::spawn(connection);
    let talk = async {
        let _ = client.write_all(data).await;
        let _ = client.shutdown().await;
        let mut answers = Vec::new();
        let _ = client.read_to_end(&mut answers).await;
    };
    let _ = tokio::time::timeout(DEADLINE, talk).await;
    serve.abort();
    let _ = serve.await;
    seen.lock().expect("seen").clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_reach_the_scripted_target_and_are_answered() {
        let two = b"GET / HTTP/1.1\r\nhost: demo.localhost\r\n\r\n\
                    POST /u HTTP/1.1\r\nhost: demo.localhost\r\ntransfer-encoding: chunked\r\n\r\n\
                    3\r\nabc\r\n0\r\n\r\n";
        let (answers, broken) = runtime().block_on(through_edge(two));
        assert_eq!(broken, None);
        let text = String::from_utf8_lossy(&answers);
        assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 2, "{text}");
    }

    #[test]
    fn the_reference_parser_refuses_what_no_edge_should_send() {
        for bad in [
            &b"GET / HTTP/1.1\r\nhost: a\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n5;x\r\nhello\r\n0\r\n\r\n",
            b"garbage\r\n\r\n",
        ] {
            assert!(reference_request(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        let chunked = b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\nX";
        assert_eq!(reference_request(chunked), Ok(Some(chunked.len() - 1)));
    }

    #[test]
    fn the_edge_and_hyper_agree_on_plain_requests() {
        let input = b"POST /a HTTP/1.1\r\nhost: demo.localhost\r\ncontent-length: 3\r\n\r\nabc\
                      GET /b HTTP/1.1\r\nhost: demo.localhost\r\n\r\n";
        let edge: Vec<Delimited> = edge_requests(input).into_iter().map(|(r, _)| r).collect();
        assert_eq!(edge, vec![("POST".into(), 3), ("GET".into(), 0)]);
        assert_eq!(runtime().block_on(hyper_requests(input)), edge);
        http1_differential(input);
    }
}
