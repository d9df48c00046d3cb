//! One connected session: handshake, control loop, warm pool and the streams it carries.
//!
//! Streams reach the client two ways, both ending in a splice between a data connection and the
//! local target: a `Dial` on the control connection (dial the target, then dial back with
//! `DataHello { id }`), or a `Dial` on one of the warm-pool data connections (dial the target,
//! answer `StreamReady` on that same connection). Every pool slot re-dials as soon as its
//! connection is taken, so the pool stays full.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use showoff_proto::{
    ClientMessage, FrameCodec, HANDSHAKE_TIMEOUT, PROTOCOL_VERSION, Role, ServerMessage,
    TunnelInfo, TunnelSpec,
};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until, timeout};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::target::{Target, TcpTarget};
use crate::tls::Connector;
use crate::transport::{ServerStream, TcpTransport, Transport};
use crate::{ClientConfig, ClientError, ClientEvent, SessionEnd};

type Conn = Framed<ServerStream, FrameCodec<ServerMessage, ClientMessage>>;

/// Buffer per direction when splicing a data connection with the target. 64 KiB was measured
/// slower for short connections and no faster for 1 MiB bodies (docs/benchmarks.md).
const SPLICE_BUF: usize = 8 * 1024;
/// Pause before a pool slot re-dials after a failure.
const POOL_RETRY: Duration = Duration::from_secs(1);
/// Missed heartbeats after which the server is presumed gone.
const MISSED_PINGS: u32 = 3;

/// What streams need to know about the session.
struct Ctx {
    session: String,
    key: String,
    data_addr: String,
    /// Tunnel name → where its streams go.
    targets: HashMap<String, Arc<dyn Target>>,
    control: mpsc::Sender<ClientMessage>,
    /// How the data listener is reached, as the control listener was.
    transport: Arc<dyn Transport>,
}

/// Runs one session; `welcomed` is set to when the server accepted it.
pub(crate) async fn run(
    config: &ClientConfig,
    events: &mpsc::UnboundedSender<ClientEvent>,
    shutdown: &CancellationToken,
    streams: &TaskTracker,
    welcomed: &mut Option<Instant>,
) -> Result<SessionEnd, ClientError> {
    let tls = match &config.tls {
        Some(settings) => Some(Connector::new(settings).map_err(ClientError::Failed)?),
        None => None,
    };
    let transport: Arc<dyn Transport> = Arc::new(TcpTransport::new(tls));
    let stream = transport
        .dial(&config.server)
        .await
        .map_err(ClientError::Failed)?;
    let mut conn = Framed::new(stream, FrameCodec::<ServerMessage, ClientMessage>::new());
    let specs: Vec<TunnelSpec> = config.tunnels.iter().map(|t| t.spec.clone()).collect();
    let welcome = timeout(
        HANDSHAKE_TIMEOUT,
        handshake(&mut conn, &config.token, specs),
    )
    .await
    .map_err(|_| ClientError::Failed("the server did not answer the handshake in time".into()))??;
    *welcomed = Some(Instant::now());
    let Welcomed {
        tunnels,
        ctx,
        warm_pool,
        rx,
        heartbeat,
    } = accept_welcome(config, welcome, transport)?;
    let _ = events.send(ClientEvent::Connected { tunnels });
    let session_stop = shutdown.child_token();
    let _stop_pool = session_stop.clone().drop_guard();
    for _ in 0..warm_pool {
        streams.spawn(pool_slot(
            ctx.clone(),
            session_stop.clone(),
            streams.clone(),
        ));
    }
    ControlLoop {
        conn,
        rx,
        ctx,
        events: events.clone(),
        streams: streams.clone(),
        silence_limit: heartbeat * MISSED_PINGS,
        go_away: None,
    }
    .run(shutdown)
    .await
}

/// What a `Welcome` sets up for the rest of the session.
struct Welcomed {
    /// Granted tunnels with their local targets, for the `Connected` event.
    tunnels: Vec<(TunnelInfo, String)>,
    ctx: Arc<Ctx>,
    warm_pool: u16,
    /// Frames that stream tasks want sent on the control connection.
    rx: mpsc::Receiver<ClientMessage>,
    heartbeat: Duration,
}

fn accept_welcome(
    config: &ClientConfig,
    welcome: ServerMessage,
    transport: Arc<dyn Transport>,
) -> Result<Welcomed, ClientError> {
    let ServerMessage::Welcome {
        session,
        data_key,
        data_port,
        heartbeat_interval_secs,
        warm_pool,
        tunnels: granted,
    } = welcome
    else {
        return Err(ClientError::Failed("expected welcome".into()));
    };
    // The server answers in request order, so the n-th tunnel reaches the n-th local target.
    let mut targets = HashMap::new();
    let mut tunnels: Vec<(TunnelInfo, String)> = Vec::with_capacity(granted.len());
    for (index, info) in granted.into_iter().enumerate() {
        let asked = config.tunnel_at(index);
        let target: Arc<dyn Target> = Arc::new(TcpTarget::new(
            asked.map(|t| t.local.clone()).unwrap_or_default(),
            asked.and_then(|t| t.proxy_protocol),
        ));
        tunnels.push((info.clone(), target.address().to_string()));
        targets.insert(info.name, target);
    }
    let (control, rx) = mpsc::channel(64);
    let ctx = Arc::new(Ctx {
        session,
        key: data_key,
        data_addr: config.data_addr(data_port),
        targets,
        control,
        transport,
    });
    Ok(Welcomed {
        tunnels,
        ctx,
        warm_pool,
        rx,
        heartbeat: Duration::from_secs(heartbeat_interval_secs.max(1)),
    })
}

async fn handshake(
    conn: &mut Conn,
    token: &str,
    tunnels: Vec<TunnelSpec>,
) -> Result<ServerMessage, ClientError> {
    let lost =
        |e: showoff_proto::ProtocolError| ClientError::Failed(format!("handshake failed: {e}"));
    conn.feed(ClientMessage::Hello {
        version: PROTOCOL_VERSION,
        role: Role::Control,
        transport: Default::default(),
    })
    .await
    .map_err(lost)?;
    conn.feed(ClientMessage::Auth {
        token: token.to_string(),
    })
    .await
    .map_err(lost)?;
    conn.send(ClientMessage::Open { tunnels })
        .await
        .map_err(lost)?;
    match conn.next().await {
        Some(Ok(welcome @ ServerMessage::Welcome { .. })) => Ok(welcome),
        Some(Ok(ServerMessage::Refused { code, message })) => {
            Err(ClientError::Refused { code, message })
        }
        Some(Ok(other)) => Err(ClientError::Failed(format!(
            "unexpected {other:?} during handshake"
        ))),
        Some(Err(e)) => Err(lost(e)),
        None => Err(ClientError::Failed(
            "the server closed the connection during the handshake".into(),
        )),
    }
}

struct ControlLoop {
    conn: Conn,
    rx: mpsc::Receiver<ClientMessage>,
    ctx: Arc<Ctx>,
    events: mpsc::UnboundedSender<ClientEvent>,
    streams: TaskTracker,
    silence_limit: Duration,
    go_away: Option<Duration>,
}

impl ControlLoop {
    async fn run(mut self, shutdown: &CancellationToken) -> Result<SessionEnd, ClientError> {
        let mut deadline = Instant::now() + self.silence_limit;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    let _ = self.conn.close().await;
                    return Ok(SessionEnd::Shutdown);
                }
                Some(msg) = self.rx.recv() => {
                    self.conn.send(msg).await.map_err(|e| ClientError::Failed(e.to_string()))?;
                }
                frame = self.conn.next() => {
                    deadline = Instant::now() + self.silence_limit;
                    if let Some(end) = self.on_frame(frame).await? {
                        return Ok(end);
                    }
                }
                _ = sleep_until(deadline) => {
                    return Err(ClientError::Failed("no heartbeat from the server".into()));
                }
            }
        }
    }

    async fn on_frame(
        &mut self,
        frame: Option<Result<ServerMessage, showoff_proto::ProtocolError>>,
    ) -> Result<Option<SessionEnd>, ClientError> {
        let msg = match frame {
            None => {
                return match self.go_away {
                    Some(delay) => Ok(Some(SessionEnd::GoAway(delay))),
                    None => Err(ClientError::Failed(
                        "the server closed the connection".into(),
                    )),
                };
            }
            Some(Err(e)) => {
                return Err(ClientError::Failed(format!(
                    "control connection failed: {e}"
                )));
            }
            Some(Ok(msg)) => msg,
        };
        match msg {
            ServerMessage::Ping => {
                self.conn
                    .send(ClientMessage::Pong)
                    .await
                    .map_err(|e| ClientError::Failed(e.to_string()))?;
            }
            ServerMessage::Dial {
                id,
                tunnel,
                visitor_addr,
            } => {
                let dial = Dial {
                    id,
                    tunnel,
                    visitor_addr,
                };
                self.streams.spawn(serve_dial(self.ctx.clone(), dial));
            }
            ServerMessage::GoAway {
                reason,
                reconnect_after_ms,
            } => {
                info!(reason, "server is draining");
                self.go_away = Some(Duration::from_millis(reconnect_after_ms));
                let _ = self.events.send(ClientEvent::GoAway { reason });
            }
            ServerMessage::TunnelClosed { tunnel, reason } => {
                warn!(tunnel, reason, "tunnel closed by the server");
                let _ = self
                    .events
                    .send(ClientEvent::TunnelClosed { tunnel, reason });
            }
            ServerMessage::Refused { code, message } => {
                return Err(ClientError::Refused { code, message });
            }
            ServerMessage::Welcome { .. } => debug!("ignoring a second welcome"),
        }
        Ok(None)
    }
}

/// A stream the server asked for.
struct Dial {
    id: String,
    tunnel: String,
    visitor_addr: String,
}

/// Opens the target end of the dial's tunnel.
async fn dial_target(ctx: &Ctx, dial: &Dial) -> Result<crate::target::TargetStream, String> {
    let target = ctx
        .targets
        .get(&dial.tunnel)
        .ok_or_else(|| format!("unknown tunnel {:?}", dial.tunnel))?;
    target.open(dial.visitor_addr.parse().ok()).await
}

/// Answers a `Dial` from the control connection: target first, then the data connection.
async fn serve_dial(ctx: Arc<Ctx>, dial: Dial) {
    let mut target = match dial_target(&ctx, &dial).await {
        Ok(target) => target,
        Err(reason) => {
            debug!(tunnel = dial.tunnel, reason, "local target unreachable");
            let id = dial.id;
            let _ = ctx
                .control
                .send(ClientMessage::StreamError { id, reason })
                .await;
            return;
        }
    };
    let mut data = match open_data(&ctx, Some(dial.id)).await {
        Ok(conn) => conn.into_parts().io,
        Err(error) => return debug!(%error, "data connection failed"),
    };
    if let Err(error) =
        tokio::io::copy_bidirectional_with_sizes(&mut data, &mut target, SPLICE_BUF, SPLICE_BUF)
            .await
    {
        debug!(%error, "stream ended");
    }
}

/// Dials the data listener and introduces the connection.
async fn open_data(ctx: &Ctx, id: Option<String>) -> Result<Conn, String> {
    let stream = ctx.transport.dial(&ctx.data_addr).await?;
    let mut conn = Framed::new(stream, FrameCodec::<ServerMessage, ClientMessage>::new());
    let hello = ClientMessage::Hello {
        version: PROTOCOL_VERSION,
        role: Role::Data,
        transport: Default::default(),
    };
    let data_hello = ClientMessage::DataHello {
        session: ctx.session.clone(),
        key: ctx.key.clone(),
        id,
    };
    conn.feed(hello).await.map_err(|e| e.to_string())?;
    conn.send(data_hello).await.map_err(|e| e.to_string())?;
    Ok(conn)
}

/// Keeps one warm-pool connection dialled for as long as the session lives.
async fn pool_slot(ctx: Arc<Ctx>, stop: CancellationToken, streams: TaskTracker) {
    loop {
        let conn = tokio::select! {
            _ = stop.cancelled() => return,
            conn = open_data(&ctx, None) => conn,
        };
        let mut conn = match conn {
            Ok(conn) => conn,
            Err(error) => {
                debug!(error, "warm pool dial failed");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(POOL_RETRY) => continue,
                }
            }
        };
        let frame = tokio::select! {
            _ = stop.cancelled() => return,
            frame = conn.next() => frame,
        };
        match frame {
            Some(Ok(ServerMessage::Dial {
                id,
                tunnel,
                visitor_addr,
            })) => {
                // Re-dial only once this stream is set up: the replacement's connect and
                // handshake would otherwise compete with the visitor's first bytes.
                let (set_up, wait) = tokio::sync::oneshot::channel();
                let dial = Dial {
                    id,
                    tunnel,
                    visitor_addr,
                };
                streams.spawn(serve_pooled(ctx.clone(), conn, dial, set_up));
                let _ = wait.await;
            }
            // Closed by the server (pool full, session gone) or nonsense: wait, then re-dial.
            _ => tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(POOL_RETRY) => {}
            },
        }
    }
}

/// Answers a `Dial` that arrived on a warm-pool connection.
async fn serve_pooled(
    ctx: Arc<Ctx>,
    mut conn: Conn,
    dial: Dial,
    set_up: tokio::sync::oneshot::Sender<()>,
) {
    let mut target = match dial_target(&ctx, &dial).await {
        Ok(target) => target,
        Err(reason) => {
            let id = dial.id;
            let _ = conn.send(ClientMessage::StreamError { id, reason }).await;
            return;
        }
    };
    let ready = conn.send(ClientMessage::StreamReady { id: dial.id }).await;
    let _ = set_up.send(());
    if ready.is_err() {
        return;
    }
    let parts = conn.into_parts();
    let mut data = parts.io;
    if !parts.read_buf.is_empty() && target.write_all(&parts.read_buf).await.is_err() {
        return;
    }
    if let Err(error) =
        tokio::io::copy_bidirectional_with_sizes(&mut data, &mut target, SPLICE_BUF, SPLICE_BUF)
            .await
    {
        debug!(%error, "stream ended");
    }
}
