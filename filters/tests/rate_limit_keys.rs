//! Issue 5's "200k distinct `header:` keys stay under the `max_keys` bound
//! and memory stays bounded", in-process: the end-to-end version
//! (tests/limits.rs) cannot push 200k requests through real sockets within
//! its time cap on a shared 2-core machine. This drives the real
//! `rate_limit` service (its layer, real clock) around an upstream that
//! answers 200, in a test binary of its own so that this process's RSS is
//! this test's alone.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use kaname_config::types::{Rate, RateLimit, RateLimitKey};
use kaname_filters::metrics::Metrics;
use kaname_filters::rate_limit::RateLimit as RateLimitFilter;
use kaname_filters::{body, Body, BuiltFilter, ProxyError, RouteInfo, RouteService};

use tower::Service;

const KEYS: usize = 200_000;
const MAX_KEYS: usize = 5_000;
const DRIVERS: usize = 2;
/// RSS growth allowed. Storing all 200k keys (64-byte values, the longest
/// kept verbatim, plus the DashMap entry and its bucket) would cost over
/// 20 MiB; the bounded store holds 5k of them.
const MAX_GROWTH_KIB: u64 = 8 * 1024;

/// A field of /proc/self/status, in KiB.
fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_200k_distinct_header_keys_stay_under_max_keys_and_bounded_rss() {
    let metrics = Arc::new(Metrics::new());
    // One token per key per hour: no bucket refills (no key turns idle and
    // sweepable) during the run, so every stored key stays live and only
    // the bound keeps the store small.
    let config = RateLimit {
        key: RateLimitKey::Header("x-api-key".into()),
        rate: Rate {
            count: 1,
            per: Duration::from_secs(3600),
        },
        burst: 1,
        max_keys: MAX_KEYS,
        store: None,
        on_store_error: Default::default(),
    };
    let layer = RateLimitFilter::new("per-key", &config, &metrics).expect("layer");
    let upstream: RouteService = RouteService::new(tower::service_fn(|_: Request<Body>| {
        std::future::ready(Ok::<_, ProxyError>(Response::new(body::empty())))
    }));
    let route = RouteInfo {
        listener: "main".into(),
        route: "api".into(),
        upstream: "echo".into(),
    };
    let svc = tower::Layer::layer(&layer.layer(&route), upstream);
    let buckets = layer.buckets().clone();

    let rss_before = status_kib("VmRSS");
    let hwm_before = status_kib("VmHWM");
    let started = Instant::now();
    // Two drivers on two workers, as two connections would be: half the
    // wall time of one in a debug build, and the store sees racing inserts.
    let drivers: Vec<_> = (0..DRIVERS)
        .map(|d| {
            let (mut svc, buckets) = (svc.clone(), buckets.clone());
            tokio::spawn(async move {
                let api_key = HeaderName::from_static("x-api-key");
                let (mut allowed, mut refused, mut max_len) = (0usize, 0usize, 0usize);
                for i in (d..KEYS).step_by(DRIVERS) {
                    // 64 bytes: the longest value stored as is (longer
                    // ones are hashed).
                    let key = HeaderValue::from_str(&format!("{i:064}")).expect("header value");
                    let mut req = Request::new(body::empty());
                    req.headers_mut().insert(&api_key, key);
                    // Route services are always ready: `call` without
                    // `poll_ready`, as the listener does.
                    let res = svc
                        .call(req)
                        .await
                        .unwrap_or_else(|e| e.into_response(false));
                    match res.status() {
                        StatusCode::OK => allowed += 1,
                        StatusCode::TOO_MANY_REQUESTS => refused += 1,
                        other => panic!("request {i}: unexpected {other}"),
                    }
                    max_len = max_len.max(buckets.len());
                    assert!(
                        max_len <= MAX_KEYS,
                        "store grew to {max_len} keys at request {i}"
                    );
                }
                (allowed, refused, max_len)
            })
        })
        .collect();
    let (mut allowed, mut refused, mut max_len) = (0usize, 0usize, 0usize);
    for driver in drivers {
        let (a, r, m) = driver.await.expect("driver");
        (allowed, refused, max_len) = (allowed + a, refused + r, max_len.max(m));
    }
    let elapsed = started.elapsed();
    let rss_after = status_kib("VmRSS");
    let hwm_after = status_kib("VmHWM");
    let growth = rss_after.saturating_sub(rss_before);
    let peak_growth = hwm_after.saturating_sub(hwm_before.max(rss_before));
    println!(
        "{KEYS} distinct keys in {elapsed:?}: allowed {allowed}, refused {refused}, \
         store max {max_len} / final {} keys (max_keys {MAX_KEYS}); \
         VmRSS {rss_before} -> {rss_after} KiB (+{growth} KiB), \
         VmHWM {hwm_before} -> {hwm_after} KiB",
        buckets.len()
    );

    // Issue 18: at the bound the least recently used keys are evicted, so
    // every new key gets its own bucket (one token) on its first request;
    // the flood's keys push out each other (counted), never a new client.
    assert_eq!((allowed, refused), (KEYS, 0));
    assert!(
        max_len >= MAX_KEYS * 7 / 8,
        "store peaked at {max_len}: keys were not kept"
    );
    assert!(buckets.len() <= MAX_KEYS, "final store {}", buckets.len());
    assert!(
        buckets.evictions() >= (KEYS - MAX_KEYS) as u64,
        "{} evictions",
        buckets.evictions()
    );
    assert_eq!(
        metrics
            .limits_hit_total
            .with_label_values(&["rate_limit_keys"])
            .get(),
        buckets.evictions()
    );
    assert!(
        growth < MAX_GROWTH_KIB && peak_growth < MAX_GROWTH_KIB,
        "memory grew by {growth} KiB (peak +{peak_growth} KiB) for {KEYS} keys"
    );
    assert_eq!(
        metrics
            .rate_limited_total
            .with_label_values(&["per-key", "api"])
            .get(),
        refused as u64
    );
}
