//! The holder's side of a stream another instance opened ([`super::opening`]): the tunnel
//! the request names is looked up here, never forwarded again; `NOT-HERE` when this instance
//! does not serve it (the forwarder looks once more), `TERMINATE` for a name that is an HTTP
//! tunnel here, else `OK` and the connection is the visitor's: spliced to a fresh stream to
//! the client (TCP, TLS passthrough) under the tunnel's rules and caps, with the visitor's
//! address as the forwarder saw it, or a link carrying the tunnel's datagrams (UDP).

use std::sync::Arc;

use bytes::BytesMut;
use showoff_proto::TunnelKind;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::timeout;
use tracing::debug;

use super::HANDSHAKE_TIMEOUT;
use super::opening::{Answer, Opening, StreamKind};
use crate::edge::EdgeContext;
use crate::state::Tunnel;

/// Serves one stream request on the peer listener.
pub(crate) async fn serve(
    mut stream: TcpStream,
    rest: BytesMut,
    opening: Opening,
    ctx: Arc<EdgeContext>,
) {
    let tunnel = match &opening.key {
        showoff_core::LeaseKey::Name(name) => ctx.routes.get(name),
        key => ctx.routes.holding(key),
    };
    let answer = answer(tunnel.as_deref(), opening.kind, &ctx);
    let _ = timeout(HANDSHAKE_TIMEOUT, stream.write_all(answer.line())).await;
    let (Answer::Ok, Some(tunnel)) = (answer, tunnel) else {
        debug!(key = %opening.key, ?answer, "peer stream not taken");
        return;
    };
    ctx.stats.cluster.served();
    tracing::Span::current().record("tunnel", tunnel.info.name.as_str());
    match opening.kind {
        StreamKind::Tcp | StreamKind::Tls => {
            let _gauge = ctx.visitor_gauge();
            crate::edge::tcp::relay_visitor(stream, opening.visitor, rest, tunnel, &ctx).await;
        }
        StreamKind::Udp => crate::edge::udp::serve_peer_link(stream, rest, tunnel, &ctx).await,
    }
}

/// What the holder says to a request for `tunnel` (found by its key) of `kind`.
fn answer(tunnel: Option<&Tunnel>, kind: StreamKind, ctx: &EdgeContext) -> Answer {
    let Some(tunnel) = tunnel else {
        return Answer::NotHere;
    };
    match (kind, tunnel.info.kind) {
        (StreamKind::Tls, TunnelKind::Http) => Answer::Terminate,
        (StreamKind::Tls, TunnelKind::Tls) | (StreamKind::Tcp, TunnelKind::Tcp) => Answer::Ok,
        (StreamKind::Udp, TunnelKind::Udp) if crate::edge::udp::takes_peer_links(tunnel) => {
            Answer::Ok
        }
        _ => {
            let _ = ctx;
            Answer::NotHere
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::tunnel::tests::tunnel;

    #[test]
    fn the_answer_follows_the_tunnel_kind_here() {
        let ctx = crate::edge::tests::context();
        assert_eq!(answer(None, StreamKind::Tcp, &ctx), Answer::NotHere);
        let mut http = tunnel("web", "s1", "alice");
        http.info.kind = TunnelKind::Http;
        assert_eq!(
            answer(Some(&http), StreamKind::Tls, &ctx),
            Answer::Terminate
        );
        assert_eq!(answer(Some(&http), StreamKind::Tcp, &ctx), Answer::NotHere);
        let mut tls = tunnel("db", "s1", "alice");
        tls.info.kind = TunnelKind::Tls;
        assert_eq!(answer(Some(&tls), StreamKind::Tls, &ctx), Answer::Ok);
        let mut tcp = tunnel("t", "s1", "alice");
        tcp.info.kind = TunnelKind::Tcp;
        assert_eq!(answer(Some(&tcp), StreamKind::Tcp, &ctx), Answer::Ok);
        let mut udp = tunnel("u", "s1", "alice");
        udp.info.kind = TunnelKind::Udp;
        assert_eq!(
            answer(Some(&udp), StreamKind::Udp, &ctx),
            Answer::NotHere,
            "no relay running for it: nothing takes the datagrams"
        );
    }
}
