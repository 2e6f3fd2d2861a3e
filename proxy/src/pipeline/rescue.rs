//! Where errors become answers: every `ProxyError` a step, filter or the
//! forwarder returns is turned here into kaname's answer (the `kaname-error`
//! kind, JSON or a trailers-only gRPC answer, the error's own headers, and
//! the [`kaname_filters::Rescued`] record the access log reads). Nothing
//! else in kaname builds an error answer for a proxied request.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{Request, Response};
use kaname_filters::{Body, ProxyError, RequestContext, RouteFuture, RouteService};
use tower::{Layer, Service};

#[derive(Clone)]
pub struct RescueLayer;

#[derive(Clone)]
pub struct Rescue(RouteService);

impl Rescue {
    pub fn new(inner: RouteService) -> Self {
        Rescue(inner)
    }
}

impl Layer<RouteService> for RescueLayer {
    type Service = Rescue;
    fn layer(&self, inner: RouteService) -> Rescue {
        Rescue(inner)
    }
}

impl Service<Request<Body>> for Rescue {
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = RescueFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> RescueFuture {
        RescueFuture {
            grpc: RequestContext::grpc_of(&req),
            inner: self.0.call(req),
        }
    }
}

/// The inner future, its error answered.
pub struct RescueFuture {
    inner: RouteFuture,
    grpc: bool,
}

impl Future for RescueFuture {
    type Output = Result<Response<Body>, ProxyError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let grpc = self.grpc;
        Poll::Ready(Ok(match std::task::ready!(self.inner.as_mut().poll(cx)) {
            Ok(res) => res,
            Err(e) => {
                tracing::debug!(error = %e, "answered by kaname");
                e.into_response(grpc)
            }
        }))
    }
}
