//! HTTP/2 visitors (ALPN `h2` on the HTTPS listener), and HTTP/2 towards targets that speak it.
//! hyper speaks HTTP/2 to the visitor; each request goes to the request-level edge
//! ([`crate::edge::request`]), which relays it as an HTTP/2 stream to a tunnel whose target
//! speaks HTTP/2 ([`relay`] over [`upstream`]) and otherwise hands it, as HTTP/1.1, to the
//! same edge that serves HTTP/1.1 visitors, so routing, visitor rules, rate limits, forwarded
//! headers, error pages, metrics and the access log are one set of rules.
//!
//! The connection has the limits an HTTP/1.1 one gets from its framing: at most
//! [`MAX_STREAMS`] streams at once, [`SEND_BUFFER`] bytes buffered per stream for a slow reader,
//! a header list no larger than `--max-header-bytes`, keep-alive pings whose silence closes it,
//! the head timeout as its idle limit once no stream is open, and the I/O idle timeout for a
//! visitor that stops reading: a response that waits that long for the visitor's window, with
//! nothing else moving on the connection, closes it (as a stalled HTTP/1.1 write does). Split
//! `cookie` fields are joined with `"; "` (RFC 9113 §8.2.3) on the HTTP/1.1 way; a `host` field
//! that disagrees with `:authority` is a 400.

pub(crate) mod forward;
pub(crate) mod relay;
pub(crate) mod upstream;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tracing::debug;

use crate::edge::EdgeContext;
use crate::edge::body::{Body, BoxError};
use crate::edge::http::Scheme;
use crate::edge::request;

/// Streams a visitor may have open at once (RFC 9113 recommends no fewer than 100).
pub(crate) const MAX_STREAMS: u32 = 100;

/// The shortest wait between two looks at a connection's idleness and progress.
const MIN_CHECK: Duration = Duration::from_millis(100);

/// Response bytes buffered per stream beyond what the visitor's window lets through; with
/// [`MAX_STREAMS`] a visitor that stops reading holds at most ~6 MiB here.
pub(crate) const SEND_BUFFER: usize = 64 * 1024;

/// Serves one HTTP/2 connection that came in on `scheme`'s listener (HTTPS, or the peer
/// listener for a cluster hop) until the visitor or the server closes it, it has had no open
/// stream for the head timeout, or its responses have waited for the visitor's window for the
/// I/O idle timeout.
pub(crate) async fn serve<S>(io: S, peer: SocketAddr, scheme: Scheme, ctx: Arc<EdgeContext>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let drain = ctx.drain.draining().clone();
    let settings = &ctx.settings;
    let (idle_limit, stall_limit) = (settings.head_timeout, settings.io_idle_timeout);
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_STREAMS)
        .max_send_buf_size(SEND_BUFFER)
        .max_header_list_size(u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(idle_limit))
        .keep_alive_timeout(idle_limit);
    let activity = Arc::new(Activity::new());
    let streams = activity.clone();
    let service = hyper::service::service_fn(move |request| {
        let (ctx, open) = (ctx.clone(), Open::new(&streams));
        async move {
            let response = request::serve(request, peer, scheme, ctx).await;
            Ok::<_, Infallible>(response.map(|body| Tracked::new(body, open).boxed()))
        }
    });
    let connection = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    let mut watch = Watch::new(&activity);
    let mut check = Instant::now() + idle_limit.min(stall_limit);
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    debug!(%peer, %error, "h2 connection ended");
                }
                return;
            }
            _ = drain.cancelled() => break,
            _ = tokio::time::sleep_until(check) => {
                if watch.stalled(&activity, stall_limit) {
                    debug!(%peer, "h2 visitor stopped reading; closing");
                    return;
                }
                match activity.idle_until(idle_limit) {
                    // Never sooner than MIN_CHECK: zero timeouts must not spin the task.
                    Some(due) => {
                        let now = Instant::now();
                        check = due.min(now + stall_limit / 2).max(now + MIN_CHECK);
                    }
                    None => {
                        debug!(%peer, "h2 connection idle; closing");
                        break;
                    }
                }
            }
        }
    }
    // GOAWAY: streams in flight finish, no new ones start.
    connection.as_mut().graceful_shutdown();
    let _ = connection.await;
}

/// Open streams of one connection, when the last one ended, and how response bodies move.
struct Activity {
    epoch: Instant,
    open: AtomicUsize,
    last_end_ms: AtomicU64,
    /// Streams whose last frame was taken and that wait for window to take the next.
    waiting: AtomicUsize,
    /// Body polls on any stream: changes whenever a response makes progress.
    progress: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            epoch: Instant::now(),
            open: AtomicUsize::new(0),
            last_end_ms: AtomicU64::new(0),
            waiting: AtomicUsize::new(0),
            progress: AtomicU64::new(0),
        }
    }

    /// `None` when the connection has been idle for `limit`; otherwise when to look again.
    fn idle_until(&self, limit: Duration) -> Option<Instant> {
        if self.open.load(Ordering::Acquire) > 0 {
            return Some(Instant::now() + limit);
        }
        let last = self.epoch + Duration::from_millis(self.last_end_ms.load(Ordering::Acquire));
        let due = last + limit;
        (due > Instant::now()).then_some(due)
    }
}

/// What the connection's task last saw of its responses' progress.
struct Watch {
    progress: u64,
    since: Instant,
}

impl Watch {
    fn new(activity: &Activity) -> Self {
        Self {
            progress: activity.progress.load(Ordering::Acquire),
            since: Instant::now(),
        }
    }

    /// True when a response has waited for the visitor's window for `limit` and no response
    /// on the connection moved meanwhile. A response waiting for its target (a long poll) is
    /// not waiting for the visitor and never counts.
    fn stalled(&mut self, activity: &Activity, limit: Duration) -> bool {
        let progress = activity.progress.load(Ordering::Acquire);
        if progress != self.progress || activity.waiting.load(Ordering::Acquire) == 0 {
            self.progress = progress;
            self.since = Instant::now();
            return false;
        }
        self.since.elapsed() >= limit
    }
}

/// One open stream; dropping it records the end.
struct Open(Arc<Activity>);

impl Open {
    fn new(activity: &Arc<Activity>) -> Self {
        activity.open.fetch_add(1, Ordering::AcqRel);
        Self(activity.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        let activity = &self.0;
        let now = activity.epoch.elapsed().as_millis() as u64;
        activity.last_end_ms.store(now, Ordering::Release);
        activity.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its stream counted as open and reports its progress. hyper
/// takes a frame only once the visitor's window has room for it, so a body whose last poll
/// gave a frame and that is not polled again is waiting for the visitor.
struct Tracked {
    inner: Body,
    open: Open,
    waiting: bool,
}

impl Tracked {
    fn new(inner: Body, open: Open) -> Self {
        Self {
            inner,
            open,
            waiting: false,
        }
    }

    fn set_waiting(&mut self, waiting: bool) {
        if waiting != self.waiting {
            self.waiting = waiting;
            let counter = &self.open.0.waiting;
            if waiting {
                counter.fetch_add(1, Ordering::AcqRel);
            } else {
                counter.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.set_waiting(false);
    }
}

impl http_body::Body for Tracked {
    type Data = bytes::Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        this.open.0.progress.fetch_add(1, Ordering::AcqRel);
        let poll = std::pin::Pin::new(&mut this.inner).poll_frame(cx);
        this.set_waiting(matches!(poll, std::task::Poll::Ready(Some(Ok(_)))));
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_idle_only_with_no_stream_open_for_the_limit() {
        let limit = Duration::from_secs(10);
        let activity = Arc::new(Activity::new());
        let open = Open::new(&activity);
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(activity.idle_until(limit).is_some(), "a stream is open");
        drop(open);
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(activity.idle_until(limit).is_some(), "idle for 9 s of 10");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(activity.idle_until(limit).is_none(), "idle for the limit");
    }

    #[tokio::test(start_paused = true)]
    async fn only_a_response_waiting_for_the_visitor_counts_as_stalled() {
        let limit = Duration::from_secs(10);
        let activity = Arc::new(Activity::new());
        let mut watch = Watch::new(&activity);
        tokio::time::advance(limit * 2).await;
        assert!(!watch.stalled(&activity, limit), "nothing waits to be sent");
        activity.waiting.fetch_add(1, Ordering::AcqRel);
        activity.progress.fetch_add(1, Ordering::AcqRel);
        assert!(!watch.stalled(&activity, limit), "it just moved");
        tokio::time::advance(limit / 2).await;
        assert!(
            !watch.stalled(&activity, limit),
            "waiting for half the limit"
        );
        tokio::time::advance(limit / 2).await;
        assert!(
            watch.stalled(&activity, limit),
            "waiting for the limit, nothing moved"
        );
    }
}
