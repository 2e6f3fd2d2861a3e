//! The `concurrency_limit` filter: queue-depth control and load shedding.
//! At most `max_in_flight` requests are inside at once; up to `max_queue`
//! more wait, high priority before normal before low; a request that waited
//! `queue_timeout`, or finds the queue full with no lower-priority waiter to
//! displace, is shed with 503 `overloaded` and `Retry-After: 1` (or
//! RESOURCE_EXHAUSTED for gRPC).
//!
//! ```yaml
//! protect:
//!   concurrency_limit:
//!     max_in_flight: 64
//!     max_queue: 256
//!     queue_timeout: 100ms
//!     priority: { claim: tier }   # or { header: x-priority }; high | normal | low
//! ```
//!
//! A request's class: the route's own `priority` when it has one (carried
//! in [`RoutePriority`], put there by [`with_route_priority`] around the
//! route's chain); else the filter's source — a string claim of the token a
//! `jwt` filter earlier on the route verified ([`VerifiedClaims`]), or a
//! header, which any client can set and so is only for trusted clients;
//! else normal. A missing, non-string or unknown value is normal. Priority
//! from a client is a claim, not a fact: with a header source, one client
//! sending `high` on every request pushes everyone else's high requests out
//! of the queue.
//!
//! A slot is held until the response *body* ends (or is dropped), not just
//! until its head: the upstream is still working while it streams the body,
//! and that work is what the limit protects (Envoy's and Netflix's
//! concurrency limits count a request until it completes). The cost: a
//! long-lived stream (SSE, a gRPC server stream) holds its slot for its
//! whole life, so routes carrying those want their own filter.
//!
//! The slots and queue are in `queue.rs`, one limiter per filter, shared by
//! every route that names it.

mod queue;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{header, HeaderName, HeaderValue, Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use kaname_config::types::{ConcurrencyLimit as ConcurrencyConfig, PriorityClass, PrioritySource};
use tower::Service;

pub use queue::{Gauges, Limiter, Permit, Priority, Shed};

use crate::claims::VerifiedClaims;
use crate::context::{RefusedBy, RequestContext, RoutePriority};
use crate::metrics::Metrics;
use crate::registry::{BuildError, FilterLayer, RouteInfo};
use crate::{is_grpc, Body, BoxError, ErrorKind, RouteFuture, RouteService};

/// A built concurrency_limit filter.
pub struct ConcurrencyLayer {
    name: Arc<str>,
    source: Source,
    limiter: Arc<Limiter>,
}

#[derive(Clone)]
pub struct ConcurrencyService {
    inner: RouteService,
    name: Arc<str>,
    source: Source,
    limiter: Arc<Limiter>,
}

/// Where a request's class comes from on a route without its own priority.
#[derive(Debug, Clone)]
enum Source {
    /// Every request is normal.
    None,
    Header(HeaderName),
    Claim(Arc<str>),
}

impl Source {
    fn priority_of(&self, req: &Request<Body>) -> Priority {
        if let Some(RoutePriority(p)) = req.extensions().get::<RoutePriority>() {
            return (*p).into();
        }
        match self {
            Source::None => Priority::Normal,
            Source::Header(h) => Priority::from_header(req.headers().get(h)),
            Source::Claim(c) => Priority::from_claim(req.extensions().get::<VerifiedClaims>(), c),
        }
    }
}

// === impl ConcurrencyLayer ===

impl ConcurrencyLayer {
    pub fn new(
        name: &str,
        config: &ConcurrencyConfig,
        metrics: &Arc<Metrics>,
    ) -> Result<Self, BuildError> {
        let source = match &config.priority {
            Some(PrioritySource::Header(h)) => {
                Source::Header(HeaderName::try_from(h.as_str()).map_err(|e| {
                    BuildError::Invalid {
                        filter: name.to_owned(),
                        message: format!("priority header {h:?}: {e}"),
                    }
                })?)
            }
            Some(PrioritySource::Claim(c)) => Source::Claim(c.as_str().into()),
            None => Source::None,
        };
        let gauges = Gauges {
            in_flight: metrics.concurrency_in_flight.with_label_values(&[name]),
            queue_depth: metrics.queue_depth.with_label_values(&[name]),
            shed: Priority::ALL.map(|p| metrics.shed_total.with_label_values(&[name, p.as_str()])),
        };
        let limiter = Limiter::new(
            config.max_in_flight,
            config.max_queue,
            config.queue_timeout,
            gauges,
        );
        Ok(ConcurrencyLayer {
            name: name.into(),
            source,
            limiter: Arc::new(limiter),
        })
    }

    pub fn limiter(&self) -> &Arc<Limiter> {
        &self.limiter
    }
}

impl FilterLayer for ConcurrencyLayer {
    fn wrap(&self, _route: &RouteInfo, inner: RouteService) -> RouteService {
        RouteService::from_boxed(ConcurrencyService {
            inner,
            name: self.name.clone(),
            source: self.source.clone(),
            limiter: self.limiter.clone(),
        })
    }
}

// === impl ConcurrencyService ===

impl Service<Request<Body>> for ConcurrencyService {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    /// Always ready: the wait happens inside the response future, where
    /// `queue_timeout` bounds it (the listener never calls `poll_ready`).
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let mut this = self.clone();
        Box::pin(async move { Ok(this.run(req).await) })
    }
}

impl ConcurrencyService {
    async fn run(&mut self, req: Request<Body>) -> Response<Body> {
        let priority = self.source.priority_of(&req);
        let permit = match self.limiter.acquire(priority).await {
            Ok(p) => p,
            Err(why) => {
                let grpc = req
                    .extensions()
                    .get::<RequestContext>()
                    .map_or_else(|| is_grpc(req.headers()), |c| c.grpc);
                let message = format!(
                    "shed by concurrency_limit \"{}\" ({} priority): {why}",
                    self.name,
                    priority.as_str()
                );
                let mut res = ErrorKind::Overloaded.response(&message, grpc);
                res.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                res.extensions_mut().insert(RefusedBy(self.name.clone()));
                return res;
            }
        };
        let res = self
            .inner
            .call(req)
            .await
            .unwrap_or_else(|never| match never {});
        res.map(|body| {
            PermitBody {
                inner: body,
                permit: Some(permit),
            }
            .boxed()
        })
    }
}

/// Wraps a route's whole chain (outside its first filter) so that every
/// request of the route carries the route's own `priority` to the
/// concurrency_limit filters on it ([`RoutePriority`]). For the proxy to
/// call when it builds a route whose config sets `priority`; it costs one
/// extension insert per request, and no extra boxed future.
pub fn with_route_priority(inner: RouteService, priority: PriorityClass) -> RouteService {
    RouteService::from_boxed(WithRoutePriority {
        inner,
        priority: RoutePriority(priority),
    })
}

#[derive(Clone)]
struct WithRoutePriority {
    inner: RouteService,
    priority: RoutePriority,
}

impl Service<Request<Body>> for WithRoutePriority {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = RouteFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<Body>) -> RouteFuture {
        req.extensions_mut().insert(self.priority);
        self.inner.call(req)
    }
}

/// A response body holding its request's slot until it ends, fails or is
/// dropped.
struct PermitBody {
    inner: Body,
    permit: Option<Permit>,
}

impl HttpBody for PermitBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            this.permit = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests;
