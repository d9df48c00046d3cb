//! The mux transport, server side: a session's streams are yamux streams over its control
//! connection.
//!
//! The handshake (`Hello { transport: mux }`, `Auth`, `Open` → `Welcome`) runs in frames on the
//! plain connection; right after `Welcome` both ends turn the connection into a yamux session
//! ([`MuxLink::start`]) and the client opens the first stream, which carries the rest of the
//! control frames. Every later stream is opened by the server, one per visitor connection: it
//! writes `Dial` on it and the client answers `StreamReady` (raw bytes follow) or
//! `StreamError` on the same stream ([`announce`]). Streams the client opens after the control
//! stream are refused.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use showoff_core::{Mux, MuxError, OpenError, StreamMeta, StreamOpener, TunnelStream};
use tokio::sync::watch;

use super::announce;

/// One session's multiplexed connection, from before the switch (tunnels already hold its
/// opener) until it closes.
pub(crate) struct MuxLink {
    mux: watch::Sender<Option<Mux>>,
    pending_timeout: Duration,
}

impl MuxLink {
    /// A link whose connection is not switched yet; streams asked for wait for it.
    pub(crate) fn new(pending_timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            mux: watch::Sender::new(None),
            pending_timeout,
        })
    }

    /// Turns the connection into a yamux session and returns the control stream the client
    /// opens first, within `deadline`.
    pub(crate) async fn start(
        &self,
        connection: TunnelStream,
        deadline: Duration,
    ) -> Result<TunnelStream, &'static str> {
        let (mux, mut inbound) = Mux::start(connection, showoff_core::mux::Mode::Server);
        self.mux.send_replace(Some(mux));
        // Later client-opened streams are refused: the receiver is dropped with this call.
        match tokio::time::timeout(deadline, inbound.recv()).await {
            Ok(Some(control)) => Ok(control),
            Ok(None) => Err("the connection closed before its control stream"),
            Err(_) => Err("no control stream in time"),
        }
    }

    /// Bytes read from the connection so far (any frame is a sign of life).
    pub(crate) fn received(&self) -> u64 {
        self.mux.borrow().as_ref().map_or(0, Mux::received)
    }

    /// The session ended: the connection closes once its last stream has.
    pub(crate) fn finish(&self) {
        if let Some(mux) = self.mux.borrow().as_ref() {
            mux.finish();
        }
    }

    async fn mux(&self) -> Result<Mux, OpenError> {
        let mut rx = self.mux.subscribe();
        let ready = tokio::time::timeout(self.pending_timeout, rx.wait_for(Option::is_some));
        match ready.await {
            Ok(Ok(mux)) => mux.clone().ok_or(OpenError::ClientGone),
            Ok(Err(_)) => Err(OpenError::ClientGone),
            Err(_) => Err(OpenError::Timeout),
        }
    }
}

#[async_trait]
impl StreamOpener for MuxLink {
    async fn open(&self, meta: &StreamMeta) -> Result<TunnelStream, OpenError> {
        if meta.trace.is_some() {
            tracing::Span::current().record("showoff.transport", "mux");
        }
        let mux = self.mux().await?;
        let opened = tokio::time::timeout(self.pending_timeout, mux.open()).await;
        let stream = match opened {
            Err(_) => return Err(OpenError::Timeout),
            Ok(Err(MuxError::TooManyStreams)) => return Err(OpenError::OverCapacity),
            Ok(Err(MuxError::Closed)) => return Err(OpenError::ClientGone),
            Ok(Ok(stream)) => stream,
        };
        announce(stream, meta, self.pending_timeout).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use futures_util::{SinkExt, StreamExt};
    use showoff_proto::{ClientMessage, FrameCodec, ServerMessage};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_util::codec::Framed;

    fn meta() -> StreamMeta {
        StreamMeta {
            tunnel: "demo".into(),
            visitor_addr: "192.0.2.7:5000".parse().expect("addr"),
            trace: None,
        }
    }

    /// A switched link, and the client's end: its handle, control stream and inbound streams.
    async fn switched() -> (
        Arc<MuxLink>,
        tokio::sync::mpsc::Receiver<TunnelStream>,
        (Mux, TunnelStream),
    ) {
        let (server_io, client_io) = tokio::io::duplex(1 << 20);
        let link = MuxLink::new(Duration::from_secs(5));
        let (client, inbound) = Mux::start(client_io, showoff_core::mux::Mode::Client);
        let opener = link.clone();
        let starting = tokio::spawn(async move {
            let io = TunnelStream::boxed(BytesMut::new(), server_io);
            opener.start(io, Duration::from_secs(5)).await.map(|_| ())
        });
        let mut control = client.open().await.expect("control stream");
        control.write_all(b"c").await.expect("announce the stream");
        starting.await.expect("joined").expect("started");
        (link, inbound, (client, control))
    }

    #[tokio::test]
    async fn a_stream_is_announced_with_dial_and_ready_before_bytes_flow() {
        let (link, mut inbound, _client) = switched().await;
        let opener = link.clone();
        let open = tokio::spawn(async move { opener.open(&meta()).await });
        let stream = inbound.recv().await.expect("a stream for the visitor");
        let codec = FrameCodec::<ServerMessage, ClientMessage>::new();
        let mut framed = Framed::new(stream, codec);
        let Some(Ok(ServerMessage::Dial { id, tunnel, .. })) = framed.next().await else {
            panic!("expected a dial");
        };
        assert_eq!(tunnel, "demo");
        framed
            .send(ClientMessage::StreamReady { id })
            .await
            .expect("ready");
        let mut client_side = framed.into_parts().io;
        let mut visitor_side = open.await.expect("joined").expect("opened");
        client_side.write_all(b"pong").await.expect("write");
        let mut got = [0; 4];
        visitor_side.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"pong");
    }

    #[tokio::test]
    async fn a_target_the_client_cannot_reach_is_reported() {
        let (link, mut inbound, _client) = switched().await;
        let opener = link.clone();
        let open = tokio::spawn(async move { opener.open(&meta()).await });
        let stream = inbound.recv().await.expect("a stream");
        let mut framed = Framed::new(stream, FrameCodec::<ServerMessage, ClientMessage>::new());
        let Some(Ok(ServerMessage::Dial { id, .. })) = framed.next().await else {
            panic!("expected a dial");
        };
        let reason = "connection refused (127.0.0.1:9)".to_string();
        framed
            .send(ClientMessage::StreamError { id, reason })
            .await
            .expect("error");
        assert_eq!(
            open.await.expect("joined").err(),
            Some(OpenError::TargetUnreachable(
                "connection refused (127.0.0.1:9)".into()
            ))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_link_that_never_switches_times_out_its_opens() {
        let link = MuxLink::new(Duration::from_secs(2));
        let opener = link.clone();
        let open = tokio::spawn(async move { opener.open(&meta()).await });
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(open.await.expect("joined").err(), Some(OpenError::Timeout));
    }
}
