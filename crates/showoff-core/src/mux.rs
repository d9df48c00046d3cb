//! Multiplexed streams over one connection (yamux), shared by both ends of the `mux` transport.
//!
//! [`Mux::start`] turns a connection into a yamux session driven by one task. That task is the
//! only owner of the [`yamux::Connection`]: it reads frames, writes what the streams queued,
//! opens the streams [`Mux::open`] asks for and hands the peer's streams to the receiver
//! returned beside the handle. A pending write never stops reading (the yamux driver keeps
//! reading frames while its socket is not writable), so a peer that stops reading on one
//! stream cannot wedge the others or the control stream.
//!
//! What the peers' failures taught, and where it is handled:
//! - windows: yamux auto-tunes each stream's receive window from the measured round trip
//!   towards twice the bandwidth-delay product (a fixed 256 KiB window caps one stream at
//!   ~33 Mbit/s at 60 ms); [`RECEIVE_BUDGET`] bounds the sum per session, which is the most
//!   memory a peer can make this side buffer;
//! - opens: yamux opens at most 256 streams the peer has not acknowledged; [`Mux::open`] waits
//!   (bounded by the caller's deadline) rather than queueing more;
//! - liveness: every byte read from the connection counts ([`Mux::received`]), so a session
//!   busy with bulk data is never declared dead because a heartbeat frame queued behind it;
//! - lifetime: the session ends when the connection does, or once [`Mux::finish`] was called
//!   (or every handle dropped) and the last stream closed, so streams outlive their session's
//!   control stream as dial-back connections do.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, oneshot};
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt, TokioAsyncReadCompatExt};
use tracing::debug;

use crate::stream::{StreamIo, TunnelStream};

pub use yamux::Mode;

/// Most streams one session carries at once (yamux's default); one more is refused.
pub const MAX_STREAMS: usize = 512;
/// Sum of the receive windows of one session's streams: the most one peer can make this side
/// buffer. Each stream starts at 256 KiB and grows only while it is read fast.
pub const RECEIVE_BUDGET: usize = 256 * 1024 * 1024;
/// Largest data frame sent; larger writes are split so window updates and other streams'
/// frames are never stuck behind one stream's bulk for long.
const SPLIT_SEND: usize = 16 * 1024;
/// Peer streams queued for the accepting side before further ones are refused.
const INBOUND_QUEUE: usize = 64;

/// Why a stream could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MuxError {
    /// The connection is closed or failed.
    #[error("the multiplexed connection is closed")]
    Closed,
    /// The session carries [`MAX_STREAMS`] streams already.
    #[error("too many streams on one connection")]
    TooManyStreams,
}

type OpenReply = oneshot::Sender<Result<TunnelStream, MuxError>>;

struct Shared {
    opens: mpsc::UnboundedSender<OpenReply>,
    /// Held while the session may still open streams; dropped by [`Mux::finish`].
    alive: Mutex<Option<mpsc::Sender<()>>>,
    received: Arc<AtomicU64>,
}

/// One end of a multiplexed connection; cheap to clone.
#[derive(Clone)]
pub struct Mux {
    shared: Arc<Shared>,
}

impl Mux {
    /// Starts the session over `io` and returns its handle and the streams the peer opens.
    pub fn start(io: impl StreamIo, mode: Mode) -> (Self, mpsc::Receiver<TunnelStream>) {
        let received = Arc::new(AtomicU64::new(0));
        let counted = Counting {
            io,
            received: received.clone(),
        };
        let mut config = yamux::Config::default();
        config.set_max_num_streams(MAX_STREAMS);
        config.set_max_connection_receive_window(Some(RECEIVE_BUDGET));
        config.set_split_send_size(SPLIT_SEND);
        let connection = yamux::Connection::new(counted.compat(), config, mode);
        let (opens, open_rx) = mpsc::unbounded_channel();
        let (alive, live_rx) = mpsc::channel(1);
        let (inbound, inbound_rx) = mpsc::channel(INBOUND_QUEUE);
        let driver = Driver {
            connection,
            open_rx,
            waiting: None,
            inbound,
            live: live_rx,
            alive: alive.downgrade(),
        };
        tokio::spawn(driver.run());
        let shared = Arc::new(Shared {
            opens,
            alive: Mutex::new(Some(alive)),
            received,
        });
        (Self { shared }, inbound_rx)
    }

    /// Opens a stream to the peer. Waits while 256 opens are unacknowledged; the caller bounds
    /// the wait.
    pub async fn open(&self) -> Result<TunnelStream, MuxError> {
        let (reply, answer) = oneshot::channel();
        self.shared
            .opens
            .send(reply)
            .map_err(|_| MuxError::Closed)?;
        answer.await.unwrap_or(Err(MuxError::Closed))
    }

    /// Bytes read from the connection so far: any frame is a sign of life.
    pub fn received(&self) -> u64 {
        self.shared.received.load(Ordering::Relaxed)
    }

    /// No more streams will be opened: the connection closes once its last stream has.
    pub fn finish(&self) {
        self.shared
            .alive
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
    }

    /// True once the connection is closed.
    pub fn is_closed(&self) -> bool {
        self.shared.opens.is_closed()
    }
}

/// The task that owns the yamux connection.
struct Driver<I> {
    connection: yamux::Connection<Compat<Counting<I>>>,
    open_rx: mpsc::UnboundedReceiver<OpenReply>,
    /// An open request waiting for yamux to allow one more stream.
    waiting: Option<OpenReply>,
    inbound: mpsc::Sender<TunnelStream>,
    /// Ends (`None`) once [`Mux::finish`] was called and every stream is dropped.
    live: mpsc::Receiver<()>,
    /// The token each stream holds, so `live` ends only after the last one.
    alive: mpsc::WeakSender<()>,
}

impl<I: StreamIo> Driver<I> {
    async fn run(mut self) {
        let end = poll_fn(|cx| self.poll(cx)).await;
        debug!(end, "multiplexed connection ended");
        self.open_rx.close();
        if let Some(reply) = self.waiting.take() {
            let _ = reply.send(Err(MuxError::Closed));
        }
        while let Ok(reply) = self.open_rx.try_recv() {
            let _ = reply.send(Err(MuxError::Closed));
        }
        let _ = poll_fn(|cx| self.connection.poll_close(cx)).await;
    }

    /// Drives the connection until it ends; returns why, for the log.
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<&'static str> {
        loop {
            let mut progressed = self.poll_opens(cx);
            match self.connection.poll_next_inbound(cx) {
                Poll::Ready(Some(Ok(stream))) => {
                    progressed = true;
                    let Some(stream) = self.wrap(stream) else {
                        continue;
                    };
                    if self.inbound.try_send(stream).is_err() {
                        debug!("a peer stream was refused: nobody accepts streams or too many");
                    }
                }
                Poll::Ready(Some(Err(error))) => {
                    debug!(%error, "multiplexed connection failed");
                    return Poll::Ready("failed");
                }
                Poll::Ready(None) => return Poll::Ready("closed by the peer"),
                Poll::Pending => {}
            }
            if self.live.poll_recv(cx).is_ready() {
                return Poll::Ready("finished");
            }
            if !progressed {
                return Poll::Pending;
            }
        }
    }

    /// Serves open requests while yamux allows new streams; true when one was served.
    fn poll_opens(&mut self, cx: &mut Context<'_>) -> bool {
        let mut served = false;
        loop {
            if self.waiting.is_none() {
                match self.open_rx.poll_recv(cx) {
                    Poll::Ready(Some(reply)) => self.waiting = Some(reply),
                    Poll::Ready(None) | Poll::Pending => return served,
                }
            }
            if self.waiting.as_ref().is_some_and(|r| r.is_closed()) {
                // The caller gave up waiting; do not open a stream nobody takes.
                self.waiting = None;
                continue;
            }
            let opened = match self.connection.poll_new_outbound(cx) {
                Poll::Pending => return served,
                Poll::Ready(Ok(stream)) => self.wrap(stream).ok_or(MuxError::Closed),
                Poll::Ready(Err(yamux::ConnectionError::TooManyStreams)) => {
                    Err(MuxError::TooManyStreams)
                }
                Poll::Ready(Err(_)) => Err(MuxError::Closed),
            };
            if let Some(reply) = self.waiting.take() {
                let _ = reply.send(opened);
            }
            served = true;
        }
    }

    /// The stream with tokio's traits and a share of the session's life; `None` once the
    /// session finished and its last stream closed.
    fn wrap(&self, stream: yamux::Stream) -> Option<TunnelStream> {
        let live = self.alive.upgrade()?;
        Some(TunnelStream::boxed(
            BytesMut::new(),
            MuxStream {
                inner: stream.compat(),
                _live: live,
            },
        ))
    }
}

/// A yamux stream with tokio's I/O traits; holds the session open while it lives.
struct MuxStream {
    inner: Compat<yamux::Stream>,
    _live: mpsc::Sender<()>,
}

impl AsyncRead for MuxStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for MuxStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The connection under the session, counting the bytes read from it.
struct Counting<T> {
    io: T,
    received: Arc<AtomicU64>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Counting<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.io).poll_read(cx, buf))?;
        let read = (buf.filled().len() - before) as u64;
        self.received.fetch_add(read, Ordering::Relaxed);
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counting<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn pair() -> (
        (Mux, mpsc::Receiver<TunnelStream>),
        (Mux, mpsc::Receiver<TunnelStream>),
    ) {
        let (a, b) = tokio::io::duplex(1 << 20);
        (Mux::start(a, Mode::Client), Mux::start(b, Mode::Server))
    }

    #[tokio::test]
    async fn streams_open_both_ways_and_carry_bytes() {
        let ((client, mut client_in), (server, mut server_in)) = pair();
        let mut up = client.open().await.expect("open");
        up.write_all(b"hello").await.expect("write");
        let mut there = server_in.recv().await.expect("accepted");
        let mut got = [0; 5];
        there.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"hello");
        let mut down = server.open().await.expect("open");
        down.write_all(b"back").await.expect("write");
        down.flush().await.expect("flush");
        let mut here = client_in.recv().await.expect("accepted");
        let mut got = [0; 4];
        here.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"back");
        assert!(client.received() > 0, "reads are counted");
    }

    #[tokio::test]
    async fn a_finished_session_closes_after_its_last_stream() {
        let ((client, _client_in), (server, mut server_in)) = pair();
        let mut stream = client.open().await.expect("open");
        // yamux announces a stream with its first frame.
        stream.write_all(b"x").await.expect("write");
        let _peer = server_in.recv().await.expect("accepted");
        client.finish();
        tokio::task::yield_now().await;
        assert!(!client.is_closed(), "a stream is still open");
        drop(stream);
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while !client.is_closed() {
            assert!(tokio::time::Instant::now() < deadline, "never closed");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert_eq!(client.open().await.err(), Some(MuxError::Closed));
        drop(server);
    }

    #[tokio::test]
    async fn a_stalled_stream_does_not_hold_up_another() {
        let ((client, _ci), (_server, mut server_in)) = pair();
        let mut stalled = client.open().await.expect("open");
        stalled.write_all(b"x").await.expect("first byte");
        let _unread = server_in.recv().await.expect("accepted");
        // Fill the stalled stream's window without the peer reading.
        let fill = tokio::spawn(async move {
            let chunk = vec![7u8; 64 * 1024];
            loop {
                if stalled.write_all(&chunk).await.is_err() {
                    break;
                }
            }
        });
        let mut other = client.open().await.expect("open");
        other.write_all(b"through").await.expect("write");
        let mut there = server_in.recv().await.expect("accepted");
        let mut got = [0; 7];
        there.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"through");
        fill.abort();
    }
}
