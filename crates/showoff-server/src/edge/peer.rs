//! Peer links between the instances of a cluster. A visitor who reaches instance B for a
//! tunnel that instance A holds is forwarded one hop: B looks the tunnel's lease up, finds A's
//! announced peer listener, and sends the request there; A serves it as if the visitor had
//! come to A, with the visitor's address as B saw it.
//!
//! A peer connection opens with a challenge: A sends `SHOWOFF-PEER/1 <nonce>` (16 random
//! bytes, hex), B answers `<instance> <proof>`, where the proof is the hex HMAC-SHA256 of
//! `showoff-peer/1|<nonce>|<instance>` under the cluster secret, and A answers `OK` (or
//! `DENIED` and closes). A captured proof is worth nothing on another connection. After that
//! the connection carries HTTP/1.1 requests from B, each with the peer headers
//! (`x-showoff-peer-*`), and is pooled by B like any upstream connection. Every step has a
//! deadline ([`HANDSHAKE_TIMEOUT`]). A request that arrived on the peer listener is never
//! forwarded again: a tunnel A does not hold is answered `421`, and B looks once more.
//!
//! A TCP or TLS passthrough visitor, or a UDP tunnel's datagrams, take a *stream* instead:
//! B's answer line names it ([`opening`]), A answers `OK`, `NOT-HERE` or `TERMINATE`, and the
//! connection is the visitor's from then on ([`stream`] on A's side, [`mirror`] on B's, which
//! also listens on every port the other instances hold).

pub(crate) mod datagrams;
pub(crate) mod mirror;
pub(crate) mod opening;
pub(crate) mod stream;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use aws_lc_rs::hmac;
use bytes::{Buf, BytesMut};
use showoff_core::{LeaseKey, Registry, Secret, TunnelStream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};
use tracing::debug;

use crate::edge::EdgeContext;
use crate::edge::error::EdgeError;
use crate::edge::http::pool::UpstreamConn;
use crate::listen::Arrived;
use opening::{Answer, Opening};

/// How long each side of the peer handshake waits for the other.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);
/// Idle peer connections kept per instance.
const MAX_IDLE_PER_PEER: usize = 64;
/// The longest handshake line accepted.
const MAX_LINE: usize = 512;
/// How long a name's holder is believed when it says the name is an HTTP tunnel.
const TERMINATED_FOR: Duration = Duration::from_secs(2);
/// Names remembered so at most (then forgotten all at once).
const MAX_TERMINATED: usize = 4096;
/// The first words of the challenge.
const HELLO: &str = "SHOWOFF-PEER/1";

/// This instance's part in the cluster, as the edges see it.
pub(crate) struct ClusterEdge {
    /// This instance's name (what its leases say).
    pub(crate) instance: String,
    pub(crate) registry: Arc<dyn Registry>,
    key: hmac::Key,
    idle: Mutex<HashMap<String, Vec<UpstreamConn>>>,
    /// Names whose holder said lately they are HTTP tunnels (TLS is terminated here), and when.
    terminated: Mutex<HashMap<String, Instant>>,
}

impl ClusterEdge {
    pub(crate) fn new(instance: &str, registry: Arc<dyn Registry>, secret: &Secret) -> Self {
        Self {
            instance: instance.to_string(),
            registry,
            key: hmac::Key::new(hmac::HMAC_SHA256, secret.expose().as_bytes()),
            idle: Mutex::default(),
            terminated: Mutex::default(),
        }
    }

    /// Whether `name`'s holder said within [`TERMINATED_FOR`] that it is an HTTP tunnel.
    pub(crate) fn terminates(&self, name: &str) -> bool {
        let terminated = self
            .terminated
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        terminated
            .get(name)
            .is_some_and(|at| at.elapsed() < TERMINATED_FOR)
    }

    /// Remembers that `name` is an HTTP tunnel where it is held.
    pub(crate) fn remember_terminated(&self, name: &str) {
        let mut terminated = self
            .terminated
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if terminated.len() >= MAX_TERMINATED {
            terminated.clear();
        }
        terminated.insert(name.to_string(), Instant::now());
    }

    /// The peer listener of the instance holding `key`; `None` when nobody holds it, or this
    /// instance does (its route is not there: the tunnel is going or coming).
    pub(crate) async fn locate(&self, key: &LeaseKey) -> Result<Option<String>, EdgeError> {
        let unreachable = |error| {
            debug!(%error, %key, "lease lookup for forwarding failed");
            EdgeError::PeerUnreachable
        };
        let mut found = self.registry.lookup(key).await.map_err(unreachable)?;
        if found
            .as_ref()
            .is_some_and(|lease| *lease.instance == *self.instance)
        {
            // Here without a route: a cached answer may be older than a move elsewhere (the
            // move's event not yet in), so Redis is asked afresh.
            self.registry.forget(key);
            found = self.registry.lookup(key).await.map_err(unreachable)?;
        }
        let Some(lease) = found else {
            return Ok(None);
        };
        if *lease.instance == *self.instance {
            return Ok(None);
        }
        let addr = self.registry.peer_addr(&lease.instance).await;
        addr.map_err(unreachable)?
            .ok_or(EdgeError::PeerUnreachable)
            .map(Some)
    }

    /// An idle pooled connection to `addr`, or a new one; and whether it was pooled.
    pub(crate) async fn checkout(&self, addr: &str) -> Result<(UpstreamConn, bool), EdgeError> {
        loop {
            let pooled = self.idle().get_mut(addr).and_then(|conns| conns.pop());
            match pooled {
                Some(mut up) => {
                    if up.is_idle_and_open() {
                        return Ok((up, true));
                    }
                }
                None => break,
            }
        }
        let io = self.dial(addr).await?;
        Ok((UpstreamConn::new(io), false))
    }

    /// Keeps `up`, whose last response was relayed completely, for the next request to `addr`.
    pub(crate) fn put_back(&self, addr: &str, up: UpstreamConn) {
        let mut idle = self.idle();
        let conns = idle.entry(addr.to_string()).or_default();
        if conns.len() < MAX_IDLE_PER_PEER {
            conns.push(up);
        }
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<UpstreamConn>>> {
        // Each critical section is one map operation: a panic cannot leave it half-done.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn proof(&self, nonce: &str, instance: &str) -> hmac::Tag {
        hmac::sign(&self.key, signed(nonce, instance).as_bytes())
    }

    /// Dials `addr` and proves the cluster secret, for HTTP requests.
    pub(crate) async fn dial(&self, addr: &str) -> Result<TunnelStream, EdgeError> {
        match self.handshake(addr, None).await {
            Some((stream, Answer::Ok)) => Ok(stream),
            _ => Err(EdgeError::PeerUnreachable),
        }
    }

    /// Opens a stream to the holder at `addr`: the visitor's from the holder's `OK` on.
    pub(crate) async fn open_stream(
        &self,
        addr: &str,
        opening: &Opening,
    ) -> Result<TunnelStream, Unopened> {
        match self.handshake(addr, Some(opening)).await {
            Some((stream, Answer::Ok)) => Ok(stream),
            Some((_, Answer::NotHere)) => Err(Unopened::NotHere),
            Some((_, Answer::Terminate)) => Err(Unopened::Terminate),
            None => Err(Unopened::Unreachable),
        }
    }

    /// Asks the instance at `addr` whether it reaches the cluster's Redis; `None` when it
    /// does not answer `within`.
    pub(crate) async fn reaches_redis(&self, addr: &str, within: Duration) -> Option<bool> {
        let ask = async {
            let (mut stream, mut buf) = self.prove(addr, HEALTH).await?;
            match read_line(&mut stream, &mut buf).await?.as_bytes() {
                b"REDIS-UP" => Some(true),
                b"REDIS-DOWN" => Some(false),
                _ => None,
            }
        };
        timeout(within, ask).await.ok().flatten()
    }

    /// Connects to `addr` and sends the proof with `request` after it; the connection and
    /// what was read past the challenge.
    async fn prove(&self, addr: &str, request: &str) -> Option<(TcpStream, BytesMut)> {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        let _ = stream.set_nodelay(true);
        let mut buf = BytesMut::with_capacity(MAX_LINE);
        let challenge = read_line(&mut stream, &mut buf).await?;
        let nonce = challenge.strip_prefix(HELLO)?.trim().to_string();
        let proof = hex(self.proof(&nonce, &self.instance).as_ref());
        let answer = match request {
            "" => format!("{} {proof}\r\n", self.instance),
            request => format!("{} {proof} {request}\r\n", self.instance),
        };
        stream.write_all(answer.as_bytes()).await.ok()?;
        Some((stream, buf))
    }

    /// The handshake on a new connection to `addr`, with a stream request or without;
    /// `None` when the peer cannot be reached, refuses the proof or answers nonsense.
    async fn handshake(
        &self,
        addr: &str,
        opening: Option<&Opening>,
    ) -> Option<(TunnelStream, Answer)> {
        let request = opening.map(Opening::to_string).unwrap_or_default();
        let handshake = async {
            let (mut stream, mut buf) = self.prove(addr, &request).await?;
            let answer = Answer::parse(&read_line(&mut stream, &mut buf).await?)?;
            Some((TunnelStream::boxed(buf, stream), answer))
        };
        let answered = timeout(HANDSHAKE_TIMEOUT, handshake).await.ok().flatten();
        if answered.is_none() {
            debug!(%addr, "peer listener unreachable or refused the proof");
        }
        answered
    }
}

/// Why a stream was not opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unopened {
    /// The instance does not hold the tunnel (any more).
    NotHere,
    /// The name is an HTTP tunnel there: terminate TLS here and forward requests.
    Terminate,
    /// No answer, or no valid one, within the deadline.
    Unreachable,
}

/// What the proof signs.
fn signed(nonce: &str, instance: &str) -> String {
    format!("showoff-peer/1|{nonce}|{instance}")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Reads one `\r\n`-terminated line into `buf` and takes it out; `None` on EOF, an error, or
/// a line over [`MAX_LINE`]. Bytes after the line stay in `buf`.
async fn read_line<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut BytesMut) -> Option<String> {
    loop {
        if let Some(end) = buf.windows(2).position(|w| w == b"\r\n") {
            let line = String::from_utf8(buf[..end].to_vec()).ok();
            buf.advance(end + 2);
            return line;
        }
        if buf.len() > MAX_LINE {
            return None;
        }
        buf.reserve(MAX_LINE);
        match stream.read_buf(buf).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// Takes one connection on the peer listener through the challenge and serves what does not
/// carry HTTP (streams, the Redis health question); a connection for HTTP requests comes back,
/// `OK` sent, for the HTTP edge ([`crate::edge::visitor::serve_peer`]).
pub(crate) async fn accept(
    arrived: Arrived,
    ctx: &Arc<EdgeContext>,
) -> Option<(TcpStream, SocketAddr, BytesMut)> {
    let (Ok(arrival), Some(cluster)) = (arrived, ctx.cluster.clone()) else {
        return None;
    };
    let (mut stream, peer) = (arrival.stream, arrival.peer);
    let mut buf = arrival.prefix;
    let nonce = hex(&rand::random::<[u8; 16]>());
    let proved = timeout(
        HANDSHAKE_TIMEOUT,
        challenge(&mut stream, &mut buf, &nonce, &cluster),
    )
    .await;
    let Ok(Some(request)) = proved else {
        ctx.stats.cluster.refused();
        debug!(%peer, "peer connection refused: no valid proof of the cluster secret");
        let _ = timeout(HANDSHAKE_TIMEOUT, stream.write_all(b"DENIED\r\n")).await;
        return None;
    };
    match request {
        Request::Http => {}
        Request::Stream(opening) => {
            stream::serve(stream, buf, opening, ctx.clone()).await;
            return None;
        }
        Request::Health => {
            let answer = match cluster.registry.silent_for() {
                None => REDIS_UP,
                Some(_) => REDIS_DOWN,
            };
            let _ = timeout(HANDSHAKE_TIMEOUT, stream.write_all(answer)).await;
            return None;
        }
    }
    let answered = timeout(HANDSHAKE_TIMEOUT, stream.write_all(Answer::Ok.line())).await;
    matches!(answered, Ok(Ok(()))).then_some((stream, peer, buf))
}

/// What a proven peer asks for.
#[derive(Debug, PartialEq, Eq)]
enum Request {
    /// HTTP/1.1 requests follow.
    Http,
    /// One stream ([`opening`]).
    Stream(Opening),
    /// Whether this instance reaches the cluster's Redis (`redis?`): an instance that cannot
    /// asks its peers before it fences itself off.
    Health,
}

/// The question a [`Request::Health`] asks.
const HEALTH: &str = "redis?";
/// The answers to it.
const REDIS_UP: &[u8] = b"REDIS-UP\r\n";
const REDIS_DOWN: &[u8] = b"REDIS-DOWN\r\n";

/// Sends the challenge and checks the answer: `None` without a valid proof, else what the
/// answer asks for.
async fn challenge<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    nonce: &str,
    cluster: &ClusterEdge,
) -> Option<Request> {
    stream
        .write_all(format!("{HELLO} {nonce}\r\n").as_bytes())
        .await
        .ok()?;
    let answer = read_line(stream, buf).await?;
    let mut words = answer.splitn(3, ' ');
    let (instance, proof) = (words.next()?, unhex(words.next()?)?);
    hmac::verify(&cluster.key, signed(nonce, instance).as_bytes(), &proof).ok()?;
    match words.next() {
        None => Some(Request::Http),
        Some(HEALTH) => Some(Request::Health),
        Some(request) => Opening::parse(request).map(Request::Stream),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use showoff_core::{Claimed, Lease, MemoryRegistry, Owner, RegistryError};

    fn cluster(instance: &str, secret: &str) -> ClusterEdge {
        ClusterEdge::new(
            instance,
            Arc::new(MemoryRegistry::default()),
            &Secret::new(secret),
        )
    }

    /// A registry whose cache still says `stale` until the key is forgotten; the truth is
    /// held by node-b at `127.0.0.1:7946`.
    struct StaleCache {
        stale: Mutex<Option<Lease>>,
        truth: Lease,
    }

    #[async_trait::async_trait]
    impl Registry for StaleCache {
        async fn claim(&self, _: &LeaseKey, _: &Owner) -> Result<Claimed, RegistryError> {
            Err(RegistryError::Backend("not in this test".into()))
        }
        async fn renew(&self, _: &Lease) -> Result<(), RegistryError> {
            Ok(())
        }
        async fn release(&self, _: &Lease) -> Result<bool, RegistryError> {
            Ok(false)
        }
        async fn reassert(&self, _: &Lease) -> Result<(), RegistryError> {
            Ok(())
        }
        async fn lookup(&self, _: &LeaseKey) -> Result<Option<Lease>, RegistryError> {
            let stale = self.stale.lock().expect("stale").clone();
            Ok(Some(stale.unwrap_or_else(|| self.truth.clone())))
        }
        fn ttl(&self) -> Option<Duration> {
            None
        }
        fn forget(&self, _: &LeaseKey) {
            *self.stale.lock().expect("stale") = None;
        }
        async fn peer_addr(&self, instance: &str) -> Result<Option<String>, RegistryError> {
            Ok((instance == "node-b").then(|| "127.0.0.1:7946".to_string()))
        }
    }

    #[tokio::test]
    async fn a_cached_lease_naming_this_instance_is_looked_up_afresh() {
        let key = LeaseKey::Name("moved".into());
        let lease = |instance: &str| Lease {
            key: key.clone(),
            owner: Owner {
                principal: "alice".into(),
                session: "s".into(),
            },
            instance: instance.into(),
            generation: 1,
        };
        // This instance's route is gone and its cache has not heard of the move yet.
        let registry = StaleCache {
            stale: Mutex::new(Some(lease("node-a"))),
            truth: lease("node-b"),
        };
        let edge = ClusterEdge::new("node-a", Arc::new(registry), &Secret::new("s3cret"));
        assert_eq!(
            edge.locate(&key).await,
            Ok(Some("127.0.0.1:7946".to_string())),
            "found where the tunnel went"
        );
    }

    #[test]
    fn hex_round_trips_and_refuses_nonsense() {
        assert_eq!(hex(&[0, 15, 255]), "000fff");
        assert_eq!(unhex("000fff"), Some(vec![0, 15, 255]));
        assert_eq!(unhex("0"), None);
        assert_eq!(unhex("zz"), None);
        assert_eq!(unhex("é0"), None);
    }

    #[tokio::test]
    async fn the_right_secret_passes_the_challenge_and_a_wrong_one_or_a_replay_does_not() {
        let (a, b) = (
            cluster("node-a", "0123456789abcdef"),
            cluster("node-b", "0123456789abcdef"),
        );
        let nonce = "00112233445566778899aabbccddeeff";
        let answer = format!("node-b {}\r\n", hex(b.proof(nonce, "node-b").as_ref()));

        let (mut near, mut far) = tokio::io::duplex(4096);
        far.write_all(answer.as_bytes()).await.expect("answer");
        let mut buf = BytesMut::new();
        assert_eq!(
            challenge(&mut near, &mut buf, nonce, &a).await,
            Some(Request::Http)
        );

        let wrong = cluster("node-b", "another secret of 16+");
        let forged = format!("node-b {}\r\n", hex(wrong.proof(nonce, "node-b").as_ref()));
        let (mut near, mut far) = tokio::io::duplex(4096);
        far.write_all(forged.as_bytes()).await.expect("answer");
        assert_eq!(
            challenge(&mut near, &mut BytesMut::new(), nonce, &a).await,
            None
        );

        // The same answer to another challenge is worthless.
        let (mut near, mut far) = tokio::io::duplex(4096);
        far.write_all(answer.as_bytes()).await.expect("answer");
        let other = "ffeeddccbbaa99887766554433221100";
        assert_eq!(
            challenge(&mut near, &mut BytesMut::new(), other, &a).await,
            None
        );

        // A stream request rides on the answer, after the proof.
        let stream = format!(
            "node-b {} tcp 30001 192.0.2.1:4000\r\n",
            hex(b.proof(nonce, "node-b").as_ref())
        );
        let (mut near, mut far) = tokio::io::duplex(4096);
        far.write_all(stream.as_bytes()).await.expect("answer");
        let opening = challenge(&mut near, &mut BytesMut::new(), nonce, &a).await;
        let Some(Request::Stream(opening)) = opening else {
            panic!("a stream request: {opening:?}");
        };
        assert_eq!(opening.key, LeaseKey::Port(30_001));
        let health = stream.replace("tcp 30001 192.0.2.1:4000", HEALTH);
        let (mut near, mut far) = tokio::io::duplex(4096);
        far.write_all(health.as_bytes()).await.expect("answer");
        let asked = challenge(&mut near, &mut BytesMut::new(), nonce, &a).await;
        assert_eq!(asked, Some(Request::Health));
        let garbled = stream.replace("tcp 30001", "tcp banana");
        let (mut near, mut far) = tokio::io::duplex(4096);
        far.write_all(garbled.as_bytes()).await.expect("answer");
        assert_eq!(
            challenge(&mut near, &mut BytesMut::new(), nonce, &a).await,
            None
        );

        // Nor does naming another instance than the one the proof is for.
        let renamed = answer.replacen("node-b", "node-c", 1);
        let (mut near, mut far) = tokio::io::duplex(4096);
        far.write_all(renamed.as_bytes()).await.expect("answer");
        assert_eq!(
            challenge(&mut near, &mut BytesMut::new(), nonce, &a).await,
            None
        );
    }

    #[tokio::test]
    async fn an_endless_line_is_refused_without_reading_forever() {
        let (mut near, mut far) = tokio::io::duplex(64 * 1024);
        far.write_all(&[b'x'; 4096]).await.expect("junk");
        assert_eq!(read_line(&mut near, &mut BytesMut::new()).await, None);
    }
}
