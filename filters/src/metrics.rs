//! The metric families of the filters (`metrics.md`), and the registry
//! every family of the process is in (the proxy's own families are in
//! `proxy/src/metrics.rs`, registered here too). Registered once per
//! process; reloads keep this struct, so handles stay valid (trap 12). Hot
//! paths resolve `with_label_values` once, when a stack is built.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};

/// A counter series made on its first increment, so a route that never
/// counts has no series (limits.md: with 100,000 routes, per-route series
/// only for routes that served). A clone is one reference count.
#[derive(Clone)]
pub struct LazyCounter(std::sync::Arc<LazyCounterInner>);

struct LazyCounterInner {
    family: IntCounterVec,
    labels: Vec<String>,
    series: std::sync::OnceLock<prometheus::IntCounter>,
}

impl LazyCounter {
    pub fn new(family: &IntCounterVec, labels: &[&str]) -> Self {
        LazyCounter(std::sync::Arc::new(LazyCounterInner {
            family: family.clone(),
            labels: labels.iter().map(|l| l.to_string()).collect(),
            series: std::sync::OnceLock::new(),
        }))
    }

    pub fn inc(&self) {
        let c = &self.0;
        c.series
            .get_or_init(|| {
                let labels: Vec<&str> = c.labels.iter().map(String::as_str).collect();
                c.family.with_label_values(&labels)
            })
            .inc();
    }

    /// The count so far (0 before the first increment).
    pub fn get(&self) -> u64 {
        self.0.series.get().map_or(0, |c| c.get())
    }
}

/// Buckets from 0.5 ms to 10 s, as the contract asks.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

pub struct Metrics {
    pub registry: Registry,
    pub retries_total: IntCounterVec,
    pub retry_budget_exhausted_total: IntCounterVec,
    pub circuit_breaker_state: IntGaugeVec,
    pub circuit_breaker_transitions_total: IntCounterVec,
    pub circuit_breaker_rejected_total: IntCounterVec,
    pub rate_limited_total: IntCounterVec,
    pub rate_limit_store_fallbacks_total: IntCounterVec,
    pub concurrency_in_flight: IntGaugeVec,
    pub queue_depth: IntGaugeVec,
    pub shed_total: IntCounterVec,
    pub jwt_validations_total: IntCounterVec,
    pub jwks_refreshes_total: IntCounterVec,
    pub authz_decisions_total: IntCounterVec,
    pub authz_external_duration_seconds: HistogramVec,
    pub authz_external_errors_total: IntCounterVec,
    /// `kaname_limits_hit_total{limit}`: a protective limit (limits.md) refused something.
    pub limits_hit_total: IntCounterVec,
}

pub fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    r.register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

pub fn gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    r.register(Box::new(g.clone()))
        .expect("metric registered once");
    g
}

pub fn histogram(r: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
    let h = HistogramVec::new(opts, labels).expect("valid metric definition");
    r.register(Box::new(h.clone()))
        .expect("metric registered once");
    h
}

impl Metrics {
    /// Counts one refusal by the limit named `limit` (a name of limits.md's table).
    pub fn limit_hit(&self, limit: &str) {
        self.limits_hit_total.with_label_values(&[limit]).inc();
    }

    /// Creates and registers every family. Call once per process.
    pub fn new() -> Self {
        let r = Registry::new();
        #[cfg(target_os = "linux")]
        {
            let pc = prometheus::process_collector::ProcessCollector::for_self();
            // Fails only where /proc is missing; metrics work without it.
            let _ = r.register(Box::new(pc));
        }
        Metrics {
            retries_total: counter(
                &r,
                "kaname_retries_total",
                "Retries sent (tries after the first).",
                &["route", "upstream"],
            ),
            retry_budget_exhausted_total: counter(
                &r,
                "kaname_retry_budget_exhausted_total",
                "Retries not sent because the retry budget was spent.",
                &["route", "upstream"],
            ),
            circuit_breaker_state: gauge(
                &r,
                "kaname_circuit_breaker_state",
                "1 for the breaker's current state, 0 for the others.",
                &["filter", "upstream", "state"],
            ),
            circuit_breaker_transitions_total: counter(
                &r,
                "kaname_circuit_breaker_transitions_total",
                "Circuit breaker state changes.",
                &["filter", "upstream", "to"],
            ),
            circuit_breaker_rejected_total: counter(
                &r,
                "kaname_circuit_breaker_rejected_total",
                "Requests refused while the circuit was open.",
                &["filter", "upstream"],
            ),
            rate_limited_total: counter(
                &r,
                "kaname_rate_limited_total",
                "Requests refused with 429 by a rate limit.",
                &["filter", "route"],
            ),
            rate_limit_store_fallbacks_total: counter(
                &r,
                "kaname_rate_limit_store_fallbacks_total",
                "Decisions of a rate limit on a store made by on_store_error, the store failing or slower than its timeout.",
                &["filter"],
            ),
            concurrency_in_flight: gauge(
                &r,
                "kaname_concurrency_in_flight",
                "Requests inside a concurrency_limit now.",
                &["filter"],
            ),
            queue_depth: gauge(
                &r,
                "kaname_queue_depth",
                "Requests waiting in a concurrency_limit queue now.",
                &["filter"],
            ),
            shed_total: counter(
                &r,
                "kaname_shed_total",
                "Requests shed with 503 overloaded.",
                &["filter", "priority"],
            ),
            jwt_validations_total: counter(
                &r,
                "kaname_jwt_validations_total",
                "JWT validations, by result.",
                &["filter", "result"],
            ),
            jwks_refreshes_total: counter(
                &r,
                "kaname_jwks_refreshes_total",
                "JWKS fetches, by result.",
                &["filter", "result"],
            ),
            limits_hit_total: counter(
                &r,
                "kaname_limits_hit_total",
                "Times a protective limit refused something, by limit (limits.md).",
                &["limit"],
            ),
            authz_decisions_total: counter(
                &r,
                "kaname_authz_decisions_total",
                "Requests an authorize filter decided, by rule and decision.",
                &["filter", "rule", "decision"],
            ),
            authz_external_duration_seconds: histogram(
                &r,
                "kaname_authz_external_duration_seconds",
                "One call to an authorize filter's external policy service.",
                &["filter"],
            ),
            authz_external_errors_total: counter(
                &r,
                "kaname_authz_external_errors_total",
                "Calls to the external policy service that gave no decision, by kind.",
                &["filter", "kind"],
            ),
            registry: r,
        }
    }

    /// The Prometheus text exposition of everything registered (the
    /// proxy registers its families in the same registry).
    pub fn render(&self) -> String {
        let families = self.registry.gather();
        prometheus::TextEncoder::new()
            .encode_to_string(&families)
            .unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Removes the series of `vec` whose labels `keep` refuses.
pub fn retain_series(
    vec: &IntGaugeVec,
    keep: impl Fn(&std::collections::HashMap<&str, &str>) -> bool,
) {
    use prometheus::core::Collector;
    for family in vec.collect() {
        for m in family.get_metric() {
            let labels: std::collections::HashMap<&str, &str> = m
                .get_label()
                .iter()
                .map(|p| (p.name(), p.value()))
                .collect();
            if !keep(&labels) {
                let _ = vec.remove(&labels);
            }
        }
    }
}
