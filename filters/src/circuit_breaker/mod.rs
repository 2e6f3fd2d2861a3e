//! The `circuit_breaker` filter: stops sending to an upstream that keeps
//! failing, and answers at once instead (503 `circuit_open` with
//! `Retry-After`, or UNAVAILABLE for gRPC) without touching the upstream.
//!
//! ```yaml
//! breaker:
//!   circuit_breaker:
//!     consecutive_failures: 5
//!     failure_rate: { threshold: 0.5, min_requests: 20, window: 10s }
//!     open_for: 10s
//!     max_open_for: 5m
//!     half_open_requests: 1
//!     failure_on: [connect_failure, timeout, 5xx]
//! ```
//!
//! State is kept per upstream and shared by every route naming the filter.
//! The state machine is in `state.rs`; this file adds the lock, the metrics
//! and the tower service. A gRPC answer with its status in trailers is
//! judged when its trailers pass by.

mod state;

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use http::{header, HeaderValue, Request, Response, StatusCode};
use kaname_config::types::{CircuitBreaker as BreakerConfig, Condition};
use prometheus::{IntCounter, IntGauge};
use tokio::time::Instant;
use tower::{Layer, Service};

pub use state::{Admit, CircuitState, Phase};

use crate::body::{BodyEnd, OnEnd};
use crate::client_body::ClientBodyWatch;
use crate::context::{Deadline, RequestContext, UpstreamFailure};
use crate::metrics::Metrics;
use crate::per_upstream::PerUpstream;
use crate::registry::{BuiltFilter, RouteInfo};
use crate::retry::classify::{self, Observed};
use crate::time::whole_seconds;
use crate::{
    call_async, ready_call, Body, ErrorKind, ProxyError, RouteFuture, RouteLayer, RouteService,
};

/// A built circuit_breaker filter: one breaker per upstream.
pub struct CircuitBreaker {
    name: String,
    config: BreakerConfig,
    failure_on: Arc<[Condition]>,
    metrics: Arc<Metrics>,
    breakers: PerUpstream<Breaker>,
}

/// One upstream's breaker and its metric handles.
pub struct Breaker {
    upstream: Arc<str>,
    state: Mutex<CircuitState>,
    /// closed, open, half_open
    gauges: [IntGauge; 3],
    transitions: [IntCounter; 3],
    rejected: IntCounter,
}

/// The filter on one route (its upstream's breaker), as a tower layer.
#[derive(Clone)]
pub struct BreakerLayer {
    /// The filter's name, for its refusals.
    name: Arc<str>,
    breaker: Arc<Breaker>,
    failure_on: Arc<[Condition]>,
}

#[derive(Clone)]
pub struct BreakerService {
    inner: RouteService,
    layer: BreakerLayer,
}

// === impl CircuitBreaker ===

impl CircuitBreaker {
    pub fn new(name: &str, config: &BreakerConfig, metrics: &Arc<Metrics>) -> Self {
        CircuitBreaker {
            name: name.to_owned(),
            config: config.clone(),
            failure_on: config.failure_on.clone().into(),
            metrics: metrics.clone(),
            breakers: PerUpstream::default(),
        }
    }

    fn breaker(&self, upstream: &Arc<str>) -> Arc<Breaker> {
        self.breakers.get(upstream, || {
            Breaker::new(&self.name, upstream, &self.config, &self.metrics)
        })
    }

    /// The filter's layer for `route`: the breaker of its upstream.
    pub fn route_layer(&self, route: &RouteInfo) -> BreakerLayer {
        BreakerLayer {
            name: self.name.as_str().into(),
            breaker: self.breaker(&route.upstream),
            failure_on: self.failure_on.clone(),
        }
    }
}

impl BuiltFilter for CircuitBreaker {
    fn layer(&self, route: &RouteInfo) -> RouteLayer {
        RouteLayer::boxed(self.route_layer(route))
    }
}

impl Layer<RouteService> for BreakerLayer {
    type Service = BreakerService;

    fn layer(&self, inner: RouteService) -> BreakerService {
        BreakerService {
            inner,
            layer: self.clone(),
        }
    }
}

// === impl Breaker ===

impl Breaker {
    pub fn new(filter: &str, upstream: &Arc<str>, cfg: &BreakerConfig, m: &Metrics) -> Self {
        let gauges = Phase::ALL.map(|p| {
            m.circuit_breaker_state
                .with_label_values(&[filter, upstream, p.as_str()])
        });
        let transitions = Phase::ALL.map(|p| {
            m.circuit_breaker_transitions_total
                .with_label_values(&[filter, upstream, p.as_str()])
        });
        let b = Breaker {
            upstream: upstream.clone(),
            state: Mutex::new(CircuitState::new(cfg, Instant::now())),
            gauges,
            transitions,
            rejected: m
                .circuit_breaker_rejected_total
                .with_label_values(&[filter, upstream]),
        };
        b.show(Phase::Closed);
        b
    }

    fn show(&self, phase: Phase) {
        for (p, g) in Phase::ALL.iter().zip(&self.gauges) {
            g.set(i64::from(*p == phase));
        }
    }

    fn moved(&self, to: Option<Phase>) {
        let Some(to) = to else { return };
        self.show(to);
        let i = Phase::ALL.iter().position(|p| *p == to).unwrap_or(0);
        self.transitions[i].inc();
        match to {
            Phase::Open => tracing::warn!(upstream = %self.upstream, "circuit breaker opened"),
            _ => {
                tracing::info!(upstream = %self.upstream, state = to.as_str(), "circuit breaker moved")
            }
        }
    }

    /// A permit to send, or how long the circuit stays open.
    fn acquire(self: &Arc<Self>) -> Result<Permit, std::time::Duration> {
        let admitted = match self.state.lock() {
            Ok(mut s) => s.admit(Instant::now()),
            // A poisoned lock must not stop traffic: let it through uncounted.
            Err(_) => return Ok(Permit::uncounted(self)),
        };
        let (admit, moved) = admitted?;
        self.moved(moved);
        Ok(Permit {
            breaker: self.clone(),
            admit: Some(admit),
            timeout_at: None,
            body: None,
        })
    }

    fn record(&self, admit: Admit, failed: bool) {
        let moved = match self.state.lock() {
            Ok(mut s) => s.record(admit, failed, Instant::now()),
            Err(_) => None,
        };
        self.moved(moved);
    }
}

/// A request let through; its result is recorded once, or it is released
/// when dropped unjudged.
struct Permit {
    breaker: Arc<Breaker>,
    admit: Option<Admit>,
    /// While waiting for the head with `timeout` in `failure_on`: the
    /// request's deadline, so a drop after it counts as a timeout and a drop
    /// before it (the client went away) releases the permit uncounted.
    timeout_at: Option<Option<Deadline>>,
    /// The client's body: a timeout while it is still arriving is the
    /// client's, not the upstream's.
    body: Option<ClientBodyWatch>,
}

impl Permit {
    fn uncounted(breaker: &Arc<Breaker>) -> Self {
        Permit {
            breaker: breaker.clone(),
            admit: None,
            timeout_at: None,
            body: None,
        }
    }

    fn record(mut self, failed: bool) {
        if let Some(admit) = self.admit.take() {
            self.breaker.record(admit, failed);
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let Some(admit) = self.admit.take() else {
            return;
        };
        let client_slow = self.body.as_ref().is_some_and(ClientBodyWatch::incomplete);
        if self.timeout_at.is_some_and(Deadline::expired) && !client_slow {
            self.breaker.record(admit, true);
        } else if let Ok(mut s) = self.breaker.state.lock() {
            s.release(admit);
        }
    }
}

// === impl BreakerService ===

impl Service<Request<Body>> for BreakerService {
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

impl BreakerService {
    async fn run(mut self, req: Request<Body>) -> Result<Response<Body>, ProxyError> {
        let l = &self.layer;
        let grpc = RequestContext::grpc_of(&req);
        let mut permit = match l.breaker.acquire() {
            Ok(p) => p,
            Err(wait) => {
                l.breaker.rejected.inc();
                let message = format!("circuit to upstream \"{}\" is open", l.breaker.upstream);
                return Err(
                    ProxyError::refused(ErrorKind::CircuitOpen, &l.name, message)
                        .with_header(header::RETRY_AFTER, HeaderValue::from(whole_seconds(wait))),
                );
            }
        };
        if l.failure_on.contains(&Condition::Timeout) {
            permit.timeout_at = Some(req.extensions().get::<Deadline>().copied());
            permit.body = ClientBodyWatch::of(req.extensions()).cloned();
        }
        let failure_on = l.failure_on.clone();
        let result = ready_call(&mut self.inner, req).await;
        permit.timeout_at = None;
        let observed = Observed::of_result(&result, grpc);
        let res = match result {
            Ok(res) => res,
            Err(e) => {
                permit.record(classify::is_failure(&failure_on, &observed));
                return Err(e);
            }
        };
        let in_trailers = grpc && observed.grpc.is_none() && res.status() == StatusCode::OK;
        if in_trailers {
            return Ok(res.map(|body| {
                OnEnd::wrap(body, move |end| {
                    let (grpc, failure) = match end {
                        BodyEnd::Trailers(t) => (classify::grpc_status(t), None),
                        BodyEnd::Error => (None, Some(UpstreamFailure::Reset)),
                        // Ended without trailers: not a gRPC failure.
                        BodyEnd::Eof => (None, None),
                        // The client went away: released unjudged.
                        BodyEnd::Dropped => return,
                    };
                    let o = Observed {
                        grpc,
                        failure,
                        ..observed
                    };
                    permit.record(classify::is_failure(&failure_on, &o));
                })
            }));
        }
        permit.record(classify::is_failure(&failure_on, &observed));
        Ok(res)
    }
}

#[cfg(test)]
mod tests;
