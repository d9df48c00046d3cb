//! The dial-back transport, server side: one TCP data connection per stream, dialled by the
//! client.
//!
//! [`DialBack::open`] first takes an idle connection from the session's warm pool (the client
//! keeps `warm_pool` of them dialled in advance) and sends `Dial` on it: one frame, no extra
//! connection. With the pool empty it falls back to `Dial` on the control connection and awaits
//! the answering data connection through the [`Pending`] table. [`accept`] is the data
//! listener's handler: it checks the handshake and files each connection under its pending id
//! or its session's pool.
//!
//! [`DialBackHub`] is the transport's narrow context: its settings, the pending table, the
//! openers of live sessions (the data listener's session lookup), stats and TLS. The control
//! layer attaches a session with [`DialBackHub::attach`]; the returned guard detaches it.

pub(crate) mod accept;
pub(crate) mod pending;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::{SinkExt, StreamExt};
use showoff_core::{OpenError, StreamMeta, StreamOpener, TunnelStream};
use showoff_proto::{ClientMessage, FrameCodec, ServerMessage};
use tokio::sync::mpsc;
use tokio_util::codec::Framed;

use self::pending::{Pending, Permit};
use crate::stats::{DataRejectReason, Stats};
use crate::tls::{ServerIo, Tls};

/// A data connection still speaking frames.
pub(crate) type DataFramed = Framed<ServerIo, FrameCodec<ClientMessage, ServerMessage>>;

/// The settings dial-back reads.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DialBackSettings {
    /// Idle pre-dialled connections kept per session.
    pub(crate) warm_pool: u16,
    /// How long a stream may take to arrive.
    pub(crate) pending_timeout: Duration,
    /// Streams being set up at once per session.
    pub(crate) max_pending_per_session: usize,
    /// Streams being set up at once across the server.
    pub(crate) max_pending_total: usize,
    /// `TCP_USER_TIMEOUT` of data connections: unacknowledged data closes them after this.
    pub(crate) user_timeout: Duration,
}

/// What the dial-back transport needs, for every session of the server.
pub(crate) struct DialBackHub {
    settings: DialBackSettings,
    pending: Pending,
    sessions: Mutex<HashMap<Arc<str>, Arc<DialBack>>>,
    stats: Arc<Stats>,
    tls: Arc<Tls>,
}

impl DialBackHub {
    pub(crate) fn new(settings: DialBackSettings, stats: Arc<Stats>, tls: Arc<Tls>) -> Arc<Self> {
        Arc::new(Self {
            settings,
            pending: Pending::default(),
            sessions: Mutex::new(HashMap::new()),
            stats,
            tls,
        })
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Arc<DialBack>>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How long a stream may take to be set up, on any transport.
    pub(crate) fn pending_timeout(&self) -> Duration {
        self.settings.pending_timeout
    }

    /// The opener of a live session.
    fn session(&self, id: &str) -> Option<Arc<DialBack>> {
        self.sessions().get(id).cloned()
    }

    /// Attaches session `id`, whose control connection takes frames from `control`; the
    /// returned guard detaches it (pending streams fail, pooled connections close).
    pub(crate) fn attach(
        self: &Arc<Self>,
        id: &Arc<str>,
        control: mpsc::Sender<ServerMessage>,
    ) -> DialBackGuard {
        let opener = Arc::new(DialBack {
            session_id: id.clone(),
            data_key: showoff_proto::id::random_id(),
            control,
            pool: Mutex::new(VecDeque::new()),
            pending_now: AtomicUsize::new(0),
            hub: self.clone(),
        });
        self.sessions().insert(id.clone(), opener.clone());
        DialBackGuard {
            hub: self.clone(),
            opener,
        }
    }

    /// Streams being set up now, across sessions (the fuzz targets check it drains).
    #[cfg(feature = "fuzzing")]
    pub(crate) fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// The client could not open stream `id` of `session` (`StreamError` on the control link).
    pub(crate) fn fail(&self, id: &str, session: &str, reason: String) {
        self.pending.fail(id, session, reason);
    }
}

/// Keeps a session attached to dial-back; detaches it when dropped.
pub(crate) struct DialBackGuard {
    hub: Arc<DialBackHub>,
    opener: Arc<DialBack>,
}

impl DialBackGuard {
    /// The session's opener, for its tunnels.
    pub(crate) fn opener(&self) -> Arc<DialBack> {
        self.opener.clone()
    }

    /// The key data connections must show, told to the client in `Welcome`.
    pub(crate) fn data_key(&self) -> &str {
        &self.opener.data_key
    }
}

impl DialBackGuard {
    /// Detaches the session now: waiters see the client gone, pooled connections close, data
    /// connections for it are refused. Idempotent; dropping the guard does it too.
    pub(crate) fn detach(&self) {
        let id = &self.opener.session_id;
        self.hub.sessions().remove(id);
        self.hub.pending.remove_session(id);
        self.opener.clear_pool();
    }
}

impl Drop for DialBackGuard {
    fn drop(&mut self) {
        self.detach();
    }
}

/// The dial-back opener of one session.
pub(crate) struct DialBack {
    session_id: Arc<str>,
    data_key: String,
    control: mpsc::Sender<ServerMessage>,
    pool: Mutex<VecDeque<DataFramed>>,
    pending_now: AtomicUsize,
    hub: Arc<DialBackHub>,
}

impl DialBack {
    fn pool(&self) -> std::sync::MutexGuard<'_, VecDeque<DataFramed>> {
        self.pool.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Files a warm-pool connection; refuses it when the pool is full.
    fn add_pooled(&self, conn: DataFramed) -> Result<(), DataRejectReason> {
        let mut pool = self.pool();
        if pool.len() >= usize::from(self.hub.settings.warm_pool) {
            return Err(DataRejectReason::PoolFull);
        }
        pool.push_back(conn);
        self.hub.stats.pool_idle.inc();
        Ok(())
    }

    fn take_pooled(&self) -> Option<DataFramed> {
        let conn = self.pool().pop_front()?;
        self.hub.stats.pool_idle.dec();
        Some(conn)
    }

    /// Drops every pooled connection (session ended).
    fn clear_pool(&self) {
        let dropped = std::mem::take(&mut *self.pool()).len();
        self.hub.stats.pool_idle.dec_by(dropped as i64);
    }

    fn timeout(&self) -> Duration {
        self.hub.settings.pending_timeout
    }

    fn dial(id: String, meta: &StreamMeta) -> ServerMessage {
        ServerMessage::Dial {
            id,
            tunnel: meta.tunnel.clone(),
            visitor_addr: meta.visitor_addr.to_string(),
            traceparent: meta.trace.as_ref().map(|t| t.traceparent.as_str().into()),
            tracestate: meta
                .trace
                .as_ref()
                .and_then(|t| t.tracestate.as_deref().map(Into::into)),
        }
    }

    async fn open_pooled(&self, mut conn: DataFramed, meta: &StreamMeta) -> Pooled {
        let id = showoff_proto::id::random_id();
        let sent = tokio::time::timeout(self.timeout(), conn.send(Self::dial(id.clone(), meta)));
        if !matches!(sent.await, Ok(Ok(()))) {
            return Pooled::Stale;
        }
        let reply = match tokio::time::timeout(self.timeout(), conn.next()).await {
            Err(_) => return Pooled::Failed(OpenError::Timeout),
            Ok(reply) => reply,
        };
        match reply {
            Some(Ok(ClientMessage::StreamReady { id: got })) if got == id => {
                let parts = conn.into_parts();
                Pooled::Ready(TunnelStream::boxed(parts.read_buf, parts.io))
            }
            Some(Ok(ClientMessage::StreamError { reason, .. })) => {
                Pooled::Failed(OpenError::TargetUnreachable(reason))
            }
            // Closed, garbled or out of turn: this pooled connection is unusable.
            _ => Pooled::Stale,
        }
    }

    async fn open_dialled(&self, meta: &StreamMeta) -> Result<TunnelStream, OpenError> {
        let (guard, rx) = self.hub.pending.insert(&self.session_id, &self.data_key);
        let dial = Self::dial(guard.id().to_string(), meta);
        self.control
            .send(dial)
            .await
            .map_err(|_| OpenError::ClientGone)?;
        match tokio::time::timeout(self.timeout(), rx).await {
            Err(_) => Err(OpenError::Timeout),
            Ok(Err(_)) => Err(OpenError::ClientGone),
            Ok(Ok(Err(reason))) => Err(OpenError::TargetUnreachable(reason)),
            Ok(Ok(Ok(stream))) => Ok(stream),
        }
    }
}

enum Pooled {
    Ready(TunnelStream),
    Failed(OpenError),
    Stale,
}

#[async_trait]
impl StreamOpener for DialBack {
    async fn open(&self, meta: &StreamMeta) -> Result<TunnelStream, OpenError> {
        let settings = &self.hub.settings;
        let _permit = Permit::acquire(
            &self.pending_now,
            settings.max_pending_per_session,
            &self.hub.stats.pending,
            settings.max_pending_total,
        )
        .ok_or(OpenError::OverCapacity)?;
        // The pairing span, when the stream is traced (it carries a context then).
        let span = match meta.trace {
            Some(_) => tracing::Span::current(),
            None => tracing::Span::none(),
        };
        span.record("showoff.transport", "tcp");
        while let Some(conn) = self.take_pooled() {
            match self.open_pooled(conn, meta).await {
                Pooled::Ready(stream) => {
                    self.hub.stats.pool_hits.inc();
                    span.record("showoff.warm_pool", "hit");
                    return Ok(stream);
                }
                Pooled::Failed(error) => return Err(error),
                Pooled::Stale => continue,
            }
        }
        self.hub.stats.pool_misses.inc();
        span.record("showoff.warm_pool", "miss");
        self.open_dialled(meta).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn hub(max_per_session: usize) -> Arc<DialBackHub> {
        let settings = DialBackSettings {
            warm_pool: 2,
            pending_timeout: Duration::from_secs(10),
            max_pending_per_session: max_per_session,
            max_pending_total: 100,
            user_timeout: Duration::from_secs(60),
        };
        let stats = Arc::new(Stats::new(&Default::default(), 0));
        let tls = Arc::new(Tls::new(&Default::default()).expect("no TLS"));
        DialBackHub::new(settings, stats, tls)
    }

    fn meta() -> StreamMeta {
        StreamMeta {
            tunnel: "demo".into(),
            visitor_addr: "192.0.2.7:5000".parse().expect("addr"),
            trace: None,
        }
    }

    /// An `open` running in its own task.
    fn spawn_open(
        opener: &Arc<DialBack>,
    ) -> tokio::task::JoinHandle<Result<TunnelStream, OpenError>> {
        let opener = opener.clone();
        tokio::spawn(async move { opener.open(&meta()).await })
    }

    /// The id of the `Dial` the opener sent on the control link.
    async fn dialled(rx: &mut mpsc::Receiver<ServerMessage>) -> String {
        match rx.recv().await {
            Some(ServerMessage::Dial {
                id,
                tunnel,
                visitor_addr,
                ..
            }) => {
                assert_eq!(
                    (tunnel.as_str(), visitor_addr.as_str()),
                    ("demo", "192.0.2.7:5000")
                );
                id
            }
            other => panic!("expected a dial, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_dialled_stream_is_paired_by_id_and_key() {
        let hub = hub(8);
        let (tx, mut rx) = mpsc::channel(4);
        let guard = hub.attach(&"s1".into(), tx);
        let open = spawn_open(&guard.opener());
        let id = dialled(&mut rx).await;
        let (server_side, mut client_side) = tokio::io::duplex(64);
        let stream = TunnelStream::boxed(bytes::BytesMut::new(), server_side);
        assert_eq!(
            hub.pending.complete(
                &id,
                "s1",
                "not the key",
                TunnelStream::boxed(bytes::BytesMut::new(), tokio::io::duplex(8).0)
            ),
            Err(DataRejectReason::WrongKey),
            "a leaked id alone pairs nothing"
        );
        hub.pending
            .complete(&id, "s1", guard.data_key(), stream)
            .expect("paired");
        let mut stream = open.await.expect("joined").expect("a stream");
        client_side.write_all(b"ping").await.expect("write");
        let mut got = [0u8; 4];
        stream.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"ping");
        assert_eq!(hub.stats.snapshot().pool_misses, 1);
        assert_eq!(hub.stats.snapshot().pending, 0, "the permit was given back");
    }

    #[tokio::test]
    async fn a_stream_error_reaches_the_waiter_and_detaching_fails_the_rest() {
        let hub = hub(8);
        let (tx, mut rx) = mpsc::channel(4);
        let guard = hub.attach(&"s1".into(), tx);
        let opener = guard.opener();
        let first = spawn_open(&opener);
        let id = dialled(&mut rx).await;
        hub.fail(&id, "s1", "connection refused".into());
        assert_eq!(
            first.await.expect("joined").err(),
            Some(OpenError::TargetUnreachable("connection refused".into()))
        );
        let second = spawn_open(&opener);
        dialled(&mut rx).await;
        drop(guard);
        assert_eq!(
            second.await.expect("joined").err(),
            Some(OpenError::ClientGone)
        );
        assert!(hub.session("s1").is_none(), "detached");
    }

    #[tokio::test(start_paused = true)]
    async fn streams_past_the_cap_are_refused_and_silence_times_out() {
        let hub = hub(1);
        let (tx, mut rx) = mpsc::channel(4);
        let guard = hub.attach(&"s1".into(), tx);
        let opener = guard.opener();
        let first = spawn_open(&opener);
        dialled(&mut rx).await;
        assert_eq!(
            opener.open(&meta()).await.err(),
            Some(OpenError::OverCapacity)
        );
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(first.await.expect("joined").err(), Some(OpenError::Timeout));
        assert_eq!(hub.pending.len(), 0, "the guard removed the entry");
    }
}
