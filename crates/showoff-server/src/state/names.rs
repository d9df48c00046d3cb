//! The naming rules a requested tunnel name must pass, in order: DNS-label validity, the
//! server's banned and reserved lists, the server's allowed patterns, the principal's own
//! patterns; and readable random names (`brave-otter-4821`) for tunnels that ask for none,
//! fitted into the patterns that apply. Each refusal names the rule that refused.

use showoff_proto::{RefusedCode, ServerMessage};

use crate::auth::{NamePattern, Principal};
use crate::config::NamePolicy;

/// Applies the naming rules to a requested name; the refusal says which rule refused.
pub(crate) fn check_name(
    policy: &NamePolicy,
    principal: &Principal,
    name: &str,
) -> Result<(), ServerMessage> {
    let not_allowed = |why: String| ServerMessage::refused(RefusedCode::NameNotAllowed, why);
    showoff_proto::host::validate_name(name).map_err(|e| {
        not_allowed(format!(
            "{name:?} is not a valid name ({e}): use 1-63 of a-z, 0-9 and '-'"
        ))
    })?;
    if policy.banned.iter().any(|b| b == name) {
        return Err(not_allowed(format!("{name:?} is banned on this server")));
    }
    if policy.reserved.iter().any(|r| r == name) {
        return Err(not_allowed(format!("{name:?} is reserved on this server")));
    }
    if !policy.allow.is_empty() && !policy.allow.iter().any(|p| p.matches(name)) {
        let patterns = join_patterns(&policy.allow);
        return Err(not_allowed(format!(
            "{name:?} is outside the names this server allows ({patterns})"
        )));
    }
    if !principal.may_use_name(name) {
        let patterns = join_patterns(&principal.names);
        return Err(not_allowed(format!(
            "{name:?} is outside the names this token may use ({patterns})"
        )));
    }
    Ok(())
}

fn join_patterns(patterns: &[NamePattern]) -> String {
    patterns
        .iter()
        .map(NamePattern::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A readable random name; inside the principal's (or else the server's) patterns when there
/// are any, by filling a pattern's `*` (`alice-*` → `alice-brave-otter-4821`).
pub(crate) fn random_name(
    policy: &NamePolicy,
    principal: &Principal,
) -> Result<String, ServerMessage> {
    let readable = showoff_proto::id::readable_name();
    let patterns = if principal.names.is_empty() {
        &policy.allow
    } else {
        &principal.names
    };
    if patterns.is_empty() {
        return Ok(readable);
    }
    patterns
        .iter()
        .find_map(|p| p.fill(&readable))
        .ok_or_else(|| {
            let patterns = join_patterns(patterns);
            ServerMessage::refused(
                RefusedCode::NameNotAllowed,
                format!("ask for a name: only {patterns} are allowed"),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(result: Result<impl std::fmt::Debug, ServerMessage>) -> String {
        match result {
            Err(ServerMessage::Refused { code, message }) => {
                assert_eq!(code, RefusedCode::NameNotAllowed);
                message
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn each_rule_names_itself() {
        let policy = NamePolicy {
            allow: vec![NamePattern::new("team-*"), NamePattern::new("www")],
            reserved: vec!["www".into()],
            banned: vec!["team-evil".into()],
        };
        let anyone = Principal::unrestricted("p");
        let mut alice = Principal::unrestricted("alice");
        alice.names = vec![NamePattern::new("team-alice-*")];
        assert!(refusal(check_name(&policy, &anyone, "Bad_Name")).contains("not a valid name"));
        assert!(refusal(check_name(&policy, &anyone, "team-evil")).contains("banned"));
        assert!(refusal(check_name(&policy, &anyone, "www")).contains("reserved"));
        assert!(refusal(check_name(&policy, &anyone, "demo")).contains("this server allows"));
        assert!(refusal(check_name(&policy, &alice, "team-bob")).contains("this token may use"));
        check_name(&policy, &alice, "team-alice-web").expect("inside both");
        check_name(&NamePolicy::default(), &anyone, "demo").expect("no rules");
    }

    #[test]
    fn random_names_fit_the_patterns_that_apply() {
        let policy = NamePolicy {
            allow: vec![NamePattern::new("dev-*")],
            ..NamePolicy::default()
        };
        let anyone = Principal::unrestricted("p");
        assert!(
            random_name(&policy, &anyone)
                .expect("fits")
                .starts_with("dev-")
        );
        let mut alice = Principal::unrestricted("alice");
        alice.names = vec![NamePattern::new("alice-*")];
        assert!(
            random_name(&policy, &alice)
                .expect("fits")
                .starts_with("alice-")
        );
        alice.names = vec![NamePattern::new("exact")];
        assert!(refusal(random_name(&policy, &alice)).contains("ask for a name"));
        let free = random_name(&NamePolicy::default(), &anyone).expect("readable");
        showoff_proto::host::validate_name(&free).expect("a valid name");
    }
}
