//! Ports for processes that must listen where something else expects them: a server started
//! again on the same ports, HAProxy's backends, pebble and Redis (which cannot report the port
//! they bound). Each is taken from just below the kernel's ephemeral range, so no outgoing
//! connection's source port and no `127.0.0.1:0` listener lands on it while its owner is down;
//! the port is checked free on TCP and UDP when it is handed out.

use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

/// How many ports below the ephemeral range are handed out.
const SPAN: u32 = 10_000;

/// A port on 127.0.0.1 free a moment ago that the kernel never picks by itself.
pub fn steady_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let Some(low) = span_end() else {
        return any_free_port();
    };
    // Test processes run side by side: each starts at its own place in the span.
    let start = std::process::id().wrapping_mul(2_654_435_761) % SPAN;
    for _ in 0..SPAN {
        let offset = (start + NEXT.fetch_add(1, Ordering::Relaxed)) % SPAN;
        let Ok(port) = u16::try_from(low - SPAN + offset) else {
            break;
        };
        let addr = (Ipv4Addr::LOCALHOST, port);
        if TcpListener::bind(addr).is_ok() && UdpSocket::bind(addr).is_ok() {
            return port;
        }
    }
    any_free_port()
}

/// The first port of the kernel's ephemeral range (read once), when it says and leaves room
/// for the span above the privileged ports.
fn span_end() -> Option<u32> {
    static LOW: OnceLock<Option<u32>> = OnceLock::new();
    *LOW.get_or_init(|| {
        let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
        let low: u32 = range.split_whitespace().next()?.parse().ok()?;
        (low > SPAN + 1024).then_some(low)
    })
}

fn any_free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steady_ports_are_below_the_ephemeral_range_and_distinct() {
        let a = steady_port();
        let b = steady_port();
        assert_ne!(a, b);
        if let Some(low) = span_end() {
            assert!(
                u32::from(a) < low && u32::from(b) < low,
                "{a} {b} below {low}"
            );
        }
    }
}
