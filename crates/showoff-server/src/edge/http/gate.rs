//! The per-request rules every HTTP visitor passes, whatever protocol it came over (HTTP/1.1
//! here, HTTP/2 and HTTP/3 in [`crate::edge::request`]): routing by host, who the visitor is
//! (`X-Forwarded-*` from trusted proxies, or the peer headers of a cluster hop), the tunnel's
//! visitor rules (IP lists, basic auth) and the rate limits.

use std::net::IpAddr;
use std::sync::Arc;

use http::HeaderMap;

use super::Scheme;
use super::head::HeadError;
use crate::edge::EdgeContext;
use crate::edge::error::EdgeError;
use crate::edge::forwarded::{Forwarded, forwarded, peer_forwarded};
use crate::state::Tunnel;

/// The HTTP tunnel of this instance that serves `host`.
pub(crate) fn route(ctx: &EdgeContext, host: &str) -> Result<Arc<Tunnel>, EdgeError> {
    let name =
        showoff_proto::host::route_name(host, &ctx.urls.domain).ok_or(EdgeError::NotFound)?;
    let tunnel = ctx.routes.get(name).ok_or(EdgeError::NotFound)?;
    if tunnel.info.kind != showoff_proto::TunnelKind::Http {
        return Err(EdgeError::NotFound);
    }
    Ok(tunnel)
}

/// Who the visitor is and what the target is told: from the headers and the connection, or on
/// the peer listener, what the forwarding instance decided.
pub(crate) fn forwarded_for(
    ctx: &EdgeContext,
    scheme: Scheme,
    peer: IpAddr,
    headers: &HeaderMap,
) -> Result<Forwarded, EdgeError> {
    if scheme == Scheme::Peer {
        ctx.stats.cluster.served();
        return peer_forwarded(headers).ok_or(EdgeError::Head(HeadError::Bad(
            "a forwarded request without valid peer headers",
        )));
    }
    Ok(forwarded(
        headers,
        peer,
        scheme.as_str(),
        &ctx.settings.proxy,
    ))
}

/// The tunnel's visitor rules and the rate limits, for this visitor.
pub(crate) fn admit(
    ctx: &EdgeContext,
    tunnel: &Tunnel,
    headers: &HeaderMap,
    forwarded: &Forwarded,
) -> Result<(), EdgeError> {
    if !tunnel.access.ip_allowed(forwarded.visitor) {
        return Err(EdgeError::IpForbidden);
    }
    if tunnel.access.wants_basic_auth() {
        let gate = &ctx.limits.basic_auth;
        gate.check(forwarded.visitor)
            .map_err(|wait| EdgeError::RateLimited(crate::limits::retry_secs(wait)))?;
        if !tunnel.access.basic_ok(headers) {
            gate.failed(forwarded.visitor);
            return Err(EdgeError::AuthRequired);
        }
    }
    let rated = ctx.limits.visitor(forwarded.visitor, &tunnel.info.name);
    rated.map_err(|wait| EdgeError::RateLimited(crate::limits::retry_secs(wait)))
}
