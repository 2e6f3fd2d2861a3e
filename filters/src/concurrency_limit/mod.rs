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
//! in [`RoutePriority`], put there by [`RoutePriorityLayer`] around the
//! route's filters); else the filter's source — a string claim of the token a
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

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{header, HeaderName, HeaderValue, Request, Response};
use kaname_config::types::{ConcurrencyLimit as ConcurrencyConfig, PriorityClass, PrioritySource};
use tower::{Layer, Service};

pub use queue::{Gauges, Limiter, Permit, Priority, Shed};

use crate::body::OnEnd;
use crate::claims::VerifiedClaims;
use crate::context::RoutePriority;
use crate::metrics::Metrics;
use crate::registry::{BuildError, BuiltFilter, RouteInfo};
use crate::{
    call_async, ready_call, Body, ErrorKind, ProxyError, RouteFuture, RouteLayer, RouteService,
};

/// A built concurrency_limit filter: one limiter, shared by every route
/// naming it.
pub struct ConcurrencyLimit {
    layer: ConcurrencyLayer,
}

/// The filter on a route, as a tower layer (the same on every route).
#[derive(Clone)]
pub struct ConcurrencyLayer {
    name: Arc<str>,
    source: Source,
    limiter: Arc<Limiter>,
}

#[derive(Clone)]
pub struct ConcurrencyService {
    inner: RouteService,
    layer: ConcurrencyLayer,
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

// === impl ConcurrencyLimit ===

impl ConcurrencyLimit {
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
        Ok(ConcurrencyLimit {
            layer: ConcurrencyLayer {
                name: name.into(),
                source,
                limiter: Arc::new(limiter),
            },
        })
    }

    pub fn limiter(&self) -> &Arc<Limiter> {
        &self.layer.limiter
    }

    /// The filter's layer (the same for every route).
    pub fn route_layer(&self, _route: &RouteInfo) -> ConcurrencyLayer {
        self.layer.clone()
    }
}

impl BuiltFilter for ConcurrencyLimit {
    fn layer(&self, route: &RouteInfo) -> RouteLayer {
        RouteLayer::boxed(self.route_layer(route))
    }
}

impl Layer<RouteService> for ConcurrencyLayer {
    type Service = ConcurrencyService;

    fn layer(&self, inner: RouteService) -> ConcurrencyService {
        ConcurrencyService {
            inner,
            layer: self.clone(),
        }
    }
}

// === impl ConcurrencyService ===

impl Service<Request<Body>> for ConcurrencyService {
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = RouteFuture;

    /// The wait for a slot happens inside the response future, where
    /// `queue_timeout` bounds it; readiness is the inner service's.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> RouteFuture {
        call_async(self, req, Self::run)
    }
}

impl ConcurrencyService {
    async fn run(mut self, req: Request<Body>) -> Result<Response<Body>, ProxyError> {
        let l = &self.layer;
        let priority = l.source.priority_of(&req);
        let permit = match l.limiter.acquire(priority).await {
            Ok(p) => p,
            Err(why) => {
                let message = format!(
                    "shed by concurrency_limit \"{}\" ({} priority): {why}",
                    l.name,
                    priority.as_str()
                );
                return Err(ProxyError::refused(ErrorKind::Overloaded, &l.name, message)
                    .with_header(header::RETRY_AFTER, HeaderValue::from_static("1")));
            }
        };
        let res = ready_call(&mut self.inner, req).await?;
        // The slot is the request's until its response body ends, fails or
        // is dropped.
        Ok(res.map(|body| OnEnd::wrap(body, move |_| drop(permit))))
    }
}

/// Every request of a route carries the route's own `priority` to the
/// concurrency_limit filters on it ([`RoutePriority`]): the proxy stacks
/// this outside the filters of a route whose config sets `priority`. One
/// extension insert per request, no boxed future of its own.
#[derive(Clone)]
pub struct RoutePriorityLayer(pub PriorityClass);

impl Layer<RouteService> for RoutePriorityLayer {
    type Service = WithRoutePriority;

    fn layer(&self, inner: RouteService) -> WithRoutePriority {
        WithRoutePriority {
            inner,
            priority: RoutePriority(self.0),
        }
    }
}

#[derive(Clone)]
pub struct WithRoutePriority {
    inner: RouteService,
    priority: RoutePriority,
}

impl Service<Request<Body>> for WithRoutePriority {
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = RouteFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> RouteFuture {
        req.extensions_mut().insert(self.priority);
        self.inner.call(req)
    }
}

#[cfg(test)]
mod tests;
