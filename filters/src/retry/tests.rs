//! The retry loop against a scripted inner service, with paused time.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use kaname_config::types::{Condition, Retry as RetryConfig, RetryMethods};
use tower::{Service, ServiceExt};

use super::*;
use crate::body;
#[allow(unused_imports)]
use crate::BuiltFilter;
#[allow(unused_imports)]
use tower::Layer as _;

/// What the scripted upstream does on one try.
enum Act {
    Status(u16),
    RetryAfter(u64),
    Fail(UpstreamFailure),
    /// A filter inside the retry refuses (an open circuit).
    Refused,
    Hang,
}

#[derive(Default)]
struct Seen {
    bodies: Vec<Bytes>,
    avoided: Vec<Option<SocketAddr>>,
}

fn scripted(acts: Vec<Act>) -> (RouteService, Arc<Mutex<Seen>>) {
    let acts = Arc::new(Mutex::new(VecDeque::from(acts)));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let seen2 = seen.clone();
    let svc = tower::service_fn(move |req: Request<Body>| {
        let acts = acts.clone();
        let seen = seen2.clone();
        async move {
            let n = seen.lock().unwrap().bodies.len() as u16;
            let addr = SocketAddr::from(([127, 0, 0, 1], 1000 + n));
            if let Some(slot) = req.extensions().get::<EndpointSlot>() {
                slot.set(addr);
            }
            let avoided = req.extensions().get::<AvoidEndpoint>().map(|a| a.0);
            let act = acts.lock().unwrap().pop_front().unwrap_or(Act::Status(200));
            let bytes = req.into_body().collect().await.unwrap().to_bytes();
            {
                let mut s = seen.lock().unwrap();
                s.bodies.push(bytes);
                s.avoided.push(avoided);
            }
            let mut res = Response::new(body::empty());
            match act {
                Act::Status(s) => *res.status_mut() = StatusCode::from_u16(s).unwrap(),
                Act::RetryAfter(secs) => {
                    *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                    res.headers_mut()
                        .insert(header::RETRY_AFTER, secs.to_string().parse().unwrap());
                }
                Act::Fail(f) => {
                    return Err(ProxyError::upstream(
                        ErrorKind::UpstreamUnavailable,
                        f,
                        "try failed",
                    )
                    .at_endpoint(addr));
                }
                Act::Refused => {
                    return Err(ProxyError::refused(
                        ErrorKind::CircuitOpen,
                        &Arc::from("breaker"),
                        "circuit open",
                    ));
                }
                Act::Hang => std::future::pending::<()>().await,
            }
            Ok::<_, ProxyError>(res)
        }
    });
    (RouteService::new(svc), seen)
}

fn config() -> RetryConfig {
    RetryConfig {
        attempts: 3,
        retry_on: vec![
            Condition::ConnectFailure,
            Condition::Reset,
            Condition::Timeout,
            Condition::Status(503),
        ],
        methods: RetryMethods::Idempotent,
        per_try_timeout: Some(Duration::from_millis(500)),
        backoff_base: Duration::from_millis(25),
        backoff_max: Duration::from_millis(250),
        budget_ratio: 0.2,
        budget_min_per_second: 10,
        max_body_bytes: 64,
        max_buffered_bytes: 64 << 20,
    }
}

fn route() -> RouteInfo {
    RouteInfo {
        listener: "l".into(),
        route: "r".into(),
        upstream: "u".into(),
    }
}

async fn send(svc: &mut RouteService, method: Method, body: &'static [u8]) -> Response<Body> {
    let req = Request::builder()
        .method(method)
        .uri("/x")
        .body(body::full(Bytes::from_static(body)))
        .unwrap();
    svc.ready()
        .await
        .unwrap()
        .call(req)
        .await
        .unwrap_or_else(crate::error::rescue)
}

fn counter(m: &Metrics, family: &prometheus::IntCounterVec) -> u64 {
    let _ = m;
    family.with_label_values(&["r", "u"]).get()
}

#[tokio::test(start_paused = true)]
async fn retries_until_success_on_other_endpoints() {
    let m = Arc::new(Metrics::new());
    let layer = Retry::new("retries", &config(), &m).unwrap();
    let (inner, seen) = scripted(vec![
        Act::Status(503),
        Act::Fail(UpstreamFailure::Reset),
        Act::Status(200),
    ]);
    let mut svc = layer.layer(&route()).layer(inner);
    let res = send(&mut svc, Method::PUT, b"payload").await;
    assert_eq!(res.status(), StatusCode::OK);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.bodies, vec![Bytes::from_static(b"payload"); 3]);
    let first = SocketAddr::from(([127, 0, 0, 1], 1000));
    let second = SocketAddr::from(([127, 0, 0, 1], 1001));
    assert_eq!(seen.avoided, [None, Some(first), Some(second)]);
    assert_eq!(counter(&m, &m.retries_total), 2);
}

#[tokio::test(start_paused = true)]
async fn a_refusal_from_a_filter_inside_is_not_retried() {
    // An open circuit answers 503, which retry_on lists: kaname's own
    // answer is final, the circuit stops the remaining tries.
    let m = Arc::new(Metrics::new());
    let layer = Retry::new("retries", &config(), &m).unwrap();
    let (inner, seen) = scripted(vec![Act::Status(503), Act::Refused, Act::Status(200)]);
    let mut svc = layer.layer(&route()).layer(inner);
    let res = send(&mut svc, Method::GET, b"").await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(seen.lock().unwrap().bodies.len(), 2);
    assert_eq!(counter(&m, &m.retries_total), 1);
}

#[tokio::test(start_paused = true)]
async fn post_and_unlisted_answers_are_not_retried() {
    let m = Arc::new(Metrics::new());
    let layer = Retry::new("retries", &config(), &m).unwrap();
    let (inner, seen) = scripted(vec![Act::Status(503), Act::Status(500)]);
    let mut svc = layer.layer(&route()).layer(inner);
    let res = send(&mut svc, Method::POST, b"").await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let res = send(&mut svc, Method::GET, b"").await;
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(seen.lock().unwrap().bodies.len(), 2);

    let mut cfg = config();
    cfg.methods = RetryMethods::List(vec!["POST".into()]);
    let layer = Retry::new("retries", &cfg, &m).unwrap();
    let (inner, seen) = scripted(vec![Act::Status(503)]);
    let mut svc = layer.layer(&route()).layer(inner);
    assert_eq!(send(&mut svc, Method::POST, b"b").await.status(), 200);
    assert_eq!(seen.lock().unwrap().bodies.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn per_try_timeout_cuts_each_try_and_the_last_is_504() {
    let m = Arc::new(Metrics::new());
    let layer = Retry::new("retries", &config(), &m).unwrap();
    let (inner, _) = scripted(vec![Act::Hang, Act::Hang, Act::Hang]);
    let mut svc = layer.layer(&route()).layer(inner);
    let started = tokio::time::Instant::now();
    let res = send(&mut svc, Method::GET, b"").await;
    assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(res.headers()["kaname-error"], "upstream_timeout");
    assert_eq!(
        res.extensions()
            .get::<crate::Rescued>()
            .and_then(|r| r.failure),
        Some(UpstreamFailure::Timeout)
    );
    // Three tries of 500ms plus at most 25ms + 50ms of backoff.
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(1500) && took <= Duration::from_millis(1575));
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_waited_up_to_max() {
    let m = Arc::new(Metrics::new());
    let mut cfg = config();
    cfg.backoff_max = Duration::from_secs(2);
    let layer = Retry::new("retries", &cfg, &m).unwrap();
    let (inner, seen) = scripted(vec![Act::RetryAfter(2), Act::RetryAfter(3)]);
    let mut svc = layer.layer(&route()).layer(inner);
    let started = tokio::time::Instant::now();
    let res = send(&mut svc, Method::GET, b"").await;
    // Waited the 2s asked for; then 3s is more than max: that 503 stands.
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(started.elapsed(), Duration::from_secs(2));
    assert_eq!(seen.lock().unwrap().bodies.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn budget_stops_retries_and_counts_it() {
    let m = Arc::new(Metrics::new());
    let mut cfg = config();
    cfg.budget_ratio = 0.0;
    cfg.budget_min_per_second = 2;
    let layer = Retry::new("retries", &cfg, &m).unwrap();
    let (inner, seen) = scripted((0..20).map(|_| Act::Status(503)).collect());
    let mut svc = layer.layer(&route()).layer(inner);
    for _ in 0..4 {
        assert_eq!(send(&mut svc, Method::GET, b"").await.status(), 503);
    }
    assert_eq!(counter(&m, &m.retries_total), 2);
    assert_eq!(seen.lock().unwrap().bodies.len(), 6);
    assert_eq!(counter(&m, &m.retry_budget_exhausted_total), 3);
}

#[tokio::test(start_paused = true)]
async fn large_bodies_are_sent_once() {
    let m = Arc::new(Metrics::new());
    let layer = Retry::new("retries", &config(), &m).unwrap();
    let (inner, seen) = scripted(vec![Act::Status(503), Act::Status(503)]);
    let mut svc = layer.layer(&route()).layer(inner);
    let big = &[b'x'; 100];
    let res = send(&mut svc, Method::PUT, big).await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(seen.lock().unwrap().bodies, [Bytes::from_static(big)]);
}

#[test]
fn invalid_backoff_is_a_build_error() {
    let m = Arc::new(Metrics::new());
    let mut cfg = config();
    cfg.backoff_base = Duration::ZERO;
    assert!(Retry::new("retries", &cfg, &m).is_err());
}

#[tokio::test(start_paused = true)]
async fn a_body_past_the_shared_pool_is_sent_once_and_counted() {
    let m = Arc::new(Metrics::new());
    let pool = Arc::new(BufferPool::default());
    let mut cfg = config();
    cfg.max_buffered_bytes = 100;
    let layer = Retry::with_pool("retries", &cfg, &m, pool.clone()).unwrap();
    let (inner, seen) = scripted(vec![Act::Status(503), Act::Status(503), Act::Status(200)]);
    let mut svc = layer.layer(&route()).layer(inner);
    // Another request of the process holds 60 bytes for its own replay.
    let other = Replay::new(
        body::full(Bytes::from_static(&[0; 60])),
        layer.policy.replay.clone(),
        false,
    );
    let _ = other.first().collect().await.unwrap();
    assert_eq!(pool.held(), 60);
    // 50 more would make 110: this one is sent once, its 503 stands.
    let res = send(&mut svc, Method::PUT, &[b'x'; 50]).await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(seen.lock().unwrap().bodies.len(), 1);
    let refused = || {
        m.limits_hit_total
            .with_label_values(&["replay_buffer"])
            .get()
    };
    assert_eq!(refused(), 1);
    assert_eq!(pool.held(), 60, "the refused body holds nothing");
    // Once the other request is done, the same body is retried.
    drop(other);
    assert_eq!(pool.held(), 0);
    let res = send(&mut svc, Method::PUT, &[b'x'; 50]).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(seen.lock().unwrap().bodies.len(), 3);
    assert_eq!(refused(), 1);
    assert_eq!(pool.held(), 0, "given back when the request finished");
}
