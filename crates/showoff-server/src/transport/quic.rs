//! The QUIC transport, server side: one QUIC stream per tunnel stream.
//!
//! A client connects to the QUIC listener (UDP, TLS 1.3 from the same certificate store as the
//! control listener, ALPN `showoff/1`, client certificates as there) and opens the first
//! bidirectional stream: the control stream, where `Hello { transport: quic }`, `Auth`, `Open`
//! → `Welcome` and the rest of the control frames run as on TCP. Each visitor stream is a
//! stream the server opens, announced with `Dial` and answered with `StreamReady` or
//! `StreamError` on it ([`super::announce`]). Streams never block each other (no head-of-line
//! blocking across streams), and the connection survives a change of the client's address
//! (migration is on). UDP tunnels' datagrams travel as QUIC DATAGRAM frames on the same
//! connection; the client's come back through one reader per connection, which hands each
//! to its tunnel by the slot in the low byte of its flow id.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use showoff_core::{OpenError, StreamMeta, StreamOpener, TunnelStream};
use showoff_proto::datagram::Datagram;
use tokio::sync::mpsc;

use super::announce;
use super::datagrams::{ANSWER_QUEUE, DatagramPath};
use crate::stats::Stats;

/// The server's QUIC settings: TLS from the control listener's store, windows for the
/// bandwidth-delay product, idle timeout = the heartbeat timeout, migration allowed.
pub(crate) fn server_config(
    tls: Arc<rustls::ServerConfig>,
    idle: Duration,
) -> Result<quinn::ServerConfig, String> {
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| format!("the TLS settings cannot serve QUIC: {e}"))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(showoff_core::quic::transport_config(idle)));
    config.migration(true);
    Ok(config)
}

/// Each UDP tunnel's answer queue, by slot.
type Slots = Arc<Mutex<HashMap<u8, mpsc::Sender<Datagram>>>>;

/// One session's QUIC connection.
pub(crate) struct QuicLink {
    connection: quinn::Connection,
    pending_timeout: Duration,
    slots: Slots,
    reading: AtomicBool,
}

impl QuicLink {
    pub(crate) fn new(connection: quinn::Connection, pending_timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            connection,
            pending_timeout,
            slots: Arc::default(),
            reading: AtomicBool::new(false),
        })
    }

    /// The datagram path of the session's UDP tunnel in `slot`; the first one starts the
    /// connection's datagram reader, which ends with the connection.
    pub(crate) fn datagram_path(&self, slot: u8, stats: Arc<Stats>) -> DatagramPath {
        let (tx, answers) = mpsc::channel(ANSWER_QUEUE);
        lock(&self.slots).insert(slot, tx);
        if !self.reading.swap(true, Ordering::AcqRel) {
            tokio::spawn(read_datagrams(
                self.connection.clone(),
                self.slots.clone(),
                stats,
            ));
        }
        DatagramPath {
            link: Arc::new(showoff_core::quic::QuicDatagrams(self.connection.clone())),
            answers,
            slot,
        }
    }

    /// Bytes received on the connection so far (any packet is a sign of life).
    pub(crate) fn received(&self) -> u64 {
        showoff_core::quic::received(&self.connection)
    }
}

#[async_trait]
impl StreamOpener for QuicLink {
    async fn open(&self, meta: &StreamMeta) -> Result<TunnelStream, OpenError> {
        if meta.trace.is_some() {
            tracing::Span::current().record("showoff.transport", "quic");
        }
        // Waits while the client's stream limit is reached, within the deadline.
        let opened = tokio::time::timeout(self.pending_timeout, self.connection.open_bi()).await;
        let (send, recv) = match opened {
            Err(_) => return Err(OpenError::Timeout),
            Ok(Err(_)) => return Err(OpenError::ClientGone),
            Ok(Ok(pair)) => pair,
        };
        let stream = showoff_core::quic::stream(send, recv);
        announce(stream, meta, self.pending_timeout).await
    }
}

fn lock(slots: &Slots) -> std::sync::MutexGuard<'_, HashMap<u8, mpsc::Sender<Datagram>>> {
    // One insert, lookup or removal per critical section: a panic cannot leave it torn.
    slots.lock().unwrap_or_else(|p| p.into_inner())
}

/// Hands each datagram the client sends to its tunnel's queue, until the connection ends. The
/// reader keeps its own copy of the slots, looked up in the shared map only on a miss, so a
/// datagram takes no lock.
async fn read_datagrams(connection: quinn::Connection, slots: Slots, stats: Arc<Stats>) {
    let mut known: HashMap<u8, mpsc::Sender<Datagram>> = HashMap::new();
    while let Ok(bytes) = connection.read_datagram().await {
        let Ok(datagram) = Datagram::decode(bytes) else {
            stats.udp.dropped("malformed");
            continue;
        };
        let slot = (datagram.flow() & 0xff) as u8;
        if !known.contains_key(&slot)
            && let Some(queue) = lock(&slots).get(&slot).cloned()
        {
            known.insert(slot, queue);
        }
        let Some(queue) = known.get(&slot) else {
            stats.udp.dropped("unknown_flow");
            continue;
        };
        match queue.try_send(datagram) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => stats.udp.dropped("queue_full"),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                known.remove(&slot);
                lock(&slots).remove(&slot);
                stats.udp.dropped("closed");
            }
        }
    }
}
