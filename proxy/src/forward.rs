//! The innermost service of every route: one try to one endpoint of the
//! route's upstream, through its connection pool.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::uri::Authority;
use http::{header, uri::PathAndQuery, HeaderValue, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use kaname_config::UpstreamProtocol;
use kaname_filters::body::{BodyEnd, OnEnd};
use kaname_filters::client_body::{ClientBodyFailure, ClientBodyWatch};
use kaname_filters::context::{AvoidEndpoint, Deadline, EndpointSlot, TryCount};
use kaname_filters::retry::classify::{grpc_status, GRPC_UNAVAILABLE};
use kaname_filters::{
    Body, BoxError, ErrorKind, ProxyError, RequestContext, RouteFuture, UpstreamFailure,
};
use prometheus::{Histogram, IntCounter};

use crate::headers::{strip_hop_by_hop, wants_upgrade};
use crate::otel::{RecordedTrace, TrySpan};
use crate::upstream::{Endpoint, InFlight, TryError, Upstream};

/// Per-upstream handles of the attempt metrics, resolved once.
#[derive(Clone)]
pub struct AttemptMetrics {
    success: IntCounter,
    http_error: IntCounter,
    grpc_error: IntCounter,
    connect_failure: IntCounter,
    reset: IntCounter,
    timeout: IntCounter,
    cancelled: IntCounter,
    /// `kaname_limits_hit_total{limit="request_body_timeout"}`.
    body_stalled: IntCounter,
    /// `kaname_limits_hit_total{limit="upstream_connections"}`.
    connections_full: IntCounter,
    duration: Histogram,
}

impl AttemptMetrics {
    pub fn new(m: &crate::metrics::Metrics, upstream: &str) -> Self {
        let c = |o: &str| m.upstream_attempts_total.with_label_values(&[upstream, o]);
        AttemptMetrics {
            success: c("success"),
            http_error: c("http_error"),
            grpc_error: c("grpc_error"),
            connect_failure: c("connect_failure"),
            reset: c("reset"),
            timeout: c("timeout"),
            cancelled: c("cancelled"),
            body_stalled: m
                .limits_hit_total
                .with_label_values(&["request_body_timeout"]),
            connections_full: m
                .limits_hit_total
                .with_label_values(&["upstream_connections"]),
            duration: m
                .upstream_attempt_duration_seconds
                .with_label_values(&[upstream]),
        }
    }
}

/// Sends a request to the upstream.
#[derive(Clone)]
pub struct Forward(Arc<ForwardTo>);

/// What a try needs, shared: the per-request clone of `Forward` is one
/// reference count, not one per metric handle.
struct ForwardTo {
    upstream: Arc<Upstream>,
    metrics: AttemptMetrics,
}

impl Forward {
    pub fn new(upstream: Arc<Upstream>, metrics: AttemptMetrics) -> Self {
        Forward(Arc::new(ForwardTo { upstream, metrics }))
    }
}

impl tower::Service<Request<Body>> for Forward {
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = RouteFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> RouteFuture {
        let this = self.0.clone();
        Box::pin(async move { this.forward(req).await })
    }
}

/// Tells outlier detection and the attempt metrics how a try went. A try
/// whose future is dropped unfinished after its deadline was cut by a
/// per-try or route timeout: a timeout of that endpoint — unless the
/// client was still sending its body. One dropped before it was cancelled
/// by the client going away, which says nothing about the upstream: it
/// counts as `cancelled`, so clients that hang up or dawdle cannot eject a
/// healthy endpoint.
struct AttemptRecord<'a> {
    metrics: &'a AttemptMetrics,
    upstream: &'a Upstream,
    endpoint: &'a Arc<Endpoint>,
    /// The try on its endpoint: its start, and the end `finish` stamps.
    in_flight: InFlight<'a>,
    deadline: Option<Deadline>,
    body: Option<ClientBodyWatch>,
    /// The try's CLIENT span, when the request's trace is recorded.
    span: Option<TrySpan>,
    done: bool,
}

impl AttemptRecord<'_> {
    /// Ends the try; with no `outcome` the body judges it (outlier report
    /// and outcome counter) when its trailers come.
    fn finish(&mut self, outcome: Option<&IntCounter>, failed: bool) {
        self.done = true;
        if let Some(outcome) = outcome {
            self.upstream.report(self.endpoint, failed);
            outcome.inc();
        }
        let took = self.in_flight.end();
        self.metrics.duration.observe(took.as_secs_f64());
    }
}

impl AttemptRecord<'_> {
    fn end_span(&mut self, status: Option<StatusCode>, error_type: Option<&'static str>) {
        if let Some(mut span) = self.span.take() {
            if let Some(status) = status {
                span.answered(status);
            }
            if let Some(e) = error_type {
                span.failed(e);
            }
            span.end();
        }
    }
}

impl Drop for AttemptRecord<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let client_slow = self.body.as_ref().is_some_and(ClientBodyWatch::incomplete);
        let timed_out = Deadline::expired(self.deadline) && !client_slow;
        if timed_out {
            self.upstream.report(self.endpoint, true);
            self.metrics.timeout.inc();
        } else {
            self.metrics.cancelled.inc();
        }
        if let Some(mut span) = self.span.take() {
            span.failed(if timed_out { "timeout" } else { "cancelled" });
            span.end();
        }
        let took = self.in_flight.end();
        self.metrics.duration.observe(took.as_secs_f64());
    }
}

/// Judges a try whose gRPC status comes in its trailers, when they pass:
/// its attempt outcome, and UNAVAILABLE (or a broken body) for outlier
/// detection, as a status in the head is judged at once. A body the client
/// dropped is not judged, as a cancelled try is not.
fn judge_by_trailers(
    up: Arc<Upstream>,
    endpoint: Arc<Endpoint>,
    m: &AttemptMetrics,
) -> impl FnOnce(BodyEnd<'_>) + Send + Sync + Unpin + 'static {
    let (success, grpc_error, reset) = (m.success.clone(), m.grpc_error.clone(), m.reset.clone());
    move |end| {
        let (outcome, failed) = match end {
            BodyEnd::Trailers(t) => match grpc_status(t) {
                Some(code) if code != 0 => (&grpc_error, code == GRPC_UNAVAILABLE),
                _ => (&success, false),
            },
            BodyEnd::Error => (&reset, true),
            BodyEnd::Eof => (&success, false),
            BodyEnd::Dropped => return,
        };
        outcome.inc();
        up.report(&endpoint, failed);
    }
}

impl ForwardTo {
    async fn forward(&self, mut req: Request<Body>) -> Result<Response<Body>, ProxyError> {
        let up = &self.upstream;
        let grpc = req
            .extensions()
            .get::<RequestContext>()
            .map(|c| c.grpc)
            .unwrap_or(false);
        let avoid = req.extensions().get::<AvoidEndpoint>().map(|a| a.0);
        let Some(endpoint) = up.pick(avoid) else {
            return Err(ProxyError::upstream(
                ErrorKind::UpstreamUnavailable,
                UpstreamFailure::Connect,
                format!("upstream \"{}\" has no endpoint", up.name),
            ));
        };

        if let Some(slot) = req.extensions().get::<EndpointSlot>() {
            slot.set(endpoint.addr);
        }
        // The request's one authority (request-model.md: the listener put
        // it in Host) is what the upstream receives: as Host on HTTP/1.1
        // (sent as it is), as :authority on HTTP/2 (parsed for the URI).
        let has_host = req.headers().contains_key(header::HOST);
        let authority = match up.config.protocol {
            UpstreamProtocol::Http1 if has_host => None,
            _ => req
                .headers()
                .get(header::HOST)
                .and_then(|h| Authority::try_from(h.as_bytes()).ok())
                .or_else(|| req.uri().authority().cloned()),
        };
        let pq = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let (scheme, shown) = match up.config.protocol {
            // The pool keys connections by this authority: the endpoint's
            // short key, which the connector dials as its address.
            UpstreamProtocol::Http1 => ("http", endpoint.pool_key.clone()),
            UpstreamProtocol::Http2 => (
                if up.config.tls.is_some() {
                    "https"
                } else {
                    "http"
                },
                authority
                    .clone()
                    .unwrap_or_else(|| endpoint.authority.clone()),
            ),
        };
        let uri = Uri::builder()
            .scheme(scheme)
            .authority(shown)
            .path_and_query(pq)
            .build();
        match uri {
            Ok(uri) => *req.uri_mut() = uri,
            Err(e) => {
                return Err(ProxyError::new(
                    ErrorKind::BadRequest,
                    format!("bad request target: {e}"),
                ))
            }
        }
        let upgrade = match up.config.protocol {
            UpstreamProtocol::Http1 => {
                // HTTP/2 has :authority, not Host (trap 8); a request with
                // neither (HTTP/1.0) names the endpoint, as hyper-util's
                // own Host did before the URI carried a pool key.
                if !has_host {
                    let a = authority.unwrap_or_else(|| endpoint.authority.clone());
                    if let Ok(a) = HeaderValue::from_str(a.as_str()) {
                        req.headers_mut().insert(header::HOST, a);
                    }
                }
                let upgrade = req.version() == Version::HTTP_11 && wants_upgrade(req.headers());
                *req.version_mut() = Version::HTTP_11;
                upgrade.then(|| hyper::upgrade::on(&mut req))
            }
            UpstreamProtocol::Http2 => {
                *req.version_mut() = Version::HTTP_2;
                req.headers_mut().remove(header::HOST);
                None
            }
        };

        // HTTP/1.1 holds a connection per request in flight: bound them per
        // endpoint (HTTP/2 multiplexes on one).
        let mut slot = match up.config.protocol {
            UpstreamProtocol::Http2 => None,
            UpstreamProtocol::Http1 => {
                match endpoint.connection_slot(up.config.connect_timeout).await {
                    Some(p) => Some(p),
                    None => {
                        self.metrics.connections_full.inc();
                        return Err(ProxyError::new(
                            ErrorKind::Overloaded,
                            format!(
                                "upstream \"{}\" endpoint {} has {} requests in flight (pool.max_connections_per_endpoint)",
                                up.name, endpoint.addr, up.config.pool.max_connections_per_endpoint
                            ),
                        ));
                    }
                }
            }
        };
        let mut record = AttemptRecord {
            metrics: &self.metrics,
            upstream: up,
            endpoint: &endpoint,
            in_flight: endpoint.start(),
            deadline: req.extensions().get::<Deadline>().copied(),
            body: ClientBodyWatch::of(req.extensions()).cloned(),
            span: None,
            done: false,
        };
        if let Some(tries) = req.extensions().get::<TryCount>() {
            tries.count();
        }
        if let Some(trace) = req.extensions().get::<RecordedTrace>().cloned() {
            let method = req.method().clone();
            record.span = Some(trace.start_try(req.headers_mut(), &method, &up.name, &endpoint));
        }
        let replay = (upgrade.is_none() && replayable(&req)).then(|| HeadCopy::of(&req));
        let mut result = up.send(&endpoint, req).await;
        if let Some(again) = replay {
            // The upstream closed an idle pooled connection as the request
            // went out on it: send it again, on another connection. The pool
            // may hold more such connections; a few resends drain them.
            for _ in 0..STALE_RESENDS {
                match &result {
                    Err(e) if closed_before_answer(e) => {}
                    _ => break,
                }
                tracing::debug!(upstream = %up.name, "stale pooled connection, sent again");
                // The lost try still counts as an attempt that was reset.
                self.metrics.reset.inc();
                result = up.send(&endpoint, again.request()).await;
            }
        }
        if let Some(failure) = record.body.as_ref().and_then(ClientBodyWatch::failure) {
            // The client broke its body: whatever the upstream did after
            // that (an error, a 400 of its own) says nothing about it.
            if result.is_err() {
                record.finish(Some(&self.metrics.cancelled), false);
                record.end_span(None, Some("cancelled"));
                if failure == ClientBodyFailure::Stalled {
                    self.metrics.body_stalled.inc();
                }
                return Err(client_failure(failure));
            }
        }
        match result {
            Ok(res) if res.status() == StatusCode::SWITCHING_PROTOCOLS && upgrade.is_none() => {
                // A 101 to a request that asked for no allowed upgrade: the
                // client's connection must never become a tunnel it did not
                // ask for (request-model.md).
                record.finish(Some(&self.metrics.http_error), true);
                record.end_span(Some(res.status()), Some("reset"));
                Err(ProxyError::upstream(
                    ErrorKind::UpstreamUnavailable,
                    UpstreamFailure::Reset,
                    format!(
                        "upstream \"{}\" endpoint {} switched protocols unasked (101)",
                        up.name, endpoint.addr
                    ),
                )
                .at_endpoint(endpoint.addr))
            }
            Ok(mut res) => {
                let status = res.status();
                let grpc_code = grpc.then(|| grpc_status(res.headers())).flatten();
                let grpc_failed = grpc_code.is_some_and(|c| c != 0);
                // Outlier detection counts 5xx and gRPC UNAVAILABLE; a
                // gRPC status still to come in trailers is reported then.
                let failed = status.is_server_error() || grpc_code == Some(GRPC_UNAVAILABLE);
                let in_trailers = grpc && grpc_code.is_none() && status == StatusCode::OK;
                let outcome = if status.is_server_error() {
                    &self.metrics.http_error
                } else if grpc_failed {
                    &self.metrics.grpc_error
                } else {
                    &self.metrics.success
                };
                record.finish((!in_trailers).then_some(outcome), failed);
                let span = record.span.take().map(|mut span| {
                    span.answered(status);
                    if let Some(code) = grpc_code {
                        span.grpc_status(code);
                    }
                    span
                });
                let switching = status == StatusCode::SWITCHING_PROTOCOLS;
                if let (true, Some(client_side)) = (switching, upgrade) {
                    let upstream_side = hyper::upgrade::on(&mut res);
                    // The tunnel holds the endpoint's connection slot.
                    tokio::spawn(crate::tunnel::tunnel(
                        client_side,
                        upstream_side,
                        slot.take(),
                    ));
                }
                let (mut parts, body) = res.into_parts();
                // Never both framings to the client (RFC 9112 §6.3): hyper
                // read the body by its Transfer-Encoding, so its
                // Content-Length is a lie.
                if parts.headers.contains_key(header::TRANSFER_ENCODING) {
                    parts.headers.remove(header::CONTENT_LENGTH);
                }
                // kaname answers in its own version (RFC 9110 §6.2): an
                // HTTP/1.0 upstream must not make a 1.1 client's answer 1.0
                // (and its keep-alive go).
                if parts.version == Version::HTTP_10 {
                    parts.version = Version::HTTP_11;
                }
                strip_hop_by_hop(&mut parts.headers, switching);
                let body = body.map_err(|e| Box::new(e) as BoxError).boxed();
                let body = if in_trailers {
                    let judge = judge_by_trailers(up.clone(), endpoint.clone(), &self.metrics);
                    OnEnd::wrap(body, judge)
                } else {
                    body
                };
                // The try's span ends with its body (a gRPC status may be
                // in the trailers).
                let body = match span {
                    Some(span) => OnEnd::wrap(body, move |end| {
                        let mut span = span;
                        if let (true, BodyEnd::Trailers(t)) = (in_trailers, &end) {
                            if let Some(code) = grpc_status(t) {
                                span.grpc_status(code);
                            }
                        }
                        span.end()
                    }),
                    None => body,
                };
                // The connection is the endpoint's until the body is read.
                let body = match slot {
                    Some(slot) => OnEnd::wrap(body, move |_| drop(slot)),
                    None => body,
                };
                Ok(Response::from_parts(parts, body))
            }
            Err(e) => {
                let (kind, why) = classify(&e);
                let outcome = match why {
                    UpstreamFailure::Connect => &self.metrics.connect_failure,
                    _ => &self.metrics.reset,
                };
                record.finish(Some(outcome), true);
                record.end_span(
                    None,
                    Some(match why {
                        UpstreamFailure::Connect => "connect_failure",
                        _ => "reset",
                    }),
                );
                let message = format!(
                    "upstream \"{}\" endpoint {}: {}",
                    up.name,
                    endpoint.addr,
                    error_chain(&e)
                );
                tracing::debug!(%message, "try failed");
                Err(ProxyError::upstream(kind, why, message).at_endpoint(endpoint.addr))
            }
        }
    }
}

/// Safe to send twice, as Go's net/http judges it for a stale connection:
/// an idempotent method and no body.
fn replayable(req: &Request<Body>) -> bool {
    use http::Method;
    use http_body::Body as _;
    req.body().is_end_stream()
        && matches!(
            *req.method(),
            Method::GET
                | Method::HEAD
                | Method::OPTIONS
                | Method::TRACE
                | Method::PUT
                | Method::DELETE
        )
}

/// What a resend needs of a request: its head. Kept as a list of the
/// header lines, not a `HeaderMap` clone: it is made for every replayable
/// try and almost never used, and a map's clone and drop (its index and
/// entries, each allocated) were ~1,400 instructions a request.
struct HeadCopy {
    method: http::Method,
    uri: Uri,
    version: Version,
    headers: Vec<(header::HeaderName, HeaderValue)>,
}

impl HeadCopy {
    fn of(req: &Request<Body>) -> Self {
        HeadCopy {
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            // Every value of a repeated name, in order.
            headers: req
                .headers()
                .iter()
                .map(|(n, v)| (n.clone(), v.clone()))
                .collect(),
        }
    }

    /// The request again, with no body (only requests without one are
    /// sent twice). Extensions are kaname's own bookkeeping, read before
    /// the send; the client does not need them on a resend.
    fn request(&self) -> Request<Body> {
        let mut copy = Request::new(kaname_filters::body::empty());
        *copy.method_mut() = self.method.clone();
        *copy.uri_mut() = self.uri.clone();
        *copy.version_mut() = self.version;
        let headers = copy.headers_mut();
        // The lines came from a map, so they fit in one (the try_ forms
        // only keep a panic off the request path).
        let _ = headers.try_reserve(self.headers.len());
        for (n, v) in &self.headers {
            let _ = headers.try_append(n.clone(), v.clone());
        }
        copy
    }
}

/// How many times a replayable request is sent again after meeting a
/// pooled connection the upstream had closed.
const STALE_RESENDS: usize = 3;

/// "connection closed before message completed" (EOF), or the connection
/// reset under the request: what a keep-alive race with an upstream closing
/// an idle connection looks like. Only asked of requests safe to send twice.
fn closed_before_answer(e: &TryError) -> bool {
    use std::io::ErrorKind as Io;
    let e = match e {
        TryError::H2(e) => return e.not_sent(),
        TryError::Pooled(e) if e.is_connect() => return false,
        TryError::Pooled(e) => e,
    };
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(h) = s.downcast_ref::<hyper::Error>() {
            if h.is_incomplete_message() {
                return true;
            }
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                Io::ConnectionReset | Io::ConnectionAborted | Io::BrokenPipe | Io::UnexpectedEof
            );
        }
        source = s.source();
    }
    false
}

/// The client's answer when its own body failed the try (request-model.md).
fn client_failure(failure: ClientBodyFailure) -> ProxyError {
    let (kind, message) = match failure {
        ClientBodyFailure::Ended => (
            ErrorKind::BadRequest,
            "the request body ended before it was complete",
        ),
        ClientBodyFailure::Stalled => (
            ErrorKind::RequestTimeout,
            "the request body stopped arriving (request_body_timeout)",
        ),
        ClientBodyFailure::TooLarge => (
            ErrorKind::PayloadTooLarge,
            "request body is larger than the route's max_request_body",
        ),
    };
    ProxyError::new(kind, message)
}

/// Connect failure or reset (a failure of the client's body is told by its
/// watch before this is asked).
fn classify(e: &TryError) -> (ErrorKind, UpstreamFailure) {
    if e.is_connect() {
        (ErrorKind::UpstreamUnavailable, UpstreamFailure::Connect)
    } else {
        (ErrorKind::UpstreamUnavailable, UpstreamFailure::Reset)
    }
}

/// "client error (Connect): tcp connect error: Connection refused" — the
/// legacy client's own Display says only the first part (trap 10).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A resend is the request as it was: method, target, version and
    /// every header line, a repeated name's values in their order, a
    /// never-indexed value still marked.
    #[test]
    fn a_head_copy_gives_the_same_head_again() {
        let mut req = Request::new(kaname_filters::body::empty());
        *req.method_mut() = http::Method::DELETE;
        *req.uri_mut() = Uri::from_static("http://127.0.0.1:1/a/b?c=d");
        *req.version_mut() = Version::HTTP_11;
        let h = req.headers_mut();
        h.append(header::HOST, HeaderValue::from_static("svc"));
        h.append("x-a", HeaderValue::from_static("1"));
        h.append("x-a", HeaderValue::from_static("2"));
        h.append("x-a", HeaderValue::from_static("3"));
        let mut id = HeaderValue::from_static("0123");
        id.set_sensitive(true);
        h.append("x-request-id", id);

        let again = HeadCopy::of(&req).request();
        assert_eq!(again.method(), req.method());
        assert_eq!(again.uri(), req.uri());
        assert_eq!(again.version(), req.version());
        assert_eq!(again.headers(), req.headers());
        let xs: Vec<_> = again.headers().get_all("x-a").iter().collect();
        assert_eq!(xs, ["1", "2", "3"]);
        assert!(again.headers()["x-request-id"].is_sensitive());
        assert!(http_body::Body::is_end_stream(again.body()));
    }
}
