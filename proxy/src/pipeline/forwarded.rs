//! What the upstream learns of the hop: `x-forwarded-for` and
//! `x-forwarded-proto`, and with `tracing.start_traces` a W3C
//! `traceparent` where the request has none.

use std::task::{Context, Poll};

use http::{Request, Response};
use kaname_filters::{Body, ProxyError, RequestContext, RouteFuture, RouteService};
use tower::{Layer, Service};

use crate::headers::{add_forwarded, ensure_traceparent};

#[derive(Clone)]
pub struct ForwardedLayer {
    pub start_traces: bool,
}

#[derive(Clone)]
pub struct Forwarded {
    inner: RouteService,
    start_traces: bool,
}

impl Layer<RouteService> for ForwardedLayer {
    type Service = Forwarded;
    fn layer(&self, inner: RouteService) -> Forwarded {
        Forwarded {
            inner,
            start_traces: self.start_traces,
        }
    }
}

impl Service<Request<Body>> for Forwarded {
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = RouteFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> RouteFuture {
        let client = req
            .extensions()
            .get::<RequestContext>()
            .map(|c| (c.client_ip.clone(), c.tls));
        if let Some((ip, tls)) = client {
            add_forwarded(req.headers_mut(), &ip, tls);
        }
        if self.start_traces {
            ensure_traceparent(req.headers_mut());
        }
        self.inner.call(req)
    }
}
