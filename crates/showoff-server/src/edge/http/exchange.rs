//! One request's policy, in order: ACME HTTP-01 answers, the HTTPS redirect, routing by
//! `Host`, the tunnel's visitor rules (IP lists, basic auth), rate limits and the visitor cap;
//! then the proxied exchange, reported once as an [`Exchange`] event.

use std::net::SocketAddr;
use std::sync::Arc;

use showoff_core::{Exchange, HttpExchange, Protocol, StreamMeta};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tracing::Instrument;

use super::Scheme;
use super::body::Framing;
use super::conn::{Conn, Next};
use super::encode::encode_request;
use super::gate;
use super::head::RequestHead;
use super::pool::UpstreamConn;
use super::response::{Response, connection_scheme};
use crate::edge::error::EdgeError;
use crate::edge::forwarded::Forwarded;
use crate::edge::spans;
use crate::state::Tunnel;

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Conn<S> {
    /// Applies the request's policy, proxies it and reports it once as an exchange event.
    pub(super) async fn exchange(
        &mut self,
        head: RequestHead,
        routed: Option<Arc<Tunnel>>,
    ) -> Result<Next, EdgeError> {
        if let Some(token) = head.target.strip_prefix(crate::tls::HTTP01_PREFIX)
            && let Some(answer) = self.ctx.acme_http01.get(token)
        {
            // A request body (there should be none) is never read: the answer closes, and the
            // body is drained, not parsed as the next request.
            let with_body = head.framing != Framing::Empty;
            let close = if with_body {
                "connection: close\r\n"
            } else {
                ""
            };
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n{close}\r\n{answer}",
                answer.len()
            );
            self.write(response.as_bytes()).await?;
            return Ok(if with_body {
                Next::Close
            } else {
                Next::KeepAlive
            });
        }
        if self.scheme == Scheme::Http && self.ctx.settings.redirect_http {
            return self.redirect_to_https(&head).await;
        }
        // gRPC needs HTTP/2 end to end; a request the HTTP/2 edge piped here was dealt with.
        if !self.piped && crate::edge::pages::is_grpc(&head.headers) {
            return Err(EdgeError::GrpcOverHttp1);
        }
        let started = Instant::now();
        let before = self.stream.counts();
        let tunnel = match routed.ok_or(EdgeError::NotFound) {
            Ok(tunnel) => tunnel,
            Err(EdgeError::NotFound) => match self.not_routed(&head).await {
                // Nobody else holds it: a client moving here may have taken it meanwhile.
                Err(EdgeError::NotFound) if self.ctx.cluster.is_some() => self.route(&head)?,
                other => return other,
            },
            Err(error) => return Err(error),
        };
        self.routed = Some(tunnel.clone());
        let forwarded = gate::forwarded_for(&self.ctx, self.scheme, self.peer.ip(), &head.headers)?;
        gate::admit(&self.ctx, &tunnel, &head.headers, &forwarded)?;
        let _slot = tunnel
            .visitor_slot(self.ctx.settings.visitor_caps, forwarded.visitor)
            .map_err(EdgeError::from)?;
        tunnel.touch();
        self.log_span.record("tunnel", tunnel.info.name.as_str());
        if self.decision.sampled() {
            tracing::Span::current().record("showoff.tunnel", tunnel.info.name.as_str());
        }
        let (status, next) = self.proxy(&head, &tunnel, &forwarded).await?;
        let (read, written) = self.stream.counts();
        self.ctx.exchanges.emit(&Exchange {
            protocol: Protocol::Http,
            tunnel: Some(&tunnel.info.name),
            visitor: forwarded.visitor,
            http: Some(HttpExchange {
                host: &head.host.name,
                method: head.method.as_str(),
                path: &head.target,
            }),
            status: Some(status),
            error: None,
            bytes_in: read - before.0 + head.len as u64,
            bytes_out: written - before.1,
            duration: started.elapsed(),
        });
        Ok(next)
    }

    /// No tunnel of this instance serves the request's host: in a cluster, another instance's
    /// may (one hop there), unless the request already came from another instance.
    async fn not_routed(&mut self, head: &RequestHead) -> Result<Next, EdgeError> {
        if self.scheme == Scheme::Peer {
            return Err(EdgeError::NotHere);
        }
        let Some(cluster) = self.ctx.cluster.clone() else {
            return Err(EdgeError::NotFound);
        };
        let name = showoff_proto::host::route_name(&head.host.name, &self.ctx.urls.domain)
            .ok_or(EdgeError::NotFound)?
            .to_string();
        self.forward(&cluster, head, &name).await
    }

    /// Answers `308 Permanent Redirect` to the same URL over HTTPS (the method and body are kept
    /// by the visitor on 308).
    async fn redirect_to_https(&mut self, head: &RequestHead) -> Result<Next, EdgeError> {
        let target = if head.target.starts_with('/') {
            head.target.as_str()
        } else {
            "/"
        };
        let response = format!(
            "HTTP/1.1 308 Permanent Redirect\r\nlocation: {}{target}\r\n\
             content-length: 0\r\nconnection: close\r\n\r\n",
            self.ctx.urls.https_origin(&head.host.name)
        );
        self.write(response.as_bytes()).await?;
        Ok(Next::Close)
    }

    async fn proxy(
        &mut self,
        head: &RequestHead,
        tunnel: &Tunnel,
        forwarded: &Forwarded,
    ) -> Result<(u16, Next), EdgeError> {
        if head.expect_continue && head.framing != Framing::Empty {
            self.write(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
        }
        let meta = StreamMeta {
            tunnel: tunnel.info.name.clone(),
            visitor_addr: SocketAddr::new(forwarded.visitor, self.peer.port()),
            trace: None,
        };
        let span = spans::upstream(&self.decision, &tunnel.info.name);
        let request = self.decision.with_headers(&span, |trace| {
            encode_request(head, &tunnel.spec, forwarded, trace)
        });
        let sent = self.send(tunnel, &meta, head, &request);
        let (mut up, mut resp, body_done) = sent
            .instrument(span.clone())
            .await
            .inspect_err(|error| spans::failed(&span, error.code()))?;
        if self.decision.sampled() {
            spans::responded(&span, resp.status);
            spans::responded(&tracing::Span::current(), resp.status);
        }
        // HTTPS answers advertise HTTP/3; a piped request's answer gets it from its own edge.
        if self.scheme == Scheme::Https
            && !self.piped
            && let Some(alt_svc) = &self.ctx.settings.alt_svc
        {
            resp.add_field("alt-svc", alt_svc.as_bytes());
        }
        if resp.status == 101 && head.upgrade {
            self.splice_upgrade(up, resp).instrument(span).await;
            return Ok((101, Next::Close));
        }
        let delivered = self.relay(&mut up, &mut resp).instrument(span).await;
        if delivered && body_done && resp.upstream_reusable {
            self.keep_upstream(tunnel, head, &resp, up);
        }
        // `resp.keep_alive` is what the response head told the visitor (from the pre-drain
        // delay on, `Connection: close`): a connection promised to stay open does, even if the
        // drain began meanwhile, so the request its client sends next is still answered.
        let keep_alive = delivered && body_done && resp.keep_alive;
        Ok((
            resp.status,
            if keep_alive {
                Next::KeepAlive
            } else {
                Next::Close
            },
        ))
    }

    /// Returns a reusable upstream connection: pinned to this visitor connection when the
    /// target authenticates connections (NTLM, Negotiate), else to the tunnel's pool.
    fn keep_upstream(
        &mut self,
        tunnel: &Tunnel,
        head: &RequestHead,
        resp: &Response,
        mut up: UpstreamConn,
    ) {
        let asked = head
            .headers
            .get(http::header::AUTHORIZATION)
            .is_some_and(|v| connection_scheme(v.as_bytes()));
        up.pinned |= asked || resp.connection_auth;
        if up.pinned {
            let owner = (tunnel.info.name.clone(), tunnel.session_id.clone());
            self.pinned = Some((owner.0, owner.1, up));
        } else if let Some(pool) = super::pool::pool(tunnel) {
            pool.put_back(up);
        }
    }

    fn route(&self, head: &RequestHead) -> Result<Arc<Tunnel>, EdgeError> {
        gate::route(&self.ctx, &head.host.name)
    }
}
