//! [`Metered`]: a stream that counts the bytes read from and written to it, so each exchange
//! reports its own bytes in and out.

use tokio::io::{AsyncRead, AsyncWrite};

/// A stream that counts the bytes read from and written to it (per-request byte metrics).
pub(crate) struct Metered<S> {
    inner: S,
    read: u64,
    written: u64,
}

impl<S> Metered<S> {
    pub(crate) fn new(inner: S) -> Self {
        Self {
            inner,
            read: 0,
            written: 0,
        }
    }

    /// Bytes read and written so far.
    /// The stream, no longer counted.
    pub(crate) fn into_inner(self) -> S {
        self.inner
    }

    pub(crate) fn counts(&self) -> (u64, u64) {
        (self.read, self.written)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        self.read += (buf.filled().len() - before) as u64;
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = &polled {
            self.written += *n as u64;
        }
        polled
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
