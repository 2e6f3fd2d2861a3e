//! The outermost layer of every route stack (and of the no-route stack):
//! the request counted in flight, its duration and status recorded, its
//! gRPC status counted when the call ends, its `x-request-id` on the answer
//! and, with `log.access_log`, one access-log line.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Method, Request, Response};
use kaname_filters::body::{declared_length, BodyEnd, OnEnd};
use kaname_filters::context::TryCount;
use kaname_filters::retry::classify::grpc_status;
use kaname_filters::{
    call_async, Body, ProxyError, RequestContext, Rescued, RouteFuture, RouteService,
};
use prometheus::IntGauge;
use tokio::time::Instant;
use tower::{Layer, Service};

use super::rescue::Rescue;
use crate::headers::X_REQUEST_ID;
use crate::otel::TraceIds;
use crate::request_metrics::RouteMetrics;

/// What one route's requests are counted and logged as.
#[derive(Clone)]
pub struct ObserveLayer {
    pub metrics: Arc<RouteMetrics>,
    /// `kaname_requests_in_flight{listener}`.
    pub in_flight: IntGauge,
    pub access_log: bool,
    /// Empty for the no-route stack.
    pub route: Arc<str>,
    pub upstream: Arc<str>,
}

/// The rescue layer sits right inside observe, unboxed (the stack's
/// `rescue` step is this), so the two cost one boxed future per request.
#[derive(Clone)]
pub struct Observe {
    inner: Rescue,
    layer: Arc<ObserveLayer>,
}

impl Layer<RouteService> for ObserveLayer {
    type Service = Observe;
    fn layer(&self, inner: RouteService) -> Observe {
        Observe {
            inner: Rescue::new(inner),
            layer: Arc::new(self.clone()),
        }
    }
}

impl Service<Request<Body>> for Observe {
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = RouteFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> RouteFuture {
        call_async(self, req, Self::run)
    }
}

struct InFlight<'a>(&'a IntGauge);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Observe {
    async fn run(mut self, req: Request<Body>) -> Result<Response<Body>, ProxyError> {
        let started = Instant::now();
        let l = &self.layer;
        l.in_flight.inc();
        let _in_flight = InFlight(&l.in_flight);
        let method = req.method().clone();
        let grpc = RequestContext::grpc_of(&req);
        let request_id = req.headers().get(&X_REQUEST_ID).cloned();
        let mut req = req;
        let log = l.access_log.then(|| {
            let tries = TryCount::default();
            req.extensions_mut().insert(tries.clone());
            AccessLog::of(&req, request_id.clone(), tries)
        });
        // The rescue layer inside answers every error; this is a backstop.
        let answer = match tower::ServiceExt::ready(&mut self.inner).await {
            Ok(inner) => inner.call(req).await,
            Err(e) => Err(e),
        };
        let mut res = answer.unwrap_or_else(|e| e.into_response(grpc));
        if let Some(id) = request_id {
            res.headers_mut().insert(X_REQUEST_ID.clone(), id);
        }
        let status = res.status();
        let elapsed = started.elapsed();
        l.metrics.observe(&method, status, elapsed);
        if grpc {
            res = observe_grpc(res, &l.metrics);
        }
        if let Some(log) = log {
            log.write(&method, l, &res, elapsed);
        }
        Ok(res)
    }
}

/// The request's half of its access-log line, taken before it goes in.
struct AccessLog {
    path: String,
    request_id: Option<http::HeaderValue>,
    client: Option<std::net::SocketAddr>,
    trace: Option<TraceIds>,
    tries: TryCount,
}

impl AccessLog {
    fn of(req: &Request<Body>, request_id: Option<http::HeaderValue>, tries: TryCount) -> Self {
        AccessLog {
            path: req.uri().path().to_owned(),
            request_id,
            client: req
                .extensions()
                .get::<RequestContext>()
                .map(|c| c.client_addr),
            // The trace step's, else (tracing off) the caller's own.
            trace: req
                .extensions()
                .get::<TraceIds>()
                .copied()
                .or_else(|| TraceIds::of_header(req.headers())),
            tries,
        }
    }

    fn write(
        self,
        method: &Method,
        l: &ObserveLayer,
        res: &Response<Body>,
        elapsed: std::time::Duration,
    ) {
        let rescued = res.extensions().get::<Rescued>();
        let refused_by = rescued.and_then(|r| r.refused_by.as_deref()).unwrap_or("");
        let rule = rescued.and_then(|r| r.rule.as_deref()).unwrap_or("");
        // Why the upstream failed, when kaname answered for it.
        let reason = rescued.and_then(|r| r.failure).map_or("", |f| f.as_str());
        let request_id = self.request_id.as_ref().and_then(|v| v.to_str().ok());
        let trace_id = self.trace.map(|t| t.trace_id.to_string());
        let span_id = self.trace.and_then(|t| t.span_id).map(|s| s.to_string());
        tracing::info!(
            target: "kaname::access",
            method = %method,
            path = %self.path,
            route = &*l.route,
            upstream = &*l.upstream,
            filter = refused_by,
            rule,
            status = res.status().as_u16(),
            // Whole microseconds: `0.076`, not `0.07619200000000001`.
            duration_ms = elapsed.as_micros() as f64 / 1000.0,
            bytes = declared_length(res.headers()),
            request_id = request_id.unwrap_or(""),
            client = %self.client.map(|c| c.to_string()).unwrap_or_default(),
            attempts = self.tries.get(),
            reason,
            trace_id = trace_id.as_deref(),
            span_id = span_id.as_deref(),
        );
    }
}

/// Counts a gRPC call by its final status: from the head of a trailers-only
/// answer, else from the trailers at the end of the body.
fn observe_grpc(res: Response<Body>, metrics: &Arc<RouteMetrics>) -> Response<Body> {
    if let Some(code) = grpc_status(res.headers()) {
        metrics.observe_grpc(code);
        return res;
    }
    if !res.status().is_success() {
        // Not a gRPC answer at all (an HTTP error from the upstream).
        metrics.observe_grpc(crate::grpc_codes::for_http_status(res.status()));
        return res;
    }
    // Counted by the trailers' status; a body that ends without one (the
    // upstream broke off) is UNKNOWN, one the client dropped CANCELLED.
    let metrics = metrics.clone();
    res.map(|b| {
        OnEnd::wrap(b, move |end| {
            metrics.observe_grpc(match end {
                BodyEnd::Trailers(t) => grpc_status(t).unwrap_or(2),
                BodyEnd::Eof | BodyEnd::Error => 2,
                BodyEnd::Dropped => 1,
            })
        })
    })
}
