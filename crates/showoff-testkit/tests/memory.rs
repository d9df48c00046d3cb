//! A large upload is streamed, never held whole: the process's peak memory barely moves.
//! (Alone in its test binary so no other test shares the process.)

use showoff_testkit::visitor::{read_to_close, status_of};
use showoff_testkit::{TestServer, serve_http};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("procfs");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

#[tokio::test]
async fn a_256_mib_upload_does_not_grow_memory_by_its_size() {
    let server = TestServer::default_config().await;
    let (_target, _client) = serve_http(&server, "big", "a").await;
    const SIZE: usize = 256 << 20;
    let before = peak_rss_kib();
    let mut stream = TcpStream::connect(server.addrs.http)
        .await
        .expect("connect");
    let head = format!(
        "POST / HTTP/1.1\r\nHost: {}\r\nContent-Length: {SIZE}\r\nConnection: close\r\n\r\n",
        server.host("big")
    );
    stream.write_all(head.as_bytes()).await.expect("head");
    let block = vec![0u8; 256 * 1024];
    for _ in 0..SIZE / block.len() {
        stream.write_all(&block).await.expect("body");
    }
    let response = read_to_close(&mut stream).await;
    assert_eq!(status_of(&response), 200, "{response}");
    assert!(
        response.contains(&format!("\"body_bytes\":{SIZE}")),
        "{response}"
    );
    let grown_mib = (peak_rss_kib() - before) / 1024;
    assert!(
        grown_mib < 64,
        "peak memory grew by {grown_mib} MiB for a 256 MiB upload"
    );
}
