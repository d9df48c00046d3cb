//! A control session driven by a script: up to two client connections over in-memory pipes
//! send frames, garbage and hang-ups to the real handshake and control loop, time passes on
//! a paused clock, and once every connection is gone the server must hold nothing: no
//! session, no route, no pending stream, no lease, a zero session gauge.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arbitrary::Arbitrary;
use bytes::BytesMut;
use futures_util::SinkExt;
use showoff_core::{LeaseKey, TunnelStream};
use showoff_proto::{
    ClientMessage, FrameCodec, PROTOCOL_VERSION, Role, ServerMessage, TunnelKind, TunnelSpec,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, WriteHalf};
use tokio::task::JoinHandle;
use tokio_util::codec::FramedWrite;

use crate::control::ControlContext;

/// Steps a script may take at most (longer inputs are cut).
const MAX_STEPS: usize = 64;

/// One thing a client does.
#[derive(Debug, Arbitrary)]
pub enum Step {
    /// `Hello`, with the right version or not, as control or data.
    Hello {
        /// Send the current protocol version.
        current: bool,
        /// Say `data` instead of `control`.
        data: bool,
    },
    /// `Auth` with one of a few tokens.
    Auth(Token),
    /// `Open` with a few tunnels.
    Open(Vec<Spec>),
    /// `Close` of a name.
    Close(Name),
    /// `Pong`.
    Pong,
    /// `DataHello` on a control connection.
    DataHello,
    /// `StreamError` / `StreamReady` for made-up ids.
    Stream {
        /// Ready instead of error.
        ready: bool,
    },
    /// Raw bytes on the connection.
    Garbage(Vec<u8>),
    /// Time passes (heartbeats, handshake deadlines).
    Wait(u8),
    /// Further steps go to the other connection (opened on first use).
    Switch,
    /// The current connection hangs up.
    Hangup,
}

/// Tokens the script may present.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum Token {
    /// One principal.
    Alice,
    /// Another.
    Bob,
    /// None at all.
    Empty,
}

/// Names the script may ask for.
#[derive(Debug, Clone, Arbitrary)]
pub enum Name {
    /// Shared between connections, so takeovers happen.
    Demo,
    /// Another.
    Web,
    /// Not a DNS label.
    Bad,
    /// Whatever the fuzzer writes.
    Any(String),
}

impl Name {
    fn text(&self) -> String {
        match self {
            Self::Demo => "demo".into(),
            Self::Web => "web".into(),
            Self::Bad => "Not A Label".into(),
            Self::Any(text) => text.chars().take(70).collect(),
        }
    }
}

/// One tunnel of an `Open`.
#[derive(Debug, Arbitrary)]
pub struct Spec {
    /// TLS passthrough instead of HTTP.
    tls: bool,
    /// `None`: the server picks a name.
    name: Option<Name>,
}

/// One client connection: its write side; a task drains what the server sends.
struct Client {
    frames: FramedWrite<WriteHalf<DuplexStream>, FrameCodec<ServerMessage, ClientMessage>>,
    drain: JoinHandle<()>,
}

/// [`control_session`] with the script read from raw fuzzer bytes (as libFuzzer's
/// `arbitrary` support reads it), so seeds and regressions are plain files.
pub fn control_session_bytes(data: &[u8]) {
    let steps: Vec<Step> =
        arbitrary::Arbitrary::arbitrary_take_rest(arbitrary::Unstructured::new(data))
            .unwrap_or_default();
    control_session(&steps);
}

/// Runs `steps` against a fresh server context and checks it holds nothing afterwards.
pub fn control_session(steps: &[Step]) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime");
    runtime.block_on(run(steps, |_| {}));
}

/// Runs the script; `before_hangup` sees the context while the last connections still stand.
async fn run(steps: &[Step], before_hangup: impl FnOnce(&ControlContext)) {
    let ctx = crate::control::tests::context(Some(443));
    let mut clients: [Option<Client>; 2] = [None, None];
    let mut servers = Vec::new();
    let mut names = vec!["demo".to_string(), "web".to_string()];
    let mut current = 0;
    for step in steps.iter().take(MAX_STEPS) {
        match step {
            Step::Switch => current ^= 1,
            Step::Hangup => hang_up(clients[current].take()).await,
            Step::Wait(secs) => tokio::time::sleep(Duration::from_secs(u64::from(*secs))).await,
            step => {
                let client = clients[current].get_or_insert_with(|| connect(&ctx, &mut servers));
                send(client, step, &mut names).await;
            }
        }
        // Let the server act on the step (the paused clock moves only when all are idle).
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    before_hangup(&ctx);
    for client in clients {
        hang_up(client).await;
    }
    for server in servers {
        // Every deadline of a session is well inside this, on the paused clock.
        tokio::time::timeout(Duration::from_secs(3600), server)
            .await
            .expect("a session outlived its client")
            .expect("the session task panicked");
    }
    assert_holds_nothing(&ctx, &names).await;
}

fn connect(ctx: &Arc<ControlContext>, servers: &mut Vec<JoinHandle<()>>) -> Client {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let peer: SocketAddr = ([192, 0, 2, 1], 40000).into();
    let stream = TunnelStream::boxed(BytesMut::new(), server);
    let task = crate::control::handshake::serve_stream(stream, peer, None, None, ctx.clone());
    servers.push(tokio::spawn(async move {
        task.await;
    }));
    let (mut read, write) = tokio::io::split(client);
    let drain = tokio::spawn(async move {
        let mut sink = [0u8; 4096];
        while matches!(read.read(&mut sink).await, Ok(n) if n > 0) {}
    });
    Client {
        frames: FramedWrite::new(write, FrameCodec::new()),
        drain,
    }
}

async fn hang_up(client: Option<Client>) {
    if let Some(mut client) = client {
        let _ = client.frames.get_mut().shutdown().await;
        drop(client.frames);
        let _ = client.drain.await;
    }
}

async fn send(client: &mut Client, step: &Step, names: &mut Vec<String>) {
    let message = match step {
        Step::Hello { current, data } => ClientMessage::Hello {
            version: if *current { PROTOCOL_VERSION } else { 0 },
            role: if *data { Role::Data } else { Role::Control },
            transport: Default::default(),
        },
        Step::Auth(token) => ClientMessage::Auth {
            token: match token {
                Token::Alice => "alice".into(),
                Token::Bob => "bob".into(),
                Token::Empty => String::new(),
            },
        },
        Step::Open(specs) => ClientMessage::Open {
            tunnels: specs.iter().take(4).map(|s| spec(s, names)).collect(),
        },
        Step::Close(name) => ClientMessage::Close {
            tunnel: name.text(),
        },
        Step::Pong => ClientMessage::Pong,
        Step::DataHello => ClientMessage::DataHello {
            session: "s".into(),
            key: "k".into(),
            id: None,
        },
        Step::Stream { ready: true } => ClientMessage::StreamReady { id: "id".into() },
        Step::Stream { ready: false } => ClientMessage::StreamError {
            id: "id".into(),
            reason: "no".into(),
        },
        Step::Garbage(bytes) => {
            let _ = client.frames.get_mut().write_all(bytes).await;
            return;
        }
        Step::Wait(_) | Step::Switch | Step::Hangup => return,
    };
    // A server that closed the connection makes this fail; the script goes on.
    let _ = client.frames.send(message).await;
}

fn spec(spec: &Spec, names: &mut Vec<String>) -> TunnelSpec {
    let name = spec.name.as_ref().map(Name::text);
    if let Some(name) = &name {
        names.push(name.clone());
    }
    TunnelSpec {
        upstream: Default::default(),
        kind: if spec.tls {
            TunnelKind::Tls
        } else {
            TunnelKind::Http
        },
        name,
        port: None,
        host_header: Default::default(),
        target: "127.0.0.1:3000".into(),
        visitors: Default::default(),
    }
}

async fn assert_holds_nothing(ctx: &ControlContext, names: &[String]) {
    assert_eq!(ctx.sessions.count(), 0, "a session outlived its connection");
    let routes: Vec<String> = ctx
        .routes
        .all()
        .iter()
        .map(|t| t.info.name.clone())
        .collect();
    assert!(
        routes.is_empty(),
        "routes outlived their sessions: {routes:?}"
    );
    assert_eq!(
        ctx.dialback.pending_len(),
        0,
        "pending streams outlived their session"
    );
    assert_eq!(
        ctx.stats.snapshot().sessions_active,
        0,
        "the session gauge is off"
    );
    for name in names {
        let lease = ctx.registry.lookup(&LeaseKey::Name(name.clone())).await;
        assert!(
            matches!(lease, Ok(None)),
            "{name:?} is still held: {lease:?}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello() -> Step {
        Step::Hello {
            current: true,
            data: false,
        }
    }

    fn open(name: Name) -> Step {
        Step::Open(vec![Spec {
            tls: false,
            name: Some(name),
        }])
    }

    #[tokio::test(start_paused = true)]
    async fn a_scripted_session_registers_and_then_leaves_nothing_behind() {
        let steps = [hello(), Step::Auth(Token::Alice), open(Name::Demo)];
        run(&steps, |ctx| {
            assert_eq!(ctx.sessions.count(), 1, "the script opened a session");
            assert!(ctx.routes.get("demo").is_some(), "and its tunnel");
        })
        .await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_takeover_between_two_connections_leaves_nothing_behind() {
        let steps = [
            hello(),
            Step::Auth(Token::Alice),
            open(Name::Demo),
            Step::Switch,
            hello(),
            Step::Auth(Token::Alice),
            open(Name::Demo),
            Step::Wait(5),
        ];
        run(&steps, |ctx| {
            let demo = ctx.routes.get("demo").expect("demo is served");
            assert_eq!(ctx.sessions.count(), 1, "the first session was replaced");
            assert!(ctx.sessions.all()[0].id == demo.session_id);
        })
        .await;
    }
}
