//! The control link cut at random moments by an impairment relay.

use std::ffi::OsStr;
use std::path::Path;
use std::time::{Duration, Instant};

use super::{ClientProcess, Moments, Score, admin_addr, client_args, until_metrics};
use crate::impair::Relay;
use crate::process::ServerProcess;
use crate::visitor::{get, metric, request};

/// The admin token the scenario's server gets, to read `/api/v1/sessions`.
const ADMIN_TOKEN: &str = "chaos-admin-token";

/// The control link of `clients` clients at once is cut `cuts` times each, at random moments
/// (up to 1.5 s apart), by an impairment relay between each client and the server. Invariant:
/// each time, the client is back within the backoff it announced (plus
/// [`super::RECONNECT_SLACK`]) with the same public URL; afterwards the server's sessions and
/// tunnels are back to one per client (`/metrics` and `/api/v1/sessions` agree), nothing is
/// pending, and every tunnel answers.
pub async fn control_cuts(bin: &Path, clients: usize, cuts: usize, seed: u64) -> Score {
    let mut score = Score::new(
        "control link cut",
        "back within the announced backoff, same name; sessions, tunnels, pending back to baseline",
    );
    let server = ServerProcess::start(bin, &[OsStr::new("--admin-token"), OsStr::new(ADMIN_TOKEN)]);
    let (control, http) = (server.addr("control"), server.addr("http"));
    let admin = admin_addr(&server.listening);
    let target = crate::target::spawn_target("chaos").await;
    let mut runs = Vec::new();
    for i in 0..clients {
        let relay = Relay::start(control).await;
        let name = format!("cut{i}");
        let args = client_args(&name, target.addr.port(), relay.addr());
        let client = ClientProcess::start(bin, &args.iter().map(OsStr::new).collect::<Vec<_>>());
        let moments = Moments::new(seed.wrapping_add(i as u64 * 7919));
        runs.push(tokio::spawn(cut_one(client, relay, cuts, moments)));
    }
    let mut alive = Vec::new();
    for run in runs {
        let (client, outcome) = run.await.expect("client run");
        score.runs += cuts as u32;
        score.held += outcome.held;
        score.worst_recovery = score.worst_recovery.max(outcome.worst);
        score.failures.extend(outcome.failures);
        alive.push(client);
    }
    // The clients stay up (their processes end with `alive`) while the baseline is read.
    if let Err(why) = baseline(admin, http, clients).await {
        score.failures.push(why);
    }
    drop(alive);
    score
}

/// What one client's cuts showed.
#[derive(Default)]
struct Outcome {
    /// Cuts it recovered from in time, with its name.
    held: u32,
    worst: Duration,
    failures: Vec<String>,
}

/// One client's cuts; the client and its relay come back with the outcome, still running.
async fn cut_one(
    mut client: ClientProcess,
    relay: Relay,
    cuts: usize,
    mut moments: Moments,
) -> ((ClientProcess, Relay), Outcome) {
    let mut outcome = Outcome::default();
    let first = match client.next("connected", Duration::from_secs(20)).await {
        Ok(event) => event["public_url"].clone(),
        Err(why) => {
            outcome.failures.push(why);
            return ((client, relay), outcome);
        }
    };
    for n in 0..cuts {
        tokio::time::sleep(moments.below(Duration::from_millis(1500))).await;
        let cut_at = Instant::now();
        relay.cut();
        match client.back().await {
            Ok((event, _)) if event["public_url"] == first => {
                outcome.held += 1;
                outcome.worst = outcome.worst.max(cut_at.elapsed());
            }
            Ok((event, _)) => {
                let url = &event["public_url"];
                outcome
                    .failures
                    .push(format!("cut {n}: came back as {url}"));
            }
            Err(why) => outcome.failures.push(format!("cut {n}: {why}")),
        }
    }
    ((client, relay), outcome)
}

/// One session and one tunnel per client, nothing pending, and every tunnel answering.
async fn baseline(
    admin: std::net::SocketAddr,
    http: std::net::SocketAddr,
    clients: usize,
) -> Result<(), String> {
    let want = clients as f64;
    until_metrics(admin, Duration::from_secs(20), |text| {
        let sessions = metric(text, "showoff_sessions_active");
        let tunnels = metric(text, "showoff_tunnels_active{kind=\"http\"}");
        let pending = metric(text, "showoff_pending_streams");
        if sessions == Some(want) && tunnels == Some(want) && pending.unwrap_or(0.0) == 0.0 {
            return Ok(());
        }
        Err(format!(
            "server not back to baseline: sessions {sessions:?}, tunnels {tunnels:?}, pending {pending:?}"
        ))
    })
    .await?;
    // The admin API agrees: one session per client, each with its own tunnel.
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    let listed = request(
        admin,
        "GET",
        "/api/v1/sessions",
        &[("authorization", &bearer)],
        "",
    )
    .await;
    let sessions: serde_json::Value =
        serde_json::from_str(&listed.body).map_err(|e| format!("/api/v1/sessions: {e}"))?;
    let mut names: Vec<String> = sessions
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["tunnels"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t.as_str().map(str::to_string))
        .collect();
    names.sort();
    let mut want_names: Vec<String> = (0..clients).map(|i| format!("cut{i}")).collect();
    want_names.sort();
    if sessions.as_array().map(Vec::len) != Some(clients) || names != want_names {
        return Err(format!("/api/v1/sessions after the cuts: {sessions}"));
    }
    for i in 0..clients {
        let host = format!("cut{i}.localhost:{}", http.port());
        let status = get(http, &host, "/").await.status;
        if status != 200 {
            return Err(format!("cut{i} answered {status} after the cuts"));
        }
    }
    Ok(())
}
