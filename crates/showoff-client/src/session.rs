//! One connected session: connecting on a transport, the handshake, the control loop, and
//! the streams it carries.
//!
//! - [`link`]: how this session's streams arrive (dial-back, mux, QUIC) and how `auto` picks;
//! - [`dialback`]: `Dial`s on the control connection and the warm pool;
//! - [`streams`]: one stream's `Dial` → target → `StreamReady` → splice;
//! - [`udp`]: UDP tunnels' flows, over QUIC datagrams or a datagram channel.
//!
//! An `auto` session on mux probes QUIC in the background ([`link::Probe`]); a probe that gets
//! a whole QUIC session up (handshake, `Welcome`, the same names) replaces the mux session,
//! whose established streams run on until they end.

pub(crate) mod dialback;
pub(crate) mod link;
pub(crate) mod streams;
pub(crate) mod udp;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use showoff_core::trace::{Decision, TARGET};
use showoff_proto::{
    ClientMessage, FrameCodec, HANDSHAKE_TIMEOUT, PROTOCOL_VERSION, RefusedCode, Role,
    ServerMessage, TransportKind, TunnelInfo, TunnelSpec,
};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until, timeout};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, warn};

use self::link::{Link, Memory, Probe};
use self::streams::Dial;
use crate::target::{Target, TcpTarget};
use crate::transport::{ServerStream, Transport};
use crate::{ClientConfig, ClientError, ClientEvent, SessionEnd};

pub(crate) type Conn = Framed<ServerStream, FrameCodec<ServerMessage, ClientMessage>>;

/// Frames over a connection or stream to the server.
pub(crate) fn framed(stream: ServerStream) -> Conn {
    Framed::new(stream, FrameCodec::<ServerMessage, ClientMessage>::new())
}

/// Missed heartbeats after which the server is presumed gone.
const MISSED_PINGS: u32 = 3;

/// What streams need to know about the session.
pub(crate) struct Ctx {
    session: String,
    key: String,
    data_addr: String,
    /// Tunnel name → where its streams go.
    targets: HashMap<String, Arc<dyn Target>>,
    control: mpsc::Sender<ClientMessage>,
    /// How the data listener is reached, as the control listener was.
    transport: Arc<dyn Transport>,
    /// The session's UDP tunnels.
    udp: Arc<udp::UdpTunnels>,
    /// Cancelled when the session ends: its datagram channels close with it (streams run on).
    stop: CancellationToken,
    /// Streams and target dials are traced, at this ratio when the server sent no context.
    trace: Option<f64>,
}

/// A session the server welcomed, not yet served.
pub(crate) struct Connected {
    conn: Conn,
    link: Link,
    welcome: ServerMessage,
    /// The streams a mux peer opens, until the session's context exists to serve them.
    inbound: Option<mpsc::Receiver<showoff_core::TunnelStream>>,
}

/// Runs sessions until one ends for good; `welcomed` is set when the server accepted one.
pub(crate) async fn run(
    config: &ClientConfig,
    events: &mpsc::UnboundedSender<ClientEvent>,
    shutdown: &CancellationToken,
    streams: &TaskTracker,
    welcomed: &mut Option<Instant>,
    memory: &mut Memory,
    successor: &ClientConfig,
) -> Result<SessionEnd, ClientError> {
    let mut connected = link::connect(config, memory).await?;
    let mut serving = config;
    loop {
        *welcomed = Some(Instant::now());
        let end = serve(
            serving, connected, events, shutdown, streams, memory, successor,
        )
        .await?;
        match end {
            Served::Ended(end) => return Ok(end),
            Served::Switched(next) => connected = *next,
            // Data connections and probes go to the server the session moved to.
            Served::Moved(next) => {
                connected = *next;
                serving = successor;
            }
        }
    }
}

/// The armed move's outcome; never resolves when none is armed.
async fn wait_move(moving: &mut Option<link::Attempt>) -> Result<Connected, ClientError> {
    match moving.as_mut() {
        Some(attempt) => attempt.await,
        None => std::future::pending().await,
    }
}

/// How serving one session ended.
enum Served {
    Ended(SessionEnd),
    /// A probe brought a better session up; serve it next.
    Switched(Box<Connected>),
    /// Sent away by a draining server, the session opened its successor; serve it next.
    Moved(Box<Connected>),
}

async fn serve(
    config: &ClientConfig,
    connected: Connected,
    events: &mpsc::UnboundedSender<ClientEvent>,
    shutdown: &CancellationToken,
    streams: &TaskTracker,
    memory: &mut Memory,
    successor: &ClientConfig,
) -> Result<Served, ClientError> {
    let Connected {
        conn,
        link,
        welcome,
        inbound,
    } = connected;
    let transport = link.kind();
    let session_stop = shutdown.child_token();
    let _stop_pool = session_stop.clone().drop_guard();
    let welcomed = accept_welcome(config, welcome, memory, session_stop.clone())?;
    info!(transport = transport.as_str(), "session up");
    let trace = session_span(config, transport.as_str(), &welcomed.tunnels);
    let max_udp_payload = (!welcomed.ctx.udp.targets.is_empty())
        .then(|| udp::session_payload_limit(link.quic_connection()));
    let _ = events.send(ClientEvent::Connected {
        tunnels: welcomed.tunnels,
        transport,
        max_udp_payload,
    });
    let ctx = welcomed.ctx;
    for _ in 0..welcomed.warm_pool {
        streams.spawn(dialback::pool_slot(
            ctx.clone(),
            session_stop.clone(),
            streams.clone(),
        ));
    }
    link.serve_streams(&ctx, streams, inbound, session_stop.clone());
    let probe = Probe::after(config, memory, transport);
    let result = ControlLoop {
        conn,
        rx: welcomed.rx,
        ctx,
        events: events.clone(),
        streams: streams.clone(),
        silence_limit: welcomed.heartbeat * MISSED_PINGS,
        go_away: None,
        link: link.clone(),
        probe,
        successor: successor.clone(),
        granted: memory.specs(config),
        moving: None,
    }
    .run(shutdown, memory)
    .instrument(trace.clone())
    .await;
    if let Err(error) = &result {
        trace.record("otel.status_code", "error");
        trace.record("error.type", error.to_string().as_str());
    }
    link.finish();
    result
}

/// The session's span (`CLIENT`), from the welcome to the session's end, with an event for each
/// tunnel up, heartbeat loss and go-away; [`tracing::Span::none`] when tracing is off or the
/// session is not sampled.
fn session_span(
    config: &ClientConfig,
    transport: &str,
    tunnels: &[(TunnelInfo, String)],
) -> tracing::Span {
    let sampled = config
        .trace
        .is_some_and(|ratio| Decision::root(ratio, None).sampled());
    if !sampled {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        target: TARGET,
        "showoff.client.session",
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        server.address = config.server.as_str(),
        showoff.transport = transport,
        error.type = tracing::field::Empty,
    );
    for (tunnel, _) in tunnels {
        let (name, url) = (tunnel.name.as_str(), tunnel.public_url.as_str());
        tracing::debug!(target: TARGET, parent: &span, tunnel = name, url, "open");
    }
    span
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
    memory: &mut Memory,
    stop: CancellationToken,
) -> Result<Welcomed, ClientError> {
    let ServerMessage::Welcome {
        session,
        data_key,
        data_port,
        heartbeat_interval_secs,
        warm_pool,
        tunnels: granted,
        offers,
        quic_port,
        ..
    } = welcome
    else {
        return Err(ClientError::Failed("expected welcome".into()));
    };
    memory.welcomed(config, &granted, &offers, quic_port);
    // The server answers in request order, so the n-th tunnel reaches the n-th local target.
    let mut targets = HashMap::new();
    let mut udp_targets = HashMap::new();
    let mut flow_idle_secs = None;
    let mut tunnels: Vec<(TunnelInfo, String)> = Vec::with_capacity(granted.len());
    for (index, info) in granted.into_iter().enumerate() {
        let asked = config.tunnel_at(index);
        let local = asked.map(|t| t.local.clone()).unwrap_or_default();
        tunnels.push((info.clone(), local.clone()));
        if info.kind == showoff_proto::TunnelKind::Udp {
            flow_idle_secs = flow_idle_secs.max(info.flow_idle_secs);
            let target = udp::UdpTarget {
                addr: local,
                proxy_protocol: asked.is_some_and(|t| t.proxy_protocol.is_some()),
            };
            udp_targets.insert(info.name, Arc::new(target));
            continue;
        }
        let mut target: Arc<dyn Target> = Arc::new(
            TcpTarget::new(local, asked.and_then(|t| t.proxy_protocol))
                .with_tls(asked.and_then(|t| t.tls.clone())),
        );
        if let Some(inspector) = &config.inspector
            && info.kind == showoff_proto::TunnelKind::Http
        {
            target = inspector.wrap(&info.name, target);
        }
        targets.insert(info.name, target);
    }
    let (control, rx) = mpsc::channel(64);
    let ctx = Arc::new(Ctx {
        session,
        key: data_key,
        data_addr: config.data_addr(data_port),
        targets,
        control,
        transport: link::tcp_transport(config)?,
        udp: Arc::new(udp::UdpTunnels::new(udp_targets, flow_idle_secs)),
        stop,
        trace: config.trace,
    });
    Ok(Welcomed {
        tunnels,
        ctx,
        warm_pool,
        rx,
        heartbeat: Duration::from_secs(heartbeat_interval_secs.max(1)),
    })
}

/// `Hello`, `Auth`, `Open` → `Welcome` (or the refusal), within the handshake deadline.
pub(crate) async fn handshake(
    conn: &mut Conn,
    token: &str,
    tunnels: Vec<TunnelSpec>,
    transport: TransportKind,
) -> Result<ServerMessage, ClientError> {
    timeout(HANDSHAKE_TIMEOUT, exchange(conn, token, tunnels, transport))
        .await
        .map_err(|_| {
            ClientError::Failed("the server did not answer the handshake in time".into())
        })?
}

async fn exchange(
    conn: &mut Conn,
    token: &str,
    tunnels: Vec<TunnelSpec>,
    transport: TransportKind,
) -> Result<ServerMessage, ClientError> {
    let lost =
        |e: showoff_proto::ProtocolError| ClientError::Failed(format!("handshake failed: {e}"));
    let hello = ClientMessage::Hello {
        version: PROTOCOL_VERSION,
        role: Role::Control,
        transport,
    };
    conn.feed(hello).await.map_err(lost)?;
    let auth = ClientMessage::Auth {
        token: token.to_string(),
    };
    conn.feed(auth).await.map_err(lost)?;
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
    link: Link,
    probe: Probe,
    /// Where the next session goes (the next server of the list, or the same balancer).
    successor: ClientConfig,
    /// The tunnels as granted, which the next session asks for.
    granted: Vec<TunnelSpec>,
    /// After a `GoAway`: the next session, opened while this one still serves.
    moving: Option<link::Attempt>,
}

impl ControlLoop {
    async fn run(
        mut self,
        shutdown: &CancellationToken,
        memory: &mut Memory,
    ) -> Result<Served, ClientError> {
        let mut deadline = Instant::now() + self.silence_limit;
        let mut heard = self.link.received();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    let _ = self.conn.close().await;
                    return Ok(Served::Ended(SessionEnd::Shutdown));
                }
                Some(msg) = self.rx.recv() => {
                    self.conn.send(msg).await.map_err(|e| ClientError::Failed(e.to_string()))?;
                }
                frame = self.conn.next() => {
                    deadline = Instant::now() + self.silence_limit;
                    match self.on_frame(frame).await {
                        Ok(None) => {}
                        Ok(Some(end)) => return Ok(Served::Ended(end)),
                        // Our own move took the names over: wait for it.
                        Err(ClientError::Refused { code: RefusedCode::Replaced, .. })
                            if self.moving.is_some() =>
                        {
                            let moved = wait_move(&mut self.moving).await;
                            return self.moved(moved, memory).ok_or_else(|| {
                                ClientError::Failed("replaced while moving".into())
                            });
                        }
                        // Our own probe took the names over: wait for it, not for the refusal.
                        Err(ClientError::Refused { code: RefusedCode::Replaced, .. })
                            if self.probe.is_armed() =>
                        {
                            let probed = self.probe.wait().await;
                            if let Some(next) = self.probe.settle(probed, memory, &self.events) {
                                return Ok(Served::Switched(next));
                            }
                            return Err(ClientError::Failed("replaced while probing QUIC".into()));
                        }
                        Err(error) => return Err(error),
                    }
                }
                moved = wait_move(&mut self.moving), if self.moving.is_some() => {
                    if let Some(next) = self.moved(moved, memory) {
                        return Ok(next);
                    }
                }
                probed = self.probe.wait(), if self.go_away.is_none() => {
                    if let Some(next) = self.probe.settle(probed, memory, &self.events) {
                        return Ok(Served::Switched(next));
                    }
                }
                _ = sleep_until(deadline) => {
                    // Any byte on the connection is a sign of life, not only a frame.
                    let now = self.link.received();
                    if now.is_none() || now == heard {
                        tracing::debug!(target: TARGET, "heartbeat_lost");
                        return Err(ClientError::Failed("no heartbeat from the server".into()));
                    }
                    heard = now;
                    deadline = Instant::now() + self.silence_limit;
                }
            }
        }
    }

    /// Takes the outcome of a move: the session to serve next, or `None` (this one goes on
    /// until the server closes it, then the client reconnects as after any `GoAway`).
    fn moved(
        &mut self,
        outcome: Result<Connected, ClientError>,
        memory: &mut Memory,
    ) -> Option<Served> {
        self.moving = None;
        match outcome {
            Ok(next) => {
                info!("the next session is up; leaving the draining server");
                memory.moved();
                Some(Served::Moved(Box::new(next)))
            }
            Err(error) => {
                warn!(%error, "could not open the next session; waiting for the server to close this one");
                None
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
            dial @ ServerMessage::Dial { .. } => {
                if let Some(dial) = Dial::from_frame(dial) {
                    let serving = dialback::serve_dial(self.ctx.clone(), dial);
                    self.streams.spawn(serving);
                }
            }
            ServerMessage::GoAway {
                reason,
                reconnect_after_ms,
            } => {
                info!(reason, "server is draining; opening the next session");
                tracing::debug!(target: TARGET, reason = reason.as_str(), "go_away");
                self.go_away = Some(Duration::from_millis(reconnect_after_ms));
                if self.moving.is_none() {
                    let specs = self.granted.clone();
                    self.moving = Some(link::move_to(self.successor.clone(), specs));
                }
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
