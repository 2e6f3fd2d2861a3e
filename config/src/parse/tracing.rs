//! The `tracing` section: W3C propagation and the OTLP span exporter.

use std::time::Duration;

use crate::error::Errors;
use crate::node::Node;
use crate::read::{self, Map};
use crate::types::{Otlp, OtlpProtocol, Tracing};

pub(crate) const OTLP_KEYS: &[&str] = &[
    "endpoint",
    "protocol",
    "headers",
    "timeout",
    "service_name",
    "resource",
    "sampling",
    "max_queue",
];

pub(crate) const TRACING_KEYS: &[&str] = &["start_traces", "otlp"];
/// `protocol`, in the order the parser maps them.
pub(crate) const OTLP_PROTOCOLS: &[&str] = &["grpc", "http/protobuf"];

/// Spans waiting for export are held in memory: a bound on the bound.
pub(crate) const MAX_QUEUE: u64 = 1_000_000;

pub fn tracing(node: &Node, errs: &mut Errors) -> Option<Tracing> {
    let m = Map::new(node, "in tracing", TRACING_KEYS, errs)?;
    let otlp = m.get("otlp").and_then(|n| otlp(n, errs));
    // Exporting spans is for traces kaname may start; an explicit
    // `start_traces: false` still limits spans to traces callers started.
    let start_traces = m
        .opt("start_traces", errs, read::boolean)
        .unwrap_or(otlp.is_some());
    Some(Tracing { start_traces, otlp })
}

fn otlp(node: &Node, errs: &mut Errors) -> Option<Otlp> {
    let place = "in tracing.otlp";
    let m = Map::new(node, place, OTLP_KEYS, errs)?;
    let protocol = m
        .opt("protocol", errs, |n, e| read::choice(n, OTLP_PROTOCOLS, e))
        .map_or(OtlpProtocol::Grpc, |i| {
            if i == 0 {
                OtlpProtocol::Grpc
            } else {
                OtlpProtocol::HttpProtobuf
            }
        });
    let endpoint = m.req("endpoint", errs, |n, e| endpoint(n, protocol, e));
    let headers = m
        .opt("headers", errs, |n, e| {
            pairs(n, "in tracing.otlp.headers", true, e)
        })
        .unwrap_or_default();
    let timeout = m
        .opt("timeout", errs, read::positive_duration)
        .unwrap_or(Duration::from_secs(5));
    let service_name = m
        .opt("service_name", errs, read::nonempty)
        .unwrap_or_else(|| "kaname".into());
    let resource = m
        .opt("resource", errs, |n, e| {
            pairs(n, "in tracing.otlp.resource", false, e)
        })
        .unwrap_or_default();
    let sampling = m
        .opt("sampling", errs, |n, e| {
            let f = read::number(n, e)?;
            if !(0.0..=1.0).contains(&f) {
                e.at(
                    n.mark,
                    format!("sampling is a ratio from 0 to 1 (0.01 records 1% of new traces), found {f}"),
                );
                return None;
            }
            Some(f)
        })
        .unwrap_or(1.0);
    let max_queue = m
        .opt("max_queue", errs, |n, e| {
            let q = read::at_least(1)(n, e)?;
            if q > MAX_QUEUE {
                e.at(
                    n.mark,
                    format!("max_queue is at most {MAX_QUEUE} spans (each is held in memory), found {q}"),
                );
                return None;
            }
            Some(q as usize)
        })
        .unwrap_or(2048);
    Some(Otlp {
        endpoint: endpoint?,
        protocol,
        headers,
        timeout,
        service_name,
        resource,
        sampling,
        max_queue,
    })
}

/// An http:// or https:// URL with a host. For OTLP/HTTP an empty path is
/// the standard `/v1/traces`; gRPC has no path of its own.
fn endpoint(node: &Node, protocol: OtlpProtocol, errs: &mut Errors) -> Option<String> {
    let url = read::nonempty(node, errs)?;
    let Some((scheme, rest)) = url.split_once("://") else {
        errs.at(
            node.mark,
            format!("expected an http:// or https:// URL, found {url:?}"),
        );
        return None;
    };
    if scheme != "http" && scheme != "https" {
        errs.at(
            node.mark,
            format!("expected an http:// or https:// URL, found {url:?}"),
        );
        return None;
    }
    let (authority, path) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
    let bad = |c: char| c.is_whitespace() || c.is_control() || "@/?#\\\"<>{}|^`".contains(c);
    if authority.is_empty()
        || authority.chars().any(bad)
        || path.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        errs.at(
            node.mark,
            format!("expected a URL like \"http://127.0.0.1:4317\" (a host, no user-info), found {url:?}"),
        );
        return None;
    }
    match protocol {
        OtlpProtocol::Grpc if !path.is_empty() && path != "/" => {
            errs.at(
                node.mark,
                format!("an OTLP/gRPC endpoint has no path (the service is fixed by the protocol), found {path:?}; for OTLP/HTTP set protocol: http/protobuf"),
            );
            None
        }
        OtlpProtocol::Grpc => Some(url.trim_end_matches('/').to_string()),
        OtlpProtocol::HttpProtobuf if path.is_empty() || path == "/" => {
            Some(format!("{}/v1/traces", url.trim_end_matches('/')))
        }
        OtlpProtocol::HttpProtobuf => Some(url),
    }
}

/// A map of names to string values; header names are lower-cased and
/// checked, values must be sendable as a header.
fn pairs(
    node: &Node,
    place: &str,
    header: bool,
    errs: &mut Errors,
) -> Option<Vec<(String, String)>> {
    let m = Map::any(node, place, errs)?;
    let mut out = Vec::new();
    for (key, mark, value) in m.entries() {
        let Some(v) = read::string(value, errs) else {
            continue;
        };
        if header {
            let name = key.to_ascii_lowercase();
            if name.is_empty() || !name.chars().all(read::is_tchar) {
                errs.at(mark, format!("invalid header name {key:?} {place}"));
                continue;
            }
            if v.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
                // The value may be a secret: never echo it.
                errs.at(
                    value.mark,
                    format!("the value of header {name:?} {place} has characters a header cannot carry (control characters or a line break)"),
                );
                continue;
            }
            out.push((name, v));
        } else {
            if key.is_empty() {
                errs.at(mark, format!("empty attribute name {place}"));
                continue;
            }
            out.push((key.to_string(), v));
        }
    }
    Some(out)
}
