//! One hop to the instance of the cluster that holds a request's tunnel ([`super::super::peer`]):
//! the request goes over a pooled peer connection with what this instance decided about the
//! visitor, and the response comes back through the same relay as any target's. When the
//! other instance answers `421` (the tunnel moved) before anything reached the visitor, the
//! lease is looked up afresh and a request without a body is sent once more; after that the
//! visitor gets `404 tunnel_not_found`. A holder that cannot be dialled is looked up afresh
//! once too (nothing was sent yet), so a lease that moved as its instance stopped is followed.

use showoff_core::LeaseKey;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::Instrument;

use super::body::Framing;
use super::client::{SendError, replayable};
use super::conn::{Conn, Next};
use super::encode::encode_forward;
use super::head::RequestHead;
use super::pool::UpstreamConn;
use super::response::Response;
use crate::edge::error::EdgeError;
use crate::edge::forwarded::forwarded;
use crate::edge::peer::ClusterEdge;
use crate::edge::spans;

/// The error header of the other instance's own "not here" page.
const NOT_HERE: &str = "x-showoff-error: tunnel_not_found";

/// Whether `resp` is the other instance's own "not here" (`421` with Showoff's code), not a
/// target's answer.
fn not_here(resp: &Response) -> bool {
    let marker = NOT_HERE;
    resp.status == 421
        && resp
            .visitor_head
            .windows(marker.len())
            .any(|w| w.eq_ignore_ascii_case(marker.as_bytes()))
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Conn<S> {
    /// Forwards the request for tunnel `name` to the instance holding it, and relays its answer.
    pub(super) async fn forward(
        &mut self,
        cluster: &ClusterEdge,
        head: &RequestHead,
        name: &str,
    ) -> Result<Next, EdgeError> {
        let key = LeaseKey::Name(name.to_string());
        let forwarded = forwarded(
            &head.headers,
            self.peer.ip(),
            self.scheme.as_str(),
            &self.ctx.settings.proxy,
        );
        let span = spans::forward(&self.decision, name);
        let request = self
            .decision
            .with_headers(&span, |trace| encode_forward(head, &forwarded, trace));
        let stats = self.ctx.stats.clone();
        let turn = self.forward_turn(cluster, &key, head, &request);
        let (addr, mut up, mut resp, body_done) = match turn.instrument(span.clone()).await {
            Ok(turn) => turn,
            Err(error) => {
                spans::failed(&span, error.code());
                // Counted only for what happened at the peer: a request for a name
                // nobody holds, or one the visitor broke, was never the peer's.
                if error == EdgeError::PeerUnreachable {
                    stats.cluster.forwarded("peer_unreachable");
                }
                return Err(error);
            }
        };
        stats.cluster.forwarded("ok");
        if self.decision.sampled() {
            span.record("server.address", addr.as_str());
            spans::responded(&span, resp.status);
            spans::responded(&tracing::Span::current(), resp.status);
        }
        if resp.status == 101 && head.upgrade {
            self.splice_upgrade(up, resp).instrument(span).await;
            return Ok(Next::Close);
        }
        let delivered = self.relay(&mut up, &mut resp).instrument(span).await;
        if delivered && body_done && resp.upstream_reusable {
            cluster.put_back(&addr, up);
        }
        Ok(if delivered && body_done && resp.keep_alive {
            Next::KeepAlive
        } else {
            Next::Close
        })
    }

    /// Sends the request to the holder of `key` and reads the response head: a stale pooled
    /// connection is replaced for a replayable request, a "not here" is looked up again once.
    async fn forward_turn(
        &mut self,
        cluster: &ClusterEdge,
        key: &LeaseKey,
        head: &RequestHead,
        request: &[u8],
    ) -> Result<(String, UpstreamConn, Response, bool), EdgeError> {
        let mut looked_again = false;
        let mut continued = false;
        loop {
            let addr = cluster.locate(key).await?.ok_or(EdgeError::NotFound)?;
            if head.expect_continue && head.framing != Framing::Empty && !continued {
                continued = true;
                self.write(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
            }
            let (mut up, reused) = match cluster.checkout(&addr).await {
                Ok(checked_out) => checked_out,
                // Nothing was sent: the holder may have just stopped and the lease moved.
                Err(EdgeError::PeerUnreachable) if !looked_again => {
                    looked_again = true;
                    cluster.registry.forget(key);
                    continue;
                }
                Err(error) => return Err(error),
            };
            match self.try_send(&mut up, head, request).await {
                Ok((resp, _)) if not_here(&resp) => {
                    if looked_again || head.framing != Framing::Empty {
                        self.ctx.stats.cluster.forwarded("not_here");
                        return Err(EdgeError::NotFound);
                    }
                    looked_again = true;
                    cluster.registry.forget(key);
                }
                Ok((resp, body_done)) => return Ok((addr, up, resp, body_done)),
                Err(SendError::Stale) if reused && replayable(head) => {}
                Err(SendError::Stale) => return Err(EdgeError::PeerUnreachable),
                Err(SendError::Failed(error)) => return Err(error),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_not_here_marker_is_the_error_header() {
        let header = format!("{}: ", crate::edge::error::ERROR_HEADER);
        assert!(super::NOT_HERE.starts_with(&header));
    }
}
