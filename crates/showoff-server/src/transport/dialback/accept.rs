//! The data listener's handler: TLS when configured, `Hello` and `DataHello` under the
//! handshake deadline, then the connection is filed: under its pending id (it answers a
//! `Dial` from the control link) or in its session's warm pool. Every refusal is counted by
//! reason (`showoff_data_rejected_total`).

use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use showoff_core::TunnelStream;
use showoff_proto::{ClientMessage, FrameCodec, HANDSHAKE_TIMEOUT, Role, ServerMessage};
use tokio_util::codec::Framed;

use super::{DataFramed, DialBackHub};
use crate::listen::Arrival;
use crate::stats::DataRejectReason;

/// Initial read buffer of a data connection during its handshake: an idle pooled connection
/// should not hold 16 KiB of buffers.
const DATA_BUFFER: usize = 256;

/// What a data connection says it is for.
struct DataHello {
    session: String,
    key: String,
    /// The pending stream it answers; `None` for a warm-pool connection.
    id: Option<String>,
}

/// Handles one connection on the data listener.
pub(crate) async fn serve(arrival: Arrival, hub: Arc<DialBackHub>) {
    showoff_core::set_user_timeout(&arrival.stream, hub.settings.user_timeout);
    let accepted = hub
        .tls
        .accept_control(arrival.stream, arrival.prefix, HANDSHAKE_TIMEOUT)
        .await;
    let stream = match accepted {
        Ok((stream, _)) => stream,
        Err(error) => {
            tracing::debug!(%error, "data connection failed the TLS handshake");
            hub.stats.reject(DataRejectReason::BadHandshake);
            return;
        }
    };
    let codec = FrameCodec::<ClientMessage, ServerMessage>::new();
    let mut framed = Framed::with_capacity(stream, codec, DATA_BUFFER);
    let hello = tokio::time::timeout(HANDSHAKE_TIMEOUT, read_data_hello(&mut framed)).await;
    let hello = match hello {
        Ok(Ok(hello)) => hello,
        Ok(Err(refusal)) => {
            let _ = tokio::time::timeout(HANDSHAKE_TIMEOUT, framed.send(refusal)).await;
            hub.stats.reject(DataRejectReason::BadHandshake);
            return;
        }
        Err(_) => {
            hub.stats.reject(DataRejectReason::BadHandshake);
            return;
        }
    };
    if let Err(reason) = file(framed, hello, &hub) {
        tracing::debug!(?reason, "data connection rejected");
        hub.stats.reject(reason);
    }
}

/// Hands the connection to its waiter or its session's pool.
fn file(framed: DataFramed, hello: DataHello, hub: &DialBackHub) -> Result<(), DataRejectReason> {
    let DataHello { session, key, id } = hello;
    if let Some(id) = id {
        let parts = framed.into_parts();
        let stream = TunnelStream::boxed(parts.read_buf, parts.io);
        return hub.pending.complete(&id, &session, &key, stream);
    }
    let opener = hub
        .session(&session)
        .ok_or(DataRejectReason::UnknownSession)?;
    if !showoff_proto::id::constant_time_eq(opener.data_key.as_bytes(), key.as_bytes()) {
        return Err(DataRejectReason::WrongKey);
    }
    opener.add_pooled(framed)
}

async fn read_data_hello(framed: &mut DataFramed) -> Result<DataHello, ServerMessage> {
    let first = framed.next().await.and_then(Result::ok);
    showoff_proto::check_hello(first.as_ref(), Role::Data)?;
    match framed.next().await {
        Some(Ok(ClientMessage::DataHello { session, key, id })) => {
            Ok(DataHello { session, key, id })
        }
        _ => Err(ServerMessage::bad_request("expected data_hello")),
    }
}
