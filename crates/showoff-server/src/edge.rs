//! The public side: visitors arrive here and are routed to a tunnel.
//!
//! - [`http`]: HTTP/1.1 reverse proxy routed by `Host`, per request.
//! - [`https`]: the HTTPS listener: ClientHello (SNI) first, then TLS, then [`http`].
//! - [`h2`]: HTTP/2 visitors, each request handed to [`http`] as HTTP/1.1.
//! - [`proxy_protocol`]: PROXY v1/v2 headers from trusted load balancers.
//! - [`forwarded`]: `X-Forwarded-*` and which proxies are believed.
//! - [`tcp`]: raw TCP tunnels, one public port each.
//! - [`access`]: per-tunnel visitor rules (IP lists, basic auth).
//! - [`error`]: the one mapping from edge failures to status codes and `X-Showoff-Error` codes.

pub(crate) mod access;
pub(crate) mod error;
pub(crate) mod forwarded;
pub(crate) mod h2;
pub(crate) mod http;
pub(crate) mod https;
pub(crate) mod proxy_protocol;
pub(crate) mod tcp;
