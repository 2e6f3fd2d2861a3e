//! A route's outermost step when tracing is on: the request's trace
//! context read or started (`traceparent`), its SERVER span from here to
//! the end of the response body, and the ids in the request's extensions
//! for the access log and, when recorded, for the forwarder's CLIENT span
//! of each try.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{header, Request, Response};
use kaname_filters::body::{BodyEnd, OnEnd};
use kaname_filters::retry::classify::grpc_status;
use kaname_filters::{Body, ProxyError, RequestContext, RouteFuture, RouteService};
use tower::{Layer, Service};

use crate::otel::{ServerRequest, ServerSpan, Started, Tracing};

#[derive(Clone)]
pub struct TraceLayer {
    pub tracing: Arc<Tracing>,
    /// The ids go into the request only for the access log's line.
    pub access_log: bool,
    pub listener: Arc<str>,
    pub route: Arc<str>,
}

#[derive(Clone)]
pub struct Trace {
    inner: RouteService,
    layer: Arc<TraceLayer>,
}

impl Layer<RouteService> for TraceLayer {
    type Service = Trace;
    fn layer(&self, inner: RouteService) -> Trace {
        Trace {
            inner,
            layer: Arc::new(self.clone()),
        }
    }
}

impl Service<Request<Body>> for Trace {
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = RouteFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> RouteFuture {
        let mut span = match self.layer.tracing.start(req.headers_mut()) {
            Started::Untraced => return self.inner.call(req),
            Started::Ids(ids) => {
                if self.layer.access_log {
                    req.extensions_mut().insert(ids);
                }
                return self.inner.call(req);
            }
            Started::Recorded(span) => span,
        };
        let l = &self.layer;
        let ctx = req.extensions().get::<RequestContext>();
        span.describe(&ServerRequest {
            method: req.method(),
            path: req.uri().path(),
            tls: ctx.is_some_and(|c| c.tls),
            host: req
                .headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok()),
            client_ip: ctx.and_then(|c| c.client_ip.to_str().ok()),
            version: req.version(),
            listener: &l.listener,
            route: &l.route,
        });
        let grpc = RequestContext::grpc_of(&req);
        if l.access_log {
            req.extensions_mut().insert(span.ids);
        }
        req.extensions_mut().insert(span.trace.clone());
        let answer = self.inner.call(req);
        Box::pin(async move {
            let res = answer.await?;
            span.answered(res.status(), res.headers());
            Ok(end_with_body(span, res, grpc))
        })
    }
}

/// The SERVER span ends with the response body (a gRPC call's status is
/// in its trailers), or when the client drops it.
fn end_with_body(mut span: Box<ServerSpan>, res: Response<Body>, grpc: bool) -> Response<Body> {
    if grpc {
        let code = match grpc_status(res.headers()) {
            Some(code) => Some(code),
            // Not a gRPC answer at all (an HTTP error): its mapped status.
            None if !res.status().is_success() => {
                Some(crate::grpc_codes::for_http_status(res.status()))
            }
            None => None,
        };
        if let Some(code) = code {
            span.grpc_status(code);
            return res.map(|b| OnEnd::wrap(b, move |_| span.end()));
        }
    }
    res.map(|b| {
        OnEnd::wrap(b, move |end| {
            if grpc {
                match end {
                    BodyEnd::Trailers(t) => span.grpc_status(grpc_status(t).unwrap_or(2)),
                    BodyEnd::Eof | BodyEnd::Error => span.grpc_status(2),
                    BodyEnd::Dropped => span.grpc_status(1),
                }
            }
            span.end()
        })
    })
}
