//! Every metric family of the contract (`metrics.md`), registered once per
//! process. Reloads keep this struct, so handles stay valid (trap 12).
//! Hot paths resolve `with_label_values` once, when a chain is built.

use prometheus::{
    Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
};

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
    pub requests_total: IntCounterVec,
    pub grpc_requests_total: IntCounterVec,
    pub request_duration_seconds: HistogramVec,
    pub requests_in_flight: IntGaugeVec,
    pub upstream_attempts_total: IntCounterVec,
    pub upstream_attempt_duration_seconds: HistogramVec,
    pub retries_total: IntCounterVec,
    pub retry_budget_exhausted_total: IntCounterVec,
    pub circuit_breaker_state: IntGaugeVec,
    pub circuit_breaker_transitions_total: IntCounterVec,
    pub circuit_breaker_rejected_total: IntCounterVec,
    pub rate_limited_total: IntCounterVec,
    pub concurrency_in_flight: IntGaugeVec,
    pub queue_depth: IntGaugeVec,
    pub shed_total: IntCounterVec,
    pub jwt_validations_total: IntCounterVec,
    pub jwks_refreshes_total: IntCounterVec,
    pub upstream_endpoint_healthy: IntGaugeVec,
    pub upstream_ejections_total: IntCounterVec,
    pub upstream_panic_mode: IntGaugeVec,
    pub connections_open: IntGaugeVec,
    pub tls_handshake_failures_total: IntCounterVec,
    pub tls_cert_expiry_timestamp_seconds: GaugeVec,
    pub config_reloads_total: IntCounterVec,
    pub config_last_reload_success_timestamp_seconds: Gauge,
    pub build_info: IntGaugeVec,
    /// `kaname_limits_hit_total{limit}`: a protective limit (limits.md) refused something.
    pub limits_hit_total: IntCounterVec,
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    r.register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

fn gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    r.register(Box::new(g.clone()))
        .expect("metric registered once");
    g
}

fn histogram(r: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
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
        let lru = &["listener", "route", "upstream"];
        let m = Metrics {
            requests_total: counter(
                &r,
                "kaname_requests_total",
                "Requests answered, by status code.",
                &["listener", "route", "upstream", "method", "code"],
            ),
            grpc_requests_total: counter(
                &r,
                "kaname_grpc_requests_total",
                "gRPC calls finished, by final grpc-status.",
                &["listener", "route", "upstream", "grpc_status"],
            ),
            request_duration_seconds: histogram(
                &r,
                "kaname_request_duration_seconds",
                "Time from request head received to response head sent.",
                lru,
            ),
            requests_in_flight: gauge(
                &r,
                "kaname_requests_in_flight",
                "Requests being served now.",
                &["listener"],
            ),
            upstream_attempts_total: counter(
                &r,
                "kaname_upstream_attempts_total",
                "Tries sent to an upstream, by outcome.",
                &["upstream", "outcome"],
            ),
            upstream_attempt_duration_seconds: histogram(
                &r,
                "kaname_upstream_attempt_duration_seconds",
                "Time of one try to an upstream.",
                &["upstream"],
            ),
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
            upstream_endpoint_healthy: gauge(
                &r,
                "kaname_upstream_endpoint_healthy",
                "1 when the endpoint takes traffic.",
                &["upstream", "endpoint"],
            ),
            upstream_ejections_total: counter(
                &r,
                "kaname_upstream_ejections_total",
                "Outlier ejections.",
                &["upstream"],
            ),
            upstream_panic_mode: gauge(
                &r,
                "kaname_upstream_panic_mode",
                "1 while every endpoint of the upstream is unhealthy or ejected and all get traffic.",
                &["upstream"],
            ),
            connections_open: gauge(
                &r,
                "kaname_connections_open",
                "Client connections open now.",
                &["listener"],
            ),
            tls_handshake_failures_total: counter(
                &r,
                "kaname_tls_handshake_failures_total",
                "Failed TLS handshakes.",
                &["listener"],
            ),
            tls_cert_expiry_timestamp_seconds: {
                let g = GaugeVec::new(
                    Opts::new(
                        "kaname_tls_cert_expiry_timestamp_seconds",
                        "notAfter of the certificate served now, as unix time.",
                    ),
                    &["listener"],
                )
                .expect("valid metric definition");
                r.register(Box::new(g.clone()))
                    .expect("metric registered once");
                g
            },
            config_reloads_total: counter(
                &r,
                "kaname_config_reloads_total",
                "Config loads after the first, by result.",
                &["result"],
            ),
            config_last_reload_success_timestamp_seconds: {
                let g = Gauge::new(
                    "kaname_config_last_reload_success_timestamp_seconds",
                    "Unix time of the last good config load.",
                )
                .expect("valid metric definition");
                r.register(Box::new(g.clone()))
                    .expect("metric registered once");
                g
            },
            build_info: gauge(
                &r,
                "kaname_build_info",
                "Always 1; the version label says which kaname runs.",
                &["version"],
            ),
            limits_hit_total: counter(
                &r,
                "kaname_limits_hit_total",
                "Times a protective limit refused something, by limit (limits.md).",
                &["limit"],
            ),
            registry: r,
        };
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        // Both results exist at 0 from the start: a counter series born at 1
        // shows no increase() in Prometheus, so the first failed reload
        // would never alert.
        for result in ["success", "failure"] {
            m.config_reloads_total.with_label_values(&[result]);
        }
        m
    }

    /// The Prometheus text exposition of everything registered.
    /// Drops the gauge series of endpoints, upstreams and breakers the
    /// running config no longer has; they would otherwise keep their last
    /// value until restart (a removed endpoint stuck at healthy 1 hides the
    /// no-healthy-endpoint alert). `endpoint` is (upstream, address),
    /// `breaker` is (filter, upstream).
    pub fn retain_gauges(
        &self,
        upstream: impl Fn(&str) -> bool,
        endpoint: impl Fn(&str, &str) -> bool,
        breaker: impl Fn(&str, &str) -> bool,
    ) {
        let get = |l: &std::collections::HashMap<&str, &str>, k: &str| -> String {
            l.get(k).map_or_else(String::new, |v| (*v).to_owned())
        };
        retain_series(&self.upstream_panic_mode, |l| upstream(&get(l, "upstream")));
        retain_series(&self.upstream_endpoint_healthy, |l| {
            endpoint(&get(l, "upstream"), &get(l, "endpoint"))
        });
        retain_series(&self.circuit_breaker_state, |l| {
            breaker(&get(l, "filter"), &get(l, "upstream"))
        });
    }

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
