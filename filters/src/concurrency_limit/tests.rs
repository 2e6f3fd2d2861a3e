//! The concurrency_limit service against an upstream whose answers the test
//! releases, with paused time.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::StatusCode;
use http_body_util::StreamBody;
use kaname_config::types::ConcurrencyLimit as ConcurrencyConfig;
use tokio::sync::{mpsc, Semaphore};
use tower::ServiceExt;

use bytes::Bytes;
use http_body::Frame;

use super::*;
use crate::body;
use crate::BoxError;
#[allow(unused_imports)]
use crate::BuiltFilter;
use http_body_util::BodyExt;
#[allow(unused_imports)]
use tower::Layer as _;

fn config(max_in_flight: usize, max_queue: usize) -> ConcurrencyConfig {
    ConcurrencyConfig {
        max_in_flight,
        max_queue,
        queue_timeout: Duration::from_millis(100),
        priority: Some(PrioritySource::Header("x-priority".into())),
    }
}

fn route() -> RouteInfo {
    RouteInfo {
        listener: "l".into(),
        route: "r".into(),
        upstream: "u".into(),
    }
}

/// Counts requests inside and the most ever inside; each answer waits for
/// a permit of `gate`.
#[derive(Clone, Default)]
struct Counting {
    now: Arc<AtomicUsize>,
    max: Arc<AtomicUsize>,
}

fn gated_upstream(c: Counting, gate: Arc<Semaphore>) -> RouteService {
    RouteService::new(tower::service_fn(move |_req: Request<Body>| {
        let c = c.clone();
        let gate = gate.clone();
        async move {
            let n = c.now.fetch_add(1, Ordering::SeqCst) + 1;
            c.max.fetch_max(n, Ordering::SeqCst);
            if let Ok(p) = gate.acquire().await {
                p.forget();
            }
            c.now.fetch_sub(1, Ordering::SeqCst);
            Ok::<_, ProxyError>(Response::new(body::empty()))
        }
    }))
}

fn request(priority: Option<&str>, grpc: bool) -> Request<Body> {
    let mut b = Request::post("/");
    if let Some(p) = priority {
        b = b.header("x-priority", p);
    }
    if grpc {
        b = b.header("content-type", "application/grpc");
    }
    b.body(body::empty()).expect("request")
}

#[tokio::test(start_paused = true)]
async fn never_more_than_max_in_flight_and_overflow_sheds() {
    let m = Arc::new(Metrics::new());
    let layer = ConcurrencyLimit::new("protect", &config(2, 3), &m).expect("layer");
    let counting = Counting::default();
    let gate = Arc::new(Semaphore::new(0));
    let svc = layer
        .layer(&route())
        .layer(gated_upstream(counting.clone(), gate.clone()));

    let mut tasks = Vec::new();
    for _ in 0..5 {
        let svc = svc.clone();
        tasks.push(tokio::spawn(svc.oneshot(request(None, false))));
    }
    while layer.limiter().queued() < 3 {
        tokio::task::yield_now().await;
    }
    // Two inside, three waiting: the sixth is shed at once.
    let shed = svc
        .clone()
        .oneshot(request(None, false))
        .await
        .unwrap_or_else(|e| e.into_response(false));
    assert_eq!(shed.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(shed.headers()["kaname-error"], "overloaded");
    assert_eq!(shed.headers()["retry-after"], "1");
    assert_eq!(
        m.shed_total.with_label_values(&["protect", "normal"]).get(),
        1
    );
    assert_eq!(
        m.concurrency_in_flight
            .with_label_values(&["protect"])
            .get(),
        2
    );
    assert_eq!(m.queue_depth.with_label_values(&["protect"]).get(), 3);

    gate.add_permits(5);
    for t in tasks {
        let res = t.await.expect("join").unwrap_or_else(crate::error::rescue);
        assert_eq!(res.status(), StatusCode::OK);
        drop(res); // the body holds the slot
    }
    assert_eq!(counting.max.load(Ordering::SeqCst), 2);
    assert_eq!(layer.limiter().in_flight(), 0);
    assert_eq!(
        m.concurrency_in_flight
            .with_label_values(&["protect"])
            .get(),
        0
    );
}

#[tokio::test(start_paused = true)]
async fn queue_timeout_sheds_and_grpc_gets_resource_exhausted() {
    let m = Arc::new(Metrics::new());
    let layer = ConcurrencyLimit::new("protect", &config(1, 10), &m).expect("layer");
    let gate = Arc::new(Semaphore::new(0));
    let svc = layer
        .layer(&route())
        .layer(gated_upstream(Counting::default(), gate.clone()));
    let first = tokio::spawn(svc.clone().oneshot(request(None, false)));
    while layer.limiter().in_flight() < 1 {
        tokio::task::yield_now().await;
    }
    let start = tokio::time::Instant::now();
    let res = svc
        .clone()
        .oneshot(request(Some("high"), true))
        .await
        .unwrap_or_else(|e| e.into_response(true));
    assert_eq!(start.elapsed(), Duration::from_millis(100));
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["grpc-status"], "8");
    assert_eq!(res.headers()["kaname-error"], "overloaded");
    assert_eq!(
        m.shed_total.with_label_values(&["protect", "high"]).get(),
        1
    );
    gate.add_permits(1);
    drop(
        first
            .await
            .expect("join")
            .unwrap_or_else(crate::error::rescue),
    );
}

#[tokio::test(start_paused = true)]
async fn the_slot_is_held_until_the_body_ends() {
    let m = Arc::new(Metrics::new());
    let layer = ConcurrencyLimit::new("protect", &config(1, 0), &m).expect("layer");
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
    let rx = Arc::new(std::sync::Mutex::new(Some(rx)));
    let upstream = RouteService::new(tower::service_fn(move |_req: Request<Body>| {
        let rx = rx.lock().expect("lock").take();
        async move {
            let body = match rx {
                Some(rx) => {
                    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                        rx.recv().await.map(|f| (f, rx))
                    });
                    StreamBody::new(stream).boxed()
                }
                None => body::empty(),
            };
            Ok::<_, ProxyError>(Response::new(body))
        }
    }));
    let svc = layer.layer(&route()).layer(upstream);
    let res = svc
        .clone()
        .oneshot(request(None, false))
        .await
        .unwrap_or_else(|e| e.into_response(false));
    assert_eq!(res.status(), StatusCode::OK);
    // Head received, body still streaming: the slot is taken.
    let shed = svc
        .clone()
        .oneshot(request(None, false))
        .await
        .unwrap_or_else(|e| e.into_response(false));
    assert_eq!(shed.status(), StatusCode::SERVICE_UNAVAILABLE);

    let mut body = res.into_body();
    tx.send(Ok(Frame::data(Bytes::from_static(b"chunk"))))
        .await
        .expect("send");
    let frame = body.frame().await.expect("a frame").expect("ok");
    assert_eq!(
        frame.into_data().expect("data"),
        Bytes::from_static(b"chunk")
    );
    assert_eq!(layer.limiter().in_flight(), 1);
    drop(tx);
    assert!(body.frame().await.is_none());
    assert_eq!(
        layer.limiter().in_flight(),
        0,
        "released at the end of the body"
    );
    let again = svc
        .clone()
        .oneshot(request(None, false))
        .await
        .unwrap_or_else(|e| e.into_response(false));
    assert_eq!(again.status(), StatusCode::OK);
}

#[tokio::test(start_paused = true)]
async fn without_a_priority_header_everyone_is_normal() {
    let m = Arc::new(Metrics::new());
    let cfg = ConcurrencyConfig {
        priority: None,
        ..config(1, 0)
    };
    let layer = ConcurrencyLimit::new("plain", &cfg, &m).expect("layer");
    let gate = Arc::new(Semaphore::new(0));
    let svc = layer
        .layer(&route())
        .layer(gated_upstream(Counting::default(), gate.clone()));
    let first = tokio::spawn(svc.clone().oneshot(request(None, false)));
    while layer.limiter().in_flight() < 1 {
        tokio::task::yield_now().await;
    }
    let res = svc
        .clone()
        .oneshot(request(Some("high"), false))
        .await
        .unwrap_or_else(|e| e.into_response(false));
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        m.shed_total.with_label_values(&["plain", "normal"]).get(),
        1
    );
    gate.add_permits(1);
    drop(
        first
            .await
            .expect("join")
            .unwrap_or_else(crate::error::rescue),
    );
}

fn claim_config(max_in_flight: usize, max_queue: usize) -> ConcurrencyConfig {
    ConcurrencyConfig {
        priority: Some(PrioritySource::Claim("tier".into())),
        ..config(max_in_flight, max_queue)
    }
}

/// A request as the jwt filter passes it on: with the verified claims.
fn with_claims(mut req: Request<Body>, claims: serde_json::Value) -> Request<Body> {
    let serde_json::Value::Object(map) = claims else {
        panic!("claims must be an object")
    };
    req.extensions_mut().insert(VerifiedClaims(Arc::new(map)));
    req
}

async fn text(res: Response<Body>) -> String {
    let bytes = res.into_body().collect().await.expect("body").to_bytes();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The attack: a `high` header on a normal-tier token is normal; a real
/// high-tier token displaces it from the full queue and is served first.
#[tokio::test(start_paused = true)]
async fn with_a_claim_source_the_class_is_the_claim_and_the_header_is_ignored() {
    let m = Arc::new(Metrics::new());
    let layer = ConcurrencyLimit::new("protect", &claim_config(1, 1), &m).expect("layer");
    let gate = Arc::new(Semaphore::new(0));
    let svc = layer
        .layer(&route())
        .layer(gated_upstream(Counting::default(), gate.clone()));
    let first = tokio::spawn(svc.clone().oneshot(request(None, false)));
    while layer.limiter().in_flight() < 1 {
        tokio::task::yield_now().await;
    }
    let liar = with_claims(
        request(Some("high"), false),
        serde_json::json!({"tier": "normal"}),
    );
    let liar = tokio::spawn(svc.clone().oneshot(liar));
    while layer.limiter().queued() < 1 {
        tokio::task::yield_now().await;
    }
    // Full. A header-only `high` without a high claim cannot displace it.
    let header_only = svc
        .clone()
        .oneshot(request(Some("high"), false))
        .await
        .unwrap_or_else(|e| e.into_response(false));
    assert_eq!(header_only.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(text(header_only)
        .await
        .contains("(normal priority): queue full"));
    // A high-tier token does, whatever its header says.
    let real = with_claims(
        request(Some("low"), false),
        serde_json::json!({"tier": "high"}),
    );
    let real = tokio::spawn(svc.clone().oneshot(real));
    let liar = liar
        .await
        .expect("join")
        .unwrap_or_else(crate::error::rescue);
    assert_eq!(liar.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        text(liar).await.contains("(normal priority): displaced"),
        "the liar was normal"
    );
    gate.add_permits(2);
    drop(
        first
            .await
            .expect("join")
            .unwrap_or_else(crate::error::rescue),
    );
    let real = real
        .await
        .expect("join")
        .unwrap_or_else(crate::error::rescue);
    assert_eq!(real.status(), StatusCode::OK);
    drop(real);
    assert_eq!(
        m.shed_total.with_label_values(&["protect", "normal"]).get(),
        2
    );
    assert_eq!(
        m.shed_total.with_label_values(&["protect", "high"]).get(),
        0
    );
}

/// A non-string or missing claim, or no token at all, is normal: it neither
/// displaces a normal waiter nor is displaced by one.
#[tokio::test(start_paused = true)]
async fn a_missing_or_non_string_claim_is_normal() {
    let m = Arc::new(Metrics::new());
    let layer = ConcurrencyLimit::new("protect", &claim_config(1, 1), &m).expect("layer");
    let gate = Arc::new(Semaphore::new(0));
    let svc = layer
        .layer(&route())
        .layer(gated_upstream(Counting::default(), gate.clone()));
    let first = tokio::spawn(svc.clone().oneshot(request(None, false)));
    while layer.limiter().in_flight() < 1 {
        tokio::task::yield_now().await;
    }
    let waiter = tokio::spawn(svc.clone().oneshot(request(None, false)));
    while layer.limiter().queued() < 1 {
        tokio::task::yield_now().await;
    }
    for claims in [
        serde_json::json!({"tier": 1}),
        serde_json::json!({"tier": true}),
        serde_json::json!({"tier": ["high"]}),
        serde_json::json!({"tier": {"level": "high"}}),
        serde_json::json!({"sub": "no tier"}),
        serde_json::json!({"tier": "urgent"}),
    ] {
        let res = svc
            .clone()
            .oneshot(with_claims(request(Some("high"), false), claims.clone()))
            .await
            .unwrap_or_else(crate::error::rescue);
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE, "{claims}");
        assert!(text(res).await.contains("(normal priority)"), "{claims}");
    }
    assert_eq!(
        m.shed_total.with_label_values(&["protect", "normal"]).get(),
        6
    );
    gate.add_permits(2);
    drop(
        first
            .await
            .expect("join")
            .unwrap_or_else(crate::error::rescue),
    );
    let w = waiter
        .await
        .expect("join")
        .unwrap_or_else(crate::error::rescue);
    assert_eq!(
        w.status(),
        StatusCode::OK,
        "the normal waiter kept its place"
    );
}

/// A route's own priority is the class of every request on it: the filter's
/// claim (or header) is not read there.
#[tokio::test(start_paused = true)]
async fn a_route_priority_replaces_the_filters_source() {
    use kaname_config::types::PriorityClass;
    let on_route = |mut req: Request<Body>, p: PriorityClass| {
        req.extensions_mut().insert(RoutePriority(p));
        req
    };
    let m = Arc::new(Metrics::new());
    let layer = ConcurrencyLimit::new("protect", &claim_config(1, 1), &m).expect("layer");
    let gate = Arc::new(Semaphore::new(0));
    let svc = layer
        .layer(&route())
        .layer(gated_upstream(Counting::default(), gate.clone()));
    let first = tokio::spawn(svc.clone().oneshot(request(None, false)));
    while layer.limiter().in_flight() < 1 {
        tokio::task::yield_now().await;
    }
    let normal = tokio::spawn(svc.clone().oneshot(request(None, false)));
    while layer.limiter().queued() < 1 {
        tokio::task::yield_now().await;
    }
    // A high-tier token on a low route is low: it cannot displace normal.
    let high_token = with_claims(request(None, false), serde_json::json!({"tier": "high"}));
    let res = svc
        .clone()
        .oneshot(on_route(high_token, PriorityClass::Low))
        .await
        .unwrap_or_else(crate::error::rescue);
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(text(res).await.contains("(low priority)"));
    // A request without a token on a high route is high: it displaces normal.
    let high = tokio::spawn(
        svc.clone()
            .oneshot(on_route(request(None, false), PriorityClass::High)),
    );
    let displaced = normal
        .await
        .expect("join")
        .unwrap_or_else(crate::error::rescue);
    assert_eq!(displaced.status(), StatusCode::SERVICE_UNAVAILABLE);
    gate.add_permits(2);
    drop(
        first
            .await
            .expect("join")
            .unwrap_or_else(crate::error::rescue),
    );
    let h = high
        .await
        .expect("join")
        .unwrap_or_else(crate::error::rescue);
    assert_eq!(h.status(), StatusCode::OK);
    drop(h);
    assert_eq!(m.shed_total.with_label_values(&["protect", "low"]).get(), 1);
    assert_eq!(
        m.shed_total.with_label_values(&["protect", "normal"]).get(),
        1
    );
}

/// `with_route_priority` around a route's chain gives its requests the
/// route's class, whatever their claims say.
#[tokio::test(start_paused = true)]
async fn with_route_priority_carries_the_routes_class_to_the_filter() {
    use kaname_config::types::PriorityClass;
    let m = Arc::new(Metrics::new());
    let layer = ConcurrencyLimit::new("protect", &claim_config(1, 0), &m).expect("layer");
    let gate = Arc::new(Semaphore::new(0));
    let chain = layer
        .layer(&route())
        .layer(gated_upstream(Counting::default(), gate.clone()));
    let low_route = RouteService::new(RoutePriorityLayer(PriorityClass::Low).layer(chain.clone()));
    let first = tokio::spawn(chain.oneshot(request(None, false)));
    while layer.limiter().in_flight() < 1 {
        tokio::task::yield_now().await;
    }
    let high_token = with_claims(request(None, false), serde_json::json!({"tier": "high"}));
    let res = low_route
        .oneshot(high_token)
        .await
        .unwrap_or_else(crate::error::rescue);
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(text(res).await.contains("(low priority)"));
    assert_eq!(m.shed_total.with_label_values(&["protect", "low"]).get(), 1);
    gate.add_permits(1);
    drop(
        first
            .await
            .expect("join")
            .unwrap_or_else(crate::error::rescue),
    );
}
