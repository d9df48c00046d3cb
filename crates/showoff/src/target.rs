//! A tunnel's local target as the user writes it — `3000`, `host:port`, `http://host:port` or
//! `https://host:port` — with the upstream protocol (`--upstream`) and the TLS they imply.

use std::path::Path;

use showoff_client::target::TargetTls;
use showoff_proto::{TunnelKind, Upstream};

/// The local `host:port` and the TLS towards it, for a tunnel of `kind` whose target is
/// written `written`, speaking `upstream`; `ca` is `--upstream-ca`.
pub fn resolve(
    kind: TunnelKind,
    written: &str,
    upstream: Upstream,
    ca: Option<&Path>,
) -> Result<(String, Option<TargetTls>), String> {
    let (scheme, rest) = match written.split_once("://") {
        Some((scheme, rest)) => (Some(scheme.to_ascii_lowercase()), rest),
        None => (None, written),
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains('/') {
        return Err(format!(
            "the target {written:?} has a path: name a host and port only"
        ));
    }
    let http = kind == TunnelKind::Http;
    if !http && (scheme.is_some() || upstream != Upstream::Http1) {
        return Err("a scheme and --upstream apply to http tunnels only".into());
    }
    let tls = match (scheme.as_deref(), upstream) {
        (Some("https"), _) | (None, Upstream::H2) => true,
        (Some("http"), Upstream::H2) => {
            return Err(
                "--upstream h2 is HTTP/2 over TLS, but the target is written http://: \
                 use --upstream h2c for a plain HTTP/2 target"
                    .into(),
            );
        }
        (Some("http") | None, _) => false,
        (Some(other), _) => {
            return Err(format!(
                "the target's scheme {other:?} is not http or https"
            ));
        }
    };
    let local = showoff_client::local_address(rest);
    if !tls {
        if ca.is_some() {
            return Err(
                "--upstream-ca applies to TLS targets (https://... or --upstream h2)".into(),
            );
        }
        return Ok((local, None));
    }
    let pem = match ca {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read the upstream CA {}: {e}", path.display()))?,
        ),
        None => None,
    };
    let tls = TargetTls::new(upstream, &local, pem.as_deref(), None)?;
    Ok((local, Some(tls)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(written: &str, upstream: Upstream) -> Result<(String, bool), String> {
        resolve(TunnelKind::Http, written, upstream, None)
            .map(|(local, tls)| (local, tls.is_some()))
    }

    #[test]
    fn the_written_target_names_the_address_and_tls() {
        let plain = ("127.0.0.1:3000".to_string(), false);
        let tls = ("127.0.0.1:8443".to_string(), true);
        assert_eq!(http("3000", Upstream::Http1), Ok(plain.clone()));
        assert_eq!(http("http://127.0.0.1:3000/", Upstream::H2c), Ok(plain));
        assert_eq!(
            http("https://127.0.0.1:8443", Upstream::Http1),
            Ok(tls.clone())
        );
        assert_eq!(http("8443", Upstream::H2), Ok(tls.clone()));
        assert_eq!(http("HTTPS://127.0.0.1:8443", Upstream::Auto), Ok(tls));
    }

    #[test]
    fn contradictions_are_refused_with_the_way_out() {
        let refused = |written, upstream| http(written, upstream).expect_err("refused");
        assert!(refused("http://127.0.0.1:1", Upstream::H2).contains("--upstream h2c"));
        assert!(refused("https://127.0.0.1:1", Upstream::H2c).contains("--upstream h2"));
        assert!(refused("ftp://127.0.0.1:1", Upstream::Http1).contains("\"ftp\""));
        assert!(refused("127.0.0.1:1/api", Upstream::Http1).contains("path"));
        let tcp = resolve(TunnelKind::Tcp, "5432", Upstream::H2c, None).expect_err("tcp");
        assert!(tcp.contains("http tunnels only"), "{tcp}");
        let ca = resolve(
            TunnelKind::Http,
            "3000",
            Upstream::Http1,
            Some(Path::new("ca.pem")),
        )
        .expect_err("plain");
        assert!(ca.contains("TLS targets"), "{ca}");
    }
}
