//! The rate_limit service in front of a counting upstream, on governor's
//! fake clock (tokio's paused time does not move governor's clock).

use std::sync::atomic::{AtomicUsize, Ordering};

use governor::clock::FakeRelativeClock;
use http::StatusCode;
use kaname_config::types::{Rate, RateLimitKey};
use tower::ServiceExt;

use super::*;
use crate::body;
#[allow(unused_imports)]
use crate::BuiltFilter;
use kaname_config::store::OnStoreError;
#[allow(unused_imports)]
use tower::Layer as _;

fn config(key: RateLimitKey, count: u32, burst: u32) -> RateLimitConfig {
    RateLimitConfig {
        key,
        rate: Rate {
            count,
            per: Duration::from_secs(1),
        },
        burst,
        max_keys: 1000,
        store: None,
        on_store_error: OnStoreError::Local,
    }
}

fn route(name: &str) -> RouteInfo {
    RouteInfo {
        listener: "l".into(),
        route: name.into(),
        upstream: "u".into(),
    }
}

fn upstream(hits: Arc<AtomicUsize>) -> RouteService {
    RouteService::new(tower::service_fn(move |_req: Request<Body>| {
        hits.fetch_add(1, Ordering::SeqCst);
        async move { Ok::<_, ProxyError>(Response::new(body::empty())) }
    }))
}

fn layer(
    cfg: &RateLimitConfig,
    m: &Arc<Metrics>,
) -> (RateLimit<FakeRelativeClock>, FakeRelativeClock) {
    let clock = FakeRelativeClock::default();
    let buckets = Buckets::with_clock(cfg.rate, cfg.burst, cfg.max_keys, clock.clone());
    let layer = RateLimit::with_buckets("limit", cfg, m, buckets).expect("layer");
    (layer, clock)
}

async fn send(svc: &RouteService, key: Option<&str>, grpc: bool) -> Response<Body> {
    let mut req = Request::post("/");
    if let Some(k) = key {
        req = req.header("x-key", k);
    }
    if grpc {
        req = req.header("content-type", "application/grpc");
    }
    let req = req.body(body::empty()).expect("request");
    svc.clone()
        .oneshot(req)
        .await
        .unwrap_or_else(|e| e.into_response(grpc))
}

fn header(res: &Response<Body>, name: &str) -> String {
    res.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn burst_passes_then_429_with_headers_then_refills() {
    let m = Arc::new(Metrics::new());
    let cfg = config(RateLimitKey::Global, 2, 3);
    let (layer, clock) = layer(&cfg, &m);
    let hits = Arc::new(AtomicUsize::new(0));
    let svc = layer.layer(&route("r")).layer(upstream(hits.clone()));

    for i in 0..3 {
        let res = send(&svc, None, false).await;
        assert_eq!(res.status(), StatusCode::OK, "request {i}");
        assert_eq!(header(&res, "ratelimit-limit"), "3");
        assert_eq!(header(&res, "ratelimit-remaining"), (2 - i).to_string());
        // Until full again: 0.5s, 1s, 1.5s, in whole seconds rounded up.
        assert_eq!(header(&res, "ratelimit-reset"), ["1", "1", "2"][i as usize]);
    }
    let res = send(&svc, None, false).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&res, "kaname-error"), "rate_limited");
    assert_eq!(header(&res, "retry-after"), "1");
    assert_eq!(header(&res, "ratelimit-limit"), "3");
    assert_eq!(header(&res, "ratelimit-remaining"), "0");
    assert_eq!(header(&res, "ratelimit-reset"), "2");
    assert_eq!(
        hits.load(Ordering::SeqCst),
        3,
        "the refusal never reached the upstream"
    );
    assert_eq!(
        m.rate_limited_total
            .with_label_values(&["limit", "r"])
            .get(),
        1
    );

    clock.advance(Duration::from_millis(500));
    assert_eq!(send(&svc, None, false).await.status(), StatusCode::OK);
    assert_eq!(
        send(&svc, None, false).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(hits.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn slow_rate_retry_after_counts_whole_seconds() {
    let m = Arc::new(Metrics::new());
    let cfg = RateLimitConfig {
        rate: Rate {
            count: 1,
            per: Duration::from_secs(60),
        },
        ..config(RateLimitKey::Global, 1, 1)
    };
    let (layer, clock) = layer(&cfg, &m);
    let svc = layer.layer(&route("r")).layer(upstream(Arc::default()));
    assert_eq!(send(&svc, None, false).await.status(), StatusCode::OK);
    clock.advance(Duration::from_millis(20_500));
    let res = send(&svc, None, false).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&res, "retry-after"), "40"); // 39.5s rounded up
}

#[tokio::test]
async fn header_keys_are_isolated_and_missing_keys_share_one_bucket() {
    let m = Arc::new(Metrics::new());
    let cfg = config(RateLimitKey::Header("x-key".into()), 1, 2);
    let (layer, _clock) = layer(&cfg, &m);
    let svc = layer.layer(&route("r")).layer(upstream(Arc::default()));
    for _ in 0..2 {
        assert_eq!(send(&svc, Some("a"), false).await.status(), StatusCode::OK);
    }
    assert_eq!(
        send(&svc, Some("a"), false).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    let b = send(&svc, Some("b"), false).await;
    assert_eq!(b.status(), StatusCode::OK);
    assert_eq!(header(&b, "ratelimit-remaining"), "1");
    for _ in 0..2 {
        assert_eq!(send(&svc, None, false).await.status(), StatusCode::OK);
    }
    assert_eq!(
        send(&svc, None, false).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn routes_share_the_filters_buckets_but_count_refusals_apart() {
    let m = Arc::new(Metrics::new());
    let cfg = config(RateLimitKey::Global, 1, 1);
    let (layer, _clock) = layer(&cfg, &m);
    let one = layer.layer(&route("one")).layer(upstream(Arc::default()));
    let two = layer.layer(&route("two")).layer(upstream(Arc::default()));
    assert_eq!(send(&one, None, false).await.status(), StatusCode::OK);
    assert_eq!(
        send(&two, None, false).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    let count = |r: &str| m.rate_limited_total.with_label_values(&["limit", r]).get();
    assert_eq!((count("one"), count("two")), (0, 1));
}

#[tokio::test]
async fn grpc_refusal_is_resource_exhausted() {
    let m = Arc::new(Metrics::new());
    let cfg = config(RateLimitKey::Global, 1, 1);
    let (layer, _clock) = layer(&cfg, &m);
    let svc = layer.layer(&route("r")).layer(upstream(Arc::default()));
    assert_eq!(send(&svc, None, true).await.status(), StatusCode::OK);
    let res = send(&svc, None, true).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(header(&res, "grpc-status"), "8");
    assert_eq!(header(&res, "kaname-error"), "rate_limited");
    assert_eq!(header(&res, "retry-after"), "1");
}

#[tokio::test]
async fn a_tighter_inner_limit_is_reported() {
    let m = Arc::new(Metrics::new());
    let outer_cfg = config(RateLimitKey::Global, 100, 100);
    let inner_cfg = config(RateLimitKey::Global, 1, 2);
    let (outer, _c1) = layer(&outer_cfg, &m);
    let (inner, _c2) = layer(&inner_cfg, &m);
    let svc = outer
        .layer(&route("r"))
        .layer(inner.layer(&route("r")).layer(upstream(Arc::default())));
    let res = send(&svc, None, false).await;
    assert_eq!(header(&res, "ratelimit-limit"), "2");
    assert_eq!(header(&res, "ratelimit-remaining"), "1");
}

#[tokio::test]
async fn a_flood_of_new_keys_evicts_counts_and_never_refuses_a_new_key() {
    let m = Arc::new(Metrics::new());
    let cfg = RateLimitConfig {
        max_keys: 10,
        ..config(RateLimitKey::Header("x-key".into()), 1, 1)
    };
    let (layer, _clock) = layer(&cfg, &m);
    let svc = layer.layer(&route("r")).layer(upstream(Arc::default()));
    for i in 0..50 {
        let res = send(&svc, Some(&format!("key-{i}")), false).await;
        assert_eq!(res.status(), StatusCode::OK, "new key {i}");
    }
    assert_eq!(layer.buckets().len(), 10);
    let hits = m
        .limits_hit_total
        .with_label_values(&["rate_limit_keys"])
        .get();
    assert_eq!(
        hits, 40,
        "one eviction under pressure per key past the bound"
    );
    assert_eq!(layer.buckets().evictions(), 40);
}

/// A store that answers from a script: a decision, or unavailable.
struct ScriptedStore {
    answers: std::sync::Mutex<std::collections::VecDeque<Result<Decision, StoreUnavailable>>>,
    keys: std::sync::Mutex<Vec<Vec<u8>>>,
}

impl SharedBuckets for Arc<ScriptedStore> {
    fn take(&self, key: Vec<u8>) -> SharedDecision {
        self.keys.lock().expect("lock").push(key);
        let answer = self
            .answers
            .lock()
            .expect("lock")
            .pop_front()
            .unwrap_or(Err(StoreUnavailable));
        Box::pin(async move { answer })
    }
}

#[tokio::test]
async fn a_store_decides_and_on_store_error_decides_when_it_fails() {
    let cfg = config(RateLimitKey::Header("x-key".into()), 1, 1);
    for (on_error, expect_when_down) in [
        // The local bucket of burst 1: one more, then 429.
        (
            OnStoreError::Local,
            [StatusCode::OK, StatusCode::TOO_MANY_REQUESTS],
        ),
        (OnStoreError::Allow, [StatusCode::OK, StatusCode::OK]),
        (
            OnStoreError::Deny,
            [StatusCode::TOO_MANY_REQUESTS, StatusCode::TOO_MANY_REQUESTS],
        ),
    ] {
        let m = Arc::new(Metrics::new());
        let store = Arc::new(ScriptedStore {
            answers: std::sync::Mutex::new(
                [
                    Ok(Decision::Allow {
                        remaining: 7,
                        reset: Duration::from_secs(2),
                    }),
                    Ok(Decision::Deny {
                        wait: Duration::from_secs(3),
                        reset: Duration::from_secs(4),
                    }),
                ]
                .into(),
            ),
            keys: Default::default(),
        });
        let (limit, _clock) = layer(&cfg, &m);
        let limit = limit.with_store(Arc::new(store.clone()), on_error);
        let hits = Arc::new(AtomicUsize::new(0));
        let svc = limit.layer(&route("r")).layer(upstream(hits.clone()));
        // The store's answers, headers from them.
        let res = send(&svc, Some("alice"), false).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(header(&res, "ratelimit-remaining"), "7");
        let res = send(&svc, Some("alice"), false).await;
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(header(&res, "retry-after"), "3");
        assert_eq!(store.keys.lock().expect("lock")[0], b"v:alice");
        // Down: on_store_error decides, counted.
        for (i, want) in expect_when_down.iter().enumerate() {
            let res = send(&svc, Some("alice"), false).await;
            assert_eq!(
                res.status(),
                *want,
                "{on_error:?}, request {i} with the store down"
            );
        }
        assert_eq!(
            m.rate_limit_store_fallbacks_total
                .with_label_values(&["limit"])
                .get(),
            2,
            "{on_error:?}"
        );
    }
}
