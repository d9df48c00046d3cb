//! Byte streams to a client's target: [`TunnelStream`] (what every transport yields), the
//! [`Prefixed`] wrapper that replays bytes read ahead (a handshake's last frame, a PROXY header's
//! tail, a ClientHello read for its SNI), [`splice`] and the socket options every Showoff socket
//! gets ([`tune_socket`]).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Anything a tunnel stream can run over.
pub trait StreamIo: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> StreamIo for T {}

/// A bidirectional byte stream to a client's local target. Bytes the handshake read past its
/// last frame are replayed first, so nothing the client sent is lost.
pub type TunnelStream = Prefixed<Box<dyn StreamIo>>;

impl TunnelStream {
    /// A tunnel stream over `io` that yields `prefix` first.
    pub fn boxed(prefix: BytesMut, io: impl StreamIo) -> Self {
        Prefixed::new(prefix, Box::new(io))
    }
}

/// Buffer per direction when splicing two streams. Measured (docs/benchmarks.md): 64 KiB buffers
/// did not raise 1 MiB throughput but cut new-connection throughput by a third (four fresh
/// 64 KiB buffers per visitor connection), so splices keep 8 KiB.
pub const SPLICE_BUF: usize = 8 * 1024;

/// Copies bytes both ways between `a` and `b` until both directions end; returns the bytes
/// moved `a → b` and `b → a` (zero when the splice failed part-way).
pub async fn splice<A, B>(a: &mut A, b: &mut B) -> (u64, u64)
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    match tokio::io::copy_bidirectional_with_sizes(a, b, SPLICE_BUF, SPLICE_BUF).await {
        Ok(moved) => moved,
        Err(error) => {
            tracing::debug!(%error, "splice ended");
            (0, 0)
        }
    }
}

/// Sets `TCP_NODELAY` and keepalive on a socket Showoff opened or accepted. Keepalive lets a
/// splice between two quiet peers notice a vanished one without a timer of ours.
pub fn tune_socket(stream: &tokio::net::TcpStream) {
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, "failed to set TCP_NODELAY");
    }
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(std::time::Duration::from_secs(30))
        .with_interval(std::time::Duration::from_secs(10));
    if let Err(error) = socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive) {
        tracing::debug!(%error, "failed to set TCP keepalive");
    }
}

/// Sets `TCP_USER_TIMEOUT` (Linux): data unacknowledged for `timeout` closes the connection,
/// so a peer that vanished or stopped reading cannot hold a socket's buffers forever. Elsewhere
/// the system's retransmission limits apply.
pub fn set_user_timeout(stream: &tokio::net::TcpStream, timeout: std::time::Duration) {
    #[cfg(target_os = "linux")]
    if let Err(error) = socket2::SockRef::from(stream).set_tcp_user_timeout(Some(timeout)) {
        tracing::debug!(%error, "failed to set TCP_USER_TIMEOUT");
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (stream, timeout);
}

/// A stream that yields `prefix` before reading from `io`; writes go straight to `io`. Used
/// wherever bytes were read ahead of the stream's owner: a handshake's last frame, a PROXY
/// header's tail, a ClientHello read for its SNI.
pub struct Prefixed<S> {
    prefix: BytesMut,
    io: S,
}

impl<S> Prefixed<S> {
    /// The same stream with `bytes` read again first (bytes a framed reader buffered past its
    /// last frame), ahead of any prefix still unread; no second layer around `io`.
    pub fn unread(mut self, bytes: BytesMut) -> Self {
        if !bytes.is_empty() {
            let rest = std::mem::replace(&mut self.prefix, bytes);
            self.prefix.extend_from_slice(&rest);
        }
        self
    }

    /// A stream over `io` that yields `prefix` first. An empty prefix is dropped so it does not
    /// pin the buffer it was split from for the stream's lifetime.
    pub fn new(prefix: BytesMut, io: S) -> Self {
        let prefix = if prefix.is_empty() {
            BytesMut::new()
        } else {
            prefix
        };
        Self { prefix, io }
    }
}

impl<S> std::fmt::Debug for Prefixed<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prefixed")
            .field("prefix_len", &self.prefix.len())
            .finish_non_exhaustive()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
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

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn prefix_is_read_before_the_socket() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut stream = TunnelStream::boxed(BytesMut::from(&b"hello "[..]), a);
        b.write_all(b"world").await.expect("write");
        drop(b);
        let mut out = String::new();
        stream.read_to_string(&mut out).await.expect("read");
        assert_eq!(out, "hello world");
    }

    #[tokio::test]
    async fn unread_bytes_come_before_the_rest_of_the_prefix() {
        let (a, mut b) = tokio::io::duplex(64);
        let stream = TunnelStream::boxed(BytesMut::from(&b"world"[..]), a);
        let mut stream = stream.unread(BytesMut::from(&b"hello "[..]));
        b.write_all(b"!").await.expect("write");
        drop(b);
        let mut out = String::new();
        stream.read_to_string(&mut out).await.expect("read");
        assert_eq!(out, "hello world!");
    }
}
