//! Whether a session may be admitted with what it asks for: tunnel kinds, how many tunnels
//! (per session, per principal), how fast (per principal), and whether the server has room.
//! Pure checks over plain values; the handshake supplies the counts.

use std::time::Duration;

use showoff_proto::{RefusedCode, ServerMessage, TunnelKind, TunnelSpec};

use super::MAX_TUNNELS_PER_SESSION;
use crate::auth::Principal;

/// What the server holds now, as admission needs it. `held_by_principal` counts the tunnels
/// the principal holds, except those the request names again (a reconnect takes them over);
/// it walks every route, so it is only called for principals with a tunnel limit.
pub(crate) struct Load<H: FnOnce() -> usize> {
    pub(crate) held_by_principal: H,
    /// Sessions connected now.
    pub(crate) sessions: usize,
    /// The server's session cap.
    pub(crate) max_sessions: usize,
}

/// The outcome of the principal's tunnel rate limit: `Ok`, wait this long, or more tunnels
/// at once than the rate ever allows (`None`).
pub(crate) type RateCheck = Result<(), Option<Duration>>;

/// Refuses a session that asks for no tunnel or too many, would take its principal over its
/// tunnel limit, opens tunnels faster than allowed, or finds the server full. `rate` spends
/// the principal's tunnel rate; it is called only once the checks before it passed.
pub(crate) fn admit(
    principal: &Principal,
    specs: &[TunnelSpec],
    load: Load<impl FnOnce() -> usize>,
    rate: impl FnOnce() -> RateCheck,
    per_minute: u32,
) -> Result<(), ServerMessage> {
    if specs.is_empty() || specs.len() > MAX_TUNNELS_PER_SESSION {
        return Err(ServerMessage::refused(
            RefusedCode::LimitReached,
            format!("a session opens 1 to {MAX_TUNNELS_PER_SESSION} tunnels"),
        ));
    }
    check_tunnel_limit(principal, specs.len(), load.held_by_principal)?;
    check_tunnel_rate(principal, specs.len(), rate(), per_minute)?;
    if load.sessions >= load.max_sessions {
        return Err(ServerMessage::refused(
            RefusedCode::LimitReached,
            format!(
                "the server is full ({} sessions); try again later",
                load.max_sessions
            ),
        ));
    }
    Ok(())
}

fn check_tunnel_limit(
    principal: &Principal,
    asked: usize,
    held: impl FnOnce() -> usize,
) -> Result<(), ServerMessage> {
    let Some(max) = principal.max_tunnels else {
        return Ok(());
    };
    let held = held();
    if held + asked > max {
        return Err(ServerMessage::refused(
            RefusedCode::LimitReached,
            format!(
                "{} may hold {max} tunnels; {held} are open and {asked} were asked for",
                principal.id
            ),
        ));
    }
    Ok(())
}

fn check_tunnel_rate(
    principal: &Principal,
    count: usize,
    rate: RateCheck,
    per_minute: u32,
) -> Result<(), ServerMessage> {
    match rate {
        Ok(()) => Ok(()),
        Err(Some(wait)) => Err(ServerMessage::refused(
            RefusedCode::RateLimited,
            format!(
                "{} opens at most {per_minute} tunnels per minute; retry in {}s",
                principal.id,
                crate::limits::retry_secs(wait)
            ),
        )),
        Err(None) => Err(ServerMessage::refused(
            RefusedCode::LimitReached,
            format!("{count} tunnels at once exceed the limit of {per_minute} per minute"),
        )),
    }
}

/// Refuses a tunnel kind the principal may not open.
pub(crate) fn check_kind(principal: &Principal, kind: TunnelKind) -> Result<(), ServerMessage> {
    if principal.may_open(kind) {
        return Ok(());
    }
    Err(ServerMessage::refused(
        RefusedCode::KindNotAllowed,
        format!("{} may not open {} tunnels", principal.id, kind.as_str()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn specs(n: usize) -> Vec<TunnelSpec> {
        let spec = TunnelSpec {
            upstream: Default::default(),
            kind: TunnelKind::Http,
            name: None,
            port: None,
            host_header: Default::default(),
            target: String::new(),
            visitors: Default::default(),
        };
        vec![spec; n]
    }

    fn load(held: usize, sessions: usize) -> Load<impl FnOnce() -> usize> {
        Load {
            held_by_principal: move || held,
            sessions,
            max_sessions: 10,
        }
    }

    fn code(result: Result<(), ServerMessage>) -> (RefusedCode, String) {
        match result {
            Err(ServerMessage::Refused { code, message }) => (code, message),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn sessions_within_every_limit_are_admitted() {
        let alice = Principal::unrestricted("alice");
        admit(&alice, &specs(3), load(100, 9), || Ok(()), 0).expect("admitted");
    }

    #[test]
    fn each_limit_refuses_with_its_own_code_and_reason() {
        let mut alice = Principal::unrestricted("alice");
        let (c, m) = code(admit(&alice, &specs(0), load(0, 0), || Ok(()), 0));
        assert_eq!(c, RefusedCode::LimitReached);
        assert!(m.contains("1 to 64"), "{m}");
        let (c, _) = code(admit(&alice, &specs(65), load(0, 0), || Ok(()), 0));
        assert_eq!(c, RefusedCode::LimitReached);
        alice.max_tunnels = Some(3);
        let (c, m) = code(admit(&alice, &specs(2), load(2, 0), || Ok(()), 0));
        assert_eq!(c, RefusedCode::LimitReached);
        assert_eq!(
            m,
            "alice may hold 3 tunnels; 2 are open and 2 were asked for"
        );
        admit(&alice, &specs(1), load(2, 0), || Ok(()), 0).expect("exactly at the limit");
        let spent = std::cell::Cell::new(false);
        let spend = || {
            spent.set(true);
            Ok(())
        };
        code(admit(&alice, &specs(2), load(2, 0), spend, 0));
        assert!(!spent.get(), "a refused limit spends no rate");
        let wait = Err(Some(Duration::from_millis(2500)));
        let (c, m) = code(admit(&alice, &specs(1), load(0, 0), || wait, 5));
        assert_eq!(c, RefusedCode::RateLimited);
        assert!(m.contains("5 tunnels per minute; retry in 3s"), "{m}");
        let (c, _) = code(admit(&alice, &specs(1), load(0, 0), || Err(None), 5));
        assert_eq!(c, RefusedCode::LimitReached);
        let (c, m) = code(admit(&alice, &specs(1), load(0, 10), || Ok(()), 0));
        assert_eq!(c, RefusedCode::LimitReached);
        assert!(m.contains("server is full (10 sessions)"), "{m}");
    }

    #[test]
    fn tunnels_held_are_only_counted_for_a_limited_principal() {
        // Counting walks every route: 10,000 sessions must not cost 10,000² steps.
        let alice = Principal::unrestricted("alice");
        let load = Load {
            held_by_principal: || -> usize { panic!("counted without a limit") },
            sessions: 0,
            max_sessions: 10,
        };
        admit(&alice, &specs(1), load, || Ok(()), 0).expect("admitted without counting");
    }

    #[test]
    fn kinds_follow_the_principal() {
        let mut bob = Principal::unrestricted("bob");
        check_kind(&bob, TunnelKind::Tcp).expect("all kinds when none are listed");
        bob.kinds = vec![TunnelKind::Http];
        let (c, m) = code(check_kind(&bob, TunnelKind::Tcp));
        assert_eq!(
            (c, m.as_str()),
            (RefusedCode::KindNotAllowed, "bob may not open tcp tunnels")
        );
    }
}
