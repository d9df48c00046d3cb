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

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use aws_lc_rs::hmac;
use bytes::{Buf, BytesMut};
use showoff_core::{LeaseKey, Registry, Secret, TunnelStream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tracing::debug;

use crate::edge::EdgeContext;
use crate::edge::error::EdgeError;
use crate::edge::http::pool::UpstreamConn;
use crate::edge::http::{Conn, Scheme};
use crate::listen::Arrived;

/// How long each side of the peer handshake waits for the other.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);
/// Idle peer connections kept per instance.
const MAX_IDLE_PER_PEER: usize = 64;
/// The longest handshake line accepted.
const MAX_LINE: usize = 512;
/// The first words of the challenge.
const HELLO: &str = "SHOWOFF-PEER/1";

/// This instance's part in the cluster, as the edges see it.
pub(crate) struct ClusterEdge {
    /// This instance's name (what its leases say).
    pub(crate) instance: String,
    pub(crate) registry: Arc<dyn Registry>,
    key: hmac::Key,
    idle: Mutex<HashMap<String, Vec<UpstreamConn>>>,
}

impl ClusterEdge {
    pub(crate) fn new(instance: &str, registry: Arc<dyn Registry>, secret: &Secret) -> Self {
        Self {
            instance: instance.to_string(),
            registry,
            key: hmac::Key::new(hmac::HMAC_SHA256, secret.expose().as_bytes()),
            idle: Mutex::default(),
        }
    }

    /// The peer listener of the instance holding `key`; `None` when nobody holds it, or this
    /// instance does (its route is not there: the tunnel is going or coming).
    pub(crate) async fn locate(&self, key: &LeaseKey) -> Result<Option<String>, EdgeError> {
        let unreachable = |error| {
            debug!(%error, %key, "lease lookup for forwarding failed");
            EdgeError::PeerUnreachable
        };
        let Some(lease) = self.registry.lookup(key).await.map_err(unreachable)? else {
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

    /// Dials `addr` and proves the cluster secret.
    async fn dial(&self, addr: &str) -> Result<TunnelStream, EdgeError> {
        let handshake = async {
            let mut stream = TcpStream::connect(addr).await.ok()?;
            let _ = stream.set_nodelay(true);
            let mut buf = BytesMut::with_capacity(MAX_LINE);
            let challenge = read_line(&mut stream, &mut buf).await?;
            let nonce = challenge.strip_prefix(HELLO)?.trim().to_string();
            let proof = hex(self.proof(&nonce, &self.instance).as_ref());
            let answer = format!("{} {proof}\r\n", self.instance);
            stream.write_all(answer.as_bytes()).await.ok()?;
            (read_line(&mut stream, &mut buf).await? == "OK").then_some((stream, buf))
        };
        match timeout(HANDSHAKE_TIMEOUT, handshake).await {
            Ok(Some((stream, rest))) => Ok(TunnelStream::boxed(rest, stream)),
            _ => {
                debug!(%addr, "peer listener unreachable or refused the proof");
                Err(EdgeError::PeerUnreachable)
            }
        }
    }
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

/// Serves one connection on the peer listener: the challenge, then the forwarding instance's
/// requests as visitors of this instance's tunnels.
pub(crate) async fn serve_peer(arrived: Arrived, ctx: Arc<EdgeContext>) {
    let (Ok(arrival), Some(cluster)) = (arrived, ctx.cluster.clone()) else {
        return;
    };
    let (mut stream, peer) = (arrival.stream, arrival.peer);
    let mut buf = arrival.prefix;
    let nonce = hex(&rand::random::<[u8; 16]>());
    let proved = timeout(
        HANDSHAKE_TIMEOUT,
        challenge(&mut stream, &mut buf, &nonce, &cluster),
    )
    .await;
    if !matches!(proved, Ok(true)) {
        ctx.stats.cluster.refused();
        debug!(%peer, "peer connection refused: no valid proof of the cluster secret");
        let _ = timeout(HANDSHAKE_TIMEOUT, stream.write_all(b"DENIED\r\n")).await;
        return;
    }
    if timeout(HANDSHAKE_TIMEOUT, stream.write_all(b"OK\r\n"))
        .await
        .is_err()
    {
        return;
    }
    Conn::new(stream, peer, buf, Scheme::Peer, ctx).run().await;
}

/// Sends the challenge and checks the answer.
async fn challenge<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    nonce: &str,
    cluster: &ClusterEdge,
) -> bool {
    if stream
        .write_all(format!("{HELLO} {nonce}\r\n").as_bytes())
        .await
        .is_err()
    {
        return false;
    }
    let Some(answer) = read_line(stream, buf).await else {
        return false;
    };
    let Some((instance, proof)) = answer.split_once(' ') else {
        return false;
    };
    let Some(proof) = unhex(proof) else {
        return false;
    };
    hmac::verify(&cluster.key, signed(nonce, instance).as_bytes(), &proof).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use showoff_core::MemoryRegistry;

    fn cluster(instance: &str, secret: &str) -> ClusterEdge {
        ClusterEdge::new(
            instance,
            Arc::new(MemoryRegistry::default()),
            &Secret::new(secret),
        )
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
        assert!(challenge(&mut near, &mut buf, nonce, &a).await);

        let wrong = cluster("node-b", "another secret of 16+");
        let forged = format!("node-b {}\r\n", hex(wrong.proof(nonce, "node-b").as_ref()));
        let (mut near, mut far) = tokio::io::duplex(4096);
        far.write_all(forged.as_bytes()).await.expect("answer");
        assert!(!challenge(&mut near, &mut BytesMut::new(), nonce, &a).await);

        // The same answer to another challenge is worthless.
        let (mut near, mut far) = tokio::io::duplex(4096);
        far.write_all(answer.as_bytes()).await.expect("answer");
        let other = "ffeeddccbbaa99887766554433221100";
        assert!(!challenge(&mut near, &mut BytesMut::new(), other, &a).await);

        // Nor does naming another instance than the one the proof is for.
        let renamed = answer.replacen("node-b", "node-c", 1);
        let (mut near, mut far) = tokio::io::duplex(4096);
        far.write_all(renamed.as_bytes()).await.expect("answer");
        assert!(!challenge(&mut near, &mut BytesMut::new(), nonce, &a).await);
    }

    #[tokio::test]
    async fn an_endless_line_is_refused_without_reading_forever() {
        let (mut near, mut far) = tokio::io::duplex(64 * 1024);
        far.write_all(&[b'x'; 4096]).await.expect("junk");
        assert_eq!(read_line(&mut near, &mut BytesMut::new()).await, None);
    }
}
