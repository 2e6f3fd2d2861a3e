//! OTLP's `ExportTraceServiceRequest`, written straight from the SDK's
//! `SpanData` into protobuf bytes.
//!
//! Why not opentelemetry-otlp's exporter: its conversion builds the
//! generated prost structs first (every key formatted with `Display` into
//! a new `String`, every value copied, spans grouped by a hashed scope),
//! then prost walks that tree twice (`encoded_len`, `encode`). At
//! `sampling: 1.0` that was ~25,000 instructions a request of two spans,
//! half of what tracing cost (bench/README.md, "Spans"); writing the wire
//! format from the spans as they are is a few hundred. The message
//! definitions are the official ones (opentelemetry-proto's `trace.proto`,
//! `common.proto`, `resource.proto`); the tests decode what is written here
//! with opentelemetry-proto's generated types.
//!
//! kaname's spans all come from one tracer, so a request holds one
//! `ResourceSpans` with one `ScopeSpans`; both heads are encoded once.

use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status};
use opentelemetry::{Array, InstrumentationScope, KeyValue, StringValue, Value};
use opentelemetry_sdk::trace::SpanData;
use opentelemetry_sdk::Resource;

/// Protobuf wire types.
const VARINT: u32 = 0;
const FIXED64: u32 = 1;
const LEN: u32 = 2;
const FIXED32: u32 = 5;

/// `SpanFlags`: the span says whether its parent is remote, and it is.
const HAS_IS_REMOTE: u32 = 0x100;
const IS_REMOTE: u32 = 0x200;

/// The export requests of one resource and scope.
pub struct RequestEncoder {
    /// `ResourceSpans` fields but its spans: `resource`, `schema_url`.
    resource_head: Vec<u8>,
    /// `ScopeSpans` fields but its spans: `scope`, `schema_url`.
    scope_head: Vec<u8>,
}

impl RequestEncoder {
    pub fn new(resource: &Resource, scope: &InstrumentationScope) -> Self {
        let mut resource_head = Vec::new();
        nested(&mut resource_head, 1, |b| {
            for (k, v) in resource.iter() {
                nested(b, 1, |b| key_value(b, k.as_str(), v));
            }
        });
        string(&mut resource_head, 3, resource.schema_url().unwrap_or(""));
        let mut scope_head = Vec::new();
        nested(&mut scope_head, 1, |b| {
            string(b, 1, scope.name());
            string(b, 2, scope.version().unwrap_or(""));
            attributes(b, 3, scope.attributes());
        });
        string(&mut scope_head, 3, scope.schema_url().unwrap_or(""));
        RequestEncoder {
            resource_head,
            scope_head,
        }
    }

    /// An `ExportTraceServiceRequest` of `spans`; with `grpc`, in its
    /// length-prefixed gRPC message frame (uncompressed).
    pub fn encode(&self, spans: &[SpanData], grpc: bool) -> Vec<u8> {
        let mut b = Vec::with_capacity(64 + spans.len() * 320);
        if grpc {
            b.extend_from_slice(&[0; 5]);
        }
        if !spans.is_empty() {
            nested(&mut b, 1, |b| {
                b.extend_from_slice(&self.resource_head);
                nested(b, 2, |b| {
                    b.extend_from_slice(&self.scope_head);
                    for s in spans {
                        nested(b, 2, |b| span(b, s));
                    }
                });
            });
        }
        if grpc {
            let n = u32::try_from(b.len() - 5).unwrap_or(u32::MAX);
            b[1..5].copy_from_slice(&n.to_be_bytes());
        }
        b
    }
}

/// `opentelemetry.proto.trace.v1.Span`.
fn span(b: &mut Vec<u8>, s: &SpanData) {
    let sc = &s.span_context;
    bytes(b, 1, &sc.trace_id().to_bytes());
    bytes(b, 2, &sc.span_id().to_bytes());
    string(b, 3, &sc.trace_state().header());
    if s.parent_span_id != SpanId::INVALID {
        bytes(b, 4, &s.parent_span_id.to_bytes());
    }
    string(b, 5, &s.name);
    uint(b, 6, kind_number(&s.span_kind));
    fixed64(b, 7, unix_nanos(s.start_time));
    fixed64(b, 8, unix_nanos(s.end_time));
    attributes(b, 9, &s.attributes);
    uint(b, 10, u64::from(s.dropped_attributes_count));
    for e in s.events.iter() {
        nested(b, 11, |b| {
            fixed64(b, 1, unix_nanos(e.timestamp));
            string(b, 2, &e.name);
            attributes(b, 3, &e.attributes);
            uint(b, 4, u64::from(e.dropped_attributes_count));
        });
    }
    uint(b, 12, u64::from(s.events.dropped_count));
    for l in s.links.iter() {
        nested(b, 13, |b| {
            let lc = &l.span_context;
            bytes(b, 1, &lc.trace_id().to_bytes());
            bytes(b, 2, &lc.span_id().to_bytes());
            string(b, 3, &lc.trace_state().header());
            attributes(b, 4, &l.attributes);
            uint(b, 5, u64::from(l.dropped_attributes_count));
            fixed32(b, 6, flags(lc, lc.is_remote()));
        });
    }
    uint(b, 14, u64::from(s.links.dropped_count));
    match &s.status {
        Status::Unset => {}
        Status::Ok => nested(b, 15, |b| uint(b, 3, 1)),
        Status::Error { description } => nested(b, 15, |b| {
            string(b, 2, description);
            uint(b, 3, 2);
        }),
    }
    fixed32(b, 16, flags(sc, s.parent_span_is_remote));
}

/// The W3C trace flags, and whether the parent is remote.
fn flags(sc: &SpanContext, remote: bool) -> u32 {
    let mut f = u32::from(sc.trace_flags().to_u8()) | HAS_IS_REMOTE;
    if remote {
        f |= IS_REMOTE;
    }
    f
}

fn kind_number(k: &SpanKind) -> u64 {
    match k {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    }
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Repeated `KeyValue`s in `field`.
fn attributes<'a>(b: &mut Vec<u8>, field: u32, kvs: impl IntoIterator<Item = &'a KeyValue>) {
    for kv in kvs {
        nested(b, field, |b| key_value(b, kv.key.as_str(), &kv.value));
    }
}

/// `common.v1.KeyValue`: its `key`, its `value` (an `AnyValue`).
fn key_value(b: &mut Vec<u8>, key: &str, v: &Value) {
    string(b, 1, key);
    nested(b, 2, |b| any_value(b, v));
}

/// `common.v1.AnyValue`: one of its fields, present even when empty.
fn any_value(b: &mut Vec<u8>, v: &Value) {
    match v {
        Value::String(s) => present_string(b, 1, s.as_str()),
        Value::Bool(x) => {
            tag(b, 2, VARINT);
            varint(b, u64::from(*x));
        }
        Value::I64(i) => {
            tag(b, 3, VARINT);
            // int64: two's complement, as protobuf writes it.
            varint(b, *i as u64);
        }
        Value::F64(f) => {
            tag(b, 4, FIXED64);
            b.extend_from_slice(&f.to_le_bytes());
        }
        Value::Array(a) => nested(b, 5, |b| array(b, a)),
        // A kind of value newer than this code: its text.
        other => present_string(b, 1, &other.as_str()),
    }
}

/// `common.v1.ArrayValue`: repeated `AnyValue` `values`.
fn array(b: &mut Vec<u8>, a: &Array) {
    fn each<T>(b: &mut Vec<u8>, xs: &[T], one: impl Fn(&T) -> Value) {
        for x in xs {
            nested(b, 1, |b| any_value(b, &one(x)));
        }
    }
    match a {
        Array::Bool(xs) => each(b, xs, |x| Value::Bool(*x)),
        Array::I64(xs) => each(b, xs, |x| Value::I64(*x)),
        Array::F64(xs) => each(b, xs, |x| Value::F64(*x)),
        Array::String(xs) => {
            for s in xs {
                nested(b, 1, |b| present_string(b, 1, StringValue::as_str(s)));
            }
        }
        other => {
            let text = Value::Array(other.clone()).as_str().into_owned();
            nested(b, 1, |b| present_string(b, 1, &text));
        }
    }
}

/// A length-delimited field whose contents `write` appends. Its length is
/// given one byte ahead (most are under 128), widened after when not.
fn nested(b: &mut Vec<u8>, field: u32, write: impl FnOnce(&mut Vec<u8>)) {
    tag(b, field, LEN);
    let at = b.len();
    b.push(0);
    write(b);
    let n = b.len() - at - 1;
    if n < 0x80 {
        b[at] = n as u8;
    } else {
        let mut len = [0u8; 10];
        let mut w = 0;
        let mut v = n as u64;
        while v >= 0x80 {
            len[w] = v as u8 | 0x80;
            v >>= 7;
            w += 1;
        }
        len[w] = v as u8;
        b[at] = len[0];
        b.splice(at + 1..at + 1, len[1..=w].iter().copied());
    }
}

fn tag(b: &mut Vec<u8>, field: u32, wire: u32) {
    varint(b, u64::from(field << 3 | wire));
}

fn varint(b: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        b.push(v as u8 | 0x80);
        v >>= 7;
    }
    b.push(v as u8);
}

/// A proto3 scalar: left out at its default (zero).
fn uint(b: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        tag(b, field, VARINT);
        varint(b, v);
    }
}

fn fixed64(b: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        tag(b, field, FIXED64);
        b.extend_from_slice(&v.to_le_bytes());
    }
}

fn fixed32(b: &mut Vec<u8>, field: u32, v: u32) {
    if v != 0 {
        tag(b, field, FIXED32);
        b.extend_from_slice(&v.to_le_bytes());
    }
}

/// A proto3 string: left out when empty.
fn string(b: &mut Vec<u8>, field: u32, s: &str) {
    if !s.is_empty() {
        present_string(b, field, s);
    }
}

/// A string of a `oneof`: present even when empty.
fn present_string(b: &mut Vec<u8>, field: u32, s: &str) {
    bytes(b, field, s.as_bytes());
}

fn bytes(b: &mut Vec<u8>, field: u32, v: &[u8]) {
    tag(b, field, LEN);
    varint(b, v.len() as u64);
    b.extend_from_slice(v);
}

#[cfg(test)]
mod tests;
