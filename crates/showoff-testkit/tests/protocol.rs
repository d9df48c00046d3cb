//! The wire protocol refuses what it does not understand, clearly and without harm.

use futures_util::SinkExt;
use showoff_proto::{ClientMessage, RefusedCode, Role, ServerMessage};
use showoff_server::ServerConfig;
use showoff_testkit::raw_client::{self, hello, next, send};
use showoff_testkit::{TestServer, eventually, within};
use tokio::io::AsyncWriteExt;

#[tokio::test]
async fn a_version_mismatch_names_the_versions_spoken() {
    let server = TestServer::start_raw(ServerConfig::ephemeral()).await;
    for addr in [server.addrs.control, server.addrs.data] {
        let mut conn = raw_client::connect(addr).await;
        send(
            &mut conn,
            ClientMessage::Hello {
                version: 99,
                role: Role::Control,
                transport: Default::default(),
            },
        )
        .await;
        match next(&mut conn).await {
            Some(ServerMessage::Refused {
                code: RefusedCode::VersionMismatch,
                message,
            }) => {
                assert!(
                    message.contains("99") && message.contains("[1]"),
                    "{message}"
                );
            }
            other => panic!("expected version_mismatch, got {other:?}"),
        }
        assert_eq!(next(&mut conn).await, None, "closed after the refusal");
    }
}

#[tokio::test]
async fn frames_out_of_order_are_refused() {
    let server = TestServer::start_raw(ServerConfig::ephemeral()).await;
    let mut conn = raw_client::connect(server.addrs.control).await;
    send(
        &mut conn,
        ClientMessage::Auth {
            token: String::new(),
        },
    )
    .await;
    assert!(matches!(
        next(&mut conn).await,
        Some(ServerMessage::Refused {
            code: RefusedCode::BadRequest,
            ..
        })
    ));
    let mut conn = raw_client::connect(server.addrs.control).await;
    hello(&mut conn, Role::Control).await;
    send(
        &mut conn,
        ClientMessage::Auth {
            token: String::new(),
        },
    )
    .await;
    send(&mut conn, ClientMessage::Open { tunnels: vec![] }).await;
    assert!(matches!(
        next(&mut conn).await,
        Some(ServerMessage::Refused {
            code: RefusedCode::LimitReached,
            ..
        })
    ));
}

#[tokio::test]
async fn an_oversized_frame_is_dropped_before_allocation() {
    let server = TestServer::start_raw(ServerConfig::ephemeral()).await;
    for addr in [server.addrs.control, server.addrs.data] {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(&u32::MAX.to_be_bytes())
            .await
            .expect("prefix");
        let mut conn = tokio_util::codec::Framed::new(
            stream,
            showoff_proto::FrameCodec::<ServerMessage, ClientMessage>::new(),
        );
        // The server answers with a refusal or simply closes; it never waits for 4 GiB.
        let answer = within("close", futures_util::StreamExt::next(&mut conn)).await;
        assert!(
            matches!(
                answer,
                None | Some(Ok(ServerMessage::Refused {
                    code: RefusedCode::BadRequest,
                    ..
                }))
            ),
            "{answer:?}"
        );
        let _ = conn.close().await;
    }
    let handle = server.handle.clone();
    eventually("the bad data handshake counted", || {
        handle.stats().data_rejected_bad_handshake == 1
    })
    .await;
}

#[tokio::test]
async fn garbage_on_the_data_listener_is_closed_at_once_and_counted() {
    let server = TestServer::start_raw(ServerConfig::ephemeral()).await;
    let mut stream = tokio::net::TcpStream::connect(server.addrs.data)
        .await
        .expect("connect");
    stream
        .write_all(b"\x00\x00\x00\x05hello")
        .await
        .expect("garbage");
    let mut buf = Vec::new();
    let _ = within(
        "close",
        tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut buf),
    )
    .await;
    let handle = server.handle.clone();
    eventually("counted", || {
        handle.stats().data_rejected_bad_handshake == 1
    })
    .await;
}

#[tokio::test]
async fn a_transport_the_listener_does_not_speak_is_refused_by_name() {
    let server = TestServer::start_raw(ServerConfig::ephemeral()).await;
    for (transport, expected) in [
        (showoff_proto::TransportKind::Quic, "QUIC listener"),
        (showoff_proto::TransportKind::Unknown, "tcp, mux"),
    ] {
        let mut conn = raw_client::connect(server.addrs.control).await;
        let hello = ClientMessage::Hello {
            version: showoff_proto::PROTOCOL_VERSION,
            role: Role::Control,
            transport,
        };
        send(&mut conn, hello).await;
        match next(&mut conn).await {
            Some(ServerMessage::Refused {
                code: RefusedCode::BadRequest,
                message,
            }) => assert!(message.contains(expected), "{message}"),
            other => panic!("expected bad_request for {transport}, got {other:?}"),
        }
    }
}
