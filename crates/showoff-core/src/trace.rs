//! Trace context across Showoff's hops (W3C Trace Context), on top of `tracing` spans.
//!
//! The server and the client describe their work as `tracing` spans of target [`TARGET`]; when
//! the binary installs the OpenTelemetry layer, those spans (and nothing else) become exported
//! spans. This module carries the context between hops: read from a visitor's `traceparent` /
//! `tracestate` ([`remote`]), continued or only linked depending on trust ([`adopt`]), written
//! towards the target and into the stream-open message ([`TraceHeaders::of`]), and joined on
//! the client ([`join`]).
//!
//! Spans are only made when tracing is on (a flag each side's context holds) and the trace is
//! sampled: the [`Decision`] is taken once at the root of each trace (a request, a TCP
//! connection, a UDP flow, a client stream without a parent), by the ratio or by a trusted
//! parent's flag; unsampled work makes [`tracing::Span::none`], which costs nothing to enter or
//! record on, and only passes on a `traceparent` whose flags say "not sampled".

use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, TraceContextExt, TraceId};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The `tracing` target of every span and span event meant for export.
pub const TARGET: &str = "showoff::trace";

/// The W3C trace headers of one hop.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceHeaders {
    /// `traceparent`: version, trace id, parent span id, flags.
    pub traceparent: String,
    /// `tracestate`, when the trace has one.
    pub tracestate: Option<String>,
}

impl TraceHeaders {
    /// The context of `span`, as the next hop's parent; `None` when the span is disabled or
    /// no OpenTelemetry layer gave it a context.
    pub fn of(span: &Span) -> Option<Self> {
        if span.is_disabled() {
            return None;
        }
        let cx = span.context();
        if !cx.span().span_context().is_valid() {
            return None;
        }
        let mut headers = Headers::default();
        TraceContextPropagator::new().inject_context(&cx, &mut headers);
        Some(Self {
            traceparent: headers.traceparent?,
            tracestate: headers.tracestate.filter(|s| !s.is_empty()),
        })
    }

    /// The context these headers describe, when `traceparent` is valid.
    pub fn context(&self) -> Option<SpanContext> {
        let carrier = Headers {
            traceparent: Some(self.traceparent.clone()),
            tracestate: self.tracestate.clone(),
        };
        valid(TraceContextPropagator::new().extract(&carrier))
    }

    /// Whether the trace these headers continue is sampled (the `traceparent` flags).
    pub fn sampled(&self) -> bool {
        let flags = self.traceparent.rsplit('-').next().unwrap_or_default();
        u8::from_str_radix(flags, 16).is_ok_and(|f| f & 1 == 1)
    }

    /// Headers for work that is not sampled: a new span id in the parent's trace (a new trace
    /// without one), flags `00`, the parent's `tracestate` kept.
    fn unsampled(parent: Option<&SpanContext>) -> Self {
        let ids = RandomIdGenerator::default();
        let trace_id = parent.map_or_else(|| ids.new_trace_id(), SpanContext::trace_id);
        let state = parent
            .map(|p| p.trace_state().header())
            .filter(|s| !s.is_empty());
        Self {
            traceparent: format!("00-{trace_id}-{}-00", ids.new_span_id()),
            tracestate: state,
        }
    }
}

/// How one unit of work (a request, a connection, a flow, a stream) is traced, decided once at
/// the root of the trace, so that unsampled work makes no span at all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Decision {
    /// Tracing is off: no span, trace headers pass through untouched.
    #[default]
    Off,
    /// Not sampled: no span is made; the next hops are told so (flags `00`) by these headers.
    Unsampled(TraceHeaders),
    /// Sampled: spans are made, and each passes its own context on.
    Sampled,
}

impl Decision {
    /// The decision at the root: a trusted `parent`'s own, else `ratio` of new traces, by the
    /// same rule as OpenTelemetry's ratio sampler (the low 63 bits of a random trace id).
    pub fn root(ratio: f64, parent: Option<&SpanContext>) -> Self {
        let sampled = match parent {
            Some(parent) => parent.is_sampled(),
            None => ratio_sampled(RandomIdGenerator::default().new_trace_id(), ratio),
        };
        if sampled {
            Self::Sampled
        } else {
            Self::Unsampled(TraceHeaders::unsampled(parent))
        }
    }

    /// A hop whose parent told its decision in `headers` (the client's stream): sampled only
    /// when the parent was; without headers, a root at `ratio`.
    pub fn follow(headers: Option<&TraceHeaders>, ratio: f64) -> Self {
        match headers {
            Some(headers) if headers.sampled() => Self::Sampled,
            Some(headers) => Self::Unsampled(headers.clone()),
            None => Self::root(ratio, None),
        }
    }

    /// Whether spans are made.
    pub fn sampled(&self) -> bool {
        matches!(self, Self::Sampled)
    }

    /// What the next hop is sent: `span`'s context when sampled, the unsampled headers, or
    /// nothing when tracing is off.
    pub fn headers(&self, span: &Span) -> Option<TraceHeaders> {
        self.with_headers(span, |headers| headers.cloned())
    }

    /// [`Decision::headers`] lent to `f` instead of cloned (a request head is written from
    /// them once).
    pub fn with_headers<R>(&self, span: &Span, f: impl FnOnce(Option<&TraceHeaders>) -> R) -> R {
        match self {
            Self::Off => f(None),
            Self::Unsampled(headers) => f(Some(headers)),
            Self::Sampled => f(TraceHeaders::of(span).as_ref()),
        }
    }
}

/// OpenTelemetry's ratio rule: sampled when the trace id's low 63 bits fall under `ratio`.
fn ratio_sampled(trace_id: TraceId, ratio: f64) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    let bound = (ratio.max(0.0) * (1u64 << 63) as f64) as u64;
    // The low 64 bits of the id, read big-endian: its last eight bytes.
    let low = u128::from_be_bytes(trace_id.to_bytes()) as u64;
    (low >> 1) < bound
}

/// The two headers as a propagator carrier.
#[derive(Default)]
struct Headers {
    traceparent: Option<String>,
    tracestate: Option<String>,
}

impl Injector for Headers {
    fn set(&mut self, key: &str, value: String) {
        match key {
            "traceparent" => self.traceparent = Some(value),
            "tracestate" => self.tracestate = Some(value),
            _ => {}
        }
    }
}

impl Extractor for Headers {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            "traceparent" => self.traceparent.as_deref(),
            "tracestate" => self.tracestate.as_deref(),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent", "tracestate"]
    }
}

/// An HTTP header map as a propagator carrier (reads only).
struct HeaderCarrier<'a>(&'a http::HeaderMap);

impl Extractor for HeaderCarrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

fn valid(cx: Context) -> Option<SpanContext> {
    let span = cx.span().span_context().clone();
    span.is_valid().then_some(span)
}

/// The trace context a request arrived with (`traceparent`, `tracestate`), when it is valid.
pub fn remote(headers: &http::HeaderMap) -> Option<SpanContext> {
    if !headers.contains_key("traceparent") {
        return None;
    }
    valid(TraceContextPropagator::new().extract(&HeaderCarrier(headers)))
}

/// Makes `span` continue the remote trace when `trusted`; otherwise `span` starts a new trace
/// and only links to the remote one, so an outsider can neither pick our trace ids nor force
/// sampling. Call before anything reads the span's context.
pub fn adopt(span: &Span, remote: Option<SpanContext>, trusted: bool) {
    let Some(remote) = remote else { return };
    if trusted {
        let _ = span.set_parent(Context::new().with_remote_span_context(remote));
    } else {
        span.add_link(remote);
    }
}

/// Makes `span` (a client's stream) a child of the server's span that asked for it.
pub fn join(span: &Span, headers: &TraceHeaders) {
    if let Some(parent) = headers.context() {
        let _ = span.set_parent(Context::new().with_remote_span_context(parent));
    }
}

/// A count as a span attribute: OpenTelemetry integers are signed (a `u64` recorded as is
/// would arrive as text).
pub fn int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The trace id of `span` in hex (what logs carry), when it has a context.
pub fn trace_id(span: &Span) -> Option<String> {
    if span.is_disabled() {
        return None;
    }
    let id = span.context().span().span_context().trace_id();
    (id != TraceId::INVALID).then(|| id.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    #[test]
    fn a_valid_traceparent_is_read_with_its_state() {
        let mut headers = http::HeaderMap::new();
        headers.insert("traceparent", PARENT.parse().expect("value"));
        headers.insert("tracestate", "vendor=1".parse().expect("value"));
        let cx = remote(&headers).expect("valid");
        assert_eq!(
            cx.trace_id().to_string(),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert_eq!(cx.span_id().to_string(), "b7ad6b7169203331");
        assert!(cx.is_sampled() && cx.is_remote());
        assert_eq!(cx.trace_state().header(), "vendor=1");
    }

    #[test]
    fn garbage_and_all_zero_ids_are_no_context() {
        for bad in [
            "",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01x",
        ] {
            let mut headers = http::HeaderMap::new();
            headers.insert("traceparent", bad.parse().expect("value"));
            assert!(remote(&headers).is_none(), "{bad:?}");
        }
        assert!(remote(&http::HeaderMap::new()).is_none());
    }

    #[test]
    fn headers_round_trip_through_the_dial_fields() {
        let headers = TraceHeaders {
            traceparent: PARENT.into(),
            tracestate: Some("a=b".into()),
        };
        let cx = headers.context().expect("valid");
        assert_eq!(cx.span_id().to_string(), "b7ad6b7169203331");
        let bad = TraceHeaders {
            traceparent: "nonsense".into(),
            tracestate: None,
        };
        assert!(bad.context().is_none());
    }

    #[test]
    fn the_ratio_decides_new_traces_and_a_parent_decides_its_own() {
        let sampled = (0..10_000)
            .filter(|_| Decision::root(0.1, None).sampled())
            .count();
        assert!(
            (800..1200).contains(&sampled),
            "{sampled} of 10,000 at 10 %"
        );
        assert!((0..100).all(|_| Decision::root(1.0, None).sampled()));
        assert!((0..100).all(|_| !Decision::root(0.0, None).sampled()));
        let mut headers = http::HeaderMap::new();
        headers.insert("traceparent", PARENT.parse().expect("value"));
        headers.insert("tracestate", "vendor=1".parse().expect("value"));
        let parent = remote(&headers).expect("valid");
        assert_eq!(Decision::root(0.0, Some(&parent)), Decision::Sampled);
        let unsampled_parent = PARENT.replace("-01", "-00");
        headers.insert("traceparent", unsampled_parent.parse().expect("value"));
        let parent = remote(&headers).expect("valid");
        let Decision::Unsampled(next) = Decision::root(1.0, Some(&parent)) else {
            panic!("an unsampled parent's trace is not sampled");
        };
        assert!(
            next.traceparent
                .starts_with("00-0af7651916cd43dd8448eb211c80319c-")
        );
        assert!(next.traceparent.ends_with("-00") && !next.sampled());
        assert_ne!(next.traceparent, unsampled_parent, "a span id of its own");
        assert_eq!(next.tracestate.as_deref(), Some("vendor=1"));
        assert!(next.context().is_some(), "a valid traceparent");
    }

    #[test]
    fn a_hop_follows_the_decision_it_was_told() {
        let sampled = TraceHeaders {
            traceparent: PARENT.into(),
            tracestate: None,
        };
        assert!(sampled.sampled());
        assert_eq!(Decision::follow(Some(&sampled), 0.0), Decision::Sampled);
        let unsampled = TraceHeaders {
            traceparent: PARENT.replace("-01", "-00"),
            tracestate: None,
        };
        assert_eq!(
            Decision::follow(Some(&unsampled), 1.0),
            Decision::Unsampled(unsampled.clone())
        );
        assert!(Decision::follow(None, 1.0).sampled());
        assert!(!Decision::follow(None, 0.0).sampled());
        assert_eq!(Decision::Off.headers(&Span::none()), None);
    }

    #[test]
    fn a_disabled_span_has_no_context_and_costs_no_lookup() {
        let span = Span::none();
        assert_eq!(TraceHeaders::of(&span), None);
        assert_eq!(trace_id(&span), None);
        adopt(&span, None, true);
    }
}
