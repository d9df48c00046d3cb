//! The bounded, lossy queue UDP datagrams wait in wherever they travel over a reliable
//! transport (dial-back or mux streams): pushing never blocks, a full queue or an oversized
//! datagram drops the datagram and counts why, so one slow flow cannot hold up another
//! (head-of-line blocking) and nothing is ever truncated.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use showoff_proto::datagram::{ChannelCodec, ChannelError, Datagram};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;
use tokio_util::codec::FramedRead;

/// Why a datagram was dropped instead of sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DatagramDrop {
    /// The queue holds its cap of datagrams or bytes.
    #[error("the datagram queue is full")]
    QueueFull,
    /// Larger than the path carries; dropped whole, never truncated.
    #[error("datagram of {len} bytes exceeds the path's limit of {max}")]
    TooLarge {
        /// The datagram's size.
        len: usize,
        /// The path's limit.
        max: usize,
    },
    /// The flow or its session has ended.
    #[error("the flow is closed")]
    Closed,
}

impl DatagramDrop {
    /// Stable label for metrics (`showoff_udp_drops_total{reason}`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::QueueFull => "queue_full",
            Self::TooLarge { .. } => "too_large",
            Self::Closed => "closed",
        }
    }
}

/// A bounded FIFO of datagrams with drop counters.
#[derive(Debug)]
pub struct DatagramQueue {
    items: Mutex<Queued>,
    ready: Notify,
    closed: AtomicBool,
    max_items: usize,
    max_bytes: usize,
    max_datagram: usize,
    dropped_full: AtomicU64,
    dropped_large: AtomicU64,
}

#[derive(Debug, Default)]
struct Queued {
    datagrams: VecDeque<Bytes>,
    bytes: usize,
}

impl DatagramQueue {
    /// A queue of at most `max_items` datagrams and `max_bytes` bytes, each at most
    /// `max_datagram` bytes.
    pub fn new(max_items: usize, max_bytes: usize, max_datagram: usize) -> Self {
        Self {
            items: Mutex::new(Queued::default()),
            ready: Notify::new(),
            closed: AtomicBool::new(false),
            max_items,
            max_bytes,
            max_datagram,
            dropped_full: AtomicU64::new(0),
            dropped_large: AtomicU64::new(0),
        }
    }

    /// The queue in front of a datagram channel, on either side: 4,096 datagrams or 4 MiB, each
    /// up to a whole channel frame.
    pub fn for_channel() -> Self {
        Self::new(
            4_096,
            4 * 1024 * 1024,
            showoff_proto::datagram::MAX_CHANNEL_FRAME,
        )
    }

    fn items(&self) -> std::sync::MutexGuard<'_, Queued> {
        // Every critical section is one push or pop: a panic cannot leave it half-done.
        self.items.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `datagram`, or drops it and says why; never waits.
    pub fn push(&self, datagram: Bytes) -> Result<(), DatagramDrop> {
        if self.closed.load(Ordering::Acquire) {
            return Err(DatagramDrop::Closed);
        }
        if datagram.len() > self.max_datagram {
            self.dropped_large.fetch_add(1, Ordering::Relaxed);
            return Err(DatagramDrop::TooLarge {
                len: datagram.len(),
                max: self.max_datagram,
            });
        }
        let mut items = self.items();
        if items.datagrams.len() >= self.max_items || items.bytes + datagram.len() > self.max_bytes
        {
            self.dropped_full.fetch_add(1, Ordering::Relaxed);
            return Err(DatagramDrop::QueueFull);
        }
        items.bytes += datagram.len();
        items.datagrams.push_back(datagram);
        drop(items);
        self.ready.notify_one();
        Ok(())
    }

    /// The oldest datagram, waiting for one; `None` once closed and empty.
    pub async fn pop(&self) -> Option<Bytes> {
        loop {
            let notified = self.ready.notified();
            if let Some(datagram) = self.try_pop() {
                return Some(datagram);
            }
            if self.closed.load(Ordering::Acquire) {
                return None;
            }
            notified.await;
        }
    }

    /// The oldest datagram, if one is queued.
    pub fn try_pop(&self) -> Option<Bytes> {
        let mut items = self.items();
        let datagram = items.datagrams.pop_front()?;
        items.bytes -= datagram.len();
        Some(datagram)
    }

    /// Closes the queue: pushes are refused, waiting pops end once it is drained. Idempotent.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.ready.notify_waiters();
    }

    /// Largest datagram the queue takes.
    pub fn max_datagram(&self) -> usize {
        self.max_datagram
    }

    /// Datagrams dropped so far: (queue full, too large).
    pub fn dropped(&self) -> (u64, u64) {
        (
            self.dropped_full.load(Ordering::Relaxed),
            self.dropped_large.load(Ordering::Relaxed),
        )
    }
}

/// Sends one datagram on `socket` now, in one system call, to `to` (or its connected peer).
/// tokio's `try_send` answers `WouldBlock` without trying until its reactor has seen the socket
/// writable, which would lose the first datagram of a socket just made; here `WouldBlock` only
/// means the kernel's send buffer is full.
pub fn send_now(
    socket: &tokio::net::UdpSocket,
    datagram: &[u8],
    to: Option<std::net::SocketAddr>,
) -> std::io::Result<usize> {
    let socket = socket2::SockRef::from(socket);
    match to {
        Some(addr) => socket.send_to(datagram, &addr.into()),
        None => socket.send(datagram),
    }
}

/// Bytes gathered into one write on a datagram channel.
const CHANNEL_BATCH: usize = 64 * 1024;

/// How a datagram channel ended.
#[derive(Debug)]
pub enum ChannelEnd {
    /// The queue was closed (the tunnel or flow handler is done).
    Closed,
    /// The peer closed the stream.
    PeerClosed,
    /// Writing to the stream failed.
    WriteFailed(std::io::Error),
    /// The peer sent bytes that are not a datagram frame, or reading failed.
    Bad(ChannelError),
}

impl std::fmt::Display for ChannelEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Closed => f.write_str("closed on this side"),
            Self::PeerClosed => f.write_str("closed by the peer"),
            Self::WriteFailed(error) => write!(f, "write failed: {error}"),
            Self::Bad(error) => write!(f, "{error}"),
        }
    }
}

/// Carries one datagram channel stream: `queue`'s datagrams are written length-prefixed (many
/// to a write while more are queued), and each frame read is handed to `deliver`, which must
/// not wait. `prefix` holds bytes already read from the stream. Runs until either direction
/// ends.
pub async fn carry_channel<S>(
    stream: S,
    prefix: BytesMut,
    queue: &DatagramQueue,
    mut deliver: impl FnMut(Datagram),
) -> ChannelEnd
where
    S: AsyncRead + AsyncWrite,
{
    let (read, mut write) = tokio::io::split(stream);
    let outbound = async {
        let mut batch = BytesMut::with_capacity(CHANNEL_BATCH);
        while let Some(first) = queue.pop().await {
            put_frame(&mut batch, &first);
            while batch.len() < CHANNEL_BATCH
                && let Some(next) = queue.try_pop()
            {
                put_frame(&mut batch, &next);
            }
            if let Err(error) = write.write_all(&batch).await {
                return ChannelEnd::WriteFailed(error);
            }
            batch.clear();
        }
        ChannelEnd::Closed
    };
    let inbound = async {
        let mut frames = FramedRead::new(read, ChannelCodec);
        frames.read_buffer_mut().extend_from_slice(&prefix);
        while let Some(frame) = frames.next().await {
            match frame {
                Ok(datagram) => deliver(datagram),
                Err(error) => return ChannelEnd::Bad(error),
            }
        }
        ChannelEnd::PeerClosed
    };
    tokio::select! {
        end = outbound => end,
        end = inbound => end,
    }
}

/// Appends one channel frame (4-byte length, then the encoded datagram).
fn put_frame(batch: &mut BytesMut, datagram: &[u8]) {
    batch.extend_from_slice(&(datagram.len() as u32).to_be_bytes());
    batch.extend_from_slice(datagram);
}

impl crate::DatagramLink for DatagramQueue {
    fn send(&self, datagram: Bytes) -> Result<(), DatagramDrop> {
        self.push(datagram)
    }

    fn max_datagram(&self) -> usize {
        self.max_datagram
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(n: usize) -> Bytes {
        Bytes::from(vec![7u8; n])
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_blocking() {
        let queue = DatagramQueue::new(2, 1_000, 100);
        queue.push(bytes(10)).expect("first");
        queue.push(bytes(10)).expect("second");
        assert_eq!(queue.push(bytes(10)), Err(DatagramDrop::QueueFull));
        assert_eq!(queue.try_pop().map(|d| d.len()), Some(10));
        queue.push(bytes(10)).expect("room again");
        assert_eq!(queue.dropped(), (1, 0));
    }

    #[test]
    fn the_byte_cap_and_the_size_limit_hold_and_nothing_is_truncated() {
        let queue = DatagramQueue::new(100, 150, 100);
        assert_eq!(
            queue.push(bytes(101)),
            Err(DatagramDrop::TooLarge { len: 101, max: 100 })
        );
        queue.push(bytes(100)).expect("fits");
        assert_eq!(queue.push(bytes(60)), Err(DatagramDrop::QueueFull));
        queue.push(bytes(50)).expect("exactly at the byte cap");
        assert_eq!(queue.dropped(), (1, 1));
        assert_eq!(queue.try_pop().map(|d| d.len()), Some(100), "whole");
    }

    #[tokio::test]
    async fn close_wakes_a_waiting_pop_and_is_idempotent() {
        let queue = std::sync::Arc::new(DatagramQueue::new(4, 1_000, 100));
        let waiter = tokio::spawn({
            let queue = queue.clone();
            async move { queue.pop().await }
        });
        tokio::task::yield_now().await;
        queue.close();
        queue.close();
        assert_eq!(waiter.await.expect("joined"), None);
        assert_eq!(queue.push(bytes(1)), Err(DatagramDrop::Closed));
    }

    #[tokio::test]
    async fn a_pop_waits_for_the_next_push() {
        let queue = std::sync::Arc::new(DatagramQueue::new(4, 1_000, 100));
        let waiter = tokio::spawn({
            let queue = queue.clone();
            async move { queue.pop().await }
        });
        tokio::task::yield_now().await;
        queue.push(bytes(3)).expect("push");
        assert_eq!(waiter.await.expect("joined").map(|d| d.len()), Some(3));
    }
}
