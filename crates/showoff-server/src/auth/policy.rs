//! OPA-style decisions: a Rego policy evaluated in-process ([`RegoPolicy`], regorus) or an
//! external service speaking OPA's data API ([`Webhook`]).
//!
//! Both see the same input document and return the same decision shape:
//!
//! ```json
//! input:  {"token": "...", "token_sha256": "<hex>", "peer": {"ip": "203.0.113.7", "port": 51234},
//!          "certificate": "<client certificate identity>" | null}
//! result: true | false | {"allow": true, "id": "alice", "names": ["alice-*"], "kinds": ["http"],
//!                         "max_tunnels": 3, "reason": "..."}
//! ```
//!
//! `true` admits a principal named after the token's hash (`policy:<16 hex>`); an object with
//! `allow: true` admits `policy:<id>` with its grant; `false`, an undefined result or
//! `allow: false` refuse (`reason` is shown to the client). Evaluation errors, timeouts and
//! malformed answers refuse with `auth_unavailable`, which clients retry.

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpStream;

use super::{AuthError, AuthRequest, Authenticator, Grant, Principal, token_hash};

/// Prefix of the principal ids policies produce (`policy:alice`).
pub const PRINCIPAL_PREFIX: &str = "policy:";

/// Longest decision answer read from a webhook.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Longest a Rego evaluation may run.
const REGO_TIME_LIMIT: Duration = Duration::from_millis(250);

/// Longest a login waits for the policy engine before it is refused `auth_unavailable`
/// (four evaluations' worth), so a flood of logins queues boundedly, not forever.
const REGO_QUEUE_WAIT: Duration = Duration::from_secs(1);

/// The input document a decision is asked for.
pub fn input(request: &AuthRequest<'_>) -> Value {
    json!({
        "token": request.token,
        "token_sha256": token_hash(request.token),
        "peer": {"ip": request.peer.ip().to_string(), "port": request.peer.port()},
        "certificate": request.certificate,
    })
}

/// A decision document turned into a principal or a refusal.
pub fn decide(result: Option<&Value>, request: &AuthRequest<'_>) -> Result<Principal, AuthError> {
    let hashed = || format!("{PRINCIPAL_PREFIX}{}", &token_hash(request.token)[..16]);
    let object = match result {
        None | Some(Value::Null) | Some(Value::Bool(false)) => return Err(AuthError::Rejected),
        Some(Value::Bool(true)) => return Ok(Principal::unrestricted(hashed())),
        Some(Value::Object(object)) => object,
        Some(other) => {
            return Err(AuthError::Unavailable(format!(
                "the policy answered {}, expected a boolean or an object",
                kind_of(other)
            )));
        }
    };
    let malformed =
        |what: &str| AuthError::Unavailable(format!("the policy's decision has {what}"));
    if object.get("allow").and_then(Value::as_bool) != Some(true) {
        return Err(match object.get("reason").and_then(Value::as_str) {
            Some(reason) => AuthError::Denied(reason.chars().take(200).collect()),
            None => AuthError::Rejected,
        });
    }
    let id = match object.get("id") {
        None => hashed(),
        Some(Value::String(id)) if !id.is_empty() && id.len() <= 128 => {
            format!("{PRINCIPAL_PREFIX}{id}")
        }
        Some(_) => return Err(malformed("an id that is not a short string")),
    };
    let mut grant_fields = object.clone();
    for key in ["allow", "id", "reason"] {
        grant_fields.remove(key);
    }
    let grant: Grant = serde_json::from_value(Value::Object(grant_fields))
        .map_err(|e| malformed(&format!("an invalid grant ({e})")))?;
    Ok(grant.principal(id))
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A Rego policy evaluated in-process, on the blocking pool (evaluation is CPU work of up to
/// [`REGO_TIME_LIMIT`] that must not stall the async workers serving visitors), one evaluation
/// at a time behind a semaphore whose wait is bounded.
pub struct RegoPolicy {
    engine: Arc<Mutex<regorus::Engine>>,
    rule: Arc<str>,
    gate: Arc<tokio::sync::Semaphore>,
}

impl RegoPolicy {
    /// Loads `rego` (named `path` in errors) and checks that `rule` (`data.showoff.authz`)
    /// can be evaluated.
    pub fn new(path: &str, rego: &str, rule: &str) -> Result<Self, String> {
        let mut engine = regorus::Engine::new();
        engine
            .add_policy(path.to_string(), rego.to_string())
            .map_err(|e| format!("{path}: {e}"))?;
        engine.set_execution_timer_config(regorus::utils::limits::ExecutionTimerConfig {
            limit: REGO_TIME_LIMIT,
            check_interval: NonZeroU32::MIN,
        });
        engine.set_input(regorus::Value::new_object());
        engine
            .eval_rule(rule.to_string())
            .map_err(|e| format!("{path}: rule {rule} cannot be evaluated: {e}"))?;
        Ok(Self {
            engine: Arc::new(Mutex::new(engine)),
            rule: rule.into(),
            gate: Arc::new(tokio::sync::Semaphore::new(1)),
        })
    }

    /// Evaluates on the blocking pool once the semaphore admits it.
    async fn evaluate_off_the_workers(&self, input: Value) -> Result<Option<Value>, AuthError> {
        let busy = || AuthError::Unavailable("the policy engine is busy; retry".into());
        let permit = tokio::time::timeout(REGO_QUEUE_WAIT, self.gate.clone().acquire_owned())
            .await
            .map_err(|_| busy())?
            .map_err(|_| busy())?;
        let (engine, rule) = (self.engine.clone(), self.rule.clone());
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            evaluate(&engine, &rule, &input)
        })
        .await
        .map_err(|_| AuthError::Unavailable("the policy evaluation failed".into()))?
    }
}

/// One evaluation of `rule` for `input`.
fn evaluate(
    engine: &Mutex<regorus::Engine>,
    rule: &str,
    input: &Value,
) -> Result<Option<Value>, AuthError> {
    let unavailable = |e: String| {
        tracing::warn!(error = %e, "policy evaluation failed");
        AuthError::Unavailable("the policy could not be evaluated".into())
    };
    let input = regorus::Value::from_json_str(&input.to_string())
        .map_err(|e| unavailable(e.to_string()))?;
    // Evaluation is synchronous and time-limited; no await happens under the lock.
    let mut engine = engine.lock().unwrap_or_else(|p| p.into_inner());
    engine.set_input(input);
    let value = engine
        .eval_rule(rule.to_string())
        .map_err(|e| unavailable(e.to_string()))?;
    drop(engine);
    if value == regorus::Value::Undefined {
        return Ok(None);
    }
    let text = value
        .to_json_str()
        .map_err(|e| unavailable(e.to_string()))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| unavailable(e.to_string()))
}

#[async_trait]
impl Authenticator for RegoPolicy {
    async fn authenticate(&self, request: &AuthRequest<'_>) -> Result<Principal, AuthError> {
        let result = self.evaluate_off_the_workers(input(request)).await?;
        decide(result.as_ref(), request)
    }
}

/// A decision service speaking OPA's data API: `POST <url>` with `{"input": ...}`, answered by
/// `{"result": ...}` (no `result`: undefined, refused).
pub struct Webhook {
    uri: http::Uri,
    authority: String,
    timeout: Duration,
}

impl Webhook {
    /// A webhook at `url` (`http://host:port/v1/data/showoff/authz`), each decision bounded by
    /// `timeout`.
    pub fn new(url: &str, timeout: Duration) -> Result<Self, String> {
        let uri: http::Uri = url
            .parse()
            .map_err(|e| format!("invalid webhook URL {url:?}: {e}"))?;
        if uri.scheme_str() != Some("http") {
            return Err(format!(
                "the webhook URL {url:?} must start with http:// (run the decision service beside \
                 the server, or behind a local TLS proxy)"
            ));
        }
        let authority = uri
            .authority()
            .ok_or_else(|| format!("the webhook URL {url:?} has no host"))?;
        let authority = match authority.port_u16() {
            Some(_) => authority.to_string(),
            None => format!("{}:80", authority.host()),
        };
        Ok(Self {
            uri,
            authority,
            timeout,
        })
    }

    async fn ask(&self, input: Value) -> Result<Option<Value>, String> {
        let stream = TcpStream::connect(&self.authority)
            .await
            .map_err(|e| format!("connecting to {} failed: {e}", self.authority))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        // The connection task ends with the exchange (one request, then the stream drops).
        tokio::spawn(connection);
        let body = serde_json::to_vec(&json!({ "input": input })).map_err(|e| e.to_string())?;
        let path = self
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        let request = http::Request::post(path)
            .header(http::header::HOST, self.authority.as_str())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::CONNECTION, "close")
            .body(Full::new(bytes::Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| format!("reading the answer failed: {e}"))?
            .to_bytes();
        if !status.is_success() {
            return Err(format!("the webhook answered {status}"));
        }
        let answer: Value =
            serde_json::from_slice(&body).map_err(|e| format!("the answer is not JSON: {e}"))?;
        match answer {
            Value::Object(mut fields) => Ok(fields.remove("result")),
            _ => Err("the answer is not a JSON object".into()),
        }
    }
}

#[async_trait]
impl Authenticator for Webhook {
    async fn authenticate(&self, request: &AuthRequest<'_>) -> Result<Principal, AuthError> {
        let result = match tokio::time::timeout(self.timeout, self.ask(input(request))).await {
            Ok(Ok(result)) => result,
            Ok(Err(error)) => {
                tracing::warn!(%error, url = %self.uri, "decision webhook failed");
                return Err(AuthError::Unavailable("the decision service failed".into()));
            }
            Err(_) => {
                tracing::warn!(url = %self.uri, timeout = ?self.timeout, "decision webhook timed out");
                return Err(AuthError::Unavailable(
                    "the decision service timed out".into(),
                ));
            }
        };
        decide(result.as_ref(), request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::tests::request;
    use showoff_proto::TunnelKind;

    #[tokio::test(flavor = "current_thread")]
    async fn a_slow_policy_does_not_stall_the_async_worker() {
        // Issue 11, item 13: evaluation ran on the async worker, so a slow policy (or a flood
        // of logins) stopped every visitor served by that thread.
        let cells: Vec<String> = (0..200).map(|i| i.to_string()).collect();
        let rego = format!(
            "package t\na := [{}]\nslow := count([1 | input.token == \"slow\"; some i, j, k; a[i]; a[j]; a[k]])\n",
            cells.join(", ")
        );
        let policy = RegoPolicy::new("slow.rego", &rego, "data.t.slow").expect("policy");
        let ticks = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let ticker = tokio::spawn({
            let ticks = ticks.clone();
            async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    ticks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        });
        let outcome = policy.authenticate(&request("slow")).await;
        ticker.abort();
        assert!(
            matches!(outcome, Err(AuthError::Unavailable(_))),
            "the time limit stops it: {outcome:?}"
        );
        let ticked = ticks.load(std::sync::atomic::Ordering::Relaxed);
        assert!(
            ticked > 20,
            "the worker kept serving during the evaluation: {ticked} ticks"
        );
    }

    #[test]
    fn decisions_map_to_principals_or_refusals() {
        let req = request("tok");
        assert_eq!(decide(None, &req), Err(AuthError::Rejected));
        assert_eq!(decide(Some(&json!(false)), &req), Err(AuthError::Rejected));
        let open = decide(Some(&json!(true)), &req).expect("allowed");
        assert!(open.id.starts_with("policy:") && open.names.is_empty());
        let alice = decide(
            Some(&json!({"allow": true, "id": "alice", "names": ["alice-*"], "kinds": ["tcp"]})),
            &req,
        )
        .expect("allowed");
        assert_eq!(alice.id, "policy:alice");
        assert!(alice.may_use_name("alice-db") && !alice.may_open(TunnelKind::Http));
        assert_eq!(
            decide(
                Some(&json!({"allow": false, "reason": "office hours only"})),
                &req
            ),
            Err(AuthError::Denied("office hours only".into()))
        );
        assert!(matches!(
            decide(Some(&json!({"allow": true, "kinds": ["ftp"]})), &req),
            Err(AuthError::Unavailable(_))
        ));
        assert!(matches!(
            decide(Some(&json!("yes")), &req),
            Err(AuthError::Unavailable(_))
        ));
    }

    const POLICY: &str = r#"
package showoff

import rego.v1

default authz := false

authz := {"allow": true, "id": "alice", "names": ["alice-*"]} if {
    input.token == "alice-token"
}

authz := {"allow": false, "reason": "this network is blocked"} if {
    net.cidr_contains("10.0.0.0/8", input.peer.ip)
}
"#;

    #[tokio::test]
    async fn rego_policies_decide_in_process() {
        let policy = RegoPolicy::new("authz.rego", POLICY, "data.showoff.authz").expect("policy");
        let alice = policy
            .authenticate(&request("alice-token"))
            .await
            .expect("alice");
        assert_eq!(alice.id, "policy:alice");
        assert_eq!(
            policy.authenticate(&request("other")).await,
            Err(AuthError::Rejected)
        );
        let blocked = AuthRequest {
            token: "x",
            peer: "10.1.2.3:5000".parse().expect("addr"),
            certificate: None,
        };
        assert_eq!(
            policy.authenticate(&blocked).await,
            Err(AuthError::Denied("this network is blocked".into()))
        );
    }

    #[test]
    fn broken_policies_are_refused_at_start() {
        assert!(RegoPolicy::new("bad.rego", "package x\nallow if {", "data.x.allow").is_err());
        assert!(RegoPolicy::new("p.rego", POLICY, "data.showoff.missing").is_err());
        assert!(Webhook::new("https://opa:8181/v1/data/x", Duration::from_secs(1)).is_err());
        assert!(Webhook::new("not a url", Duration::from_secs(1)).is_err());
        assert!(Webhook::new("http://127.0.0.1:8181/v1/data/x", Duration::from_secs(1)).is_ok());
    }
}
