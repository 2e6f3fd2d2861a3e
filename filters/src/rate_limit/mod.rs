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

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use governor::clock::Clock;
use http::{header, HeaderMap, HeaderName, HeaderValue, Request, Response};
use kaname_config::types::RateLimit as RateLimitConfig;
use tower::Service;

pub use buckets::{Buckets, Decision, Key};
pub use key::KeySource;

use crate::context::RequestContext;
use crate::metrics::{LazyCounter, Metrics};
use crate::registry::{BuildError, FilterLayer, RouteInfo};
use crate::{is_grpc, Body, ErrorKind, RouteService};

/// A built rate_limit filter: its key and its buckets.
pub struct RateLimitLayer<C: Clock = governor::clock::MonotonicClock> {
    name: Arc<str>,
    key: Arc<KeySource>,
    buckets: Arc<Buckets<C>>,
    metrics: Arc<Metrics>,
}

/// The filter on one route.
pub struct RateLimitService<C: Clock = governor::clock::MonotonicClock> {
    inner: RouteService,
    name: Arc<str>,
    key: Arc<KeySource>,
    buckets: Arc<Buckets<C>>,
    /// `RateLimit-Limit`, made once.
    limit: HeaderValue,
    limited: LazyCounter,
}

// === impl RateLimitLayer ===

impl RateLimitLayer {
    pub fn new(
        name: &str,
        config: &RateLimitConfig,
        metrics: &Arc<Metrics>,
    ) -> Result<Self, BuildError> {
        let buckets = Buckets::new(config.rate, config.burst, config.max_keys);
        Self::with_buckets(name, config, metrics, buckets)
    }
}

impl<C: Clock> RateLimitLayer<C> {
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
        Ok(RateLimitLayer {
            name: name.into(),
            key: Arc::new(KeySource::new(&config.key).map_err(invalid)?),
            buckets: Arc::new(buckets),
            metrics: metrics.clone(),
        })
    }

    /// The buckets, shared by every route (tests and diagnostics).
    pub fn buckets(&self) -> &Arc<Buckets<C>> {
        &self.buckets
    }
}

impl<C> FilterLayer for RateLimitLayer<C>
where
    C: Clock + Send + Sync + 'static,
{
    fn wrap(&self, route: &RouteInfo, inner: RouteService) -> RouteService {
        RouteService::new(RateLimitService {
            inner,
            name: self.name.clone(),
            key: self.key.clone(),
            limit: HeaderValue::from(self.buckets.limit()),
            buckets: self.buckets.clone(),
            limited: LazyCounter::new(
                &self.metrics.rate_limited_total,
                &[&*self.name, &*route.route],
            ),
        })
    }
}

// === impl RateLimitService ===

impl<C: Clock> Clone for RateLimitService<C> {
    fn clone(&self) -> Self {
        RateLimitService {
            inner: self.inner.clone(),
            name: self.name.clone(),
            key: self.key.clone(),
            buckets: self.buckets.clone(),
            limit: self.limit.clone(),
            limited: self.limited.clone(),
        }
    }
}

impl<C: Clock> Service<Request<Body>> for RateLimitService<C> {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> ResponseFuture {
        let key = self.key.key_of(&req, self.buckets.hasher());
        let limit = self.limit.clone();
        match self.buckets.check(&key) {
            Decision::Allow { remaining, reset } => ResponseFuture::Allowed {
                inner: self.inner.call(req),
                headers: RateHeaders {
                    limit,
                    remaining,
                    reset,
                },
            },
            Decision::Deny { wait, reset } => {
                self.limited.inc();
                let grpc = req
                    .extensions()
                    .get::<RequestContext>()
                    .map_or_else(|| is_grpc(req.headers()), |c| c.grpc);
                let message = format!(
                    "rate limit of filter \"{}\" exceeded; retry in {}s",
                    self.name,
                    whole_seconds(wait)
                );
                let mut res = ErrorKind::RateLimited.response(&message, grpc);
                res.extensions_mut()
                    .insert(crate::context::RefusedBy(self.name.clone()));
                let h = res.headers_mut();
                h.insert(header::RETRY_AFTER, seconds_value(whole_seconds(wait)));
                RateHeaders {
                    limit,
                    remaining: 0,
                    reset,
                }
                .write(h);
                ResponseFuture::Refused(Some(res))
            }
        }
    }
}

/// Whole seconds, rounded up, at least 1: a client told `0` would retry at
/// once and be refused again.
fn whole_seconds(d: Duration) -> u64 {
    (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
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
    Refused(Option<Response<Body>>),
}

impl Future for ResponseFuture {
    type Output = Result<Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // Both variants are Unpin: the inner future is a `Pin<Box<_>>`.
        match self.get_mut() {
            ResponseFuture::Allowed { inner, headers } => {
                let Ok(mut res) = std::task::ready!(inner.as_mut().poll(cx));
                headers.write(res.headers_mut());
                Poll::Ready(Ok(res))
            }
            ResponseFuture::Refused(res) => match res.take() {
                Some(res) => Poll::Ready(Ok(res)),
                None => Poll::Pending, // polled after completion: never again ready
            },
        }
    }
}

#[cfg(test)]
mod tests;
