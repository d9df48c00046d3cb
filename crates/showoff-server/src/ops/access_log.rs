//! The access log: one `showoff::access` line per relayed HTTP request (tunnel, host, method,
//! path, status, duration, bytes, visitor), written from the exchange event. Error pages are
//! not access-logged; the edge logs each failure once, by origin.

use showoff_core::{Exchange, ExchangeSink, Protocol};
use tracing::info;

/// The access log as an exchange sink.
#[derive(Debug, Default)]
pub(crate) struct AccessLog;

impl ExchangeSink for AccessLog {
    fn record(&self, exchange: &Exchange<'_>) {
        if exchange.protocol != Protocol::Http || !exchange.relayed() {
            return;
        }
        let (Some(tunnel), Some(http), Some(status)) =
            (exchange.tunnel, exchange.http, exchange.status)
        else {
            return;
        };
        info!(
            target: "showoff::access",
            tunnel,
            host = %http.host,
            method = %http.method,
            path = %http.path,
            status,
            duration_ms = exchange.duration.as_secs_f64() * 1000.0,
            bytes_in = exchange.bytes_in,
            bytes_out = exchange.bytes_out,
            visitor = %exchange.visitor,
            "request"
        );
    }
}
