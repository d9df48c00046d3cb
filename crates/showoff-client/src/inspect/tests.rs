//! The capture driven byte by byte, without sockets: what a stream's bytes become as entries.

use std::sync::Arc;

use super::capture::Capture;
use super::entry::{Cut, Entry};
use super::{InspectConfig, Inspector};

fn inspector(memory: usize, body_cap: usize) -> Inspector {
    let config = InspectConfig {
        memory,
        body_cap,
        ..InspectConfig::default()
    };
    Inspector::new(&config).expect("inspector")
}

fn capture(inspector: &Inspector) -> Capture {
    Capture::new(inspector.0.clone(), "demo".into(), None)
}

/// Feeds `up` then `down` in pieces of `piece` bytes and closes the stream.
fn exchange(inspector: &Inspector, up: &[u8], down: &[u8], piece: usize) -> Vec<Arc<Entry>> {
    let mut capture = capture(inspector);
    for part in up.chunks(piece) {
        capture.wrote_to_target(part);
    }
    for part in down.chunks(piece) {
        capture.read_from_target(part);
    }
    capture.closed();
    inspector.entries()
}

#[test]
fn a_json_exchange_is_captured_whole_in_any_pieces() {
    let up = b"POST /api/users?x=1 HTTP/1.1\r\nHost: demo.localhost\r\nX-Forwarded-For: 198.51.100.7\r\ncontent-length: 13\r\n\r\n{\"name\":\"a\"}\n";
    let down = b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: 8\r\n\r\n{\"id\":1}";
    for piece in [1, 3, 7, 64, 4096] {
        let inspector = inspector(1 << 20, 1 << 16);
        let entries = exchange(&inspector, up, down, piece);
        assert_eq!(entries.len(), 1, "piece {piece}");
        let entry = &entries[0];
        assert_eq!(entry.request.method, "POST");
        assert_eq!(entry.request.path, "/api/users?x=1");
        assert_eq!(&entry.request.body.captured[..], b"{\"name\":\"a\"}\n");
        assert_eq!(entry.remote_addr().as_deref(), Some("198.51.100.7"));
        let response = entry.response.as_ref().expect("response");
        assert_eq!(
            (response.status, response.reason().as_str()),
            (201, "Created")
        );
        assert_eq!(&response.body.captured[..], b"{\"id\":1}");
        assert!(entry.error.is_none() && response.body.complete());
        assert_eq!(entry.response_size(), down.len() as u64);
    }
}

#[test]
fn pipelined_requests_pair_in_order_and_a_chunked_body_is_dechunked() {
    let up = b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nHEAD /b HTTP/1.1\r\nHost: h\r\n\r\nPUT /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    let down = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n";
    let inspector = inspector(1 << 20, 1 << 16);
    let entries = exchange(&inspector, up, down, 5);
    let seen: Vec<(String, Option<u16>)> = entries
        .iter()
        .rev()
        .map(|e| (e.request.path.clone(), e.status()))
        .collect();
    assert_eq!(
        seen,
        [
            ("/a".into(), Some(200)),
            ("/b".into(), Some(200)),
            ("/c".into(), Some(204))
        ]
    );
    let first = &entries[2];
    assert_eq!(
        &first.response.as_ref().expect("response").body.captured[..],
        b"hi"
    );
    assert_eq!(&entries[0].request.body.captured[..], b"abc");
    assert!(entries.iter().all(|e| e.error.is_none()), "{entries:?}");
}

#[test]
fn a_body_past_the_cap_is_cut_with_a_mark_and_counted_whole() {
    let inspector = inspector(1 << 20, 10);
    let body = vec![b'z'; 5000];
    let mut down =
        format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
    down.extend_from_slice(&body);
    let entries = exchange(&inspector, b"GET / HTTP/1.1\r\n\r\n", &down, 1000);
    let response = entries[0].response.clone().expect("response");
    assert_eq!(response.body.captured.len(), 10);
    assert_eq!(response.body.size, 5000);
    assert_eq!(response.body.cut, Some(Cut::Cap));
    assert!(!response.body.complete());
}

#[test]
fn a_response_read_until_close_ends_with_the_stream() {
    let inspector = inspector(1 << 20, 1 << 16);
    let entries = exchange(
        &inspector,
        b"GET /old HTTP/1.1\r\n\r\n",
        b"HTTP/1.0 200 OK\r\n\r\nuntil the end",
        4,
    );
    let response = entries[0].response.clone().expect("response");
    assert_eq!(&response.body.captured[..], b"until the end");
    assert!(entries[0].error.is_none());
    assert_eq!(response.version, "HTTP/1.0");
}

#[test]
fn a_stream_that_closes_mid_exchange_is_stored_as_cut_short() {
    let inspector = inspector(1 << 20, 1 << 16);
    let entries = exchange(
        &inspector,
        b"POST /upload HTTP/1.1\r\nContent-Length: 100\r\n\r\nonly part",
        b"",
        4,
    );
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].error, Some("stream_closed"));
    assert_eq!(entries[0].request.body.cut, Some(Cut::Closed));
    assert!(entries[0].response.is_none());
}

#[test]
fn an_upgrade_is_one_entry_whose_counts_grow_until_it_closes() {
    let inspector = inspector(1 << 20, 1 << 16);
    let mut capture = capture(&inspector);
    capture
        .wrote_to_target(b"GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
    capture.read_from_target(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x02hi",
    );
    let open = inspector.entries();
    assert_eq!(open.len(), 1);
    assert!(open[0].upgrade.expect("upgrade").open);
    capture.wrote_to_target(&[0u8; 100]);
    capture.read_from_target(&[0u8; 50]);
    capture.closed();
    let closed = inspector.entries();
    assert_eq!(closed.len(), 1, "replaced, not added");
    let upgrade = closed[0].upgrade.expect("upgrade");
    assert_eq!(
        (upgrade.bytes_in, upgrade.bytes_out, upgrade.open),
        (100, 54, false)
    );
    assert_eq!(closed[0].status(), Some(101));
}

#[test]
fn a_stream_that_is_not_http_is_left_alone_and_counted() {
    let inspector = inspector(1 << 20, 1 << 16);
    let entries = exchange(&inspector, b"\x16\x03\x01 binary garbage\r\n\r\n", b"", 64);
    assert!(entries.is_empty());
    assert_eq!(inspector.status().drops.unparsed, 1);
    assert_eq!(inspector.status().memory_used, 0);
}

#[test]
fn the_memory_budget_holds_under_many_large_exchanges() {
    let budget = 200_000;
    let inspector = inspector(budget, 50_000);
    let body = vec![b'q'; 40_000];
    let mut up = format!("POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
    up.extend_from_slice(&body);
    let down = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    let mut captures: Vec<Capture> = (0..4).map(|_| capture(&inspector)).collect();
    for round in 0..50 {
        for capture in &mut captures {
            for part in up.chunks(3000) {
                capture.wrote_to_target(part);
                assert!(inspector.status().memory_used <= budget, "round {round}");
            }
            capture.read_from_target(down);
        }
    }
    let status = inspector.status();
    assert!(status.entries > 0 && status.entries < 200, "{status:?}");
    assert!(status.drops.evicted > 100, "{status:?}");
    drop(captures);
    let held: usize = inspector.entries().iter().map(|e| e.memory()).sum();
    assert_eq!(inspector.status().memory_used, held, "nothing leaks");
}

#[test]
fn a_spilled_body_is_written_whole_to_disk_and_removed_with_its_entry() {
    let dir = std::env::temp_dir().join(format!("showoff-spill-test-{}", std::process::id()));
    let config = InspectConfig {
        body_cap: 16,
        spill: Some(dir.clone()),
        ..InspectConfig::default()
    };
    let inspector = Inspector::new(&config).expect("inspector");
    let body: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let mut down =
        format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
    down.extend_from_slice(&body);
    let entries = exchange(&inspector, b"GET /big HTTP/1.1\r\n\r\n", &down, 8192);
    let response = entries[0].response.clone().expect("response");
    assert_eq!(response.body.captured.len(), 16);
    let file = response.body.spilled.clone().expect("spilled");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while file.complete().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "spill never completed"
        );
        std::thread::yield_now();
    }
    assert_eq!(std::fs::read(file.path()).expect("read"), body);
    assert!(response.body.complete());
    let path = file.path().to_path_buf();
    drop((file, response, entries));
    inspector.clear();
    assert!(!path.exists(), "the file goes with its entry");
    drop(inspector);
    let left = std::fs::read_dir(&dir).map_or(0, |d| d.count());
    assert_eq!(left, 0, "the inspector's directory goes with it");
    let _ = std::fs::remove_dir(&dir);
}

/// One HTTP/2 frame.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

#[test]
fn http2_streams_become_entries_with_trailers_in_any_pieces() {
    let mut request_hpack = fluke_hpack::Encoder::new();
    let mut response_hpack = fluke_hpack::Encoder::new();
    let request_fields: Vec<(&[u8], &[u8])> = vec![
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", b"/pkg.Svc/Call"),
        (b":authority", b"demo.localhost"),
        (b"content-type", b"application/grpc"),
    ];
    let mut up = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    up.extend(frame(0x4, 0, 0, &[]));
    up.extend(frame(
        0x1,
        0x4,
        1,
        &request_hpack.encode(request_fields.clone()),
    ));
    up.extend(frame(0x0, 0x1, 1, b"\0\0\0\0\x02hi"));
    // A second stream, reset by the server before its answer.
    up.extend(frame(0x1, 0x5, 3, &request_hpack.encode(request_fields)));
    up.extend(frame(0x3, 0, 3, &8u32.to_be_bytes()));
    let mut down = frame(0x4, 0, 0, &[]);
    let head = response_hpack.encode(vec![(&b":status"[..], &b"200"[..])]);
    down.extend(frame(0x1, 0x4, 1, &head));
    // Padded data: one byte of pad length, the data, two bytes of padding.
    down.extend(frame(0x0, 0x8, 1, b"\x02\0\0\0\0\x02ok\0\0"));
    let trailers = response_hpack.encode(vec![(&b"grpc-status"[..], &b"0"[..])]);
    down.extend(frame(0x1, 0x5, 1, &trailers));
    for piece in [1, 5, 4096] {
        let inspector = inspector(1 << 20, 1 << 16);
        let entries = exchange(&inspector, &up, &down, piece);
        assert_eq!(entries.len(), 2, "piece {piece}");
        let call = entries
            .iter()
            .find(|e| e.error.is_none())
            .expect("the answered call");
        assert_eq!(
            (call.request.method.as_str(), call.request.path.as_str()),
            ("POST", "/pkg.Svc/Call")
        );
        assert_eq!(&call.request.body.captured[..], b"\0\0\0\0\x02hi");
        let headers = call.request.headers();
        assert_eq!(
            super::entry::header(&headers, "host"),
            Some("demo.localhost")
        );
        let response = call.response.as_ref().expect("response");
        assert_eq!(response.status, 200);
        assert_eq!(&response.body.captured[..], b"\0\0\0\0\x02ok");
        let fields = response.headers();
        assert_eq!(
            super::entry::header(&fields, "grpc-status"),
            Some("0"),
            "piece {piece}: {:?}",
            String::from_utf8_lossy(&response.head)
        );
        let reset = entries.iter().find(|e| e.error.is_some()).expect("reset");
        assert_eq!(reset.error, Some("stream_reset"));
    }
}

#[test]
fn an_http2_target_that_speaks_first_is_still_followed() {
    let mut request_hpack = fluke_hpack::Encoder::new();
    let mut response_hpack = fluke_hpack::Encoder::new();
    let inspector = inspector(1 << 20, 1 << 16);
    let mut capture = capture(&inspector);
    // The target's SETTINGS come before the server's preface was seen.
    capture.read_from_target(&frame(0x4, 0, 0, &[]));
    capture.wrote_to_target(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    let fields: Vec<(&[u8], &[u8])> = vec![(b":method", b"GET"), (b":path", b"/")];
    capture.wrote_to_target(&frame(0x1, 0x5, 1, &request_hpack.encode(fields)));
    let status: Vec<(&[u8], &[u8])> = vec![(b":status", b"204")];
    capture.read_from_target(&frame(0x1, 0x5, 1, &response_hpack.encode(status)));
    capture.closed();
    let entries = inspector.entries();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].status(), Some(204));
    // An HTTP/1.1 target that answers a request seen in pieces is unaffected.
    let inspector = self::inspector(1 << 20, 1 << 16);
    let up = b"POST /p HTTP/1.1\r\nHost: a\r\ncontent-length: 0\r\n\r\n";
    let down = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
    assert_eq!(exchange(&inspector, up, down, 1).len(), 1);
}
