//! Spans of the traffic kaname carries (tracing.md), on the OpenTelemetry
//! SDK: its tracer, parent-based ratio sampler, id generator and W3C
//! propagator. A request's SERVER span is started by the pipeline's trace
//! step ([`Tracing::start`]), one CLIENT span per try by the forwarder
//! ([`RecordedTrace::start_try`]); ended spans go to [`export`]'s bounded
//! queue and leave by OTLP in the background.
//!
//! One [`Tracing`] per distinct `tracing` section: a reload that changes it
//! builds a new one (new exporter) while requests in flight end their spans
//! on the old, which exports them and stops once the last is dropped.

mod encode;
pub mod export;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, Method, StatusCode};
use kaname_config::Otlp;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{
    Span as _, SpanBuilder, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags,
    TraceId, TraceState, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, InstrumentationScope, KeyValue, Value};
use opentelemetry_http::HeaderExtractor;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider, Span};
use opentelemetry_sdk::Resource;

use crate::headers::{
    drop_repeated_traceparent, ensure_traceparent, hex_into, once_per_request, TRACEPARENT,
};
use crate::metrics::Metrics;

/// The trace context of one `tracing` section.
pub struct Tracing {
    /// The section it was built from (a reload with the same keeps it).
    pub config: kaname_config::Tracing,
    /// None: propagation only (no `otlp`).
    recorder: Option<Recorder>,
}

struct Recorder {
    tracer: SdkTracer,
    exporter: export::ExportTask,
    /// `sampling`: the share of new traces recorded (kaname decides; the
    /// SDK's sampler records what it is given, see `start`).
    ratio: f64,
}

#[derive(Debug, thiserror::Error)]
#[error("tracing.otlp: {0}")]
pub struct TracingError(String);

impl Tracing {
    /// None when there is nothing to do: no `otlp` and no `start_traces`.
    pub fn build(
        cfg: &kaname_config::Tracing,
        metrics: &Metrics,
    ) -> Result<Option<Arc<Tracing>>, TracingError> {
        let recorder = match &cfg.otlp {
            None if !cfg.start_traces => return Ok(None),
            None => None,
            Some(otlp) => Some(Recorder::build(otlp, metrics)?),
        };
        Ok(Some(Arc::new(Tracing {
            config: cfg.clone(),
            recorder,
        })))
    }

    /// Whether spans are recorded (else only `traceparent` is handled).
    pub fn records(&self) -> bool {
        self.recorder.is_some()
    }

    /// A request's trace as it enters a route: its SERVER span when
    /// recorded, else only its ids, else nothing (no `traceparent` and
    /// `start_traces` off). A new trace that is not recorded still sends
    /// its ids on, flagged not sampled, so services behind agree.
    pub fn start(&self, headers: &mut HeaderMap) -> Started {
        // Most requests come without a trace: then there is nothing to
        // extract (the propagator looks the header up by a name it parses
        // each time; ~500 instructions an unsampled request paid).
        let parent = if headers.contains_key(&TRACEPARENT) {
            drop_repeated_traceparent(headers);
            TraceContextPropagator::new().extract(&HeaderExtractor(headers))
        } else {
            Context::new()
        };
        let incoming = parent.span().span_context().is_valid();
        if !incoming && !self.config.start_traces {
            return Started::Untraced;
        }
        let Some(r) = &self.recorder else {
            if incoming {
                return Started::Ids(ids_of(parent.span().span_context(), false));
            }
            ensure_traceparent(headers);
            return TraceIds::of_header(headers).map_or(Started::Untraced, Started::Ids);
        };
        if incoming {
            let span = parent.span();
            if !span.span_context().is_sampled() {
                // Parent-based: not recorded, the incoming header goes on
                // unchanged.
                return Started::Ids(ids_of(span.span_context(), false));
            }
        } else if let Some(ids) = r.unsampled_root(headers) {
            return Started::Ids(ids);
        }
        // Room for every attribute the span gets (`describe`, `answered`):
        // the SDK pushes each one, and growing from empty cost ~2,000
        // instructions a request (bench/README.md, "Spans").
        let span = r.tracer.build_with_context(
            SpanBuilder::from_name("")
                .with_kind(SpanKind::Server)
                .with_attributes(Vec::with_capacity(SERVER_ATTRIBUTES)),
            &parent,
        );
        let sc = span.span_context().clone();
        if !span.is_recording() {
            if !incoming {
                // The incoming header, when there is one, goes on unchanged.
                set_traceparent(headers, &sc);
            }
            return Started::Ids(ids_of(&sc, false));
        }
        Started::Recorded(Box::new(ServerSpan {
            ids: ids_of(&sc, true),
            trace: RecordedTrace(Arc::new(TraceParent {
                tracer: r.tracer.clone(),
                parent: Context::new().with_remote_span_context(sc),
                attempts: AtomicU32::new(0),
            })),
            span,
        }))
    }

    /// Exports what is queued and stops the exporter (at shutdown), within
    /// `grace`.
    pub async fn finish(&self, grace: Duration) {
        if let Some(r) = &self.recorder {
            r.exporter.finish(grace).await;
        }
    }
}

impl Recorder {
    fn build(otlp: &Otlp, metrics: &Metrics) -> Result<Self, TracingError> {
        // `service_name` is the one place for service.name.
        let resource = Resource::builder_empty()
            .with_attributes(
                otlp.resource
                    .iter()
                    .filter(|(k, _)| k != "service.name")
                    .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
            )
            .with_service_name(otlp.service_name.clone())
            .build();
        let scope = InstrumentationScope::builder("kaname")
            .with_version(env!("CARGO_PKG_VERSION"))
            .build();
        let exporter = export::ExportTask::start(otlp, &resource, &scope, metrics)?;
        let provider = SdkTracerProvider::builder()
            .with_span_processor(exporter.queue())
            // Parent-based with the ratio applied by kaname before the SDK
            // is asked (`Recorder::unsampled_root`): a request not recorded
            // builds no SDK span.
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)))
            .with_resource(resource)
            .build();
        let tracer = provider.tracer_with_scope(scope);
        Ok(Recorder {
            tracer,
            exporter,
            ratio: otlp.sampling,
        })
    }

    /// A new trace's sampling decision, made as the SDK's
    /// `TraceIdRatioBased` makes it (on the trace id's low 63 bits). Not
    /// sampled: its ids, sent on in `traceparent` (flags 00), and no SDK
    /// span built (the sampler, id generator and a non-recording span cost
    /// ~600 instructions a request; bench/README.md). Sampled: None, and
    /// the SDK makes the root span.
    fn unsampled_root(&self, headers: &mut HeaderMap) -> Option<TraceIds> {
        let trace_id = TraceId::from_bytes(rand::random::<u128>().max(1).to_be_bytes());
        if ratio_samples(self.ratio, trace_id) {
            return None;
        }
        let span_id = SpanId::from_bytes(rand::random::<u64>().max(1).to_be_bytes());
        let sc = SpanContext::new(
            trace_id,
            span_id,
            TraceFlags::default(),
            false,
            TraceState::default(),
        );
        set_traceparent(headers, &sc);
        Some(ids_of(&sc, false))
    }
}

/// The OpenTelemetry SDK's ratio rule: sampled when the trace id's low 64
/// bits, shifted right once, fall under `ratio` × 2^63.
fn ratio_samples(ratio: f64, trace_id: TraceId) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    let bound = (ratio.max(0.0) * (1u64 << 63) as f64) as u64;
    let bytes = trace_id.to_bytes();
    let mut low = [0u8; 8];
    low.copy_from_slice(&bytes[8..]);
    (u64::from_be_bytes(low) >> 1) < bound
}

/// A request's trace, as the access log shows it.
#[derive(Clone, Copy, Debug)]
pub struct TraceIds {
    pub trace_id: TraceId,
    /// The SERVER span's, when it is recorded.
    pub span_id: Option<SpanId>,
}

impl TraceIds {
    /// From a valid `traceparent` (not recorded here).
    pub fn of_header(headers: &HeaderMap) -> Option<TraceIds> {
        headers.get("traceparent")?;
        let cx = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
        let span = cx.span();
        let sc = span.span_context();
        sc.is_valid().then(|| ids_of(sc, false))
    }
}

fn ids_of(sc: &SpanContext, recorded: bool) -> TraceIds {
    TraceIds {
        trace_id: sc.trace_id(),
        span_id: recorded.then(|| sc.span_id()),
    }
}

/// A request's trace on entering a route.
pub enum Started {
    Untraced,
    Ids(TraceIds),
    Recorded(Box<ServerSpan>),
}

/// A recorded SERVER span, ended when the response body ends.
pub struct ServerSpan {
    pub ids: TraceIds,
    /// For the request's extensions: the forwarder's parent.
    pub trace: RecordedTrace,
    span: Span,
}

/// What a route's SERVER span says of the request.
pub struct ServerRequest<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    pub tls: bool,
    pub host: Option<&'a str>,
    /// The client's IP as text (the connection wrote it once).
    pub client_ip: Option<&'a str>,
    pub version: http::Version,
    pub listener: &'a Arc<str>,
    pub route: &'a Arc<str>,
}

impl ServerSpan {
    pub fn describe(&mut self, r: &ServerRequest<'_>) {
        let span = &mut self.span;
        let method = method_name(r.method);
        let mut name = String::with_capacity(method.len() + 1 + r.route.len());
        name.push_str(&method);
        name.push(' ');
        name.push_str(r.route);
        span.update_name(name);
        span.set_attributes([
            KeyValue::new("http.request.method", method_value(r.method)),
            KeyValue::new("url.path", r.path.to_owned()),
            KeyValue::new("url.scheme", if r.tls { "https" } else { "http" }),
            KeyValue::new("network.protocol.version", version_word(r.version)),
            KeyValue::new("kaname.listener", r.listener.clone()),
            KeyValue::new("kaname.route", r.route.clone()),
        ]);
        if let Some(host) = r.host {
            span.set_attribute(KeyValue::new("server.address", host_of(host).to_owned()));
        }
        if let Some(ip) = r.client_ip {
            span.set_attribute(KeyValue::new("client.address", ip.to_owned()));
        }
    }

    /// The response head: its status, and the `kaname-error` kind of a
    /// refusal or failure kaname answered.
    pub fn answered(&mut self, status: StatusCode, headers: &HeaderMap) {
        let span = &mut self.span;
        span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status.as_u16()),
        ));
        if let Some(kind) = headers.get("kaname-error").and_then(|v| v.to_str().ok()) {
            span.set_attribute(KeyValue::new("kaname.error", kind.to_owned()));
        }
        if status.is_server_error() {
            span.set_status(Status::error(""));
        }
    }

    /// A gRPC call's final status (head or trailers).
    pub fn grpc_status(&mut self, code: u32) {
        grpc_attribute(&mut self.span, code);
    }

    pub fn end(mut self) {
        self.span.end();
    }
}

fn grpc_attribute(span: &mut Span, code: u32) {
    span.set_attribute(KeyValue::new("rpc.grpc.status_code", i64::from(code)));
    if code != 0 {
        span.set_status(Status::error(""));
    }
}

/// The most attributes a SERVER span gets: `describe`'s eight,
/// `answered`'s two, the gRPC status.
const SERVER_ATTRIBUTES: usize = 11;
/// A CLIENT span's: five at its start, the status code or `error.type`,
/// the gRPC status.
const TRY_ATTRIBUTES: usize = 7;

/// In a recorded request's extensions (cloned with them into every try).
#[derive(Clone)]
pub struct RecordedTrace(Arc<TraceParent>);

struct TraceParent {
    tracer: SdkTracer,
    /// Holds the SERVER span's context.
    parent: Context,
    attempts: AtomicU32,
}

impl RecordedTrace {
    /// A CLIENT span for the try about to be sent, its context written
    /// into the try's `traceparent`.
    pub fn start_try(
        &self,
        headers: &mut HeaderMap,
        method: &Method,
        upstream: &Arc<str>,
        endpoint: &crate::upstream::Endpoint,
    ) -> TrySpan {
        let t = &self.0;
        let attempt = t.attempts.fetch_add(1, Ordering::Relaxed) + 1;
        let mut attributes = Vec::with_capacity(TRY_ATTRIBUTES);
        attributes.extend([
            KeyValue::new("http.request.method", method_value(method)),
            KeyValue::new("server.address", endpoint.ip.clone()),
            KeyValue::new("server.port", i64::from(endpoint.addr.port())),
            KeyValue::new("kaname.upstream", upstream.clone()),
            KeyValue::new("kaname.attempt", i64::from(attempt)),
        ]);
        let builder = SpanBuilder::from_name(method_name(method))
            .with_kind(SpanKind::Client)
            .with_attributes(attributes);
        let span = t.tracer.build_with_context(builder, &t.parent);
        // `tracestate` goes on as it came.
        set_traceparent(headers, span.span_context());
        TrySpan(span)
    }
}

/// One try's CLIENT span; dropped unended, it ends as it is.
pub struct TrySpan(Span);

impl TrySpan {
    pub fn answered(&mut self, status: StatusCode) {
        self.0.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status.as_u16()),
        ));
        if status.is_server_error() {
            self.0.set_status(Status::error(""));
        }
    }

    pub fn grpc_status(&mut self, code: u32) {
        grpc_attribute(&mut self.0, code);
    }

    /// A try that failed before a response: `connect_failure`, `reset`,
    /// `timeout`, `cancelled`.
    pub fn failed(&mut self, error_type: &'static str) {
        self.0
            .set_attribute(KeyValue::new("error.type", error_type));
        self.0.set_status(Status::error(error_type));
    }

    pub fn end(mut self) {
        self.0.end();
    }
}

/// `traceparent: 00-<trace>-<span>-<flags>`, written by hand: the SDK
/// propagator's `format!` of the ids cost more than the rest of an
/// unsampled request's trace handling (bench/tracing.sh), and it would add
/// an empty `tracestate`.
fn set_traceparent(headers: &mut HeaderMap, sc: &SpanContext) {
    let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
    hex_into(&mut out[3..35], &sc.trace_id().to_bytes());
    hex_into(&mut out[36..52], &sc.span_id().to_bytes());
    hex_into(&mut out[53..55], &[sc.trace_flags().to_u8() & 1]);
    if let Ok(v) = http::HeaderValue::from_bytes(&out) {
        headers.insert(TRACEPARENT.clone(), once_per_request(v));
    }
}

/// The standard methods as static strings: no allocation per span.
fn method_name(m: &Method) -> std::borrow::Cow<'static, str> {
    match *m {
        Method::GET => "GET".into(),
        Method::POST => "POST".into(),
        Method::PUT => "PUT".into(),
        Method::DELETE => "DELETE".into(),
        Method::HEAD => "HEAD".into(),
        Method::OPTIONS => "OPTIONS".into(),
        Method::PATCH => "PATCH".into(),
        Method::CONNECT => "CONNECT".into(),
        Method::TRACE => "TRACE".into(),
        // Semantic conventions: other methods are `_OTHER`, the name
        // `HTTP` (a client's made-up methods must not explode cardinality).
        _ => "HTTP".into(),
    }
}

fn method_value(m: &Method) -> Value {
    match method_name(m) {
        std::borrow::Cow::Borrowed("HTTP") => "_OTHER".into(),
        name => name.into(),
    }
}

fn version_word(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "0.9",
        http::Version::HTTP_10 => "1.0",
        http::Version::HTTP_2 => "2",
        http::Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

/// `example.com:8080` → `example.com`, `[::1]:80` → `::1`.
fn host_of(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    authority.split(':').next().unwrap_or(authority)
}

#[cfg(test)]
mod tests;
