//! The dial-back transport: one TCP data connection per stream, dialled by the client.
//!
//! [`DialBack::open`] first takes an idle connection from the session's warm pool (the client
//! keeps `warm_pool` of them dialled in advance) and sends `Dial` on it: one frame, no extra
//! connection. With the pool empty it falls back to `Dial` on the control connection and awaits
//! the answering data connection through the [`Pending`] table. [`accept_data`] is the data
//! listener's handler: it checks the handshake and files each connection under its pending id
//! or its session's pool.

use std::collections::VecDeque;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::{SinkExt, StreamExt};
use showoff_proto::{ClientMessage, FrameCodec, HANDSHAKE_TIMEOUT, Role, ServerMessage};
use tokio::net::TcpStream;

use crate::tls::ServerIo;
use tokio::sync::mpsc;
use tokio_util::codec::Framed;

use super::{OpenError, StreamMeta, StreamOpener, TunnelStream};
use crate::pending::Permit;
use crate::server::Shared;
use crate::stats::DataRejectReason;

/// Initial read buffer of a data connection during its handshake.
const DATA_BUFFER: usize = 256;

/// A data connection still speaking frames.
pub(crate) type DataFramed = Framed<ServerIo, FrameCodec<ClientMessage, ServerMessage>>;

/// The dial-back opener of one session.
pub(crate) struct DialBack {
    pub(crate) session_id: String,
    pub(crate) data_key: String,
    control: mpsc::Sender<ServerMessage>,
    pool: Mutex<VecDeque<DataFramed>>,
    pool_max: usize,
    pending_now: AtomicUsize,
    shared: Arc<Shared>,
}

impl DialBack {
    pub(crate) fn new(
        session_id: String,
        data_key: String,
        control: mpsc::Sender<ServerMessage>,
        shared: Arc<Shared>,
    ) -> Self {
        Self {
            session_id,
            data_key,
            control,
            pool: Mutex::new(VecDeque::new()),
            pool_max: usize::from(shared.config.warm_pool),
            pending_now: AtomicUsize::new(0),
            shared,
        }
    }

    fn pool(&self) -> std::sync::MutexGuard<'_, VecDeque<DataFramed>> {
        self.pool.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Files a warm-pool connection; refuses it when the pool is full.
    fn add_pooled(&self, conn: DataFramed) -> Result<(), DataRejectReason> {
        let mut pool = self.pool();
        if pool.len() >= self.pool_max {
            return Err(DataRejectReason::PoolFull);
        }
        pool.push_back(conn);
        self.shared.stats.pool_idle.inc();
        Ok(())
    }

    fn take_pooled(&self) -> Option<DataFramed> {
        let conn = self.pool().pop_front()?;
        self.shared.stats.pool_idle.dec();
        Some(conn)
    }

    /// Drops every pooled connection (session ended).
    pub(crate) fn clear_pool(&self) {
        let dropped = std::mem::take(&mut *self.pool()).len();
        self.shared.stats.pool_idle.dec_by(dropped as i64);
    }

    fn timeout(&self) -> Duration {
        self.shared.config.pending_timeout
    }

    async fn open_pooled(&self, mut conn: DataFramed, meta: &StreamMeta) -> Pooled {
        let id = showoff_proto::id::random_id();
        let dial = ServerMessage::Dial {
            id: id.clone(),
            tunnel: meta.tunnel.clone(),
            visitor_addr: meta.visitor_addr.to_string(),
        };
        if conn.send(dial).await.is_err() {
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
        let (guard, rx) = self.shared.pending.insert(&self.session_id, &self.data_key);
        let dial = ServerMessage::Dial {
            id: guard.id().to_string(),
            tunnel: meta.tunnel.clone(),
            visitor_addr: meta.visitor_addr.to_string(),
        };
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
        let config = &self.shared.config;
        let _permit = Permit::acquire(
            &self.pending_now,
            config.max_pending_per_session,
            &self.shared.stats.pending,
            config.max_pending_total,
        )
        .ok_or(OpenError::OverCapacity)?;
        loop {
            let Some(conn) = self.take_pooled() else {
                break;
            };
            match self.open_pooled(conn, meta).await {
                Pooled::Ready(stream) => {
                    self.shared.stats.pool_hits.inc();
                    return Ok(stream);
                }
                Pooled::Failed(error) => return Err(error),
                Pooled::Stale => continue,
            }
        }
        self.shared.stats.pool_misses.inc();
        self.open_dialled(meta).await
    }
}

/// Handles one connection on the data listener: `Hello`, `DataHello`, then pairing.
pub(crate) async fn accept_data(stream: TcpStream, shared: Arc<Shared>) {
    let accepted = shared
        .tls
        .accept_control(stream, bytes::BytesMut::new(), HANDSHAKE_TIMEOUT)
        .await;
    let stream = match accepted {
        Ok((stream, _)) => stream,
        Err(error) => {
            tracing::debug!(%error, "data connection failed the TLS handshake");
            shared.stats.reject(DataRejectReason::BadHandshake);
            return;
        }
    };
    // Handshake frames are small; an idle pooled connection should not hold 16 KiB of buffers.
    let codec = FrameCodec::<ClientMessage, ServerMessage>::new();
    let mut framed = Framed::with_capacity(stream, codec, DATA_BUFFER);
    let hello = tokio::time::timeout(HANDSHAKE_TIMEOUT, read_data_hello(&mut framed)).await;
    let (session, key, id) = match hello {
        Ok(Ok(fields)) => fields,
        Ok(Err(refusal)) => {
            let _ = framed.send(refusal).await;
            shared.stats.reject(DataRejectReason::BadHandshake);
            return;
        }
        Err(_) => {
            shared.stats.reject(DataRejectReason::BadHandshake);
            return;
        }
    };
    let result = match id {
        Some(id) => {
            let parts = framed.into_parts();
            let stream = TunnelStream::boxed(parts.read_buf, parts.io);
            shared.pending.complete(&id, &session, &key, stream)
        }
        None => file_pooled(framed, &session, &key, &shared),
    };
    if let Err(reason) = result {
        tracing::debug!(?reason, "data connection rejected");
        shared.stats.reject(reason);
    }
}

fn file_pooled(
    framed: DataFramed,
    session: &str,
    key: &str,
    shared: &Shared,
) -> Result<(), DataRejectReason> {
    let dialback = shared
        .session(session)
        .ok_or(DataRejectReason::UnknownSession)?;
    if !showoff_proto::id::constant_time_eq(dialback.data_key.as_bytes(), key.as_bytes()) {
        return Err(DataRejectReason::WrongKey);
    }
    dialback.add_pooled(framed)
}

async fn read_data_hello(
    framed: &mut DataFramed,
) -> Result<(String, String, Option<String>), ServerMessage> {
    match framed.next().await {
        Some(Ok(ClientMessage::Hello { version, role })) => {
            crate::session::check_version(version)?;
            if role != Role::Data {
                return Err(crate::session::bad_request("expected role data"));
            }
        }
        _ => return Err(crate::session::bad_request("expected hello")),
    }
    match framed.next().await {
        Some(Ok(ClientMessage::DataHello { session, key, id })) => Ok((session, key, id)),
        _ => Err(crate::session::bad_request("expected data_hello")),
    }
}
