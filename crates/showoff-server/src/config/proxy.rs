//! Which peers' PROXY headers and `X-Forwarded-*` are believed.

use super::ProxyProtocol;

/// Which peers may say who the visitor really is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxyConfig {
    /// PROXY protocol v1/v2 on the public HTTP and HTTPS listeners and TCP tunnel ports.
    pub protocol: ProxyProtocol,
    /// PROXY protocol on the control listener (client addresses for rate limits and policies).
    pub control: ProxyProtocol,
    /// Load balancers and proxies trusted for PROXY headers and incoming `X-Forwarded-*`.
    pub trusted: Vec<ipnet::IpNet>,
}

impl ProxyConfig {
    /// Whether `ip` is a trusted proxy.
    pub fn trusts(&self, ip: std::net::IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.trusted.iter().any(|net| net.contains(&ip))
    }
}
