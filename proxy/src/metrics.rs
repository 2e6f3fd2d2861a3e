//! The proxy's metric families (`metrics.md`): requests, upstream tries
//! and endpoints, connections, TLS, reloads. They live in the filters'
//! registry, so `/metrics` renders everything once; the filters' families
//! are reached through this struct too (`Deref`).

use std::sync::Arc;

use kaname_filters::metrics::{counter, gauge, histogram, retain_series, Metrics as FilterMetrics};
use prometheus::{Gauge, GaugeVec, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts};

pub struct Metrics {
    /// The filters' families and the one registry.
    pub filters: Arc<FilterMetrics>,
    pub requests_total: IntCounterVec,
    pub grpc_requests_total: IntCounterVec,
    pub request_duration_seconds: HistogramVec,
    pub requests_in_flight: IntGaugeVec,
    pub upstream_attempts_total: IntCounterVec,
    pub upstream_attempt_duration_seconds: HistogramVec,
    pub upstream_endpoint_healthy: IntGaugeVec,
    pub upstream_ejections_total: IntCounterVec,
    pub upstream_panic_mode: IntGaugeVec,
    pub connections_open: IntGaugeVec,
    pub tls_handshake_failures_total: IntCounterVec,
    pub tls_cert_expiry_timestamp_seconds: GaugeVec,
    pub config_reloads_total: IntCounterVec,
    pub config_last_reload_success_timestamp_seconds: Gauge,
    pub build_info: IntGaugeVec,
    pub tracing_spans_exported_total: IntCounter,
    pub tracing_spans_dropped_total: IntCounterVec,
    pub jobs_waiting: IntGaugeVec,
    pub jobs_delivering: IntGaugeVec,
    pub jobs_oldest_age_seconds: GaugeVec,
    pub jobs_total: IntCounterVec,
    pub job_deliveries_total: IntCounterVec,
    pub job_callbacks_total: IntCounterVec,
    pub store_up: IntGaugeVec,
    pub store_errors_total: IntCounterVec,
    pub store_command_duration_seconds: HistogramVec,
}

impl std::ops::Deref for Metrics {
    type Target = FilterMetrics;
    fn deref(&self) -> &FilterMetrics {
        &self.filters
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every family of the process. Call once.
    pub fn new() -> Self {
        let filters = Arc::new(FilterMetrics::new());
        let r = &filters.registry;
        let lru = &["listener", "route", "upstream"];
        let float_gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = GaugeVec::new(Opts::new(name, help), labels).expect("valid metric definition");
            r.register(Box::new(g.clone()))
                .expect("metric registered once");
            g
        };
        let last_reload = Gauge::new(
            "kaname_config_last_reload_success_timestamp_seconds",
            "Unix time of the last good config load.",
        )
        .expect("valid metric definition");
        r.register(Box::new(last_reload.clone()))
            .expect("metric registered once");
        let exported = IntCounter::new(
            "kaname_tracing_spans_exported_total",
            "Spans the collector accepted.",
        )
        .expect("valid metric definition");
        r.register(Box::new(exported.clone()))
            .expect("metric registered once");
        let m = Metrics {
            jobs_waiting: gauge(
                r,
                "kaname_jobs_waiting",
                "Jobs queued now (retry backoff included).",
                &["queue", "priority"],
            ),
            jobs_delivering: gauge(
                r,
                "kaname_jobs_delivering",
                "Deliveries in flight.",
                &["queue"],
            ),
            jobs_oldest_age_seconds: float_gauge(
                "kaname_jobs_oldest_age_seconds",
                "Age of the oldest waiting job (0 when none).",
                &["queue"],
            ),
            jobs_total: counter(
                r,
                "kaname_jobs_total",
                "Jobs by result: accepted, duplicate, rejected_full, done, failed, cancelled.",
                &["queue", "result"],
            ),
            job_deliveries_total: counter(
                r,
                "kaname_job_deliveries_total",
                "Deliveries of jobs, by outcome (as kaname_upstream_attempts_total).",
                &["queue", "outcome"],
            ),
            job_callbacks_total: counter(
                r,
                "kaname_job_callbacks_total",
                "Callbacks of finished jobs: success, failure.",
                &["queue", "result"],
            ),
            store_up: gauge(
                r,
                "kaname_store_up",
                "1 while the store answers.",
                &["store"],
            ),
            store_errors_total: counter(
                r,
                "kaname_store_errors_total",
                "Store commands without an answer: timeout, connection, response.",
                &["store", "kind"],
            ),
            store_command_duration_seconds: histogram(
                r,
                "kaname_store_command_duration_seconds",
                "One round trip to the store.",
                &["store"],
            ),
            tracing_spans_exported_total: exported,
            tracing_spans_dropped_total: counter(
                r,
                "kaname_tracing_spans_dropped_total",
                "Spans lost: queue_full (more waiting than tracing.otlp.max_queue), export_failed.",
                &["reason"],
            ),
            requests_total: counter(
                r,
                "kaname_requests_total",
                "Requests answered, by status code.",
                &["listener", "route", "upstream", "method", "code"],
            ),
            grpc_requests_total: counter(
                r,
                "kaname_grpc_requests_total",
                "gRPC calls finished, by final grpc-status.",
                &["listener", "route", "upstream", "grpc_status"],
            ),
            request_duration_seconds: histogram(
                r,
                "kaname_request_duration_seconds",
                "Time from request head received to response head sent.",
                lru,
            ),
            requests_in_flight: gauge(
                r,
                "kaname_requests_in_flight",
                "Requests being served now.",
                &["listener"],
            ),
            upstream_attempts_total: counter(
                r,
                "kaname_upstream_attempts_total",
                "Tries sent to an upstream, by outcome.",
                &["upstream", "outcome"],
            ),
            upstream_attempt_duration_seconds: histogram(
                r,
                "kaname_upstream_attempt_duration_seconds",
                "Time of one try to an upstream.",
                &["upstream"],
            ),
            upstream_endpoint_healthy: gauge(
                r,
                "kaname_upstream_endpoint_healthy",
                "1 when the endpoint takes traffic.",
                &["upstream", "endpoint"],
            ),
            upstream_ejections_total: counter(
                r,
                "kaname_upstream_ejections_total",
                "Outlier ejections.",
                &["upstream"],
            ),
            upstream_panic_mode: gauge(
                r,
                "kaname_upstream_panic_mode",
                "1 while every endpoint of the upstream is unhealthy or ejected and all get traffic.",
                &["upstream"],
            ),
            connections_open: gauge(
                r,
                "kaname_connections_open",
                "Client connections open now.",
                &["listener"],
            ),
            tls_handshake_failures_total: counter(
                r,
                "kaname_tls_handshake_failures_total",
                "Failed TLS handshakes.",
                &["listener"],
            ),
            tls_cert_expiry_timestamp_seconds: float_gauge(
                "kaname_tls_cert_expiry_timestamp_seconds",
                "notAfter of the certificate served now, as unix time.",
                &["listener"],
            ),
            config_reloads_total: counter(
                r,
                "kaname_config_reloads_total",
                "Config loads after the first, by result.",
                &["result"],
            ),
            config_last_reload_success_timestamp_seconds: last_reload,
            build_info: gauge(
                r,
                "kaname_build_info",
                "Always 1; the version label says which kaname runs.",
                &["version"],
            ),
            filters: filters.clone(),
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
        for reason in ["queue_full", "export_failed"] {
            m.tracing_spans_dropped_total.with_label_values(&[reason]);
        }
        m
    }

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
        retain_series(&self.filters.circuit_breaker_state, |l| {
            breaker(&get(l, "filter"), &get(l, "upstream"))
        });
    }
}
