//! Header rules of a forwarding proxy (RFC 9110 §7.6): hop-by-hop headers
//! are removed both ways, `x-forwarded-*` appended, `x-request-id` kept or
//! made.

use std::net::IpAddr;

use http::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};

static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// What `Connection` may not remove (request-model.md): headers kaname sets
/// or relies on. The identity header and claim headers are set after the
/// strip, so naming them cannot touch kaname's own values either.
static PROTECTED: [HeaderName; 9] = [
    header::HOST,
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
    header::TE,
    HeaderName::from_static("x-request-id"),
    HeaderName::from_static("x-forwarded-for"),
    HeaderName::from_static("x-forwarded-proto"),
    HeaderName::from_static("traceparent"),
    HeaderName::from_static("tracestate"),
];

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// Removes hop-by-hop headers, including those the `Connection` header
/// names (but never one of `PROTECTED`). With `keep_upgrade`, `Connection: upgrade` and `Upgrade` survive
/// so an HTTP/1.1 upgrade (WebSocket) can pass through.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // One pass over the names (no hashing) finds the few present: most
    // requests carry none, most responses one (`connection: keep-alive`).
    // Removing only those, instead of all nine by name, saved ~3,000
    // instructions per response (bench/README.md).
    let mut found: [Option<HeaderName>; HOP_BY_HOP.len() + 1] = Default::default();
    let mut n = 0;
    for name in headers.keys() {
        if name == header::UPGRADE || HOP_BY_HOP.contains(name) {
            // The names of a map are distinct: at most all of these.
            if let Some(slot) = found.get_mut(n) {
                *slot = Some(name.clone());
                n += 1;
            }
        }
    }
    if n == 0 {
        return;
    }
    let found = &found[..n];
    let has = |h: &HeaderName| found.iter().flatten().any(|f| f == h);
    let named: Vec<HeaderName> = if has(&header::CONNECTION) && !names_only_itself(headers) {
        headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            // `close` names no header, and the hop-by-hop ones go anyway:
            // no name to make (an allocation) for the usual tokens.
            .filter(|t| {
                !t.eq_ignore_ascii_case("close")
                    && !HOP_BY_HOP
                        .iter()
                        .any(|h| t.eq_ignore_ascii_case(h.as_str()))
            })
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .filter(|n| (!keep_upgrade || n != header::UPGRADE) && !PROTECTED.contains(n))
            .collect()
    } else {
        Vec::new()
    };
    let te_trailers = has(&header::TE)
        && headers
            .get_all(header::TE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
            });
    for name in named {
        headers.remove(name);
    }
    for name in found.iter().flatten() {
        if name != header::UPGRADE {
            headers.remove(name);
        }
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else if has(&header::UPGRADE) {
        headers.remove(header::UPGRADE);
    }
    // `te: trailers` is the one TE value HTTP/2 (and gRPC) needs end to end.
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// True when every `Connection` value is exactly `keep-alive` or `close`
/// (nearly every response, and most requests, that have one): it names no
/// other header, and the token parsing below (~600 instructions) is
/// skipped.
fn names_only_itself(headers: &HeaderMap) -> bool {
    headers.get_all(header::CONNECTION).iter().all(|v| {
        let v = v.as_bytes();
        v.eq_ignore_ascii_case(b"keep-alive") || v.eq_ignore_ascii_case(b"close")
    })
}

/// True for an HTTP/1.1 request asking to switch protocols.
pub fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

/// The client address as a header value, made once per connection.
pub fn client_value(client: IpAddr) -> HeaderValue {
    HeaderValue::from_str(&client.to_string()).unwrap_or(HeaderValue::from_static("unknown"))
}

/// Appends the client (`client_value`) to `x-forwarded-for` and sets
/// `x-forwarded-proto`.
pub fn add_forwarded(headers: &mut HeaderMap, client: &HeaderValue, tls: bool) {
    // One lookup (an entry) where a get and an insert each hashed the name.
    match headers.entry(&X_FORWARDED_FOR) {
        Entry::Occupied(mut e) if !e.get().is_empty() => {
            let prev = e.get().as_bytes();
            let mut v = Vec::with_capacity(prev.len() + 2 + client.len());
            v.extend_from_slice(prev);
            v.extend_from_slice(b", ");
            v.extend_from_slice(client.as_bytes());
            if let Ok(v) = HeaderValue::from_bytes(&v) {
                e.insert(v);
            }
        }
        // A clone shares the connection's bytes: no allocation.
        Entry::Occupied(mut e) => {
            e.insert(client.clone());
        }
        Entry::Vacant(e) => {
            e.insert(client.clone());
        }
    }
    headers.insert(
        X_FORWARDED_PROTO.clone(),
        HeaderValue::from_static(if tls { "https" } else { "http" }),
    );
}

/// The request's `x-request-id`, or a new random one set on the request.
pub fn ensure_request_id(headers: &mut HeaderMap) -> &HeaderValue {
    let new_id = || {
        let mut hex = [0u8; 32];
        hex_into(&mut hex, &rand::random::<u128>().to_be_bytes());
        // Owned by its `Bytes`: one allocation, and the answer's copy (the
        // observe step's clone) shares it. A copied slice would be a second
        // allocation at that first clone.
        let id = HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(hex));
        once_per_request(id.unwrap_or(HeaderValue::from_static("0")))
    };
    // One lookup (an entry) for the look and the insert.
    match headers.entry(&X_REQUEST_ID) {
        Entry::Occupied(e) => {
            let v = e.into_mut();
            if v.is_empty() {
                *v = new_id();
            }
            v.set_sensitive(true);
            v
        }
        Entry::Vacant(e) => e.insert(new_id()),
    }
}

/// A value new on every request (`x-request-id`, `traceparent`), marked so
/// that HTTP/2's HPACK sends it as a never-indexed literal. Indexed, each
/// one went into the connection's dynamic table, evicting entries that do
/// repeat, after h2 had compared it with every earlier id still there:
/// 5,253 of an HTTP/2 request's 73,456 instructions were `Table::index`
/// (bench/README.md). HTTP/1.1 ignores the mark; a value compares equal
/// with or without it.
pub fn once_per_request(mut v: HeaderValue) -> HeaderValue {
    v.set_sensitive(true);
    v
}

/// Starts a W3C trace (`tracing.start_traces`): a request without a valid
/// `traceparent` gets a new one, sampled, with random ids, so the upstream's
/// tracer makes the root span. A malformed header is replaced and its
/// `tracestate` dropped, as W3C Trace Context §4.3 says; a valid one is kept.
pub fn ensure_traceparent(headers: &mut HeaderMap) {
    if headers
        .get(&TRACEPARENT)
        .is_some_and(|v| valid_traceparent(v.as_bytes()))
    {
        return;
    }
    headers.remove(&TRACESTATE);
    let trace_id: u128 = rand::random::<u128>().max(1);
    let span_id: u64 = rand::random::<u64>().max(1);
    let mut v = [0u8; 55];
    v[..3].copy_from_slice(b"00-");
    hex_into(&mut v[3..35], &trace_id.to_be_bytes());
    v[35] = b'-';
    hex_into(&mut v[36..52], &span_id.to_be_bytes());
    v[52..].copy_from_slice(b"-01");
    if let Ok(v) = HeaderValue::from_bytes(&v) {
        headers.insert(TRACEPARENT.clone(), once_per_request(v));
    }
}

/// A `traceparent` sent more than once names no one trace (combined into
/// one field, as HTTP allows, it is no valid value): all of them go, with
/// `tracestate`, so that the trace kaname records and logs is the one the
/// upstream is sent, not the first value here and another one there.
pub fn drop_repeated_traceparent(headers: &mut HeaderMap) {
    if headers.get_all(&TRACEPARENT).iter().nth(1).is_some() {
        headers.remove(&TRACEPARENT);
        headers.remove(&TRACESTATE);
    }
}

/// `version-traceid-parentid-flags` in lowercase hex, ids not all zero;
/// a later version may append fields after a dash (§4.2.4).
fn valid_traceparent(v: &[u8]) -> bool {
    let hex = |s: &[u8]| s.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let nonzero = |s: &[u8]| s.iter().any(|&b| b != b'0');
    if v.len() < 55 || !hex(&v[..2]) || &v[..2] == b"ff" {
        return false;
    }
    if &v[..2] == b"00" && v.len() != 55 {
        return false;
    }
    v[2] == b'-'
        && v[35] == b'-'
        && v[52] == b'-'
        && hex(&v[3..35])
        && nonzero(&v[3..35])
        && hex(&v[36..52])
        && nonzero(&v[36..52])
        && hex(&v[53..55])
        && (v.len() == 55 || v[55] == b'-')
}

/// `bytes` as lowercase hex into `out` (two bytes of it each).
pub fn hex_into(out: &mut [u8], bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX[usize::from(b >> 4)];
        pair[1] = HEX[usize::from(b & 0xf)];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_named_and_standard_hop_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-custom"),
        );
        h.insert("x-custom", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn keeps_te_trailers_and_the_rest() {
        let mut h = HeaderMap::new();
        h.insert(header::TE, HeaderValue::from_static("gzip, trailers"));
        h.insert(header::PROXY_AUTHORIZATION, HeaderValue::from_static("x"));
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        h.insert("content-type", HeaderValue::from_static("text/plain"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 2);
        assert_eq!(h[header::TE], "trailers");
        assert_eq!(h["content-type"], "text/plain");
    }

    #[test]
    fn a_second_connection_header_still_names_headers() {
        // The fast path for a lone `keep-alive` must look at every value.
        let mut h = HeaderMap::new();
        h.append(header::CONNECTION, HeaderValue::from_static("Keep-Alive"));
        h.append(header::CONNECTION, HeaderValue::from_static("x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        assert!(!h.contains_key("x-secret"));
        assert!(!h.contains_key("connection"));
        assert_eq!(h.len(), 1);
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Keep-Alive"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn connection_cannot_name_what_kaname_relies_on() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("x-forwarded-for, Content-Length, traceparent, x-gone"),
        );
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        h.insert("content-length", HeaderValue::from_static("3"));
        h.insert("traceparent", HeaderValue::from_static("t"));
        h.insert("x-gone", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h["x-forwarded-for"], "10.0.0.1");
        assert_eq!(h["content-length"], "3");
        assert_eq!(h["traceparent"], "t");
        assert!(!h.contains_key("x-gone"));
        assert!(!h.contains_key("connection"));
    }

    #[test]
    fn keeps_websocket_upgrade() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(wants_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h[header::UPGRADE], "websocket");
        assert_eq!(h[header::CONNECTION], "upgrade");
    }

    #[test]
    fn appends_forwarded_for() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        add_forwarded(&mut h, &client_value("127.0.0.1".parse().unwrap()), false);
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
    }

    #[test]
    fn request_id_kept_or_made() {
        let mut h = HeaderMap::new();
        h.insert("x-request-id", HeaderValue::from_static("abc"));
        assert_eq!(ensure_request_id(&mut h), "abc");
        // Kept or made, an id is never put in an HPACK dynamic table.
        assert!(h["x-request-id"].is_sensitive());
        let mut h = HeaderMap::new();
        let id = ensure_request_id(&mut h).clone();
        assert_eq!(id.len(), 32);
        assert!(id.as_bytes().iter().all(u8::is_ascii_hexdigit), "{id:?}");
        assert_eq!(h["x-request-id"], id);
        assert!(id.is_sensitive() && h["x-request-id"].is_sensitive());
    }

    #[test]
    fn a_repeated_traceparent_goes_with_its_tracestate_a_single_one_stays() {
        let valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut h = HeaderMap::new();
        h.insert("traceparent", HeaderValue::from_static(valid));
        h.insert("tracestate", HeaderValue::from_static("k=v"));
        drop_repeated_traceparent(&mut h);
        assert_eq!(h["traceparent"], valid);
        assert_eq!(h["tracestate"], "k=v");
        h.append("traceparent", HeaderValue::from_static(valid));
        drop_repeated_traceparent(&mut h);
        assert!(h.get("traceparent").is_none() && h.get("tracestate").is_none());
        // Then `start_traces` makes one of its own.
        ensure_traceparent(&mut h);
        assert!(valid_traceparent(h["traceparent"].as_bytes()));
    }

    #[test]
    fn traceparent_kept_when_valid_made_when_absent_or_malformed() {
        let valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut h = HeaderMap::new();
        h.insert("traceparent", HeaderValue::from_static(valid));
        h.insert("tracestate", HeaderValue::from_static("k=v"));
        ensure_traceparent(&mut h);
        assert_eq!(h["traceparent"], valid);
        assert_eq!(h["tracestate"], "k=v");

        let mut h = HeaderMap::new();
        ensure_traceparent(&mut h);
        let made = h["traceparent"].as_bytes().to_vec();
        assert!(
            valid_traceparent(&made),
            "{:?}",
            String::from_utf8_lossy(&made)
        );
        assert!(made.ends_with(b"-01"), "sampled");
        assert!(h["traceparent"].is_sensitive(), "never HPACK-indexed");

        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "garbage",
        ] {
            let mut h = HeaderMap::new();
            h.insert("traceparent", HeaderValue::from_static(bad));
            h.insert("tracestate", HeaderValue::from_static("k=v"));
            ensure_traceparent(&mut h);
            assert_ne!(h["traceparent"], bad, "{bad} replaced");
            assert!(valid_traceparent(h["traceparent"].as_bytes()));
            assert!(!h.contains_key("tracestate"), "tracestate of {bad} dropped");
        }
        // A later version with an extra field is valid (W3C §4.2.4).
        assert!(valid_traceparent(
            b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra"
        ));
    }
}
