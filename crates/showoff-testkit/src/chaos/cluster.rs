//! A cluster of three instances on one Redis behind HAProxy; the instance holding a client's
//! tunnel is killed with SIGKILL again and again, and the client's URL, asked through the
//! balancer, must answer again within seconds, with never two instances holding the name.

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use showoff_client::STABLE_SESSION;

use super::{ClientProcess, Score, client_args};
use crate::haproxy::{Haproxy, Pool};
use crate::process::ServerProcess;
use crate::redis::RedisServer;
use crate::visitor::request;

/// Instances in the cluster.
const INSTANCES: usize = 3;
/// The longest a failover may take before the run counts as failed.
const FAILOVER_LIMIT: Duration = Duration::from_secs(30);
/// Shared by the instances (peer links prove it).
const SECRET: &str = "the chaos cluster's shared secret";
/// The instances' admin token, for `/api/v1/tunnels`.
const ADMIN_TOKEN: &str = "chaos-admin-token";
/// The tunnel that moves.
const NAME: &str = "survivor";

/// One instance's listeners, fixed so that it restarts where HAProxy expects it.
struct Ports {
    control: String,
    data: String,
    http: String,
    admin: String,
    peer: String,
}

impl Ports {
    fn free() -> Self {
        let take = || {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
            listener.local_addr().expect("addr").to_string()
        };
        Self {
            control: take(),
            data: take(),
            http: take(),
            admin: take(),
            peer: take(),
        }
    }

    fn addr(text: &str) -> SocketAddr {
        text.parse().expect("address")
    }
}

fn start_instance(bin: &Path, redis: &str, index: usize, ports: &Ports) -> ServerProcess {
    let instance = format!("node-{index}");
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
    ];
    let addrs = [&ports.control, &ports.data, &ports.http, &ports.admin].map(String::as_str);
    ServerProcess::start_on(bin, addrs, &extra.map(OsStr::new))
}

/// `kills` times: SIGKILL the instance holding the client's tunnel, time until the tunnel's
/// URL answers 200 through the balancer again, check that exactly one live instance holds the
/// name, and start the killed instance again. Invariant: every failover within
/// [`FAILOVER_LIMIT`], never two holders. The figure: failover p50 and p99.
pub async fn cluster_failover(bin: &Path, kills: usize) -> Score {
    let mut score = Score::new(
        "cluster: SIGKILL the instance holding a tunnel",
        "its URL answers through the balancer again; never two holders",
    );
    let redis = RedisServer::start();
    let url = redis.url();
    let ports: Vec<Ports> = (0..INSTANCES).map(|_| Ports::free()).collect();
    let mut instances: Vec<Option<ServerProcess>> = (0..INSTANCES)
        .map(|i| Some(start_instance(bin, &url, i, &ports[i])))
        .collect();
    let pool = |traffic: fn(&Ports) -> &String| Pool {
        servers: ports
            .iter()
            .map(|p| (Ports::addr(traffic(p)), Ports::addr(&p.admin)))
            .collect(),
    };
    let balancer = Haproxy::start(&[pool(|p| &p.control), pool(|p| &p.http)]);
    let (control, http) = (balancer.frontends[0], balancer.frontends[1]);
    let target = crate::target::spawn_target("failover").await;
    let args = client_args(NAME, target.addr.port(), control);
    let mut client = ClientProcess::start(bin, &args.iter().map(OsStr::new).collect::<Vec<_>>());
    if let Err(why) = client.next("connected", Duration::from_secs(20)).await {
        score.failures.push(why);
        return score;
    }
    let host = format!("{NAME}.localhost");
    let mut times = Vec::new();
    for kill in 0..kills {
        score.runs += 1;
        let Some(holder) = holder(&redis) else {
            score
                .failures
                .push(format!("kill {kill}: nobody holds {NAME}"));
            continue;
        };
        let killed = Instant::now();
        instances[holder] = None; // SIGKILL
        let mut back = killed;
        match answers_again(http, &host, killed).await {
            Ok(took) => {
                times.push(took);
                // The client lost its instance and connected again (the kill hit the holder).
                match client.next("connected", Duration::from_secs(5)).await {
                    Ok(_) => back = Instant::now(),
                    Err(why) => score
                        .failures
                        .push(format!("kill {kill}: the client did not reconnect: {why}")),
                }
                match holders(&ports, &instances).await {
                    1 => score.held += 1,
                    n => score
                        .failures
                        .push(format!("kill {kill}: {n} instances hold {NAME}")),
                }
            }
            Err(why) => score.failures.push(format!("kill {kill}: {why}")),
        }
        instances[holder] = Some(start_instance(bin, &url, holder, &ports[holder]));
        ready(Ports::addr(&ports[holder].admin)).await;
        if kill + 1 < kills {
            // Each kill meets a client whose session has settled: one lost sooner keeps
            // climbing its backoff (a crash loop must not reconnect several times a second),
            // which is the client's rule, not the cluster's failover.
            tokio::time::sleep_until((back + STABLE_SESSION).into()).await;
        }
    }
    times.sort();
    if let Some(worst) = times.last() {
        score.worst_recovery = *worst;
        let at =
            |q: f64| times[((times.len() as f64 * q).ceil() as usize).clamp(1, times.len()) - 1];
        score.detail = format!(
            "failover p50 {} ms, p99 {} ms over {} kills",
            at(0.50).as_millis(),
            at(0.99).as_millis(),
            times.len()
        );
    }
    drop(client);
    score
}

/// The index of the instance whose lease holds the name, from what Redis stores.
fn holder(redis: &RedisServer) -> Option<usize> {
    let stored = redis.command(&["GET", &format!("showoff:lease:name:{NAME}")]);
    let json = stored.lines().nth(1)?;
    let record: serde_json::Value = serde_json::from_str(json).ok()?;
    record["i"].as_str()?.strip_prefix("node-")?.parse().ok()
}

/// The status of `GET path` with `Host: host` on a fresh connection to `addr`; `None` when
/// the connection fails, closes without a status line or takes more than 2 s.
async fn status(addr: SocketAddr, host: &str, path: &str) -> Option<u16> {
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

/// How many live instances list the name among their tunnels.
async fn holders(ports: &[Ports], instances: &[Option<ServerProcess>]) -> usize {
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    let mut count = 0;
    for (ports, instance) in ports.iter().zip(instances) {
        if instance.is_none() {
            continue;
        }
        let admin = Ports::addr(&ports.admin);
        let headers = [("authorization", bearer.as_str())];
        let listed = request(admin, "GET", "/api/v1/tunnels", &headers, "").await;
        if listed.body.contains(&format!("\"name\":\"{NAME}\"")) {
            count += 1;
        }
    }
    count
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
