//! Raw TCP tunnels: each tunnel owns one public listener; every visitor connection gets a fresh
//! stream to the client and the two are spliced until either side closes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tracing::{Instrument, debug, info};

use crate::server::Shared;
use crate::stats::GaugeGuard;
use crate::transport::{StreamMeta, splice, tune_socket};
use crate::tunnel::Tunnel;

/// Pause after a failed accept (e.g. out of file descriptors) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Accepts visitors on a TCP tunnel's port until the tunnel closes or the server drains.
pub(crate) async fn serve_tunnel(listener: TcpListener, tunnel: Arc<Tunnel>, shared: Arc<Shared>) {
    loop {
        let accepted = tokio::select! {
            _ = tunnel.closed.cancelled() => return,
            _ = shared.drain.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                tune_socket(&stream);
                let span = tracing::info_span!(
                    "visitor",
                    %peer,
                    tunnel = %tunnel.info.name,
                    session = %tunnel.session_id
                );
                let task = serve_visitor(stream, peer, tunnel.clone(), shared.clone());
                shared.visitors.spawn(task.instrument(span));
            }
            Err(error) => {
                debug!(%error, "tcp tunnel accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

async fn serve_visitor(
    mut visitor: TcpStream,
    peer: SocketAddr,
    tunnel: Arc<Tunnel>,
    shared: Arc<Shared>,
) {
    let stats = shared.clone();
    let _gauge = GaugeGuard::new(&stats.stats.visitor_connections_active);
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
    tokio::select! {
        (inbound, outbound) = splice(&mut visitor, &mut stream) => shared.stats.bytes(inbound, outbound),
        _ = tunnel.closed.cancelled() => {}
        _ = shared.stop.cancelled() => {}
    }
    tunnel.touch();
}
