//! The `rate_limit` filter: a token bucket per key (governor's GCRA), with
//! `burst` tokens refilled at `rate`. A request finding its bucket empty is
//! refused at once (never queued): 429 `rate_limited`, or
//! RESOURCE_EXHAUSTED for gRPC.
//!
//! ```yaml
//! per-user:
//!   rate_limit:
//!     key: jwt:sub          # global | client_ip | header:NAME | jwt:CLAIM
//!     rate: 100/s
//!     burst: 200
//!     max_keys: 100000
//! ```
//!
//! Every answer carries `RateLimit-Limit` (the burst), `RateLimit-Remaining`
//! (tokens left) and `RateLimit-Reset` (seconds until the bucket is full
//! again); a refusal adds `Retry-After` (seconds until the next token,
//! rounded up, at least 1). Requests without the key share one anonymous
//! bucket. The buckets (`buckets.rs`, with its memory policy) are shared by
//! every route naming the filter; the key is read by `key.rs`. At most
//! `max_keys` keys are kept; at the bound a new key still gets its own
//! bucket and the least recently used (idle ones first) are evicted,
//! counted in `kaname_limits_hit_total{limit="rate_limit_keys"}`.

mod buckets;
mod key;
mod shared;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use governor::clock::Clock;
use http::{header, HeaderMap, HeaderName, HeaderValue, Request, Response};
use kaname_config::types::RateLimit as RateLimitConfig;
use tower::{Layer, Service};

pub use buckets::{Buckets, Decision, Key};
pub use key::KeySource;
pub use shared::{SharedBuckets, SharedDecision, StoreUnavailable};

use crate::metrics::{LazyCounter, Metrics};
use crate::registry::{BuildError, BuiltFilter, RouteInfo};
use crate::time::whole_seconds;
use crate::{call_async, Body, ErrorKind, ProxyError, RouteFuture, RouteLayer, RouteService};
use kaname_config::store::OnStoreError;

/// A built rate_limit filter: its key and its buckets, shared by every
/// route naming it.
pub struct RateLimit<C: Clock = governor::clock::MonotonicClock> {
    name: Arc<str>,
    key: Arc<KeySource>,
    buckets: Arc<Buckets<C>>,
    metrics: Arc<Metrics>,
    store: Option<Store>,
}

/// `store:` of the filter: the shared buckets, and what decides while they fail.
#[derive(Clone)]
struct Store {
    buckets: Arc<dyn SharedBuckets>,
    on_error: OnStoreError,
    /// Decisions made without the store, by `on_store_error`.
    fallbacks: LazyCounter,
}

/// The filter on one route, as a tower layer.
pub struct RateLimitLayer<C: Clock = governor::clock::MonotonicClock> {
    name: Arc<str>,
    key: Arc<KeySource>,
    buckets: Arc<Buckets<C>>,
    /// `RateLimit-Limit`, made once.
    limit: HeaderValue,
    limited: LazyCounter,
    store: Option<Store>,
}

/// The filter on one route, around its inner service.
pub struct RateLimitService<C: Clock = governor::clock::MonotonicClock> {
    inner: RouteService,
    layer: RateLimitLayer<C>,
}

// === impl RateLimit ===

impl RateLimit {
    pub fn new(
        name: &str,
        config: &RateLimitConfig,
        metrics: &Arc<Metrics>,
    ) -> Result<Self, BuildError> {
        let buckets = Buckets::new(config.rate, config.burst, config.max_keys);
        Self::with_buckets(name, config, metrics, buckets)
    }
}

impl<C: Clock> RateLimit<C> {
    /// As `new`, with buckets on another clock (tests).
    pub fn with_buckets<E: std::fmt::Display>(
        name: &str,
        config: &RateLimitConfig,
        metrics: &Arc<Metrics>,
        buckets: Result<Buckets<C>, E>,
    ) -> Result<Self, BuildError> {
        let invalid = |message: String| BuildError::Invalid {
            filter: name.to_owned(),
            message,
        };
        let buckets = buckets.map_err(|e| invalid(e.to_string()))?;
        buckets.count_evictions_in(
            metrics
                .limits_hit_total
                .with_label_values(&["rate_limit_keys"]),
        );
        Ok(RateLimit {
            name: name.into(),
            key: Arc::new(KeySource::new(&config.key).map_err(invalid)?),
            buckets: Arc::new(buckets),
            metrics: metrics.clone(),
            store: None,
        })
    }

    /// Decides in `buckets`, shared with other sidecars; this process's
    /// own buckets decide only when `on_error` is local and the store fails.
    pub fn with_store(mut self, buckets: Arc<dyn SharedBuckets>, on_error: OnStoreError) -> Self {
        self.store = Some(Store {
            buckets,
            on_error,
            fallbacks: LazyCounter::new(
                &self.metrics.rate_limit_store_fallbacks_total,
                &[&*self.name],
            ),
        });
        self
    }

    /// The buckets, shared by every route (tests and diagnostics).
    pub fn buckets(&self) -> &Arc<Buckets<C>> {
        &self.buckets
    }

    /// The filter's layer for `route`.
    pub fn route_layer(&self, route: &RouteInfo) -> RateLimitLayer<C> {
        RateLimitLayer {
            name: self.name.clone(),
            key: self.key.clone(),
            limit: HeaderValue::from(self.buckets.limit()),
            buckets: self.buckets.clone(),
            limited: LazyCounter::new(
                &self.metrics.rate_limited_total,
                &[&*self.name, &*route.route],
            ),
            store: self.store.clone(),
        }
    }
}

impl<C> BuiltFilter for RateLimit<C>
where
    C: Clock + Send + Sync + 'static,
{
    fn layer(&self, route: &RouteInfo) -> RouteLayer {
        RouteLayer::new(self.route_layer(route))
    }
}

// === impl RateLimitLayer ===

impl<C: Clock> Clone for RateLimitLayer<C> {
    fn clone(&self) -> Self {
        RateLimitLayer {
            name: self.name.clone(),
            key: self.key.clone(),
            buckets: self.buckets.clone(),
            limit: self.limit.clone(),
            limited: self.limited.clone(),
            store: self.store.clone(),
        }
    }
}

impl<C: Clock> Layer<RouteService> for RateLimitLayer<C> {
    type Service = RateLimitService<C>;

    fn layer(&self, inner: RouteService) -> RateLimitService<C> {
        RateLimitService {
            inner,
            layer: self.clone(),
        }
    }
}

// === impl RateLimitService ===

impl<C: Clock> Clone for RateLimitService<C> {
    fn clone(&self) -> Self {
        RateLimitService {
            inner: self.inner.clone(),
            layer: self.layer.clone(),
        }
    }
}

impl<C: Clock + Send + Sync + 'static> Service<Request<Body>> for RateLimitService<C> {
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> ResponseFuture {
        if let Some(store) = self.layer.store.clone() {
            return ResponseFuture::Shared(call_async(self, req, move |svc, req| {
                svc.decide_in_store(store, req)
            }));
        }
        let key = self.layer.key.key_of(&req, self.layer.buckets.hasher());
        let decision = self.layer.buckets.check(&key);
        self.answer(req, decision)
    }
}

impl<C: Clock + Send + Sync + 'static> RateLimitService<C> {
    /// The decision of the shared buckets, or `on_store_error`'s when the
    /// store gives none in time.
    async fn decide_in_store(
        mut self,
        store: Store,
        req: Request<Body>,
    ) -> Result<Response<Body>, ProxyError> {
        let decision = match store.buckets.take(self.layer.key.shared_key_of(&req)).await {
            Ok(d) => d,
            Err(StoreUnavailable) => {
                store.fallbacks.inc();
                match shared::fallback(store.on_error, self.layer.buckets.limit()) {
                    Some(d) => d,
                    None => {
                        let key = self.layer.key.key_of(&req, self.layer.buckets.hasher());
                        self.layer.buckets.check(&key)
                    }
                }
            }
        };
        self.answer(req, decision).await
    }

    fn answer(&mut self, req: Request<Body>, decision: Decision) -> ResponseFuture {
        let l = &self.layer;
        let limit = l.limit.clone();
        match decision {
            Decision::Allow { remaining, reset } => ResponseFuture::Allowed {
                inner: self.inner.call(req),
                headers: RateHeaders {
                    limit,
                    remaining,
                    reset,
                },
            },
            Decision::Deny { wait, reset } => {
                l.limited.inc();
                let message = format!(
                    "rate limit of filter \"{}\" exceeded; retry in {}s",
                    l.name,
                    whole_seconds(wait)
                );
                let mut refusal = ProxyError::refused(ErrorKind::RateLimited, &l.name, message)
                    .with_header(header::RETRY_AFTER, seconds_value(whole_seconds(wait)));
                RateHeaders {
                    limit,
                    remaining: 0,
                    reset,
                }
                .write(&mut refusal.headers);
                ResponseFuture::Refused(Some(refusal))
            }
        }
    }
}

static RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
static RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
static RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

/// A header value for a count of seconds: those up to two minutes come
/// from a table, as a value made from a number allocates.
fn seconds_value(n: u64) -> HeaderValue {
    static TABLE: std::sync::LazyLock<Vec<HeaderValue>> =
        std::sync::LazyLock::new(|| (0..=120u64).map(HeaderValue::from).collect());
    usize::try_from(n)
        .ok()
        .and_then(|i| TABLE.get(i))
        .cloned()
        .unwrap_or_else(|| HeaderValue::from(n))
}

/// The `RateLimit-*` headers of one decision.
#[derive(Debug, Clone)]
pub struct RateHeaders {
    /// Fixed per filter, made once.
    limit: HeaderValue,
    remaining: u32,
    reset: Duration,
}

impl RateHeaders {
    /// Writes the headers, unless an inner filter (or the upstream) already
    /// reported a tighter limit: the client should see the one that will
    /// stop it first.
    fn write(&self, h: &mut HeaderMap) {
        let tighter_inside = h
            .get(&RATELIMIT_REMAINING)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .is_some_and(|inner| inner < u64::from(self.remaining));
        if tighter_inside {
            return;
        }
        h.insert(RATELIMIT_LIMIT.clone(), self.limit.clone());
        h.insert(
            RATELIMIT_REMAINING.clone(),
            HeaderValue::from(self.remaining),
        );
        h.insert(
            RATELIMIT_RESET.clone(),
            seconds_value(whole_seconds(self.reset)),
        );
    }
}

/// The inner call with headers to add, or a refusal made up front.
pub enum ResponseFuture {
    Allowed {
        inner: <RouteService as Service<Request<Body>>>::Future,
        headers: RateHeaders,
    },
    Refused(Option<ProxyError>),
    /// Decided in a shared store first.
    Shared(RouteFuture),
}

impl Future for ResponseFuture {
    type Output = Result<Response<Body>, ProxyError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // Both variants are Unpin: the inner future is a `Pin<Box<_>>`.
        match self.get_mut() {
            ResponseFuture::Allowed { inner, headers } => {
                let mut res = std::task::ready!(inner.as_mut().poll(cx))?;
                headers.write(res.headers_mut());
                Poll::Ready(Ok(res))
            }
            ResponseFuture::Shared(f) => f.as_mut().poll(cx),
            ResponseFuture::Refused(refusal) => match refusal.take() {
                Some(e) => Poll::Ready(Err(e)),
                None => Poll::Pending, // polled after completion: never again ready
            },
        }
    }
}

#[cfg(test)]
mod tests;
