//! A cluster instance drained (SIGTERM) under load: visitors keep asking every tunnel through
//! the balancer, on keep-alive connections that reconnect whenever one is closed, while the
//! instance holding one of them drains. Not one request may go unanswered or fail, the
//! drained instance's clients must be on the others with their names, and the invariant
//! checker must never see two holders.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use showoff_client::STABLE_SESSION;

use super::cluster::{Cluster, INSTANCES};
use super::{ClientProcess, Score};
use crate::process::ServerProcess;
use crate::visitor::{KeepAlive, keep_alive_loop};

/// Keep-alive loops per tunnel during each drain.
const LOOPS_PER_NAME: usize = 4;
/// Requests a connection sends before it closes and a new one is opened (so new
/// connections meet the balancer throughout the drain).
const PER_CONNECTION: u64 = 100;
/// How long the load goes on after the drained instance exited.
const AFTER: Duration = Duration::from_secs(1);

/// `rounds` times: drain the instance holding one of three tunnels under load, then start it
/// again. Invariant: zero requests lost or failed, the drained instance exits 0 after a clean
/// drain, its clients hold their names on other instances, never two holders. The figure:
/// the drain's length and the requests answered during it.
pub async fn cluster_drain(bin: &Path, rounds: usize) -> Score {
    let mut score = Score::new(
        "cluster: drain an instance under load",
        "zero requests lost, its clients on the others, never two holders",
    );
    let mut cluster = Cluster::start(bin);
    let target = crate::target::spawn_target("drained").await;
    let names: Vec<String> = (0..INSTANCES).map(|i| format!("busy-{i}")).collect();
    let mut clients = Vec::new();
    for name in &names {
        match cluster.client(name, target.addr.port()).await {
            Ok(client) => clients.push(client),
            Err(why) => {
                score.failures.push(format!("{name}: {why}"));
                return score;
            }
        }
    }
    let checker = cluster.checker(&names.iter().map(String::as_str).collect::<Vec<_>>());
    let mut answered = 0;
    for round in 0..rounds {
        score.runs += 1;
        match drain_round(&mut cluster, &names, &mut clients, round).await {
            Ok((took, served)) => {
                score.held += 1;
                score.worst_recovery = score.worst_recovery.max(took);
                answered += served;
            }
            Err(why) => score.failures.push(format!("round {round}: {why}")),
        }
        if round + 1 < rounds {
            // The moved clients' sessions settle before the next drain moves them again.
            tokio::time::sleep(STABLE_SESSION).await;
        }
    }
    let (sweeps, violations) = checker.finish().await;
    if !violations.is_empty() {
        score.held = 0;
        score.failures.extend(violations);
    }
    score.detail =
        format!("{answered} requests answered across the drains; {sweeps} invariant sweeps");
    score
}

/// One drain: load on every name, SIGTERM to the holder of `names[round % 3]`, the load on
/// until [`AFTER`] past its exit. (drain length, requests answered).
async fn drain_round(
    cluster: &mut Cluster,
    names: &[String],
    clients: &mut [ClientProcess],
    round: usize,
) -> Result<(Duration, u64), String> {
    let picked = &names[round % names.len()];
    let drained = cluster
        .holder(picked)
        .ok_or_else(|| format!("nobody holds {picked}"))?;
    let moving: Vec<usize> = (0..names.len())
        .filter(|&n| cluster.holder(&names[n]) == Some(drained))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(AtomicU64::new(0));
    let loops: Vec<_> = names
        .iter()
        .flat_map(|name| std::iter::repeat_n(name, LOOPS_PER_NAME))
        .map(|name| {
            let host = format!("{name}.localhost");
            tokio::spawn(reconnecting(
                cluster.http,
                host,
                stop.clone(),
                progress.clone(),
            ))
        })
        .collect();
    let started = Instant::now();
    while progress.load(Ordering::Relaxed) < 1_000 {
        if started.elapsed() > Duration::from_secs(20) {
            stop.store(true, Ordering::Relaxed);
            return Err("the load never got going".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let server = cluster.take(drained).ok_or("the holder is not running")?;
    let sent = Instant::now();
    let exit = sigterm_and_wait(server).await;
    let took = sent.elapsed();
    tokio::time::sleep(AFTER).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = KeepAlive::default();
    for handle in loops {
        total.add(&handle.await.map_err(|e| e.to_string())?);
    }
    let moved = moved_clients(cluster, names, clients, &moving, drained).await;
    cluster.restart(drained).await;
    let (code, clean) = exit?;
    if total.lost != 0 || total.failed != 0 {
        return Err(format!("the load lost requests: {total:?}"));
    }
    if code != Some(0) || !clean {
        return Err(format!("exit {code:?}, clean drain logged: {clean}"));
    }
    moved?;
    Ok((took, total.answered))
}

/// Keep-alive loops to `host` through the balancer, one after another, until `stop`; what
/// they saw, summed. `progress` counts requests answered as they are.
async fn reconnecting(
    http: std::net::SocketAddr,
    host: String,
    stop: Arc<AtomicBool>,
    progress: Arc<AtomicU64>,
) -> KeepAlive {
    let mut total = KeepAlive::default();
    while !stop.load(Ordering::Relaxed) {
        let seen = keep_alive_loop(http, host.clone(), PER_CONNECTION).await;
        progress.fetch_add(seen.answered, Ordering::Relaxed);
        total.add(&seen);
    }
    total
}

/// Every client of the drained instance connected again, and each name of theirs is leased
/// to an instance that is not the drained one.
async fn moved_clients(
    cluster: &Cluster,
    names: &[String],
    clients: &mut [ClientProcess],
    moving: &[usize],
    drained: usize,
) -> Result<(), String> {
    for &n in moving {
        clients[n].next("connected", Duration::from_secs(5)).await?;
        match cluster.holder(&names[n]) {
            Some(holder) if holder != drained => {}
            other => {
                return Err(format!(
                    "{} is leased to {other:?} after the drain",
                    names[n]
                ));
            }
        }
    }
    Ok(())
}

/// SIGTERM, then the exit code and whether a clean drain was logged (a minute at most).
async fn sigterm_and_wait(server: ServerProcess) -> Result<(Option<i32>, bool), String> {
    let pid = server.child.pid().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status();
    if !killed.is_ok_and(|s| s.success()) {
        return Err("kill -TERM failed".into());
    }
    super::drain::exit_of(server).await
}
