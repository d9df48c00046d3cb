//! A cluster of three instances on one Redis behind HAProxy, the parts its scenarios share,
//! and the failover scenario: the instance holding a client's tunnel is killed with SIGKILL
//! again and again, and the client's URL, asked through the balancer, must answer again
//! within seconds, while an invariant checker reads Redis and every live instance's admin
//! API all along and finds never two instances holding the name.

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use showoff_client::STABLE_SESSION;

use super::{ClientProcess, Score, client_args};
use crate::haproxy::{Haproxy, Pool};
use crate::process::ServerProcess;
use crate::redis::RedisServer;

/// Instances in the cluster.
pub(super) const INSTANCES: usize = 3;
/// The longest a failover may take before the run counts as failed.
const FAILOVER_LIMIT: Duration = Duration::from_secs(30);
/// Shared by the instances (peer links prove it).
const SECRET: &str = "the chaos cluster's shared secret";
/// The instances' admin token, for `/api/v1/tunnels`.
const ADMIN_TOKEN: &str = "chaos-admin-token";
/// The tunnel that moves.
const NAME: &str = "survivor";
/// How often the invariant checker looks.
const CHECK_EVERY: Duration = Duration::from_millis(25);

/// One instance's listeners, fixed so that it restarts where HAProxy expects it.
pub(super) struct Ports {
    control: String,
    data: String,
    http: String,
    pub(super) admin: SocketAddr,
    peer: String,
}

impl Ports {
    fn free() -> Self {
        let take = || SocketAddr::from(([127, 0, 0, 1], crate::ports::steady_port()));
        Self {
            control: take().to_string(),
            data: take().to_string(),
            http: take().to_string(),
            admin: take(),
            peer: take().to_string(),
        }
    }
}

/// Three instances on one Redis, HAProxy in front of their control and HTTP listeners.
pub(super) struct Cluster {
    bin: PathBuf,
    pub(super) redis: RedisServer,
    pub(super) ports: Vec<Ports>,
    /// The running instances; `None` while one is down.
    pub(super) instances: Vec<Option<ServerProcess>>,
    /// Which instances are up, as the invariant checker sees it.
    pub(super) alive: Arc<Mutex<Vec<bool>>>,
    _balancer: Haproxy,
    /// The balancer's control frontend (clients connect here).
    pub(super) control: SocketAddr,
    /// The balancer's HTTP frontend (visitors connect here).
    pub(super) http: SocketAddr,
}

impl Cluster {
    pub(super) fn start(bin: &Path) -> Self {
        let redis = RedisServer::start();
        let ports: Vec<Ports> = (0..INSTANCES).map(|_| Ports::free()).collect();
        let url = redis.url();
        let instances = (0..INSTANCES)
            .map(|i| Some(start_instance(bin, &url, i, &ports[i])))
            .collect();
        let pool = |traffic: fn(&Ports) -> &String| Pool {
            servers: ports
                .iter()
                .map(|p| (traffic(p).parse().expect("address"), p.admin))
                .collect(),
        };
        let balancer = Haproxy::start(&[pool(|p| &p.control), pool(|p| &p.http)]);
        let (control, http) = (balancer.frontends[0], balancer.frontends[1]);
        Self {
            bin: bin.to_path_buf(),
            redis,
            ports,
            instances,
            alive: Arc::new(Mutex::new(vec![true; INSTANCES])),
            _balancer: balancer,
            control,
            http,
        }
    }

    /// A client of `name` for `target_port`, connected through the balancer.
    pub(super) async fn client(
        &self,
        name: &str,
        target_port: u16,
    ) -> Result<ClientProcess, String> {
        let args = client_args(name, target_port, self.control);
        let mut client =
            ClientProcess::start(&self.bin, &args.iter().map(OsStr::new).collect::<Vec<_>>());
        client.next("connected", Duration::from_secs(20)).await?;
        Ok(client)
    }

    /// The index of the instance whose lease holds `name`, from what Redis stores.
    pub(super) fn holder(&self, name: &str) -> Option<usize> {
        let stored = self
            .redis
            .command(&["GET", &format!("showoff:lease:name:{name}")]);
        let json = stored.lines().nth(1)?;
        let record: serde_json::Value = serde_json::from_str(json).ok()?;
        record["i"].as_str()?.strip_prefix("node-")?.parse().ok()
    }

    /// Takes instance `index` out of the checker's view, then SIGKILLs it.
    pub(super) fn kill(&mut self, index: usize) {
        self.alive.lock().expect("alive")[index] = false;
        self.instances[index] = None;
    }

    /// The running instance `index`, taken out of the checker's view (for a drain).
    pub(super) fn take(&mut self, index: usize) -> Option<ServerProcess> {
        self.alive.lock().expect("alive")[index] = false;
        self.instances[index].take()
    }

    /// Starts instance `index` again on its ports and waits until it is ready.
    pub(super) async fn restart(&mut self, index: usize) {
        let url = self.redis.url();
        self.instances[index] = Some(start_instance(&self.bin, &url, index, &self.ports[index]));
        ready(self.ports[index].admin).await;
        self.alive.lock().expect("alive")[index] = true;
    }

    /// Starts the invariant checker on `names`: every [`CHECK_EVERY`] it asks each live
    /// instance's admin API which of them it holds, and Redis which instance the lease names.
    pub(super) fn checker(&self, names: &[&str]) -> Checker {
        let state = Arc::new(CheckState::default());
        let admins: Vec<SocketAddr> = self.ports.iter().map(|p| p.admin).collect();
        let redis = self.redis.addr;
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let (alive, seen) = (self.alive.clone(), state.clone());
        let task = tokio::spawn(async move {
            while !seen.stop.load(Ordering::Relaxed) {
                check_once(&admins, &alive, redis, &names, &seen).await;
                tokio::time::sleep(CHECK_EVERY).await;
            }
        });
        Checker { state, task }
    }
}

/// What the invariant checker found so far.
#[derive(Default)]
pub(super) struct CheckState {
    stop: AtomicBool,
    /// Sweeps made (every live instance and Redis asked once).
    pub(super) sweeps: AtomicU64,
    /// What broke the invariant, as it was seen.
    pub(super) violations: Mutex<Vec<String>>,
    /// Which names two instances listed in the last sweep.
    doubled: Mutex<Vec<bool>>,
}

/// The running invariant checker.
pub(super) struct Checker {
    state: Arc<CheckState>,
    task: tokio::task::JoinHandle<()>,
}

impl Checker {
    /// Stops it; (sweeps made, violations seen).
    pub(super) async fn finish(self) -> (u64, Vec<String>) {
        self.state.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        let sweeps = self.state.sweeps.load(Ordering::Relaxed);
        let violations = std::mem::take(&mut *self.state.violations.lock().expect("violations"));
        (sweeps, violations)
    }
}

/// One sweep: two live instances listing a name, or a live instance listing a name whose
/// Redis lease names another instance, breaks the invariant. An instance that dies during
/// the sweep just does not answer.
async fn check_once(
    admins: &[SocketAddr],
    alive: &Mutex<Vec<bool>>,
    redis: SocketAddr,
    names: &[String],
    seen: &CheckState,
) {
    let up: Vec<bool> = alive.lock().expect("alive").clone();
    let mut listed: Vec<Vec<usize>> = vec![Vec::new(); names.len()];
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    for (index, admin) in admins.iter().enumerate().filter(|(i, _)| up[*i]) {
        let headers = [("authorization", bearer.as_str())];
        let Some((200, body)) = fetch(*admin, "/api/v1/tunnels", &headers).await else {
            continue;
        };
        for (n, name) in names.iter().enumerate() {
            if body.contains(&format!("\"name\":\"{name}\"")) {
                listed[n].push(index);
            }
        }
    }
    let mut found = Vec::new();
    let mut doubled = seen.doubled.lock().expect("doubled").clone();
    doubled.resize(names.len(), false);
    for (n, (name, holders)) in names.iter().zip(&listed).enumerate() {
        // A client that moves opens its next session before it leaves the old one: both
        // instances list the name for the moment between. Two sweeps in a row is a ghost.
        let twice = holders.len() > 1;
        if twice && doubled[n] {
            found.push(format!(
                "{name} listed by instances {holders:?} in two sweeps"
            ));
        }
        doubled[n] = twice;
        if let [only] = holders[..]
            && let Some(leased) = redis_holder(redis, name).await
            && leased != only
            // The lease may have moved during the sweep: ask the instance again.
            && still_lists(admins[only], name).await
            && redis_holder(redis, name).await.is_some_and(|now| now != only)
        {
            found.push(format!(
                "{name} served by node-{only}, leased to node-{leased}"
            ));
        }
    }
    *seen.doubled.lock().expect("doubled") = doubled;
    seen.sweeps.fetch_add(1, Ordering::Relaxed);
    if !found.is_empty() {
        seen.violations.lock().expect("violations").extend(found);
    }
}

async fn still_lists(admin: SocketAddr, name: &str) -> bool {
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    let headers = [("authorization", bearer.as_str())];
    fetch(admin, "/api/v1/tunnels", &headers)
        .await
        .is_some_and(|(_, body)| body.contains(&format!("\"name\":\"{name}\"")))
}

/// The instance the lease of `name` names, read from Redis without blocking the runtime.
async fn redis_holder(redis: SocketAddr, name: &str) -> Option<usize> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let key = format!("showoff:lease:name:{name}");
    let ask = async {
        let mut stream = tokio::net::TcpStream::connect(redis).await.ok()?;
        let command = format!("*2\r\n$3\r\nGET\r\n${}\r\n{key}\r\n", key.len());
        stream.write_all(command.as_bytes()).await.ok()?;
        let mut answer = vec![0u8; 4096];
        let n = stream.read(&mut answer).await.ok()?;
        let text = String::from_utf8_lossy(&answer[..n]).into_owned();
        let record: serde_json::Value = serde_json::from_str(text.lines().nth(1)?).ok()?;
        record["i"].as_str()?.strip_prefix("node-")?.parse().ok()
    };
    tokio::time::timeout(Duration::from_secs(2), ask)
        .await
        .ok()
        .flatten()
}

fn start_instance(bin: &Path, redis: &str, index: usize, ports: &Ports) -> ServerProcess {
    let instance = format!("node-{index}");
    let admin = ports.admin.to_string();
    let extra = [
        "--cluster-redis",
        redis,
        "--instance",
        &instance,
        "--peer-addr",
        &ports.peer,
        "--cluster-secret",
        SECRET,
        "--lease-ttl",
        "3s",
        "--admin-token",
        ADMIN_TOKEN,
        // As a pre-stop hook would: out of the balancer before the listeners close.
        "--drain-delay",
        "1s",
    ];
    let addrs = [&ports.control, &ports.data, &ports.http, &admin].map(String::as_str);
    ServerProcess::start_on(bin, addrs, &extra.map(OsStr::new))
}

/// `kills` times: SIGKILL the instance holding the client's tunnel, time until the tunnel's
/// URL answers 200 through the balancer again, and start the killed instance again, while the
/// invariant checker runs. Invariant: every failover within [`FAILOVER_LIMIT`], the client
/// back, never two holders. The figure: failover p50 and p99.
pub async fn cluster_failover(bin: &Path, kills: usize) -> Score {
    let mut score = Score::new(
        "cluster: SIGKILL the instance holding a tunnel",
        "its URL answers through the balancer again; never two holders",
    );
    let mut cluster = Cluster::start(bin);
    let target = crate::target::spawn_target("failover").await;
    let mut client = match cluster.client(NAME, target.addr.port()).await {
        Ok(client) => client,
        Err(why) => {
            score.failures.push(why);
            return score;
        }
    };
    let checker = cluster.checker(&[NAME]);
    let host = format!("{NAME}.localhost");
    let mut times = Vec::new();
    for kill in 0..kills {
        score.runs += 1;
        let Some(holder) = cluster.holder(NAME) else {
            score
                .failures
                .push(format!("kill {kill}: nobody holds {NAME}"));
            continue;
        };
        let killed = Instant::now();
        cluster.kill(holder);
        let mut back = killed;
        match answers_again(cluster.http, &host, killed).await {
            Ok(took) => {
                times.push(took);
                // The client lost its instance and connected again (the kill hit the holder).
                match client.next("connected", Duration::from_secs(5)).await {
                    Ok(_) => {
                        back = Instant::now();
                        score.held += 1;
                    }
                    Err(why) => score
                        .failures
                        .push(format!("kill {kill}: the client did not reconnect: {why}")),
                }
            }
            Err(why) => score.failures.push(format!("kill {kill}: {why}")),
        }
        cluster.restart(holder).await;
        if kill + 1 < kills {
            // Each kill meets a client whose session has settled: one lost sooner keeps
            // climbing its backoff (a crash loop must not reconnect several times a second),
            // which is the client's rule, not the cluster's failover.
            tokio::time::sleep_until((back + STABLE_SESSION).into()).await;
        }
    }
    let (sweeps, violations) = checker.finish().await;
    if !violations.is_empty() {
        score.held = 0;
        score.failures.extend(violations);
    }
    times.sort();
    if let Some(worst) = times.last() {
        score.worst_recovery = *worst;
        let at =
            |q: f64| times[((times.len() as f64 * q).ceil() as usize).clamp(1, times.len()) - 1];
        score.detail = format!(
            "failover p50 {} ms, p99 {} ms over {} kills; {sweeps} invariant sweeps",
            at(0.50).as_millis(),
            at(0.99).as_millis(),
            times.len()
        );
    }
    drop(client);
    score
}

/// `GET path` with `headers` on a fresh connection to `addr`: status and body, or `None` when
/// the connection fails or takes more than 2 s.
pub(super) async fn fetch(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ask = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let _ = stream.set_nodelay(true);
        let mut request =
            format!("GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n");
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.ok()?;
        let text = String::from_utf8_lossy(&answer).into_owned();
        let status = text.get(9..12)?.parse().ok()?;
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
        Some((status, body))
    };
    tokio::time::timeout(Duration::from_secs(2), ask)
        .await
        .ok()
        .flatten()
}

/// The status of `GET path` with `Host: host` on a fresh connection to `addr`; `None` when
/// the connection fails, closes without a status line or takes more than 2 s.
pub(super) async fn status(addr: SocketAddr, host: &str, path: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ask = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let request = format!("GET {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await.ok()?;
        std::str::from_utf8(head.get(9..12)?).ok()?.parse().ok()
    };
    tokio::time::timeout(Duration::from_secs(2), ask)
        .await
        .ok()
        .flatten()
}

/// Asks the URL through the balancer every 20 ms until it answers 200; the time since `killed`.
async fn answers_again(http: SocketAddr, host: &str, killed: Instant) -> Result<Duration, String> {
    loop {
        if status(http, host, "/").await == Some(200) {
            return Ok(killed.elapsed());
        }
        if killed.elapsed() > FAILOVER_LIMIT {
            return Err(format!("no answer within {FAILOVER_LIMIT:?}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until a restarted instance says it is ready (HAProxy then takes it back).
async fn ready(admin: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if status(admin, "localhost", "/readyz").await == Some(200) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
