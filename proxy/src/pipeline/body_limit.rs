//! `max_request_body`: a body declared larger is refused (413) before any
//! filter or the upstream sees it; one that grows larger is cut by its
//! `ClientBody` (the listener wrapped it; this step sets the bound on its
//! watch), which the forwarder reports as the client's 413.

use std::task::{Context, Poll};

use http::{Request, Response};
use kaname_filters::body::declared_length;
use kaname_filters::client_body::ClientBodyWatch;
use kaname_filters::{Body, ErrorKind, ProxyError, RouteFuture, RouteService};
use tower::{Layer, Service};

#[derive(Clone)]
pub struct BodyLimitLayer {
    pub limit: u64,
}

#[derive(Clone)]
pub struct BodyLimit {
    inner: RouteService,
    limit: u64,
}

impl Layer<RouteService> for BodyLimitLayer {
    type Service = BodyLimit;
    fn layer(&self, inner: RouteService) -> BodyLimit {
        BodyLimit {
            inner,
            limit: self.limit,
        }
    }
}

impl Service<Request<Body>> for BodyLimit {
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = RouteFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> RouteFuture {
        let limit = self.limit;
        if declared_length(req.headers()).is_some_and(|n| n > limit) {
            return super::refuse(ProxyError::new(
                ErrorKind::PayloadTooLarge,
                format!("request body is larger than the limit of {limit} bytes"),
            ));
        }
        if let Some(watch) = ClientBodyWatch::of(req.extensions()) {
            watch.limit_to(limit);
        }
        self.inner.call(req)
    }
}
