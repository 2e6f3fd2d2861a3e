//! The `retry` filter: sends a failed request again, a bounded number of
//! times, to another endpoint when there is one.
//!
//! ```yaml
//! retries:
//!   retry:
//!     attempts: 3
//!     retry_on: [connect_failure, reset, timeout, 503, unavailable]
//!     per_try_timeout: 500ms
//!     backoff: { base: 25ms, max: 250ms }
//!     budget: { ratio: 0.2, min_per_second: 10 }
//!     max_body_bytes: 64KiB
//!     max_buffered_bytes: 64MiB
//! ```
//!
//! The loop is a plain `async fn` (as linkerd's `http/retry`): a try, then
//! the decision, then the wait. A response is returned to the client only
//! once it is final, so an answer whose body started to flow is never
//! retried by construction. Each way a retry can end has its reason:
//! the answer is not retryable, tries are used up, the body cannot be
//! replayed, `Retry-After` asks for longer than `backoff.max`, or the budget
//! (kept per upstream, shared by the routes naming this filter) is spent.
//!
//! Bodies kept for replay are bounded per request (`max_body_bytes`) and
//! across all requests of the process at once (`max_buffered_bytes`, one
//! pool shared by every retry filter, see `replay.rs`): a body that does
//! not fit is sent once, never retried.

mod backoff;
mod budget;
pub mod classify;
mod replay;

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{header, Method, Request, Response, StatusCode};
use kaname_config::types::{Condition, Retry as RetryConfig, RetryMethods};
use tower::{Layer, Service};

pub use backoff::{Backoff, InvalidBackoff};
pub use budget::RetryBudget;
pub use replay::{BufferPool, Replay, ReplayLimits};

use crate::client_body::ClientBodyWatch;
use crate::context::{AvoidEndpoint, Deadline, EndpointSlot, RequestContext, UpstreamFailure};
use crate::metrics::{LazyCounter, Metrics};
use crate::per_upstream::PerUpstream;
use crate::registry::{BuildError, BuiltFilter, RouteInfo};
use crate::{
    call_async, ready_call, Body, ErrorKind, ProxyError, RouteFuture, RouteLayer, RouteService,
};
use classify::Observed;

/// The settings of one retry filter, checked.
#[derive(Debug)]
struct Policy {
    attempts: u32,
    retry_on: Vec<Condition>,
    /// Upper-case methods that may be retried (gRPC calls are exempt).
    methods: Vec<Method>,
    per_try_timeout: Option<Duration>,
    backoff: Backoff,
    max_body: usize,
    /// What a request may keep for replay (`max_body` included).
    replay: Arc<ReplayLimits>,
    /// `retry_on` names a gRPC code, so trailers may be worth a peek.
    grpc_codes: bool,
    ratio: f64,
    min_per_second: u32,
}

/// A built retry filter; budgets per upstream live here.
pub struct Retry {
    policy: Arc<Policy>,
    metrics: Arc<Metrics>,
    budgets: PerUpstream<RetryBudget>,
}

/// The filter on one route (its upstream's budget), as a tower layer.
#[derive(Clone)]
pub struct RetryLayer {
    policy: Arc<Policy>,
    budget: Arc<RetryBudget>,
    retries: LazyCounter,
    exhausted: LazyCounter,
}

/// The retry service of one route.
#[derive(Clone)]
pub struct RetryService {
    inner: RouteService,
    layer: RetryLayer,
}

// === impl Retry ===

impl Retry {
    pub fn new(name: &str, cfg: &RetryConfig, metrics: &Arc<Metrics>) -> Result<Self, BuildError> {
        Self::with_pool(name, cfg, metrics, BufferPool::global())
    }

    /// As `new`, keeping replay copies in `pool` rather than the process's
    /// (tests).
    pub fn with_pool(
        name: &str,
        cfg: &RetryConfig,
        metrics: &Arc<Metrics>,
        pool: Arc<BufferPool>,
    ) -> Result<Self, BuildError> {
        let invalid = |message: String| BuildError::Invalid {
            filter: name.to_owned(),
            message,
        };
        let backoff =
            Backoff::new(cfg.backoff_base, cfg.backoff_max).map_err(|e| invalid(e.to_string()))?;
        let methods = match &cfg.methods {
            RetryMethods::Idempotent => vec![
                Method::GET,
                Method::HEAD,
                Method::OPTIONS,
                Method::PUT,
                Method::DELETE,
                Method::TRACE,
            ],
            RetryMethods::List(list) => list
                .iter()
                .map(|m| Method::from_bytes(m.as_bytes()).map_err(|e| invalid(e.to_string())))
                .collect::<Result<_, _>>()?,
        };
        let max_body = usize::try_from(cfg.max_body_bytes).unwrap_or(usize::MAX);
        let replay = Arc::new(ReplayLimits {
            pool,
            per_request: max_body,
            total: usize::try_from(cfg.max_buffered_bytes).unwrap_or(usize::MAX),
            refused: metrics
                .limits_hit_total
                .with_label_values(&["replay_buffer"]),
        });
        Ok(Retry {
            policy: Arc::new(Policy {
                attempts: cfg.attempts.max(1),
                retry_on: cfg.retry_on.clone(),
                methods,
                per_try_timeout: cfg.per_try_timeout,
                backoff,
                max_body,
                replay,
                grpc_codes: cfg.retry_on.iter().any(|c| matches!(c, Condition::Grpc(_))),
                ratio: cfg.budget_ratio,
                min_per_second: cfg.budget_min_per_second,
            }),
            metrics: metrics.clone(),
            budgets: PerUpstream::default(),
        })
    }

    /// The filter's layer for `route`: the budget of its upstream.
    pub fn route_layer(&self, route: &RouteInfo) -> RetryLayer {
        let labels = [&*route.route, &*route.upstream];
        let p = &self.policy;
        RetryLayer {
            policy: p.clone(),
            budget: self.budgets.get(&route.upstream, || {
                RetryBudget::new(p.ratio, p.min_per_second)
            }),
            retries: LazyCounter::new(&self.metrics.retries_total, &labels),
            exhausted: LazyCounter::new(&self.metrics.retry_budget_exhausted_total, &labels),
        }
    }
}

impl BuiltFilter for Retry {
    fn layer(&self, route: &RouteInfo) -> RouteLayer {
        RouteLayer::boxed(self.route_layer(route))
    }
}

impl Layer<RouteService> for RetryLayer {
    type Service = RetryService;

    fn layer(&self, inner: RouteService) -> RetryService {
        RetryService {
            inner,
            layer: self.clone(),
        }
    }
}

// === impl RetryService ===

impl Service<Request<Body>> for RetryService {
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

type TryResult = Result<Response<Body>, ProxyError>;

impl RetryService {
    async fn run(mut self, req: Request<Body>) -> TryResult {
        let p = self.layer.policy.clone();
        self.layer.budget.deposit();
        let grpc = RequestContext::grpc_of(&req);
        // Every gRPC call is a POST: `methods` does not apply to them.
        let may_retry = p.attempts > 1 && (grpc || p.methods.contains(req.method()));
        if !may_retry {
            return self.try_once(req).await;
        }
        let (parts, body) = req.into_parts();
        let too_large =
            crate::body::declared_length(&parts.headers).is_some_and(|n| n > p.max_body as u64);
        // Dropped when this loop is done with the request: the copy is no
        // longer kept from then on (its bytes go back to the pool).
        let replay = Replay::new(body, p.replay.clone(), too_large);
        let mut body = replay.first();
        let mut avoid = None;
        let mut tries = 1;
        loop {
            let mut req = Request::from_parts(parts.clone(), body);
            let slot = EndpointSlot::default();
            req.extensions_mut().insert(slot.clone());
            if let Some(addr) = avoid {
                req.extensions_mut().insert(AvoidEndpoint(addr));
            }
            let result = self.try_once(req).await;
            if tries >= p.attempts || !replay.replayable() {
                return result;
            }
            let (result, observed) = match result {
                Ok(res) => match Observed::of(&res) {
                    o if grpc
                        && p.grpc_codes
                        && o.grpc.is_none()
                        && res.status() == StatusCode::OK =>
                    {
                        let (res, o) = classify::peek_grpc_trailers(res, p.max_body).await;
                        (Ok(res), o)
                    }
                    o => (Ok(res), o),
                },
                // A filter inside (an open circuit, a full concurrency
                // queue) refused: kaname decided, not the upstream, and
                // asking again at once would get the same answer.
                Err(e) if e.refused_by.is_some() => return Err(e),
                Err(e) => {
                    let o = Observed::of_error(&e, grpc);
                    (Err(e), o)
                }
            };
            if !classify::matches(&p.retry_on, &observed) {
                return result;
            }
            let wait = match retry_after(&result, grpc) {
                // The upstream asks for longer than we would wait: its
                // answer stands rather than a retry it asked us not to send.
                Some(d) if d > p.backoff.max() => return result,
                Some(d) => d,
                None => p.backoff.jittered(tries),
            };
            if !self.layer.budget.withdraw() {
                self.layer.exhausted.inc();
                return result;
            }
            let Some(next) = replay.next() else {
                return result;
            };
            // The endpoint the try used: the forwarder wrote it into the
            // try's slot (a failure may name it too).
            avoid = match &result {
                Ok(_) => None,
                Err(e) => e.endpoint,
            }
            .or_else(|| slot.get());
            drop(result);
            tracing::debug!(try_ = tries + 1, ?wait, ?observed, "retrying");
            tokio::time::sleep(wait).await;
            self.layer.retries.inc();
            body = next;
            tries += 1;
        }
    }

    /// One try, cut by `per_try_timeout`: a cut try is a `timeout` failure
    /// and, when it is the last, the client's 504 upstream_timeout.
    async fn try_once(&mut self, mut req: Request<Body>) -> TryResult {
        let Some(limit) = self.layer.policy.per_try_timeout else {
            return ready_call(&mut self.inner, req).await;
        };
        Deadline::tighten(req.extensions_mut(), limit);
        let body = ClientBodyWatch::of(req.extensions()).cloned();
        let call = ready_call(&mut self.inner, req);
        match tokio::time::timeout(limit, call).await {
            Ok(result) => result,
            // Cut while the client was still sending: the client's doing.
            Err(_) if body.as_ref().is_some_and(ClientBodyWatch::incomplete) => {
                Err(ProxyError::new(
                    ErrorKind::RequestTimeout,
                    format!("request body still arriving after per_try_timeout {limit:?}"),
                ))
            }
            Err(_) => Err(ProxyError::upstream(
                ErrorKind::UpstreamTimeout,
                UpstreamFailure::Timeout,
                format!("no response within per_try_timeout {limit:?}"),
            )),
        }
    }
}

/// `Retry-After` of a 503 (the upstream's, or kaname's own when an inner
/// filter shed the try), in delay-seconds (an HTTP date is ignored).
fn retry_after(result: &TryResult, grpc: bool) -> Option<Duration> {
    let (status, headers) = match result {
        Ok(res) => (res.status(), res.headers()),
        Err(e) => (e.status(grpc), &e.headers),
    };
    if status != StatusCode::SERVICE_UNAVAILABLE {
        return None;
    }
    let secs: u64 = headers
        .get(header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests;
