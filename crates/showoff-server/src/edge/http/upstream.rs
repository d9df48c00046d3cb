//! Upstream HTTP/1.1 connections over tunnel streams, kept alive and pooled per tunnel.
//!
//! A visitor connection does not cost a tunnel stream: requests borrow an idle connection from
//! the tunnel's pool (or open a stream and handshake a new one) and give it back once the
//! response has been read to the end. A request that a pooled connection could not even start
//! sending is retried once on a fresh stream.

use std::sync::Mutex;

use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Request, Response, body::Incoming};
use hyper_util::rt::TokioIo;
use tracing::debug;

use super::body::ChannelBody;
use crate::edge::error::EdgeError;
use crate::server::Shared;
use crate::transport::StreamMeta;
use crate::tunnel::Tunnel;

/// Most idle upstream connections kept per tunnel.
pub(crate) const MAX_IDLE_PER_TUNNEL: usize = 64;

/// A connection able to carry one request at a time.
pub(crate) type Sender = SendRequest<ChannelBody>;

/// The idle upstream connections of one tunnel.
#[derive(Default)]
pub(crate) struct Upstream {
    idle: Mutex<Vec<Sender>>,
}

impl Upstream {
    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<Sender>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn take_idle(&self) -> Option<Sender> {
        let mut idle = self.idle();
        while let Some(sender) = idle.pop() {
            if !sender.is_closed() {
                return Some(sender);
            }
        }
        None
    }

    /// Returns a connection whose last response was read completely.
    pub(crate) fn put_back(&self, sender: Sender) {
        let mut idle = self.idle();
        if idle.len() < MAX_IDLE_PER_TUNNEL && !sender.is_closed() {
            idle.push(sender);
        }
    }
}

/// Sends `req` through `tunnel`, reusing an idle connection when one works.
pub(crate) async fn send(
    tunnel: &Tunnel,
    shared: &Shared,
    meta: &StreamMeta,
    req: Request<ChannelBody>,
) -> Result<(Sender, Response<Incoming>), EdgeError> {
    let mut req = req;
    if let Some(mut sender) = tunnel.upstream.take_idle()
        && sender.ready().await.is_ok()
    {
        match sender.try_send_request(req).await {
            Ok(resp) => return Ok((sender, resp)),
            Err(mut failed) => match failed.take_message() {
                Some(unsent) => req = unsent,
                None => {
                    debug!(error = %failed.error(), "pooled upstream failed mid-request");
                    return Err(EdgeError::TunnelBroken);
                }
            },
        }
    }
    let mut sender = connect(tunnel, shared, meta).await?;
    let resp = sender.send_request(req).await.map_err(|error| {
        debug!(%error, "upstream request failed");
        EdgeError::TunnelBroken
    })?;
    Ok((sender, resp))
}

async fn connect(tunnel: &Tunnel, shared: &Shared, meta: &StreamMeta) -> Result<Sender, EdgeError> {
    let stream = tunnel.opener.open(meta).await.map_err(EdgeError::Open)?;
    let (sender, conn) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|_| EdgeError::TunnelBroken)?;
    let closed = tunnel.closed.clone();
    shared.tasks.spawn(async move {
        tokio::select! {
            result = conn.with_upgrades() => {
                if let Err(error) = result {
                    debug!(%error, "upstream connection ended");
                }
            }
            _ = closed.cancelled() => {}
        }
    });
    Ok(sender)
}
