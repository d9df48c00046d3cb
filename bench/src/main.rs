//! `showoff-bench idle-tunnels ADDR COUNT`: opens COUNT sessions of one HTTP tunnel each against
//! the control listener at ADDR, through the real protocol, prints one JSON line
//! (`{"tunnels":N,"seconds":S}`) once all are registered, then holds them until standard input
//! closes. The benchmark harness reads the server's RSS while they are held. The UDP
//! benchmark's load and echo are in [`udp`].

mod udp;

use std::time::Instant;

use futures_util::{SinkExt, StreamExt};
use showoff_proto::{
    ClientMessage, FrameCodec, HostHeader, PROTOCOL_VERSION, Role, ServerMessage, TunnelKind,
    TunnelSpec,
};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

type Conn = Framed<TcpStream, FrameCodec<ServerMessage, ClientMessage>>;

/// Sessions opened concurrently while registering.
const CONCURRENCY: usize = 256;

async fn open(addr: String, index: usize) -> Result<Conn, String> {
    let stream = TcpStream::connect(&addr).await.map_err(|e| e.to_string())?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut conn = Framed::new(stream, FrameCodec::new());
    let spec = TunnelSpec {
        kind: TunnelKind::Http,
        name: Some(format!("idle-{index}")),
        port: None,
        host_header: HostHeader::Preserve,
        target: "127.0.0.1:9".into(),
        visitors: Default::default(),
        upstream: Default::default(),
    };
    let frames = [
        ClientMessage::Hello {
            version: PROTOCOL_VERSION,
            role: Role::Control,
            transport: Default::default(),
        },
        ClientMessage::Auth {
            token: String::new(),
        },
        ClientMessage::Open {
            tunnels: vec![spec],
        },
    ];
    for frame in frames {
        conn.feed(frame).await.map_err(|e| e.to_string())?;
    }
    conn.flush().await.map_err(|e| e.to_string())?;
    match conn.next().await {
        Some(Ok(ServerMessage::Welcome { .. })) => Ok(conn),
        other => Err(format!("session {index}: {other:?}")),
    }
}

/// Answers pings so the sessions stay alive however long the harness measures.
async fn hold(mut conn: Conn) {
    while let Some(Ok(msg)) = conn.next().await {
        if msg == ServerMessage::Ping && conn.send(ClientMessage::Pong).await.is_err() {
            return;
        }
    }
}

async fn idle_tunnels(addr: String, count: usize) -> Result<(), String> {
    let started = Instant::now();
    let mut held = Vec::with_capacity(count);
    let indices: Vec<usize> = (0..count).collect();
    for batch in indices.chunks(CONCURRENCY) {
        let opens = batch.iter().map(|&i| open(addr.clone(), i));
        for conn in futures_util::future::join_all(opens).await {
            held.push(tokio::spawn(hold(conn?)));
        }
        if std::env::var_os("SHOWOFF_BENCH_TRACE").is_some() {
            eprintln!("{} sessions after {:?}", held.len(), started.elapsed());
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({"tunnels": count, "seconds": seconds})
    );
    let mut sink = Vec::new();
    let _ = tokio::io::stdin().read_to_end(&mut sink).await;
    for task in held {
        task.abort();
    }
    Ok(())
}

const USAGE: &str = "usage: showoff-bench idle-tunnels CONTROL_ADDR COUNT
       showoff-bench udp-echo ADDR
       showoff-bench udp-load TARGET FLOWS WINDOW SECONDS SIZE
       showoff-bench udp-idle-flows TARGET COUNT [BATCHES]";

/// Runs the subcommand `args` names; `None` when they do not name one.
async fn run(args: &[String]) -> Option<Result<(), String>> {
    let arg = |i: usize| args.get(i).map(String::as_str);
    let addr = |i: usize| arg(i).and_then(|a| a.parse::<std::net::SocketAddr>().ok());
    let number = |i: usize| arg(i).and_then(|n| n.parse::<usize>().ok());
    Some(match arg(1)? {
        "idle-tunnels" => idle_tunnels(arg(2)?.to_string(), number(3)?).await,
        "udp-echo" => udp::echo(addr(2)?).await,
        "udp-load" => {
            let seconds = arg(5).and_then(|s| s.parse().ok())?;
            udp::load(addr(2)?, number(3)?, number(4)?, seconds, number(6)?).await
        }
        "udp-idle-flows" => udp::idle_flows(addr(2)?, number(3)?, number(4).unwrap_or(1)).await,
        _ => return None,
    })
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    match run(&args).await {
        None => {
            eprintln!("{USAGE}");
            std::process::ExitCode::from(2)
        }
        Some(Ok(())) => std::process::ExitCode::SUCCESS,
        Some(Err(error)) => {
            eprintln!("error: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}
