//! Recording one request: counters and histogram handles are resolved when
//! the route is built, so the hot path is a few atomic operations.

use std::sync::OnceLock;
use std::time::Duration;

use http::{Method, StatusCode};
use kaname_filters::metrics::Metrics;
use prometheus::{Histogram, IntCounter, IntCounterVec};

const METHODS: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "OTHER",
];
const CODES: usize = 500; // 100..=599

fn method_index(m: &Method) -> usize {
    match *m {
        Method::GET => 0,
        Method::HEAD => 1,
        Method::POST => 2,
        Method::PUT => 3,
        Method::DELETE => 4,
        Method::CONNECT => 5,
        Method::OPTIONS => 6,
        Method::TRACE => 7,
        Method::PATCH => 8,
        _ => 9,
    }
}

/// The metric handles of one (listener, route, upstream).
pub struct RouteMetrics {
    labels: [String; 3],
    requests: IntCounterVec,
    /// `kaname_requests_total` per (method, code), resolved on first use.
    counters: Box<[OnceLock<IntCounter>]>,
    duration: Histogram,
    grpc: IntCounterVec,
    grpc_counters: Box<[OnceLock<IntCounter>]>,
}

impl RouteMetrics {
    pub fn new(m: &Metrics, listener: &str, route: &str, upstream: &str) -> Self {
        RouteMetrics {
            labels: [listener.to_owned(), route.to_owned(), upstream.to_owned()],
            requests: m.requests_total.clone(),
            counters: (0..METHODS.len() * CODES)
                .map(|_| OnceLock::new())
                .collect(),
            duration: m
                .request_duration_seconds
                .with_label_values(&[listener, route, upstream]),
            grpc: m.grpc_requests_total.clone(),
            grpc_counters: (0..GRPC_CODES.len()).map(|_| OnceLock::new()).collect(),
        }
    }

    pub fn observe(&self, method: &Method, status: StatusCode, elapsed: Duration) {
        self.duration.observe(elapsed.as_secs_f64());
        let mi = method_index(method);
        let code = usize::from(status.as_u16()).clamp(100, 599) - 100;
        let counter = self.counters[mi * CODES + code].get_or_init(|| {
            let [l, r, u] = &self.labels;
            self.requests
                .with_label_values(&[l, r, u, METHODS[mi], status.as_str()])
        });
        counter.inc();
    }

    /// Counts a finished gRPC call by its final `grpc-status` number.
    pub fn observe_grpc(&self, code: u32) {
        let i = (code as usize).min(GRPC_CODES.len() - 1);
        self.grpc_counters[i]
            .get_or_init(|| {
                let [l, r, u] = &self.labels;
                self.grpc.with_label_values(&[l, r, u, GRPC_CODES[i]])
            })
            .inc();
    }
}

/// gRPC status names by number; anything above 16 is counted as UNKNOWN.
pub const GRPC_CODES: [&str; 18] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
    "UNKNOWN",
];
