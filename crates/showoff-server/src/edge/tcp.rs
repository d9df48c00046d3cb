//! Raw TCP tunnels: each tunnel owns one public listener; every visitor connection gets a fresh
//! stream to the client and the two are spliced until either side closes. A trusted PROXY
//! protocol header (when configured) names the visitor; the client can pass it on to its
//! target in a header of its own.

use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tracing::{Instrument, debug, info};

use crate::edge::proxy_protocol;
use crate::server::{Shared, accept_loop};
use crate::stats::GaugeGuard;
use crate::transport::{StreamMeta, splice};
use crate::tunnel::Tunnel;

/// Accepts visitors on a TCP tunnel's port until the tunnel closes or the server drains.
pub(crate) async fn serve_tunnel(listener: TcpListener, tunnel: Arc<Tunnel>, shared: Arc<Shared>) {
    let (closed, drain) = (tunnel.closed.clone(), shared.drain.clone());
    let until = async move {
        tokio::select! {
            _ = closed.cancelled() => {}
            _ = drain.cancelled() => {}
        }
    };
    accept_loop(listener, until, shared.clone(), |stream, peer, shared| {
        let span = tracing::info_span!(
            "visitor",
            %peer,
            tunnel = %tunnel.info.name,
            session = %tunnel.session_id
        );
        let task = serve_visitor(stream, peer, tunnel.clone(), shared.clone());
        shared.visitors.spawn(task.instrument(span));
    })
    .await;
}

async fn serve_visitor(
    mut visitor: TcpStream,
    peer: SocketAddr,
    tunnel: Arc<Tunnel>,
    shared: Arc<Shared>,
) {
    let stats = shared.clone();
    let _gauge = GaugeGuard::new(&stats.stats.visitor_connections_active);
    let config = &shared.config;
    let arrival = proxy_protocol::arrive(
        &mut visitor,
        peer,
        config.proxy.protocol,
        &config.proxy,
        config.head_timeout,
    )
    .await;
    let (peer, prefix) = match arrival {
        Ok(arrival) => (arrival.peer, arrival.prefix),
        Err(error) => {
            debug!(%peer, tunnel = %tunnel.info.name, code = error.code(), "tcp visitor refused by the PROXY protocol policy");
            shared.stats.error(error.code());
            return;
        }
    };
    relay_visitor(visitor, peer, prefix, tunnel, shared).await;
}

/// Splices one visitor with a fresh stream to the tunnel's client, after the tunnel's IP rules
/// and visitor cap; `prefix` (bytes already read from the visitor) goes first. Also serves TLS
/// passthrough visitors, whose prefix is their ClientHello.
pub(crate) async fn relay_visitor(
    mut visitor: TcpStream,
    peer: SocketAddr,
    prefix: bytes::BytesMut,
    tunnel: Arc<Tunnel>,
    shared: Arc<Shared>,
) {
    if !tunnel.access.ip_allowed(peer.ip()) {
        debug!(%peer, tunnel = %tunnel.info.name, "tcp visitor refused by the tunnel's IP rules");
        shared.stats.error("ip_forbidden");
        return;
    }
    let Some(_slot) = tunnel.visitor_slot(shared.config.max_visitors_per_tunnel) else {
        debug!(%peer, tunnel = %tunnel.info.name, "tcp visitor refused: tunnel at its visitor cap");
        shared.stats.error("over_capacity");
        return;
    };
    tunnel.touch();
    let meta = StreamMeta {
        tunnel: tunnel.info.name.clone(),
        visitor_addr: peer,
    };
    let mut stream = match tunnel.opener.open(&meta).await {
        Ok(stream) => stream,
        Err(error) => {
            info!(%peer, tunnel = %meta.tunnel, %error, "tcp visitor dropped");
            shared
                .stats
                .error(crate::edge::error::EdgeError::Open(error).page("").code);
            return;
        }
    };
    if !prefix.is_empty() && stream.write_all(&prefix).await.is_err() {
        return;
    }
    tokio::select! {
        (inbound, outbound) = splice(&mut visitor, &mut stream) => shared.stats.bytes(inbound, outbound),
        _ = tunnel.closed.cancelled() => {}
        _ = shared.stop.cancelled() => {}
    }
    tunnel.touch();
}
