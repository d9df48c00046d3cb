//! [`PublicUrls`]: the one place that writes the URLs and origins visitors see, so a port of 80
//! or 443 is left out the same way everywhere (the client's `Welcome` line, the admin API, the
//! HTTPS redirect).

use showoff_proto::TunnelKind;

/// The domain and the public ports URLs are written with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PublicUrls {
    /// Base domain of tunnel hostnames.
    pub(crate) domain: String,
    /// Port shown for plain HTTP (omitted when 80).
    pub(crate) http_port: u16,
    /// Port shown for HTTPS (omitted when 443); `None` when there is no HTTPS listener.
    pub(crate) https_port: Option<u16>,
}

/// `:port`, or nothing for the scheme's default port.
fn port_suffix(port: u16, default: u16) -> String {
    if port == default {
        String::new()
    } else {
        format!(":{port}")
    }
}

impl PublicUrls {
    /// The URL visitors use for a tunnel.
    pub(crate) fn tunnel(&self, kind: TunnelKind, name: &str, port: Option<u16>) -> String {
        let domain = &self.domain;
        match (kind, port) {
            (TunnelKind::Tls, _) => format!("tls://{name}.{domain}{}", self.https_suffix()),
            (TunnelKind::Http, _) if self.https_port.is_some() => {
                format!("https://{name}.{domain}{}", self.https_suffix())
            }
            (TunnelKind::Http, _) => {
                format!("http://{name}.{domain}{}", port_suffix(self.http_port, 80))
            }
            (kind, Some(port)) => format!("{}://{domain}:{port}", kind.as_str()),
            (kind, None) => format!("{}://{domain}", kind.as_str()),
        }
    }

    /// `https://<host>[:port]`: where a plain-HTTP visitor of `host` is redirected.
    pub(crate) fn https_origin(&self, host: &str) -> String {
        format!("https://{host}{}", self.https_suffix())
    }

    fn https_suffix(&self) -> String {
        self.https_port
            .map(|port| port_suffix(port, 443))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(http_port: u16, https_port: Option<u16>) -> PublicUrls {
        PublicUrls {
            domain: "tunnel.test".into(),
            http_port,
            https_port,
        }
    }

    #[test]
    fn default_ports_are_left_out_everywhere() {
        let plain = urls(80, None);
        assert_eq!(
            plain.tunnel(TunnelKind::Http, "demo", None),
            "http://demo.tunnel.test"
        );
        assert_eq!(
            urls(8080, None).tunnel(TunnelKind::Http, "demo", None),
            "http://demo.tunnel.test:8080"
        );
        let tls = urls(80, Some(443));
        assert_eq!(
            tls.tunnel(TunnelKind::Http, "demo", None),
            "https://demo.tunnel.test"
        );
        assert_eq!(
            tls.tunnel(TunnelKind::Tls, "db", None),
            "tls://db.tunnel.test"
        );
        assert_eq!(
            tls.https_origin("demo.tunnel.test"),
            "https://demo.tunnel.test"
        );
        let odd = urls(8080, Some(8443));
        assert_eq!(
            odd.tunnel(TunnelKind::Tls, "db", None),
            "tls://db.tunnel.test:8443"
        );
        assert_eq!(
            odd.https_origin("a.tunnel.test"),
            "https://a.tunnel.test:8443"
        );
        assert_eq!(
            odd.tunnel(TunnelKind::Tcp, "x", Some(20001)),
            "tcp://tunnel.test:20001"
        );
        assert_eq!(
            plain.tunnel(TunnelKind::Tls, "db", None),
            "tls://db.tunnel.test"
        );
    }
}
