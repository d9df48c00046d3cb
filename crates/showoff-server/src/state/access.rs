//! Visitor rules of one tunnel, set by its client and enforced here before anything reaches
//! the client: IP deny and allow lists (CIDRs; deny wins) and HTTP basic auth.

use std::net::IpAddr;

use base64::Engine;
use http::HeaderMap;
use ipnet::IpNet;
use showoff_proto::VisitorRules;

use crate::config::Secret;

/// Parsed, ready-to-check visitor rules.
#[derive(Debug, Default)]
pub(crate) struct Access {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
    /// Expected `user:password`.
    basic: Option<Secret>,
}

impl Access {
    /// Parses the client's rules; the error names the value that is not a CIDR or credential.
    pub(crate) fn parse(rules: &VisitorRules) -> Result<Self, String> {
        let cidrs = |list: &[String]| -> Result<Vec<IpNet>, String> {
            list.iter().map(|c| parse_cidr(c)).collect()
        };
        let basic = match &rules.basic_auth {
            None => None,
            Some(credentials)
                if credentials
                    .split_once(':')
                    .is_some_and(|(u, p)| !u.is_empty() && !p.is_empty()) =>
            {
                Some(Secret::new(credentials.clone()))
            }
            Some(_) => {
                return Err("basic auth must be user:password with both parts non-empty".into());
            }
        };
        Ok(Self {
            allow: cidrs(&rules.allow_ips)?,
            deny: cidrs(&rules.deny_ips)?,
            basic,
        })
    }

    /// Whether a visitor from `ip` may come in.
    pub(crate) fn ip_allowed(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        if self.deny.iter().any(|net| net.contains(&ip)) {
            return false;
        }
        self.allow.is_empty() || self.allow.iter().any(|net| net.contains(&ip))
    }

    /// Whether basic auth is required.
    pub(crate) fn wants_basic_auth(&self) -> bool {
        self.basic.is_some()
    }

    /// Whether the request carries the right credentials (always true without basic auth).
    pub(crate) fn basic_ok(&self, headers: &HeaderMap) -> bool {
        let Some(expected) = &self.basic else {
            return true;
        };
        let presented = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Basic ")
                    .or_else(|| v.strip_prefix("basic "))
            })
            .and_then(|b64| {
                base64::engine::general_purpose::STANDARD
                    .decode(b64.trim())
                    .ok()
            })
            .unwrap_or_default();
        showoff_proto::id::constant_time_eq(&presented, expected.expose().as_bytes())
    }
}

/// A CIDR, or a single address as a /32 or /128.
fn parse_cidr(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{text:?} is not a CIDR (e.g. 203.0.113.0/24) or an IP address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(allow: &[&str], deny: &[&str], basic: Option<&str>) -> VisitorRules {
        VisitorRules {
            basic_auth: basic.map(str::to_string),
            allow_ips: allow.iter().map(|s| s.to_string()).collect(),
            deny_ips: deny.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("ip")
    }

    #[test]
    fn deny_wins_and_allow_lists_restrict() {
        let access = Access::parse(&rules(
            &["10.0.0.0/8", "2001:db8::/32"],
            &["10.1.0.0/16"],
            None,
        ))
        .expect("valid");
        assert!(access.ip_allowed(ip("10.2.3.4")));
        assert!(!access.ip_allowed(ip("10.1.2.3")), "deny wins over allow");
        assert!(
            !access.ip_allowed(ip("192.0.2.1")),
            "outside the allow list"
        );
        assert!(access.ip_allowed(ip("2001:db8::1")));
        assert!(
            access.ip_allowed(ip("::ffff:10.2.3.4")),
            "IPv4-mapped addresses match IPv4 rules"
        );
        let open = Access::parse(&rules(&[], &["192.0.2.7"], None)).expect("valid");
        assert!(open.ip_allowed(ip("192.0.2.8")) && !open.ip_allowed(ip("192.0.2.7")));
    }

    #[test]
    fn basic_auth_checks_the_decoded_credentials() {
        let access = Access::parse(&rules(&[], &[], Some("ann:s3cret"))).expect("valid");
        let mut headers = HeaderMap::new();
        assert!(!access.basic_ok(&headers), "missing");
        headers.insert(
            "authorization",
            "Basic YW5uOnMzY3JldA==".parse().expect("value"),
        );
        assert!(access.basic_ok(&headers), "ann:s3cret");
        headers.insert(
            "authorization",
            "Basic YW5uOndyb25n".parse().expect("value"),
        );
        assert!(!access.basic_ok(&headers), "ann:wrong");
        headers.insert("authorization", "Basic !!!".parse().expect("value"));
        assert!(!access.basic_ok(&headers), "not base64");
    }

    #[test]
    fn invalid_rules_are_named() {
        let err = Access::parse(&rules(&["10.0.0.0/33"], &[], None)).expect_err("bad cidr");
        assert!(err.contains("10.0.0.0/33"), "{err}");
        assert!(Access::parse(&rules(&[], &[], Some("nopassword"))).is_err());
        assert!(Access::parse(&rules(&[], &[], Some(":x"))).is_err());
    }
}
