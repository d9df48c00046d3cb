//! OpenTelemetry export: the spans the server and the client make (`tracing` spans of target
//! [`showoff_core::trace::TARGET`]) become OTLP spans, batched and sent by a background thread
//! over OTLP/HTTP protobuf or gRPC. Off unless an endpoint is set; then nothing is exported
//! and the server and the client make no spans at all.
//!
//! Nothing here blocks a runtime thread: finished spans go to the batch processor's bounded
//! queue (dropped when it is full), and the processor's thread hands each export to the
//! runtime (OTLP/HTTP through hyper, gRPC through tonic's channel task) and waits for it there.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::{HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_subscriber::Layer;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::registry::LookupSpan;

/// The longest one export may take, the response body included.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// The most of a collector's answer that is read.
const MAX_RESPONSE: usize = 64 * 1024;
/// How long the exit waits for the last spans to be sent.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// How spans are exported, as the settings resolved them.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportSettings {
    /// The collector: OTLP/HTTP base URL (spans go to `URL/v1/traces`) or gRPC endpoint.
    pub endpoint: String,
    /// `http` (protobuf) or `grpc`.
    pub protocol: OtlpProtocol,
    /// Share of new traces sampled, 0 to 1; a continued trace follows its parent's decision.
    pub sample: f64,
    /// Headers sent with every export (a collector's API key).
    pub headers: Vec<(String, String)>,
    /// Resource attributes beside the service's own.
    pub resource: Vec<(String, String)>,
}

/// The OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// OTLP/HTTP with protobuf bodies, `POST URL/v1/traces`.
    Http,
    /// OTLP over gRPC.
    Grpc,
}

impl std::str::FromStr for OtlpProtocol {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "http" | "http/protobuf" => Ok(Self::Http),
            "grpc" => Ok(Self::Grpc),
            other => Err(format!("expected http or grpc, got {other:?}")),
        }
    }
}

/// The running exporter; [`Telemetry::shutdown`] sends what is still queued.
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Telemetry {
    /// Flushes the queued spans (within [`FLUSH_TIMEOUT`]) and stops the exporter. Runs the
    /// blocking shutdown off the runtime's threads, which the export itself needs.
    pub async fn shutdown(self) {
        let provider = self.provider;
        let flushed = tokio::task::spawn_blocking(move || provider.shutdown());
        let _ = tokio::time::timeout(FLUSH_TIMEOUT, flushed).await;
    }
}

/// The OTLP/HTTP URL spans are posted to: the endpoint with `/v1/traces` appended unless it
/// already names that path.
pub fn traces_url(endpoint: &str) -> String {
    let base = endpoint.trim_end_matches('/');
    if base.ends_with("/v1/traces") {
        base.to_string()
    } else {
        format!("{base}/v1/traces")
    }
}

/// Builds the exporter for `service` (`showoff-server`, `showoff-client`) and the layer that
/// feeds it Showoff's spans and nothing else. Must run inside the runtime.
pub fn layer<S>(
    settings: &ExportSettings,
    service: &'static str,
) -> Result<(impl Layer<S> + Send + Sync + 'static, Telemetry), String>
where
    S: tracing::Subscriber + for<'span> LookupSpan<'span> + Send + Sync,
{
    let exporter = match settings.protocol {
        OtlpProtocol::Http => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(RuntimeClient::new()?)
            .with_endpoint(traces_url(&settings.endpoint))
            .with_headers(settings.headers.iter().cloned().collect::<HashMap<_, _>>())
            .with_timeout(EXPORT_TIMEOUT)
            .build(),
        OtlpProtocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(settings.endpoint.clone())
            .with_metadata(metadata(&settings.headers)?)
            .with_timeout(EXPORT_TIMEOUT)
            .build(),
    }
    .map_err(|e| format!("cannot export traces to {}: {e}", settings.endpoint))?;
    // Showoff decides sampling itself at each trace's root (`showoff_core::trace::Decision`) and
    // makes no span for unsampled work, so every span that reaches the SDK is kept.
    let sampler = Sampler::ParentBased(Box::new(Sampler::AlwaysOn));
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(sampler)
        .with_resource(resource(settings, service))
        .build();
    let tracer = provider.tracer("showoff");
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_location(false)
        .with_threads(false)
        .with_target(false)
        .with_level(false)
        .with_tracked_inactivity(false)
        .with_filter(
            Targets::new().with_target(showoff_core::trace::TARGET, tracing::Level::TRACE),
        );
    Ok((layer, Telemetry { provider }))
}

/// `service.name`, `service.version`, a `service.instance.id` of this process, then the
/// configured attributes.
fn resource(settings: &ExportSettings, service: &'static str) -> Resource {
    let instance = showoff_proto::id::random_id();
    let mut attributes = vec![
        KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
        KeyValue::new("service.instance.id", instance),
    ];
    attributes.extend(
        settings
            .resource
            .iter()
            .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
    );
    Resource::builder()
        .with_service_name(service)
        .with_attributes(attributes)
        .build()
}

fn metadata(
    headers: &[(String, String)],
) -> Result<opentelemetry_otlp::tonic_types::metadata::MetadataMap, String> {
    let mut map = http::HeaderMap::new();
    for (name, value) in headers {
        let name = http::HeaderName::try_from(name.to_ascii_lowercase())
            .map_err(|_| format!("invalid OTLP header name {name:?}"))?;
        let value = http::HeaderValue::try_from(value.as_str())
            .map_err(|_| format!("invalid value for OTLP header {name}"))?;
        map.insert(name, value);
    }
    Ok(opentelemetry_otlp::tonic_types::metadata::MetadataMap::from_headers(map))
}

type Connector = hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>;

/// OTLP/HTTP over hyper (rustls for `https`), each request run as a task of the runtime the
/// exporter was built in: the batch processor's own thread only waits for it.
#[derive(Debug)]
struct RuntimeClient {
    runtime: tokio::runtime::Handle,
    client: hyper_util::client::legacy::Client<Connector, Full<Bytes>>,
}

impl RuntimeClient {
    fn new() -> Result<Self, String> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| "the trace exporter must start inside the runtime".to_string())?;
        let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
        http.set_nodelay(true);
        http.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(connector);
        Ok(Self { runtime, client })
    }
}

#[async_trait::async_trait]
impl HttpClient for RuntimeClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let client = self.client.clone();
        let exchange = async move {
            let response = client.request(request.map(Full::new)).await?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_RESPONSE).collect().await?.to_bytes();
            Ok::<_, HttpError>(Response::from_parts(parts, body))
        };
        // The deadline is made inside the task: its timer needs the runtime's driver, which
        // the batch processor's thread does not have.
        let task = self
            .runtime
            .spawn(async move { tokio::time::timeout(EXPORT_TIMEOUT, exchange).await });
        match task.await? {
            Ok(result) => result,
            Err(_) => Err("the collector did not answer in time".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_traces_path_is_appended_once() {
        assert_eq!(
            traces_url("http://127.0.0.1:4318"),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(traces_url("http://c:4318/"), "http://c:4318/v1/traces");
        assert_eq!(
            traces_url("https://c/otlp/v1/traces"),
            "https://c/otlp/v1/traces"
        );
    }

    #[test]
    fn protocols_parse() {
        assert_eq!("http".parse(), Ok(OtlpProtocol::Http));
        assert_eq!("http/protobuf".parse(), Ok(OtlpProtocol::Http));
        assert_eq!("grpc".parse(), Ok(OtlpProtocol::Grpc));
        assert!("udp".parse::<OtlpProtocol>().is_err());
    }

    #[test]
    fn bad_metadata_is_refused() {
        assert!(metadata(&[("x-api-key".into(), "k".into())]).is_ok());
        assert!(metadata(&[("bad header".into(), "k".into())]).is_err());
        assert!(metadata(&[("x".into(), "line\nbreak".into())]).is_err());
    }
}
