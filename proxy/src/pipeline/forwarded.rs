//! What the upstream learns of the hop: `x-forwarded-for` and
//! `x-forwarded-proto` (the trace context is the trace step's).

use std::task::{Context, Poll};

use http::{Request, Response};
use kaname_filters::{Body, ProxyError, RequestContext, RouteFuture, RouteService};
use tower::{Layer, Service};

use crate::headers::add_forwarded;

#[derive(Clone)]
pub struct ForwardedLayer;

#[derive(Clone)]
pub struct Forwarded {
    inner: RouteService,
}

impl Layer<RouteService> for ForwardedLayer {
    type Service = Forwarded;
    fn layer(&self, inner: RouteService) -> Forwarded {
        Forwarded { inner }
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
        self.inner.call(req)
    }
}
