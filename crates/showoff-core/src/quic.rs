//! What both ends of the QUIC transport share: the UDP socket set-up (buffers raised, the
//! kernel's cap and GSO/GRO reported), the transport parameters (windows sized for the
//! bandwidth-delay product), the ALPN name, and one QUIC stream as a [`TunnelStream`].
//!
//! Windows: quinn's defaults size a stream for 100 Mbit/s at 100 ms. Showoff carries bulk
//! through one stream as often as many small ones, so a stream may have [`STREAM_WINDOW`] in
//! flight (1 Gbit/s at ~67 ms, ~335 Mbit/s at 200 ms) and a connection [`CONNECTION_WINDOW`];
//! the connection window is also the most one peer can make this side buffer.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use quinn::{RecvStream, SendStream, VarInt};
use tokio::io::AsyncWrite;

use crate::stream::TunnelStream;

/// The ALPN protocol of Showoff's QUIC listener.
pub const ALPN: &[u8] = b"showoff/1";
/// Receive window of one stream.
pub const STREAM_WINDOW: u32 = 8 * 1024 * 1024;
/// Receive (and send) window of one connection, across its streams.
pub const CONNECTION_WINDOW: u32 = 64 * 1024 * 1024;
/// Streams one connection may have open at once in each direction, as on mux.
pub const MAX_STREAMS: u32 = 512;
/// Bytes of UDP tunnel datagrams a connection buffers each way (quinn drops the oldest past
/// it on receipt; the sender checks for room first and counts what it drops).
pub const DATAGRAM_BUFFER: usize = 4 * 1024 * 1024;
/// UDP socket buffers asked for; the kernel caps them at `net.core.{r,w}mem_max`.
pub const SOCKET_BUFFER: usize = 8 * 1024 * 1024;

/// Transport parameters of both ends: windows, stream caps, idle timeout and keep-alive.
pub fn transport_config(idle_timeout: Duration) -> quinn::TransportConfig {
    let mut config = quinn::TransportConfig::default();
    config
        .stream_receive_window(VarInt::from_u32(STREAM_WINDOW))
        .receive_window(VarInt::from_u32(CONNECTION_WINDOW))
        .send_window(u64::from(CONNECTION_WINDOW))
        .max_concurrent_bidi_streams(VarInt::from_u32(MAX_STREAMS))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .datagram_receive_buffer_size(Some(DATAGRAM_BUFFER))
        .datagram_send_buffer_size(DATAGRAM_BUFFER)
        .keep_alive_interval(Some(idle_timeout / 3))
        .max_idle_timeout(idle_timeout.try_into().ok());
    config
}

/// What the kernel granted a UDP socket, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketReport {
    /// Receive buffer in bytes as the kernel reports it.
    pub recv_buffer: usize,
    /// Send buffer in bytes.
    pub send_buffer: usize,
    /// Datagrams one send may carry with GSO (1: none).
    pub gso_segments: usize,
    /// Datagrams one receive may return with GRO (1: none).
    pub gro_segments: usize,
}

/// Binds a UDP socket for QUIC with raised buffers; returns it with what the kernel granted,
/// for the caller's log.
pub fn bind_udp(addr: SocketAddr) -> std::io::Result<(std::net::UdpSocket, SocketReport)> {
    let domain = socket2::Domain::for_address(addr);
    let socket = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    if addr.is_ipv6() {
        let _ = socket.set_only_v6(false);
    }
    // Best effort: a capped buffer is reported, not an error.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    socket.bind(&addr.into())?;
    socket.set_nonblocking(true)?;
    let socket: std::net::UdpSocket = socket.into();
    let report = report(&socket)?;
    Ok((socket, report))
}

impl std::fmt::Display for SocketReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "receive buffer {} B, send buffer {} B (asked {SOCKET_BUFFER}; less means \
             net.core.rmem_max / wmem_max cap it), GSO {} segments, GRO {} segments",
            self.recv_buffer, self.send_buffer, self.gso_segments, self.gro_segments
        )
    }
}

/// The buffers and offloads a UDP socket has.
pub fn report(socket: &std::net::UdpSocket) -> std::io::Result<SocketReport> {
    let sock = socket2::SockRef::from(socket);
    let state = quinn::udp::UdpSocketState::new(socket.into())?;
    Ok(SocketReport {
        recv_buffer: sock.recv_buffer_size()?,
        send_buffer: sock.send_buffer_size()?,
        gso_segments: state.max_gso_segments(),
        gro_segments: state.gro_segments(),
    })
}

/// An endpoint on `socket` (server when `server` is given).
pub fn endpoint(
    socket: std::net::UdpSocket,
    server: Option<quinn::ServerConfig>,
) -> std::io::Result<quinn::Endpoint> {
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        server,
        socket,
        Arc::new(quinn::TokioRuntime),
    )
}

/// One bidirectional QUIC stream as a tunnel stream.
pub fn stream(send: SendStream, recv: RecvStream) -> TunnelStream {
    TunnelStream::boxed(BytesMut::new(), tokio::io::join(recv, StopAware::new(send)))
}

type Stopped =
    Pin<Box<dyn Future<Output = Result<Option<VarInt>, quinn::StoppedError>> + Send + Sync>>;

/// A send stream whose parked writer hears the peer's `STOP_SENDING`.
///
/// quinn tells a writer that the peer stopped its stream only once the write gets past the
/// connection's send window: a writer parked on a full window (many streams, a slow or lossy
/// path) keeps waiting, the stream never resets, and the peer's discarded bytes stay queued
/// and go out ahead of every other stream's (measured: ten stopped streams at 1 % loss held a
/// new stream's first byte for over 20 s). So a write that has to wait also watches
/// [`SendStream::stopped`]; a stop resets the stream, which frees its queued bytes at once.
struct StopAware {
    send: SendStream,
    /// Created on the first write that waits (a stream that never waits pays nothing).
    stopped: Option<Stopped>,
}

impl StopAware {
    fn new(send: SendStream) -> Self {
        Self {
            send,
            stopped: None,
        }
    }
}

impl AsyncWrite for StopAware {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let written = AsyncWrite::poll_write(Pin::new(&mut this.send), cx, buf);
        if written.is_ready() {
            return written;
        }
        let send = &this.send;
        let stopped = this.stopped.get_or_insert_with(|| Box::pin(send.stopped()));
        match stopped.as_mut().poll(cx) {
            Poll::Ready(Ok(Some(code))) => {
                let _ = this.send.reset(code);
                Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::BrokenPipe,
                    format!("sending stopped by peer: error {code}"),
                )))
            }
            // Finished, or the connection is gone: the write itself will say so.
            Poll::Ready(_) => {
                this.stopped = Some(Box::pin(std::future::pending()));
                Poll::Pending
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        AsyncWrite::poll_flush(Pin::new(&mut self.get_mut().send), cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        AsyncWrite::poll_shutdown(Pin::new(&mut self.get_mut().send), cx)
    }
}

/// Bytes received on a connection so far (any packet is a sign of life).
pub fn received(connection: &quinn::Connection) -> u64 {
    connection.stats().udp_rx.bytes
}

/// A UDP tunnel's datagrams as DATAGRAM frames of a QUIC connection, on either side. A
/// datagram that does not fit the frame limit now, or finds the send buffer full, is dropped
/// and the reason returned (quinn itself would silently drop the oldest queued one instead).
#[derive(Debug, Clone)]
pub struct QuicDatagrams(pub quinn::Connection);

impl crate::DatagramLink for QuicDatagrams {
    fn send(&self, datagram: bytes::Bytes) -> Result<(), crate::DatagramDrop> {
        use crate::DatagramDrop;
        let (len, max) = (datagram.len(), self.max_datagram());
        if len > max {
            return Err(DatagramDrop::TooLarge { len, max });
        }
        if self.0.datagram_send_buffer_space() < len {
            return Err(DatagramDrop::QueueFull);
        }
        match self.0.send_datagram(datagram) {
            Ok(()) => Ok(()),
            Err(quinn::SendDatagramError::TooLarge) => Err(DatagramDrop::TooLarge { len, max }),
            Err(_) => Err(DatagramDrop::Closed),
        }
    }

    fn max_datagram(&self) -> usize {
        self.0.max_datagram_size().unwrap_or(0)
    }
}
