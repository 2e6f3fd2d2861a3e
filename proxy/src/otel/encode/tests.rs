//! What `RequestEncoder` writes, decoded by the official generated types
//! and compared with opentelemetry-proto's own conversion of the same spans.

use std::borrow::Cow;
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{
    Event, Link, SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{Array, InstrumentationScope, KeyValue, Value};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::ResourceSpans;
use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
use opentelemetry_sdk::Resource;
use prost::Message;

use super::RequestEncoder;

fn scope() -> InstrumentationScope {
    InstrumentationScope::builder("kaname")
        .with_version("0.1.0")
        .with_attributes([KeyValue::new("scope.key", "v")])
        .build()
}

fn resource() -> Resource {
    Resource::builder_empty()
        .with_attributes([
            KeyValue::new("deployment.environment", "prod"),
            KeyValue::new("replicas", 3),
        ])
        .with_service_name("orders-sidecar")
        .build()
}

fn span(n: u64, kind: SpanKind, status: Status, attributes: Vec<KeyValue>) -> SpanData {
    let start = SystemTime::UNIX_EPOCH + Duration::from_nanos(1_764_000_000_123_456_789 + n);
    SpanData {
        span_context: SpanContext::new(
            TraceId::from(0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736 + u128::from(n)),
            SpanId::from(0x00f0_67aa_0ba9_02b7 + n),
            TraceFlags::SAMPLED,
            false,
            TraceState::from_key_value([("vendor", "x")]).unwrap_or_default(),
        ),
        parent_span_id: if n == 0 {
            SpanId::INVALID
        } else {
            SpanId::from(n)
        },
        parent_span_is_remote: n % 2 == 1,
        span_kind: kind,
        name: Cow::Owned(format!("GET route-{n}")),
        start_time: start,
        end_time: start + Duration::from_micros(350 + n),
        attributes,
        dropped_attributes_count: u32::try_from(n).unwrap_or(0),
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status,
        instrumentation_scope: scope(),
    }
}

/// The official conversion always sends a `Status`; an unset one is the
/// same as none on the wire.
fn without_unset_status(mut rs: Vec<ResourceSpans>) -> Vec<ResourceSpans> {
    for s in rs
        .iter_mut()
        .flat_map(|r| &mut r.scope_spans)
        .flat_map(|s| &mut s.spans)
    {
        if s.status
            .as_ref()
            .is_some_and(|st| st.code == 0 && st.message.is_empty())
        {
            s.status = None;
        }
    }
    rs
}

fn decoded(bytes: &[u8]) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest::decode(bytes).expect("a valid ExportTraceServiceRequest")
}

fn kaname_like_spans() -> Vec<SpanData> {
    let long = "p".repeat(300);
    vec![
        span(
            0,
            SpanKind::Server,
            Status::error(""),
            vec![
                KeyValue::new("http.request.method", "GET"),
                KeyValue::new("url.path", long),
                KeyValue::new("http.response.status_code", 503),
                KeyValue::new("kaname.error", ""),
                // Lengths of two and three bytes, counted ahead.
                KeyValue::new("k".repeat(200), "v".repeat(20_000)),
                KeyValue::new("max", i64::MAX),
            ],
        ),
        span(
            1,
            SpanKind::Client,
            Status::error("timeout"),
            vec![
                KeyValue::new("server.port", 8080),
                KeyValue::new("kaname.attempt", -1),
                KeyValue::new("ok", true),
                KeyValue::new("ratio", 0.25),
            ],
        ),
        span(2, SpanKind::Internal, Status::Ok, vec![]),
        span(3, SpanKind::Producer, Status::Unset, vec![]),
    ]
}

/// What is written, decoded, equals the official conversion of `spans`.
fn assert_decodes_as_official(spans: Vec<SpanData>) {
    // One resource: its attributes are a map, iterated in its own order.
    let resource = resource();
    let encoder = RequestEncoder::new(&resource, &scope());
    let ours = decoded(&encoder.encode(&spans, false));
    let official = group_spans_by_resource_and_scope(spans, &(&resource).into());
    assert_eq!(ours.resource_spans, without_unset_status(official));
}

#[test]
fn what_is_written_decodes_as_the_official_conversion_of_the_same_spans() {
    let spans = kaname_like_spans();
    assert_decodes_as_official(spans);
}

#[test]
fn events_links_arrays_and_many_spans_decode_too() {
    let mut spans: Vec<SpanData> = (0..600)
        .map(|n| span(n, SpanKind::Consumer, Status::Unset, vec![]))
        .collect();
    let s = &mut spans[7];
    s.attributes = vec![
        KeyValue::new(
            "strings",
            Value::Array(Array::String(vec!["a".into(), "".into()])),
        ),
        KeyValue::new("ints", Value::Array(Array::I64(vec![1, -2, 300]))),
        KeyValue::new("floats", Value::Array(Array::F64(vec![0.5]))),
        KeyValue::new("bools", Value::Array(Array::Bool(vec![true, false]))),
    ];
    s.events = SpanEvents::default();
    s.events.events.push(Event::new(
        "retry",
        SystemTime::UNIX_EPOCH + Duration::from_secs(5),
        vec![KeyValue::new("attempt", 2)],
        1,
    ));
    s.events.dropped_count = 4;
    s.links = SpanLinks::default();
    s.links.links.push(Link::new(
        SpanContext::new(
            TraceId::from(9u128),
            SpanId::from(10u64),
            TraceFlags::NOT_SAMPLED,
            true,
            TraceState::default(),
        ),
        vec![KeyValue::new("why", "fan-in")],
        0,
    ));
    s.links.dropped_count = 2;
    assert_decodes_as_official(spans);
}

#[test]
fn the_grpc_frame_is_uncompressed_and_its_length_is_the_message() {
    let encoder = RequestEncoder::new(&resource(), &scope());
    let spans = kaname_like_spans();
    let framed = encoder.encode(&spans, true);
    let plain = encoder.encode(&spans, false);
    assert_eq!(framed[0], 0, "not compressed");
    let n = u32::from_be_bytes([framed[1], framed[2], framed[3], framed[4]]);
    assert_eq!(n as usize, plain.len());
    assert_eq!(&framed[5..], &plain[..]);
    assert!(
        encoder.encode(&[], false).is_empty(),
        "no spans: an empty request"
    );
}
