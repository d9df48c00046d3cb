//! Tracing settings: whether the server makes spans and whose trace context it continues.
//! The exporter itself is the binary's (it owns OpenTelemetry's SDK).

/// Tracing: whether the server makes spans (the binary installs the exporter that turns them
/// into OpenTelemetry spans) and whose trace context it continues.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceConfig {
    /// Spans are made; off, the edges make none and pass `traceparent` through untouched.
    pub enabled: bool,
    /// Visitors whose `traceparent` is continued (trusted proxies' are too); anyone else's
    /// only becomes a link of a new trace.
    pub trust: Vec<ipnet::IpNet>,
    /// Share of new traces sampled, 0 to 1 (decided at each root: request, connection, flow).
    pub sample: f64,
}

impl Default for TraceConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            trust: Vec::new(),
            sample: 1.0,
        }
    }
}

impl TraceConfig {
    /// Whether a visitor at `ip` (behind `proxy`'s trusted proxies) may set our parent span.
    pub fn trusts(&self, ip: std::net::IpAddr, proxy: &super::ProxyConfig) -> bool {
        let ip = ip.to_canonical();
        self.trust.iter().any(|net| net.contains(&ip)) || proxy.trusts(ip)
    }
}
