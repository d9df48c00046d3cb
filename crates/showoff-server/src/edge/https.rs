//! The public HTTPS listener. The ClientHello is read first, so the server name is known before
//! anything else happens:
//! - a name that routes to a TLS passthrough tunnel (`showoff tls`) is spliced to the client
//!   unterminated, ClientHello included: only the client's service holds keys and sees
//!   plaintext;
//! - any other name gets TLS terminated with the certificate its SNI selects, then the same HTTP
//!   edge as plain visitors (with `X-Forwarded-Proto: https`); the bytes read are replayed into
//!   the TLS acceptor ([`Prefixed`]);
//! - in a cluster, a name no tunnel here serves is first offered to the instance holding it,
//!   which takes the visitor if it is a passthrough tunnel there.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use showoff_core::{Exchange, Prefixed, Protocol};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::debug;

use crate::edge::EdgeContext;
use crate::edge::error::EdgeError;
use crate::edge::http::Scheme;
use crate::listen::{Arrival, Arrived};

/// Longest ClientHello read before giving up (real ones are under 2 KiB; post-quantum key
/// shares push some towards 2 KiB more).
const MAX_HELLO: usize = 16 * 1024;

/// Serves one HTTPS visitor connection.
pub(crate) async fn serve_visitor(arrived: Arrived, ctx: Arc<EdgeContext>) {
    let _gauge = ctx.visitor_gauge();
    let arrival = match arrived {
        Ok(arrival) => arrival,
        Err(refusal) => {
            let (peer, code) = (refusal.peer, refusal.error.code());
            debug!(%peer, code, "HTTPS visitor refused by the PROXY protocol policy");
            return ctx
                .exchanges
                .emit(&Exchange::failed(Protocol::Tls, peer.ip(), code));
        }
    };
    let peer = arrival.peer;
    if let Err(error) = serve(arrival, &ctx).await {
        ctx.exchanges
            .emit(&Exchange::failed(Protocol::Tls, peer.ip(), error.code()));
    }
}

/// SNI first: passthrough, or TLS termination and the HTTP edge.
async fn serve(arrival: Arrival, ctx: &Arc<EdgeContext>) -> Result<(), EdgeError> {
    let (mut stream, peer, mut buf) = (arrival.stream, arrival.peer, arrival.prefix);
    let deadline = ctx.settings.head_timeout;
    let hello = tokio::time::timeout(deadline, read_client_hello(&mut stream, &mut buf)).await;
    let sni = match hello {
        Ok(Ok(sni)) => sni,
        Ok(Err(error)) => {
            debug!(%peer, %error, "not a TLS ClientHello");
            return Err(EdgeError::BadTlsHello);
        }
        Err(_) => return Err(EdgeError::HeadTimeout),
    };
    if let Some(tunnel) = passthrough(ctx, sni.as_deref()) {
        tracing::Span::current().record("tunnel", tunnel.info.name.as_str());
        crate::edge::tcp::relay_visitor(stream, peer, buf, tunnel, ctx).await;
        return Ok(());
    }
    if let Some(name) = held_elsewhere(ctx, sni.as_deref())
        && forward_passthrough(&mut stream, peer, &buf, name, ctx).await
    {
        return Ok(());
    }
    let Some(acceptor) = ctx.tls.https.clone() else {
        debug!(%peer, sni, "no TLS tunnel for this name and no certificate to terminate with");
        return Err(EdgeError::NotFound);
    };
    let prefixed = Prefixed::new(buf, stream);
    let tls = match tokio::time::timeout(deadline, acceptor.accept(prefixed)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(error)) => {
            debug!(%peer, %error, "TLS handshake failed");
            return Err(EdgeError::TlsHandshake);
        }
        Err(_) => return Err(EdgeError::HeadTimeout),
    };
    match tls.get_ref().1.alpn_protocol() {
        // A TLS-ALPN-01 validation: the handshake was the whole answer.
        Some(crate::tls::ACME_TLS_ALPN) => {}
        Some(b"h2") => crate::edge::h2::serve(tls, peer, Scheme::Https, ctx.clone()).await,
        _ => {
            crate::edge::visitor::serve_conn(tls, peer, BytesMut::new(), Scheme::Https, ctx.clone())
                .await
        }
    }
    Ok(())
}

/// The TLS passthrough tunnel the server name routes to, if any.
fn passthrough(ctx: &EdgeContext, sni: Option<&str>) -> Option<Arc<crate::state::Tunnel>> {
    let name = showoff_proto::host::route_name(sni?, &ctx.urls.domain)?;
    let tunnel = ctx.routes.get(name)?;
    (tunnel.info.kind == showoff_proto::TunnelKind::Tls).then_some(tunnel)
}

/// In a cluster, the tunnel name the server name routes to when no tunnel here serves it
/// (another instance may hold it as a TLS passthrough tunnel).
fn held_elsewhere<'a>(ctx: &EdgeContext, sni: Option<&'a str>) -> Option<&'a str> {
    ctx.cluster.as_ref()?;
    let name = showoff_proto::host::route_name(sni?, &ctx.urls.domain)?;
    ctx.routes.get(name).is_none().then_some(name)
}

/// Offers a TLS visitor to the instance that holds `name`: a passthrough tunnel there gets
/// the visitor's bytes, ClientHello first (`true`: done). An HTTP tunnel there, no holder or
/// one that does not answer leave the visitor to be terminated here (`false`), where the
/// HTTP edge forwards its requests or answers with the error page. Names that turned out to
/// be HTTP tunnels are remembered for a moment, so their visitors are not offered each time.
async fn forward_passthrough(
    stream: &mut TcpStream,
    peer: SocketAddr,
    hello: &[u8],
    name: &str,
    ctx: &EdgeContext,
) -> bool {
    use crate::edge::peer::{Unopened, mirror, opening};
    let Some(cluster) = ctx.cluster.as_ref().filter(|c| !c.terminates(name)) else {
        return false;
    };
    let opening = opening::Opening {
        kind: opening::StreamKind::Tls,
        key: showoff_core::LeaseKey::Name(name.to_string()),
        visitor: peer,
    };
    let mut holder = match mirror::open_at_holder(cluster, &opening, ctx).await {
        Ok(holder) => holder,
        Err(Unopened::Terminate) => {
            cluster.remember_terminated(name);
            return false;
        }
        Err(Unopened::NotHere | Unopened::Unreachable) => return false,
    };
    if holder.write_all(hello).await.is_ok() {
        tokio::select! {
            _ = showoff_core::splice(stream, &mut holder) => {}
            _ = ctx.drain.stopping().cancelled() => {}
        }
    }
    true
}

/// Reads until `buf` holds a whole ClientHello record; returns its SNI, if any.
async fn read_client_hello(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
) -> io::Result<Option<String>> {
    loop {
        match client_hello_sni(buf) {
            Hello::Complete(sni) => return Ok(sni),
            Hello::NotTls => {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "not TLS"));
            }
            Hello::Incomplete if buf.len() >= MAX_HELLO => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "ClientHello too large",
                ));
            }
            Hello::Incomplete => {}
        }
        buf.reserve(2048);
        if stream.read_buf(buf).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed before the ClientHello",
            ));
        }
    }
}

/// What the bytes read so far hold.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Hello {
    /// A whole ClientHello, with its server name.
    Complete(Option<String>),
    /// The start of one.
    Incomplete,
    /// Not a TLS handshake.
    NotTls,
}

/// Finds the server name of a ClientHello that may span several TLS records.
pub(crate) fn client_hello_sni(buf: &[u8]) -> Hello {
    // Reassemble the handshake message from consecutive handshake records.
    let mut handshake = Vec::new();
    let mut at = 0;
    loop {
        let Some(header) = buf.get(at..at + 5) else {
            return if buf.first().is_some_and(|&b| b != 0x16) {
                Hello::NotTls
            } else {
                Hello::Incomplete
            };
        };
        if header[0] != 0x16 || header[1] != 0x03 {
            return Hello::NotTls;
        }
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        let Some(body) = buf.get(at + 5..at + 5 + len) else {
            return Hello::Incomplete;
        };
        handshake.extend_from_slice(body);
        at += 5 + len;
        if handshake.len() >= 4 {
            if handshake[0] != 0x01 {
                return Hello::NotTls;
            }
            let need = 4
                + ((usize::from(handshake[1]) << 16)
                    | (usize::from(handshake[2]) << 8)
                    | usize::from(handshake[3]));
            if handshake.len() >= need {
                return match parse_sni(&handshake[4..need]) {
                    Some(sni) => Hello::Complete(sni),
                    None => Hello::NotTls,
                };
            }
        }
    }
}

/// The server_name extension of a ClientHello body; `None` when the body is malformed,
/// `Some(None)` when it has no server name.
fn parse_sni(body: &[u8]) -> Option<Option<String>> {
    let mut r = Reader(body);
    r.skip(2 + 32)?; // version, random
    let session = r.u8()?;
    r.skip(usize::from(session))?;
    let suites = r.u16()?;
    r.skip(usize::from(suites))?;
    let compression = r.u8()?;
    r.skip(usize::from(compression))?;
    if r.0.is_empty() {
        return Some(None);
    }
    let extensions = r.u16()?;
    let mut ext = Reader(r.take(usize::from(extensions))?);
    while !ext.0.is_empty() {
        let kind = ext.u16()?;
        let len = ext.u16()?;
        let data = ext.take(usize::from(len))?;
        if kind != 0 {
            continue;
        }
        let mut names = Reader(data);
        let list = names.u16()?;
        let mut list = Reader(names.take(usize::from(list))?);
        while !list.0.is_empty() {
            let name_type = list.u8()?;
            let len = list.u16()?;
            let name = list.take(usize::from(len))?;
            if name_type == 0 {
                let name = std::str::from_utf8(name).ok()?;
                return Some(Some(name.to_ascii_lowercase()));
            }
        }
    }
    Some(None)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn skip(&mut self, n: usize) -> Option<()> {
        self.take(n).map(|_| ())
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real ClientHello, as rustls writes it for `name`.
    fn client_hello(name: &str) -> Vec<u8> {
        let mut roots = rustls::RootCertStore::empty();
        let cert = rcgen::generate_simple_self_signed(vec!["x.test".to_string()]).expect("cert");
        roots.add(cert.cert.der().clone()).expect("root");
        let config = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let server_name = rustls::pki_types::ServerName::try_from(name.to_string()).expect("name");
        let mut conn =
            rustls::ClientConnection::new(Arc::new(config), server_name).expect("connection");
        let mut out = Vec::new();
        conn.write_tls(&mut out).expect("hello");
        out
    }

    #[test]
    fn the_server_name_is_read_from_whole_and_partial_hellos() {
        let hello = client_hello("Demo.Tunnel.Test");
        assert_eq!(
            client_hello_sni(&hello),
            Hello::Complete(Some("demo.tunnel.test".into()))
        );
        for cut in [0, 3, 5, 40, hello.len() - 1] {
            assert_eq!(
                client_hello_sni(&hello[..cut]),
                Hello::Incomplete,
                "cut {cut}"
            );
        }
        let ip = client_hello("127.0.0.1");
        assert_eq!(
            client_hello_sni(&ip),
            Hello::Complete(None),
            "no SNI for addresses"
        );
        assert_eq!(client_hello_sni(b"GET / HTTP/1.1\r\n"), Hello::NotTls);
        let mut server_hello = hello.clone();
        server_hello[5] = 0x02;
        assert_eq!(client_hello_sni(&server_hello), Hello::NotTls);
        // The session-id length points past the end of the message.
        let mut broken = hello.clone();
        broken[5 + 4 + 34] = 0xff;
        assert_eq!(client_hello_sni(&broken), Hello::NotTls);
    }
}
