//! Recording one request. A route's series are created when it first
//! serves (the contract: per-route series only for routes that served), and
//! its handles kept then, so the hot path after the first request is a few
//! atomic loads and increments. A route that never served costs its labels
//! and one empty `OnceLock`.

use std::sync::OnceLock;
use std::time::Duration;

use crate::metrics::Metrics;
use http::{Method, StatusCode};
use prometheus::{Histogram, HistogramVec, IntCounter, IntCounterVec};

const METHODS: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "OTHER",
];

/// (method, code) counters a route keeps handles for; further pairs are
/// counted through a label lookup each time (correct, slower). A route
/// sees few pairs; this bounds what one that sees many costs.
const COUNTER_SLOTS: usize = 16;

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
    labels: [Box<str>; 3],
    requests: IntCounterVec,
    durations: HistogramVec,
    grpc: IntCounterVec,
    /// Created on the first request.
    served: OnceLock<Box<Served>>,
}

struct Served {
    duration: Histogram,
    /// `kaname_requests_total` per (method, code), keyed
    /// `method_index * 1000 + code`; filled in order, each key in one slot.
    counters: [OnceLock<(u16, IntCounter)>; COUNTER_SLOTS],
    grpc_counters: [OnceLock<IntCounter>; GRPC_SLOTS],
}

impl RouteMetrics {
    /// Creates no series: see `observe`.
    pub fn new(m: &Metrics, listener: &str, route: &str, upstream: &str) -> Self {
        RouteMetrics {
            labels: [listener.into(), route.into(), upstream.into()],
            requests: m.requests_total.clone(),
            durations: m.request_duration_seconds.clone(),
            grpc: m.grpc_requests_total.clone(),
            served: OnceLock::new(),
        }
    }

    fn served(&self) -> &Served {
        self.served.get_or_init(|| {
            let [l, r, u] = &self.labels;
            Box::new(Served {
                duration: self.durations.with_label_values(&[l, r, u]),
                counters: Default::default(),
                grpc_counters: Default::default(),
            })
        })
    }

    pub fn observe(&self, method: &Method, status: StatusCode, elapsed: Duration) {
        let served = self.served();
        served.duration.observe(elapsed.as_secs_f64());
        let mi = method_index(method);
        let code = status.as_u16();
        // Both below 10,000: method 0..=9, code 100..=999.
        let key = mi as u16 * 1000 + code;
        let new = || {
            let [l, r, u] = &self.labels;
            self.requests
                .with_label_values(&[l, r, u, METHODS[mi], status.as_str()])
        };
        for slot in &served.counters {
            // The first empty slot is claimed for this key; a thread that
            // loses the race for it with another key moves on, so a key is
            // never in two slots.
            let (k, counter) = slot.get_or_init(|| (key, new()));
            if *k == key {
                counter.inc();
                return;
            }
        }
        new().inc();
    }

    /// Counts a finished gRPC call by its final `grpc-status` number.
    pub fn observe_grpc(&self, code: u32) {
        let i = (code as usize).min(GRPC_SLOTS - 1);
        self.served().grpc_counters[i]
            .get_or_init(|| {
                let [l, r, u] = &self.labels;
                self.grpc
                    .with_label_values(&[&**l, &**r, &**u, GRPC_LABELS[i].as_str()])
            })
            .inc();
    }
}

/// gRPC status names by number, upper case (the metric's labels), from
/// the config's one table; anything above 16 is counted as UNKNOWN.
static GRPC_LABELS: std::sync::LazyLock<Vec<String>> = std::sync::LazyLock::new(|| {
    kaname_config::GRPC_CODE_NAMES
        .iter()
        .map(|n| n.to_ascii_uppercase())
        .chain(["UNKNOWN".to_string()])
        .collect()
});
/// How many label slots: the 17 codes and one for anything above.
const GRPC_SLOTS: usize = kaname_config::GRPC_CODE_NAMES.len() + 1;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_appear_when_a_route_serves() {
        let m = Metrics::new();
        let quiet = RouteMetrics::new(&m, "main", "quiet", "up");
        let busy = RouteMetrics::new(&m, "main", "busy", "up");
        let text = |m: &Metrics| {
            let mut out = String::new();
            for family in m.registry.gather() {
                for metric in family.get_metric() {
                    let labels: Vec<_> = metric.get_label().iter().map(|l| l.value()).collect();
                    out.push_str(&format!("{} {labels:?}\n", family.name()));
                }
            }
            out
        };
        assert!(!text(&m).contains("busy"), "{}", text(&m));
        let get = Method::GET;
        for code in 200..200 + COUNTER_SLOTS as u16 + 3 {
            busy.observe(
                &get,
                StatusCode::from_u16(code).unwrap(),
                Duration::from_millis(1),
            );
        }
        busy.observe(&get, StatusCode::OK, Duration::from_millis(1));
        busy.observe(
            &Method::from_bytes(b"PURGE").unwrap(),
            StatusCode::OK,
            Duration::ZERO,
        );
        busy.observe_grpc(99);
        let count = |method: &str, code: &str| {
            m.requests_total
                .with_label_values(&["main", "busy", "up", method, code])
                .get()
        };
        assert_eq!(count("GET", "200"), 2);
        assert_eq!(
            count("GET", "218"),
            1,
            "beyond the slots: counted all the same"
        );
        assert_eq!(count("OTHER", "200"), 1);
        assert_eq!(
            m.grpc_requests_total
                .with_label_values(&["main", "busy", "up", "UNKNOWN"])
                .get(),
            1
        );
        let hist = m
            .request_duration_seconds
            .with_label_values(&["main", "busy", "up"]);
        assert_eq!(hist.get_sample_count(), COUNTER_SLOTS as u64 + 5);
        let text = text(&m);
        assert!(text.contains("busy"));
        assert!(!text.contains("quiet"), "{text}");
        drop(quiet);
    }
}
