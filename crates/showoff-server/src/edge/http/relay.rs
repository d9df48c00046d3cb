//! Bodies both ways: the response relayed to the visitor as it arrives (known length,
//! chunked, until close; re-framed for the visitor), the request body pumped to the target
//! (validated, re-chunked), upgrades spliced after the `101`. Every read and write that waits
//! on a peer has the idle deadline.

use std::time::Duration;

use bytes::{Buf, BytesMut};
use showoff_core::splice;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::timeout;
use tracing::debug;

use super::body::{ChunkedDecoder, Decoded, Framing};
use super::conn::Conn;
use super::encode::{encode_body, finish_body};
use super::pool::UpstreamConn;
use super::response::{BodyFraming, Response, VisitorFraming};
use super::{BODY_CHUNK, READ_CHUNK, WRITE_COALESCE};

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Conn<S> {
    /// Writes the response head and relays its body; true when delivered completely.
    pub(super) async fn relay(&mut self, up: &mut UpstreamConn, resp: &mut Response) -> bool {
        let mut out = std::mem::take(&mut resp.visitor_head);
        let idle = self.ctx.settings.io_idle_timeout;
        match resp.body {
            BodyFraming::None => self.write(&out).await.is_ok(),
            BodyFraming::Length(n) => self.relay_length(up, out, n).await,
            BodyFraming::Chunked => {
                let mut decoder = ChunkedDecoder::default();
                loop {
                    match decoder.decode(&mut up.buf) {
                        Err(error) => {
                            debug!(%error, "bad chunked body from the target");
                            return false;
                        }
                        Ok(Decoded::Data(data)) => encode_body(&mut out, &data, resp.visitor),
                        Ok(Decoded::End) => break,
                        Ok(Decoded::NeedMore) => {
                            if !self.flush(&mut out).await
                                || read_up_to(&mut up.io, &mut up.buf, BODY_CHUNK, idle)
                                    .await
                                    .is_err()
                            {
                                return false;
                            }
                        }
                    }
                }
                finish_body(&mut out, resp.visitor);
                self.write(&out).await.is_ok()
            }
            BodyFraming::UntilClose => {
                loop {
                    let data = up.buf.split();
                    encode_body(&mut out, &data, resp.visitor);
                    if !self.flush(&mut out).await {
                        return false;
                    }
                    match read_up_to(&mut up.io, &mut up.buf, BODY_CHUNK, idle).await {
                        Ok(()) => continue,
                        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                        Err(_) => return false,
                    }
                }
                finish_body(&mut out, resp.visitor);
                self.write(&out).await.is_ok()
            }
        }
    }

    /// Relays a body of known length: what is buffered goes out with the head in one write.
    async fn relay_length(
        &mut self,
        up: &mut UpstreamConn,
        mut out: BytesMut,
        mut left: u64,
    ) -> bool {
        let idle = self.ctx.settings.io_idle_timeout;
        let first = usize::try_from(left)
            .unwrap_or(usize::MAX)
            .min(up.buf.len());
        out.extend_from_slice(&up.buf[..first]);
        up.buf.advance(first);
        left -= first as u64;
        if self.write(&out).await.is_err() {
            return false;
        }
        while left > 0 {
            if read_up_to(&mut up.io, &mut up.buf, BODY_CHUNK, idle)
                .await
                .is_err()
            {
                return false;
            }
            let n = usize::try_from(left)
                .unwrap_or(usize::MAX)
                .min(up.buf.len());
            if self.write(&up.buf[..n]).await.is_err() {
                return false;
            }
            up.buf.advance(n);
            left -= n as u64;
        }
        true
    }

    /// Writes `out` once it is large enough, or when more input must be awaited.
    async fn flush(&mut self, out: &mut BytesMut) -> bool {
        if out.is_empty() {
            return true;
        }
        let ok = self.write(out).await.is_ok();
        out.clear();
        ok
    }

    pub(super) async fn splice_upgrade(&mut self, mut up: UpstreamConn, resp: Response) {
        let mut to_visitor = resp.visitor_head;
        to_visitor.extend_from_slice(&up.buf);
        if self.write(&to_visitor).await.is_err() {
            return;
        }
        if !self.buf.is_empty() && up.io.write_all(&self.buf).await.is_err() {
            return;
        }
        self.buf.clear();
        let stop = self.ctx.drain.stopping().clone();
        tokio::select! {
            _ = splice(&mut self.stream, &mut up.io) => {}
            _ = stop.cancelled() => {}
        }
    }
}

/// Reads at least one more byte into `buf` within `idle`; end of stream is `UnexpectedEof`.
pub(super) async fn read_more<R: AsyncRead + Unpin>(
    stream: &mut R,
    buf: &mut BytesMut,
    idle: Duration,
) -> std::io::Result<()> {
    read_up_to(stream, buf, READ_CHUNK, idle).await
}

/// Like [`read_more`] with room for `want` bytes: body relays read 64 KiB at a time, so a
/// 1 MiB body takes 16 reads rather than 64.
pub(super) async fn read_up_to<R: AsyncRead + Unpin>(
    stream: &mut R,
    buf: &mut BytesMut,
    want: usize,
    idle: Duration,
) -> std::io::Result<()> {
    buf.reserve(want);
    match timeout(idle, stream.read_buf(buf)).await {
        Ok(Ok(0)) => Err(std::io::ErrorKind::UnexpectedEof.into()),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

/// How long a request body may take: the head deadline, plus one second for every
/// `min_rate` bytes received (Apache's `MinRate`); each read is also bounded by the idle
/// timeout. A body dripped slower than that cannot hold a visitor slot for long.
#[derive(Debug, Clone, Copy)]
pub(super) struct Pace {
    pub(super) started: tokio::time::Instant,
    pub(super) grace: Duration,
    /// Bytes per second; 0: only the idle timeout applies.
    pub(super) min_rate: u64,
    pub(super) idle: Duration,
}

impl Pace {
    /// The deadline of the next read, with `received` bytes of the body read so far; `Err`
    /// when the body is already behind its pace.
    fn next_read(&self, received: u64) -> std::io::Result<Duration> {
        if self.min_rate == 0 {
            return Ok(self.idle);
        }
        let earned = Duration::from_secs_f64(received as f64 / self.min_rate as f64);
        let until = self.started + self.grace + earned;
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return Err(too_slow());
        }
        Ok(self.idle.min(left))
    }
}

/// The error of a body that did not arrive in time.
fn too_slow() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, "request body too slow")
}

/// Copies the visitor's request body to the target: `Content-Length` bytes as they are, chunked
/// bodies decoded (validated) and re-chunked. `BodyTimeout` when the visitor fell behind the
/// body's pace, `BadBody` when it broke the framing or left.
pub(super) async fn pump_body<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    stream: &mut R,
    buf: &mut BytesMut,
    framing: Framing,
    up: &mut W,
    pace: Pace,
) -> Result<(), crate::edge::error::EdgeError> {
    let result = match framing {
        Framing::Empty => Ok(()),
        Framing::Length(n) => pump_length(stream, buf, n, up, pace).await,
        Framing::Chunked => pump_chunked(stream, buf, up, pace).await,
    };
    result.map_err(|error| {
        debug!(%error, "request body not delivered");
        let upstream = error
            .get_ref()
            .is_some_and(|inner| inner.is::<UpstreamWriteFailed>());
        match error.kind() {
            std::io::ErrorKind::TimedOut => crate::edge::error::EdgeError::BodyTimeout,
            // The tunnel broke under the body (its client died mid-upload): not the
            // visitor's doing, so 502 rather than 400.
            _ if upstream => crate::edge::error::EdgeError::TunnelBroken,
            _ => crate::edge::error::EdgeError::BadBody,
        }
    })
}

/// A write of body bytes towards the target failed (the tunnel broke), as opposed to the
/// visitor breaking the framing or leaving.
#[derive(Debug, thiserror::Error)]
#[error("writing the body towards the target failed: {0}")]
struct UpstreamWriteFailed(std::io::Error);

/// [`timed_write`] towards the target, its failures marked [`UpstreamWriteFailed`] (a
/// timeout stays a timeout).
async fn upstream_write<W: AsyncWrite + Unpin>(
    w: &mut W,
    bytes: &[u8],
    idle: Duration,
) -> std::io::Result<()> {
    timed_write(w, bytes, idle).await.map_err(|error| {
        if error.kind() == std::io::ErrorKind::TimedOut {
            error
        } else {
            std::io::Error::new(error.kind(), UpstreamWriteFailed(error))
        }
    })
}

/// One read of the body under its pace.
async fn paced_read<R: AsyncRead + Unpin>(
    stream: &mut R,
    buf: &mut BytesMut,
    want: usize,
    pace: Pace,
    received: u64,
) -> std::io::Result<()> {
    let deadline = pace.next_read(received)?;
    read_up_to(stream, buf, want, deadline).await
}

async fn pump_length<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    stream: &mut R,
    buf: &mut BytesMut,
    total: u64,
    up: &mut W,
    pace: Pace,
) -> std::io::Result<()> {
    let mut left = total;
    while left > 0 {
        if buf.is_empty() {
            paced_read(stream, buf, BODY_CHUNK, pace, total - left).await?;
        }
        let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
        upstream_write(up, &buf[..n], pace.idle).await?;
        buf.advance(n);
        left -= n as u64;
    }
    Ok(())
}

async fn pump_chunked<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    stream: &mut R,
    buf: &mut BytesMut,
    up: &mut W,
    pace: Pace,
) -> std::io::Result<()> {
    let mut decoder = ChunkedDecoder::default();
    let mut out = BytesMut::new();
    let mut received = 0u64;
    let idle = pace.idle;
    loop {
        let step = decoder
            .decode(buf)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        match step {
            Decoded::End => {
                finish_body(&mut out, VisitorFraming::Chunked);
                return upstream_write(up, &out, idle).await;
            }
            Decoded::NeedMore => {
                if !out.is_empty() {
                    upstream_write(up, &out, idle).await?;
                    out.clear();
                }
                paced_read(stream, buf, READ_CHUNK, pace, received).await?;
            }
            Decoded::Data(chunk) => {
                received += chunk.len() as u64;
                encode_body(&mut out, &chunk, VisitorFraming::Chunked);
                if out.len() >= WRITE_COALESCE {
                    upstream_write(up, &out, idle).await?;
                    out.clear();
                }
            }
        }
    }
}

async fn timed_write<W: AsyncWrite + Unpin>(
    w: &mut W,
    bytes: &[u8],
    idle: Duration,
) -> std::io::Result<()> {
    match timeout(idle, w.write_all(bytes)).await {
        Ok(result) => result,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge::error::EdgeError;

    fn pace() -> Pace {
        Pace {
            started: tokio::time::Instant::now(),
            grace: Duration::from_secs(5),
            min_rate: 0,
            idle: Duration::from_secs(5),
        }
    }

    #[tokio::test]
    async fn a_tunnel_that_breaks_under_the_body_is_502_and_a_visitor_who_leaves_is_400() {
        // The chaos suite's client SIGKILL mid-upload once got 400: the failed write towards
        // the dead tunnel was taken for the visitor's fault.
        let (mut visitor, mut from_visitor) = tokio::io::duplex(1 << 16);
        visitor.write_all(&[b'x'; 4096]).await.expect("body");
        let (mut to_target, target) = tokio::io::duplex(1 << 16);
        drop(target);
        let mut buf = BytesMut::new();
        let pumped = pump_body(
            &mut from_visitor,
            &mut buf,
            Framing::Length(4096),
            &mut to_target,
            pace(),
        )
        .await;
        assert_eq!(pumped, Err(EdgeError::TunnelBroken));

        let (mut visitor, mut from_visitor) = tokio::io::duplex(1 << 16);
        visitor
            .write_all(&[b'x'; 100])
            .await
            .expect("part of the body");
        drop(visitor);
        let (mut to_target, _target) = tokio::io::duplex(1 << 16);
        let pumped = pump_body(
            &mut from_visitor,
            &mut BytesMut::new(),
            Framing::Length(4096),
            &mut to_target,
            pace(),
        )
        .await;
        assert_eq!(pumped, Err(EdgeError::BadBody));
    }
}
