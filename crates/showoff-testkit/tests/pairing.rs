//! Pairing visitors with client streams: warm pool, dial-back, keys, timeouts, caps.

use std::time::Duration;

use showoff_client::TransportChoice;
use showoff_proto::{ClientMessage, PROTOCOL_VERSION, Role, ServerMessage, TunnelKind, TunnelSpec};
use showoff_server::ServerConfig;
use showoff_testkit::raw_client;
use showoff_testkit::raw_client::http_spec;
use showoff_testkit::visitor::{HttpConn, get, read_to_close};
use showoff_testkit::{TestServer, eventually, serve_http_on};
use tokio::io::AsyncWriteExt;

#[tokio::test]
async fn warm_pool_serves_streams_and_upstream_connections_are_reused() {
    let server = TestServer::start_raw(ServerConfig::ephemeral()).await;
    let (target, _client) = serve_http_on(&server, "demo", "a", TransportChoice::Tcp).await;
    let handle = server.handle.clone();
    eventually("the warm pool to fill", || handle.stats().pool_idle == 8).await;
    // Ten visitors, each on a new connection, one after the other.
    for _ in 0..10 {
        assert_eq!(
            get(server.addrs.http, &server.host("demo"), "/")
                .await
                .status,
            200
        );
    }
    let stats = server.handle.stats();
    assert!(stats.pool_hits >= 1, "{stats:?}");
    assert_eq!(stats.pool_misses, 0, "the pool was warm: {stats:?}");
    assert_eq!(
        target.connections(),
        1,
        "one upstream connection carried every request"
    );
}

#[tokio::test]
async fn a_client_that_never_dials_back_yields_504_and_leaks_nothing() {
    let server = TestServer::start_raw(ServerConfig {
        warm_pool: 0,
        pending_timeout: Duration::from_millis(300),
        ..ServerConfig::ephemeral()
    })
    .await;
    let (mut conn, welcome) =
        raw_client::open(server.addrs.control, "", vec![http_spec("mute")]).await;
    let ServerMessage::Welcome {
        session, data_key, ..
    } = welcome
    else {
        panic!("{welcome:?}")
    };
    let reply = get(server.addrs.http, &server.host("mute"), "/").await;
    assert_eq!(reply.status, 504);
    assert_eq!(reply.error_code(), Some("tunnel_timeout"));
    let Some(ServerMessage::Dial { id, .. }) = raw_client::next(&mut conn).await else {
        panic!("dial")
    };
    assert_eq!(
        server.handle.stats().pending,
        0,
        "the pending entry is gone"
    );
    // Answering after the deadline is refused: the id expired with its waiter.
    let mut late = raw_client::connect(server.addrs.data).await;
    raw_client::hello(&mut late, Role::Data).await;
    raw_client::send(
        &mut late,
        ClientMessage::DataHello {
            session,
            key: data_key,
            id: Some(id),
        },
    )
    .await;
    let handle = server.handle.clone();
    eventually("the late answer refused", || {
        handle.stats().data_rejected_unknown_id == 1
    })
    .await;
}

#[tokio::test]
async fn pending_caps_answer_503_with_retry_after() {
    // The per-session cap, then the global cap, each set to one stream.
    for (per_session, total) in [(1, 100), (100, 1)] {
        let server = TestServer::start_raw(ServerConfig {
            warm_pool: 0,
            max_pending_per_session: per_session,
            max_pending_total: total,
            pending_timeout: Duration::from_secs(5),
            ..ServerConfig::ephemeral()
        })
        .await;
        let (mut conn, _) =
            raw_client::open(server.addrs.control, "", vec![http_spec("busy")]).await;
        let addr = server.addrs.http;
        let host = server.host("busy");
        let first = tokio::spawn(async move { get(addr, &host, "/").await });
        // Wait until the first request is pending (its Dial reached the client), then overflow.
        assert!(matches!(
            raw_client::next(&mut conn).await,
            Some(ServerMessage::Dial { .. })
        ));
        let reply = get(server.addrs.http, &server.host("busy"), "/").await;
        assert_eq!(reply.status, 503, "caps {per_session}/{total}");
        assert_eq!(reply.error_code(), Some("over_capacity"));
        assert_eq!(reply.headers["retry-after"], "1");
        drop(conn);
        let first = first.await.expect("first visitor");
        assert_eq!(first.status, 502, "the client left: {}", first.body);
        assert_eq!(first.error_code(), Some("tunnel_unavailable"));
        let handle = server.handle.clone();
        eventually("pending back to 0", || handle.stats().pending == 0).await;
    }
}

#[tokio::test]
async fn data_connections_with_unknown_ids_or_wrong_keys_are_refused_and_counted() {
    let server = TestServer::start_raw(ServerConfig {
        warm_pool: 0,
        ..ServerConfig::ephemeral()
    })
    .await;
    let (mut control, welcome) =
        raw_client::open(server.addrs.control, "", vec![http_spec("keyed")]).await;
    let ServerMessage::Welcome {
        session, data_key, ..
    } = welcome
    else {
        panic!("{welcome:?}")
    };
    let addr = server.addrs.http;
    let host = server.host("keyed");
    let visitor = tokio::spawn(async move { get(addr, &host, "/").await });
    let Some(ServerMessage::Dial { id, .. }) = raw_client::next(&mut control).await else {
        panic!("dial")
    };

    let attempt = |id: String, key: String| {
        let (session, data) = (session.clone(), server.addrs.data);
        async move {
            let mut conn = raw_client::connect(data).await;
            raw_client::hello(&mut conn, Role::Data).await;
            raw_client::send(
                &mut conn,
                ClientMessage::DataHello {
                    session,
                    key,
                    id: Some(id),
                },
            )
            .await;
            conn
        }
    };
    drop(attempt("A".repeat(22), data_key.clone()).await);
    drop(attempt(id.clone(), "wrong-key".into()).await);
    let handle = server.handle.clone();
    eventually("both rejections counted", || {
        let s = handle.stats();
        s.data_rejected_unknown_id == 1 && s.data_rejected_wrong_key == 1
    })
    .await;

    // The rightful answer still pairs: it reads the request and writes a response by hand.
    let conn = attempt(id.clone(), data_key.clone()).await;
    let mut stream = conn.into_parts().io;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        tokio::io::AsyncReadExt::read_exact(&mut stream, &mut byte)
            .await
            .expect("request");
        head.push(byte[0]);
    }
    assert!(String::from_utf8_lossy(&head).starts_with("GET / HTTP/1.1\r\n"));
    stream
        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\npaired")
        .await
        .expect("write");
    let reply = visitor.await.expect("visitor");
    assert_eq!(
        (reply.status.as_u16(), reply.body.as_str()),
        (200, "paired")
    );

    // The id is single-use.
    drop(attempt(id, data_key).await);
    eventually("reuse counted", || {
        handle.stats().data_rejected_unknown_id == 2
    })
    .await;
}

#[tokio::test]
async fn bytes_sent_right_after_the_data_hello_are_not_lost() {
    // A server-speaks-first service (an SSH or SMTP banner) over a TCP tunnel: the client's
    // handshake frames and the banner leave in one write.
    let server = TestServer::start_raw(ServerConfig {
        warm_pool: 0,
        ..ServerConfig::ephemeral()
    })
    .await;
    let spec = TunnelSpec {
        upstream: Default::default(),
        kind: TunnelKind::Tcp,
        ..http_spec("banner")
    };
    let (mut control, welcome) = raw_client::open(server.addrs.control, "", vec![spec]).await;
    let ServerMessage::Welcome {
        session,
        data_key,
        tunnels,
        ..
    } = welcome
    else {
        panic!("{welcome:?}")
    };
    let port = tunnels[0].port.expect("tcp port");
    let visitor = tokio::spawn(async move {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        read_to_close(&mut stream).await
    });
    let Some(ServerMessage::Dial { id, .. }) = raw_client::next(&mut control).await else {
        panic!("dial")
    };
    let mut bytes = bytes::BytesMut::new();
    for msg in [
        ClientMessage::Hello {
            version: PROTOCOL_VERSION,
            role: Role::Data,
            transport: Default::default(),
        },
        ClientMessage::DataHello {
            session,
            key: data_key,
            id: Some(id),
        },
    ] {
        bytes.extend_from_slice(&showoff_proto::codec::encode_frame(&msg).expect("encode"));
    }
    bytes.extend_from_slice(b"SSH-2.0-Banner\r\n");
    let mut stream = tokio::net::TcpStream::connect(server.addrs.data)
        .await
        .expect("connect");
    stream.write_all(&bytes).await.expect("write");
    stream.shutdown().await.expect("shutdown");
    assert_eq!(visitor.await.expect("visitor"), "SSH-2.0-Banner\r\n");
}

#[tokio::test]
async fn dial_back_works_without_a_warm_pool() {
    let server = TestServer::start_raw(ServerConfig {
        warm_pool: 0,
        ..ServerConfig::ephemeral()
    })
    .await;
    let (_target, _client) = serve_http_on(&server, "cold", "a", TransportChoice::Tcp).await;
    let mut conn = HttpConn::open(server.addrs.http).await;
    for _ in 0..3 {
        assert_eq!(conn.get(&server.host("cold"), "/").await.status, 200);
    }
    let stats = server.handle.stats();
    assert_eq!((stats.pool_hits, stats.pool_misses), (0, 1), "{stats:?}");
}
