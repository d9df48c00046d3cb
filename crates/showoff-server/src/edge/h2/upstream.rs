//! HTTP/2 towards the targets of tunnels opened with `--upstream h2c|h2|auto`: one HTTP/2
//! connection per tunnel, over one tunnel stream, carries every request to that target as its
//! own HTTP/2 stream (the client wraps the stream in TLS for `h2`; the server always speaks
//! HTTP/2 with prior knowledge). It is opened on first use and replaced once it closes.
//!
//! The target's first bytes are watched ([`Sniff`]): a server that speaks HTTP/2 opens with a
//! SETTINGS frame. For `auto` the first connection is the probe: SETTINGS keeps HTTP/2 for the
//! tunnel's life, anything else (an HTTP/1.1 `400`, a close) settles it on HTTP/1.1 and the
//! request goes the HTTP/1.1 way. For `h2c` and `h2` it only makes the error plain.

use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use showoff_core::trace::Decision;
use showoff_core::{StreamMeta, TunnelStream};
use showoff_proto::Upstream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tracing::debug;

use crate::edge::body::Body;
use crate::edge::error::EdgeError;
use crate::edge::spans;
use crate::state::Tunnel;

/// How long the target has to show which protocol it speaks.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// Each request stream's receive window towards the target. Fixed: hyper's adaptive window
/// replaces these with 64 KiB and grows them from the measured round trip, which through a
/// tunnel halved streaming throughput (docs/benchmarks.md, "gRPC through an HTTP/2 tunnel").
const STREAM_WINDOW: u32 = 1024 * 1024;
/// The connection's receive window towards the target.
const CONNECTION_WINDOW: u32 = 8 * 1024 * 1024;

/// What a tunnel's target was found to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Found {
    Unknown = 0,
    Http2 = 1,
    Http1 = 2,
}

impl Found {
    fn from_u8(value: u8) -> Self {
        match value {
            1 => Self::Http2,
            2 => Self::Http1,
            _ => Self::Unknown,
        }
    }
}

/// A tunnel's HTTP/2 connection to its target, kept in the tunnel's edge state.
#[derive(Default)]
pub(crate) struct H2Upstream {
    live: Mutex<Option<Connection>>,
    /// One connection is opened at a time, so a burst of first requests shares it.
    opening: tokio::sync::Mutex<()>,
    /// `auto`: what the probe found (a [`Found`]).
    found: AtomicU8,
}

impl H2Upstream {
    fn live(&self) -> Option<Connection> {
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.as_ref().filter(|c| !c.sender.is_closed()).cloned()
    }

    fn set_live(&self, connection: Option<Connection>) {
        *self.live.lock().unwrap_or_else(|p| p.into_inner()) = connection;
    }

    fn found(&self) -> Found {
        Found::from_u8(self.found.load(Ordering::Acquire))
    }
}

/// One HTTP/2 connection to a target: where requests go, and what its first bytes said.
#[derive(Clone)]
pub(crate) struct Connection {
    sender: SendRequest<Body>,
    seen: watch::Receiver<Found>,
}

/// How a tunnel's requests reach its target.
pub(crate) enum Route {
    /// Over this HTTP/2 connection.
    Http2(Connection),
    /// The HTTP/1.1 way (an `auto` tunnel whose target speaks HTTP/1.1).
    Http1,
}

/// Whether requests to `tunnel` take the HTTP/2 way (as far as is known before asking).
pub(crate) fn speaks_h2(tunnel: &Tunnel) -> bool {
    match tunnel.spec.upstream {
        Upstream::Http1 => false,
        Upstream::H2c | Upstream::H2 => true,
        Upstream::Auto => state(tunnel).is_none_or(|s| s.found() != Found::Http1),
    }
}

fn state(tunnel: &Tunnel) -> Option<&H2Upstream> {
    tunnel.edge_state::<H2Upstream>()
}

/// The connection for the next request to `tunnel`, opened (and for `auto`, probed) if there
/// is none; the pairing is traced per `decision`.
pub(crate) async fn route(
    decision: &Decision,
    tunnel: &Tunnel,
    meta: &StreamMeta,
) -> Result<Route, EdgeError> {
    let Some(state) = state(tunnel) else {
        return Err(EdgeError::BadResponse);
    };
    if state.found() == Found::Http1 {
        return Ok(Route::Http1);
    }
    if let Some(live) = state.live() {
        return Ok(Route::Http2(live));
    }
    let _opening = state.opening.lock().await;
    if let Some(live) = state.live() {
        return Ok(Route::Http2(live));
    }
    let stream = spans::open_stream(decision, tunnel, meta.clone())
        .await
        .map_err(EdgeError::Open)?;
    let (sniff, mut seen) = Sniff::new(stream);
    let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .handshake::<_, Body>(TokioIo::new(sniff))
        .await
        .map_err(|error| {
            debug!(%error, "HTTP/2 handshake towards the target failed");
            EdgeError::TunnelBroken
        })?;
    let tunnel_name = tunnel.info.name.clone();
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            debug!(tunnel = %tunnel_name, %error, "HTTP/2 connection to the target ended");
        }
    });
    let auto = tunnel.spec.upstream == Upstream::Auto;
    if auto && state.found() == Found::Unknown {
        let found = tokio::time::timeout(PROBE_TIMEOUT, seen.wait_for(|f| *f != Found::Unknown))
            .await
            .ok()
            .and_then(Result::ok)
            .map_or(Found::Unknown, |f| *f);
        match found {
            Found::Unknown => return Err(EdgeError::Open(showoff_core::OpenError::Timeout)),
            Found::Http1 => {
                state.found.store(Found::Http1 as u8, Ordering::Release);
                debug!(tunnel = %tunnel.info.name, "auto: the target speaks HTTP/1.1");
                return Ok(Route::Http1);
            }
            Found::Http2 => {
                state.found.store(Found::Http2 as u8, Ordering::Release);
                debug!(tunnel = %tunnel.info.name, "auto: the target speaks HTTP/2");
            }
        }
    }
    let connection = Connection { sender, seen };
    state.set_live(Some(connection.clone()));
    Ok(Route::Http2(connection))
}

/// Sends `request` on `sender`; a request the connection never took (it closed meanwhile) is
/// sent once more on a fresh connection. A target that turned out not to speak HTTP/2 is
/// [`EdgeError::NotHttp2`].
pub(crate) async fn send(
    decision: &Decision,
    tunnel: &Tunnel,
    meta: &StreamMeta,
    mut connection: Connection,
    request: Request<Body>,
) -> Result<Response<Incoming>, EdgeError> {
    let mut request = request;
    for attempt in 0..2 {
        let failed = match connection.sender.try_send_request(request).await {
            Ok(response) => return Ok(response),
            Err(failed) => failed,
        };
        debug!(error = ?failed.error(), attempt, "HTTP/2 request towards the target failed");
        if *connection.seen.borrow() == Found::Http1 {
            return Err(EdgeError::NotHttp2);
        }
        let mut failed = failed;
        match failed.take_message() {
            // Never sent: the connection had closed. Once more on a new one.
            Some(again) if attempt == 0 => {
                request = again;
                if let Some(state) = state(tunnel) {
                    state.set_live(None);
                }
                connection = match route(decision, tunnel, meta).await? {
                    Route::Http2(fresh) => fresh,
                    Route::Http1 => return Err(EdgeError::NotHttp2),
                };
            }
            _ => return Err(EdgeError::TunnelBroken),
        }
    }
    Err(EdgeError::TunnelBroken)
}

/// A tunnel stream whose first bytes from the target are looked at once: an HTTP/2 server's
/// first frame is SETTINGS (frame type 4 in the fourth byte).
struct Sniff {
    io: TunnelStream,
    seen: Option<watch::Sender<Found>>,
}

impl Sniff {
    fn new(io: TunnelStream) -> (Self, watch::Receiver<Found>) {
        let (seen, receiver) = watch::channel(Found::Unknown);
        (
            Self {
                io,
                seen: Some(seen),
            },
            receiver,
        )
    }

    fn settle(&mut self, found: Found) {
        if let Some(seen) = self.seen.take() {
            let _ = seen.send(found);
        }
    }
}

/// What a target's first bytes say: `None` until there are four of them.
fn first_frame_says(bytes: &[u8]) -> Option<Found> {
    const SETTINGS: u8 = 4;
    let kind = *bytes.get(3)?;
    Some(if kind == SETTINGS {
        Found::Http2
    } else {
        Found::Http1
    })
}

impl AsyncRead for Sniff {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if self.seen.is_some() {
            match &polled {
                Poll::Ready(Ok(())) if buf.filled().len() == before => self.settle(Found::Http1),
                Poll::Ready(Ok(())) => {
                    // hyper reads the frame header in one go; a shorter first read settles
                    // nothing and the next read is looked at instead.
                    if let Some(found) = first_frame_says(&buf.filled()[before..]) {
                        self.settle(found);
                    }
                }
                Poll::Ready(Err(_)) => self.settle(Found::Http1),
                Poll::Pending => {}
            }
        }
        polled
    }
}

impl AsyncWrite for Sniff {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_settings_frame_is_http2_and_anything_else_is_not() {
        // An empty SETTINGS frame: length 0, type 4, flags 0, stream 0.
        assert_eq!(
            first_frame_says(&[0, 0, 0, 4, 0, 0, 0, 0, 0]),
            Some(Found::Http2)
        );
        assert_eq!(first_frame_says(b"HTTP/1.1 400"), Some(Found::Http1));
        // A TLS alert record.
        assert_eq!(first_frame_says(&[0x15, 3, 3, 0, 2]), Some(Found::Http1));
        assert_eq!(first_frame_says(&[0, 0, 6]), None, "too short to tell");
    }

    #[tokio::test]
    async fn the_sniffer_settles_on_the_first_bytes_and_on_a_close() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (near, mut far) = tokio::io::duplex(1024);
        let (mut sniff, seen) = Sniff::new(TunnelStream::boxed(Default::default(), near));
        far.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0])
            .await
            .expect("write");
        let mut frame = [0u8; 9];
        sniff.read_exact(&mut frame).await.expect("read");
        assert_eq!(*seen.borrow(), Found::Http2);

        let (near, far) = tokio::io::duplex(1024);
        let (mut sniff, seen) = Sniff::new(TunnelStream::boxed(Default::default(), near));
        drop(far);
        let mut rest = Vec::new();
        sniff.read_to_end(&mut rest).await.expect("eof");
        assert_eq!(*seen.borrow(), Found::Http1, "closed without a frame");
    }
}
