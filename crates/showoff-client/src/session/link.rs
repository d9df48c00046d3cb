//! How a session's streams reach the client ([`Link`]), connecting on each transport
//! ([`connect`]), and how `auto` chooses ([`Memory`], [`Probe`]).
//!
//! `auto`: a client that knows (from an earlier `Welcome`) that the server serves QUIC tries
//! it first and falls back to mux after [`QUIC_FALLBACK`]; one that does not know connects on
//! mux at once. On mux, a server that offers QUIC is probed in the background, at once the
//! first time and every `quic_probe_interval` after a failure. A probe is a whole session
//! (QUIC and TLS handshakes, `Hello`, `Auth`, `Open` of the same names, `Welcome`), never a
//! reachability check, so a QUIC path that answers packets but refuses sessions is not taken.
//! Every switch and fallback is logged and sent as an event.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::SinkExt;
use showoff_core::Mux;
use showoff_proto::{RefusedCode, TransportKind, TunnelInfo, TunnelSpec};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::streams::serve_opened;
use super::{Connected, Ctx, framed, handshake};
use crate::config::{CONNECT_TIMEOUT, QUIC_FALLBACK, TransportChoice};
use crate::tls::Connector;
use crate::transport::{TcpTransport, Transport};
use crate::{ClientConfig, ClientError, ClientEvent};

/// Silence after which a QUIC connection is given up (three default heartbeat intervals).
const QUIC_IDLE: Duration = Duration::from_secs(45);

/// How one session's streams arrive.
#[derive(Clone)]
pub(crate) enum Link {
    /// `Dial` frames on the control connection and the warm pool.
    DialBack,
    /// Streams the server opens on the multiplexed control connection.
    Mux(Mux),
    /// Streams the server opens on the QUIC connection (its endpoint kept with it).
    Quic {
        connection: quinn::Connection,
        _endpoint: quinn::Endpoint,
    },
}

impl Link {
    pub(crate) fn kind(&self) -> TransportKind {
        match self {
            Self::DialBack => TransportKind::Tcp,
            Self::Mux(_) => TransportKind::Mux,
            Self::Quic { .. } => TransportKind::Quic,
        }
    }

    /// The session's QUIC connection, on QUIC.
    pub(crate) fn quic_connection(&self) -> Option<&quinn::Connection> {
        match self {
            Self::Quic { connection, .. } => Some(connection),
            Self::DialBack | Self::Mux(_) => None,
        }
    }

    /// Bytes received on the session's connection, where the transport counts them.
    pub(crate) fn received(&self) -> Option<u64> {
        match self {
            Self::DialBack => None,
            Self::Mux(mux) => Some(mux.received()),
            Self::Quic { connection, .. } => Some(showoff_core::quic::received(connection)),
        }
    }

    /// Serves every stream the server opens, each in its own task; `inbound` holds a mux
    /// session's.
    pub(crate) fn serve_streams(
        &self,
        ctx: &Arc<Ctx>,
        streams: &TaskTracker,
        inbound: Option<mpsc::Receiver<showoff_core::TunnelStream>>,
        stop: CancellationToken,
    ) {
        match self {
            Self::DialBack => {}
            Self::Mux(_) => {
                let Some(mut inbound) = inbound else {
                    return;
                };
                let (ctx, tracker) = (ctx.clone(), streams.clone());
                // Not tracked: it ends with the connection, and only streams delay a shutdown.
                tokio::spawn(async move {
                    while let Some(stream) = inbound.recv().await {
                        tracker.spawn(serve_opened(ctx.clone(), Box::new(stream)));
                    }
                });
            }
            Self::Quic { connection, .. } => {
                if !ctx.udp.targets.is_empty() {
                    // Ends with the connection; its flow handlers end with it.
                    let udp = super::udp::serve_quic(ctx.udp.clone(), connection.clone());
                    tokio::spawn(udp);
                }
                let (connection, ctx, tracker) = (connection.clone(), ctx.clone(), streams.clone());
                // Ends with the session, so the connection closes once its streams have.
                tokio::spawn(async move {
                    loop {
                        let accepted = tokio::select! {
                            _ = stop.cancelled() => return,
                            accepted = connection.accept_bi() => accepted,
                        };
                        let Ok((send, recv)) = accepted else { return };
                        let stream = showoff_core::quic::stream(send, recv);
                        tracker.spawn(serve_opened(ctx.clone(), Box::new(stream)));
                    }
                });
            }
        }
    }

    /// The session is over: no new streams; the connection goes with its last stream.
    pub(crate) fn finish(&self) {
        match self {
            Self::DialBack => {}
            Self::Mux(mux) => mux.finish(),
            Self::Quic { .. } => {} // closed when the last handle and stream drop
        }
    }
}

/// What the client keeps between sessions.
#[derive(Debug, Default)]
pub(crate) struct Memory {
    /// The tunnels as granted, asked for again so reconnects and switches keep their URLs.
    sticky: Option<Vec<TunnelSpec>>,
    /// `host:port` of the server's QUIC listener, from the last `Welcome` that offered it.
    quic: Option<String>,
    /// QUIC attempts that failed in a row.
    quic_failures: u32,
}

impl Memory {
    /// The next session goes to another server of the list: what this one offered (its QUIC
    /// address) does not carry over; the names granted do.
    pub(crate) fn moved(&mut self) {
        self.quic = None;
        self.quic_failures = 0;
    }

    /// The tunnels to ask for: as granted before, else as configured.
    pub(crate) fn specs(&self, config: &ClientConfig) -> Vec<TunnelSpec> {
        self.sticky
            .clone()
            .unwrap_or_else(|| config.tunnels.iter().map(|t| t.spec.clone()).collect())
    }

    /// Remembers what a `Welcome` granted and offered.
    pub(crate) fn welcomed(
        &mut self,
        config: &ClientConfig,
        granted: &[TunnelInfo],
        offers: &[TransportKind],
        quic_port: Option<u16>,
    ) {
        let sticky = config.tunnels.iter().zip(granted).map(|(asked, info)| {
            let mut spec = asked.spec.clone();
            spec.name = Some(info.name.clone());
            spec.port = spec.port.or(info.port);
            spec
        });
        self.sticky = Some(sticky.collect());
        // A port the user gave (a UDP load balancer that maps ports) wins over the server's.
        self.quic = match config.quic_port.or(quic_port) {
            Some(port) if offers.contains(&TransportKind::Quic) => {
                Some(format!("{}:{port}", config.server_host()))
            }
            _ => None,
        };
    }

    fn quic_failed(&mut self, error: &ClientError) {
        self.quic_failures = self.quic_failures.saturating_add(1);
        warn!(%error, failures = self.quic_failures, "QUIC failed; staying on mux");
    }
}

/// The dial-back transport towards the server's listeners (also the data listener's).
pub(crate) fn tcp_transport(config: &ClientConfig) -> Result<Arc<dyn Transport>, ClientError> {
    let tls = match &config.tls {
        Some(settings) => Some(Connector::new(settings).map_err(ClientError::Failed)?),
        None => None,
    };
    Ok(Arc::new(TcpTransport::new(tls)))
}

/// Connects on the transport the settings ask for; a remembered name or port another client
/// holds now is asked for afresh once.
pub(crate) async fn connect(
    config: &ClientConfig,
    memory: &mut Memory,
) -> Result<Connected, ClientError> {
    match connect_chosen(config, memory).await {
        Err(ClientError::Refused { code, .. })
            if memory.sticky.is_some()
                && matches!(code, RefusedCode::NameTaken | RefusedCode::PortUnavailable) =>
        {
            info!(%code, "a remembered name or port is held by another client; asking afresh");
            memory.sticky = None;
            connect_chosen(config, memory).await
        }
        other => other,
    }
}

async fn connect_chosen(
    config: &ClientConfig,
    memory: &mut Memory,
) -> Result<Connected, ClientError> {
    let specs = memory.specs(config);
    match config.transport {
        TransportChoice::Tcp => connect_stream(config, specs, TransportKind::Tcp).await,
        TransportChoice::Mux => connect_stream(config, specs, TransportKind::Mux).await,
        TransportChoice::Quic => {
            let addr = memory.quic.clone().unwrap_or_else(|| quic_addr(config));
            connect_quic(config, specs, addr).await
        }
        TransportChoice::Auto => {
            if let Some(addr) = memory.quic.clone() {
                match timeout(QUIC_FALLBACK, connect_quic(config, specs.clone(), addr)).await {
                    Ok(Ok(connected)) => return Ok(connected),
                    // Refused over QUIC: QUIC works; the refusal stands.
                    Ok(Err(refused @ ClientError::Refused { .. })) => return Err(refused),
                    Ok(Err(error)) => memory.quic_failed(&error),
                    Err(_) => memory.quic_failed(&ClientError::Failed(format!(
                        "no QUIC session within {}s",
                        QUIC_FALLBACK.as_secs()
                    ))),
                }
            }
            connect_stream(config, specs, TransportKind::Mux).await
        }
    }
}

/// Where `--transport quic` looks before any `Welcome`: `--quic-port`, else the control port.
fn quic_addr(config: &ClientConfig) -> String {
    match config.quic_port {
        Some(port) => format!("{}:{port}", config.server_host()),
        None => config.server.clone(),
    }
}

/// A session over TCP (TLS): dial-back, or mux once `Welcome` arrived.
async fn connect_stream(
    config: &ClientConfig,
    specs: Vec<TunnelSpec>,
    transport: TransportKind,
) -> Result<Connected, ClientError> {
    let stream = tcp_transport(config)?
        .dial(&config.server)
        .await
        .map_err(ClientError::Failed)?;
    let mut conn = framed(stream);
    let welcome = handshake(&mut conn, &config.token, specs, transport).await?;
    if transport != TransportKind::Mux {
        return Ok(Connected {
            conn,
            link: Link::DialBack,
            welcome,
            inbound: None,
        });
    }
    let parts = conn.into_parts();
    let connection = showoff_core::TunnelStream::boxed(parts.read_buf, parts.io);
    let (mux, inbound) = Mux::start(connection, showoff_core::mux::Mode::Client);
    let control = mux
        .open()
        .await
        .map_err(|e| ClientError::Failed(format!("multiplexed session failed: {e}")))?;
    let mut conn = framed(Box::new(control));
    // yamux announces a stream with its first frame: a `Pong` opens the control stream.
    conn.send(showoff_proto::ClientMessage::Pong)
        .await
        .map_err(|e| ClientError::Failed(format!("multiplexed session failed: {e}")))?;
    Ok(Connected {
        conn,
        link: Link::Mux(mux),
        welcome,
        inbound: Some(inbound),
    })
}

/// A session over QUIC at `addr`.
async fn connect_quic(
    config: &ClientConfig,
    specs: Vec<TunnelSpec>,
    addr: String,
) -> Result<Connected, ClientError> {
    let Some(tls) = &config.tls else {
        return Err(ClientError::Failed(
            "QUIC needs TLS towards the server (a CA file or the system roots)".into(),
        ));
    };
    let connector = Connector::new(tls).map_err(ClientError::Tls)?;
    let mut quic = connector.quic_config().map_err(ClientError::Tls)?;
    quic.transport_config(Arc::new(showoff_core::quic::transport_config(QUIC_IDLE)));
    let remote = resolve(&addr).await?;
    let local: SocketAddr = if remote.is_ipv6() {
        "[::]:0".parse().expect("literal")
    } else {
        "0.0.0.0:0".parse().expect("literal")
    };
    let failed = |e: &dyn std::fmt::Display| ClientError::Failed(format!("QUIC to {addr}: {e}"));
    let (socket, report) = showoff_core::quic::bind_udp(local).map_err(|e| failed(&e))?;
    debug!(%report, "QUIC socket bound");
    let endpoint = showoff_core::quic::endpoint(socket, None).map_err(|e| failed(&e))?;
    let connecting = endpoint
        .connect_with(quic, remote, &connector.server_name(&addr))
        .map_err(|e| failed(&e))?;
    let connection = timeout(CONNECT_TIMEOUT, connecting)
        .await
        .map_err(|_| failed(&"the handshake timed out"))?
        .map_err(|e| failed(&e))?;
    let (send, recv) = connection.open_bi().await.map_err(|e| failed(&e))?;
    let mut conn = framed(Box::new(showoff_core::quic::stream(send, recv)));
    let welcome = handshake(&mut conn, &config.token, specs, TransportKind::Quic).await?;
    debug!(%remote, "QUIC session welcomed");
    Ok(Connected {
        conn,
        link: Link::Quic {
            connection,
            _endpoint: endpoint,
        },
        welcome,
        inbound: None,
    })
}

async fn resolve(addr: &str) -> Result<SocketAddr, ClientError> {
    let mut found = tokio::net::lookup_host(addr)
        .await
        .map_err(|e| ClientError::Failed(format!("cannot resolve {addr}: {e}")))?;
    found
        .next()
        .ok_or_else(|| ClientError::Failed(format!("{addr} resolves to no address")))
}

pub(crate) type Attempt =
    Pin<Box<dyn std::future::Future<Output = Result<Connected, ClientError>> + Send>>;

/// How long a client sent away by a draining server tries to open its next session while the
/// old one still serves (under the server's handover of 5 s).
const MOVE_WITHIN: Duration = Duration::from_secs(4);
/// Pause between two tries of a move (the first may meet a balancer that has not yet seen the
/// draining instance leave).
const MOVE_RETRY: Duration = Duration::from_millis(200);

/// The next session at `config.server` with the names `specs` asks for, tried until
/// [`MOVE_WITHIN`] while the draining one still serves: make before break, so the names move
/// with no gap. A permanent refusal ends it at once.
pub(crate) fn move_to(config: ClientConfig, specs: Vec<TunnelSpec>) -> Attempt {
    Box::pin(async move {
        let deadline = tokio::time::Instant::now() + MOVE_WITHIN;
        loop {
            let attempt = match config.transport {
                TransportChoice::Tcp => connect_stream(&config, specs.clone(), TransportKind::Tcp),
                TransportChoice::Quic => {
                    let addr = quic_addr(&config);
                    return connect_quic(&config, specs, addr).await;
                }
                TransportChoice::Mux | TransportChoice::Auto => {
                    connect_stream(&config, specs.clone(), TransportKind::Mux)
                }
            };
            match attempt.await {
                Ok(connected) => return Ok(connected),
                Err(error) if error.is_permanent() => return Err(error),
                Err(error) if tokio::time::Instant::now() + MOVE_RETRY >= deadline => {
                    return Err(error);
                }
                Err(error) => {
                    debug!(%error, "the next session is not up yet; trying again");
                    tokio::time::sleep(MOVE_RETRY).await;
                }
            }
        }
    })
}

/// The background QUIC probe of an `auto` session on mux.
pub(crate) struct Probe {
    attempt: Option<Attempt>,
    config: Option<ClientConfig>,
}

impl Probe {
    /// The probe a session on `transport` runs: none unless `auto` is on mux and the server
    /// offers QUIC; the first one at once, later ones after the probe interval.
    pub(crate) fn after(config: &ClientConfig, memory: &Memory, transport: TransportKind) -> Self {
        let idle = Self {
            attempt: None,
            config: None,
        };
        if config.transport != TransportChoice::Auto || transport != TransportKind::Mux {
            return idle;
        }
        let Some(addr) = memory.quic.clone() else {
            return idle;
        };
        let delay = if memory.quic_failures == 0 {
            Duration::ZERO
        } else {
            config.quic_probe_interval
        };
        let mut probe = Self {
            attempt: None,
            config: Some(config.clone()),
        };
        probe.arm(delay, addr, memory.specs(config));
        probe
    }

    fn arm(&mut self, delay: Duration, addr: String, specs: Vec<TunnelSpec>) {
        let Some(config) = self.config.clone() else {
            return;
        };
        self.attempt = Some(Box::pin(async move {
            tokio::time::sleep(delay).await;
            let attempt = connect_quic(&config, specs, addr);
            match timeout(QUIC_FALLBACK, attempt).await {
                Ok(result) => result,
                Err(_) => Err(ClientError::Failed(format!(
                    "no QUIC session within {}s",
                    QUIC_FALLBACK.as_secs()
                ))),
            }
        }));
    }

    /// True while a probe is armed or running.
    pub(crate) fn is_armed(&self) -> bool {
        self.attempt.is_some()
    }

    /// The armed probe's outcome; never resolves when none is armed.
    pub(crate) async fn wait(&mut self) -> Result<Connected, ClientError> {
        match self.attempt.as_mut() {
            Some(attempt) => attempt.await,
            None => std::future::pending().await,
        }
    }

    /// Takes a probe's outcome: the session to switch to, or `None` and the next probe armed.
    pub(crate) fn settle(
        &mut self,
        outcome: Result<Connected, ClientError>,
        memory: &mut Memory,
        events: &mpsc::UnboundedSender<ClientEvent>,
    ) -> Option<Box<Connected>> {
        self.attempt = None;
        match outcome {
            Ok(connected) => {
                memory.quic_failures = 0;
                info!("QUIC is reachable: switching the session from mux to QUIC");
                let _ = events.send(ClientEvent::Switched {
                    from: TransportKind::Mux,
                    to: TransportKind::Quic,
                });
                Some(Box::new(connected))
            }
            Err(error) => {
                memory.quic_failed(&error);
                if let (Some(config), Some(addr)) = (self.config.clone(), memory.quic.clone()) {
                    self.arm(config.quic_probe_interval, addr, memory.specs(&config));
                }
                None
            }
        }
    }
}
