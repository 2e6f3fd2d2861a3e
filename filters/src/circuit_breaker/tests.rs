//! The breaker service against a scripted upstream, with paused time.

use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use kaname_config::types::{CircuitBreaker as BreakerConfig, Condition};
use tower::ServiceExt;

use super::*;
use crate::body;
use crate::BoxError;
#[allow(unused_imports)]
use crate::BuiltFilter;
use bytes::Bytes;
use http_body::Frame;
use http_body_util::BodyExt;
#[allow(unused_imports)]
use tower::Layer as _;

fn config() -> BreakerConfig {
    BreakerConfig {
        consecutive_failures: Some(3),
        failure_rate: None,
        open_for: Duration::from_secs(10),
        max_open_for: Duration::from_secs(60),
        half_open_requests: 1,
        failure_on: vec![
            Condition::ConnectFailure,
            Condition::Timeout,
            Condition::Status5xx,
        ],
    }
}

fn route() -> RouteInfo {
    RouteInfo {
        listener: "l".into(),
        route: "r".into(),
        upstream: "u".into(),
    }
}

/// An upstream answering `status` (shared so tests can change it).
fn upstream(status: Arc<AtomicU16>, hits: Arc<AtomicUsize>) -> RouteService {
    RouteService::new(tower::service_fn(move |_req: Request<Body>| {
        hits.fetch_add(1, Ordering::SeqCst);
        let mut res = Response::new(body::empty());
        *res.status_mut() = StatusCode::from_u16(status.load(Ordering::SeqCst)).unwrap();
        async move { Ok::<_, ProxyError>(res) }
    }))
}

async fn send(svc: &RouteService) -> Response<Body> {
    let req = Request::get("/").body(body::empty()).unwrap();
    svc.clone()
        .oneshot(req)
        .await
        .unwrap_or_else(crate::error::rescue)
}

fn gauge(m: &Metrics, state: &str) -> i64 {
    m.circuit_breaker_state
        .with_label_values(&["breaker", "u", state])
        .get()
}

#[tokio::test(start_paused = true)]
async fn opens_refuses_probes_and_closes() {
    let m = Arc::new(Metrics::new());
    let layer = CircuitBreaker::new("breaker", &config(), &m);
    let status = Arc::new(AtomicU16::new(500));
    let hits = Arc::new(AtomicUsize::new(0));
    let svc = layer
        .layer(&route())
        .layer(upstream(status.clone(), hits.clone()));
    assert_eq!(gauge(&m, "closed"), 1);
    assert_eq!(gauge(&m, "open"), 0);
    for _ in 0..3 {
        assert_eq!(send(&svc).await.status(), 500);
    }
    assert_eq!(gauge(&m, "open"), 1);
    let res = send(&svc).await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.headers()["kaname-error"], "circuit_open");
    assert_eq!(res.headers()["retry-after"], "10");
    assert_eq!(
        hits.load(Ordering::SeqCst),
        3,
        "the upstream was not touched"
    );
    let rejected = m
        .circuit_breaker_rejected_total
        .with_label_values(&["breaker", "u"]);
    assert_eq!(rejected.get(), 1);

    // A second route naming the filter shares the breaker of the upstream.
    let other = layer
        .layer(&route())
        .layer(upstream(status.clone(), hits.clone()));
    assert_eq!(send(&other).await.status(), 503);

    // A failed probe opens it for 20s.
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_eq!(send(&svc).await.status(), 500);
    assert_eq!(send(&svc).await.headers()["retry-after"], "20");
    tokio::time::advance(Duration::from_secs(20)).await;
    status.store(200, Ordering::SeqCst);
    assert_eq!(send(&svc).await.status(), 200);
    assert_eq!(gauge(&m, "closed"), 1);
    assert_eq!(gauge(&m, "half_open"), 0);
    let to_open = m
        .circuit_breaker_transitions_total
        .with_label_values(&["breaker", "u", "open"]);
    assert_eq!(to_open.get(), 2);
}

#[tokio::test(start_paused = true)]
async fn grpc_unavailable_in_trailers_is_a_failure() {
    let m = Arc::new(Metrics::new());
    let mut cfg = config();
    cfg.consecutive_failures = Some(1);
    let layer = CircuitBreaker::new("breaker", &cfg, &m);
    let inner = RouteService::new(tower::service_fn(|_req: Request<Body>| async {
        let mut t = http::HeaderMap::new();
        t.insert("grpc-status", "14".parse().unwrap());
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = vec![
            Ok(Frame::data(Bytes::from_static(b"x"))),
            Ok(Frame::trailers(t)),
        ];
        let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames)).boxed();
        Ok::<_, ProxyError>(Response::new(body))
    }));
    let svc = layer.layer(&route()).layer(inner);
    let req = || {
        Request::post("/pkg.Svc/Call")
            .header("content-type", "application/grpc")
            .body(body::empty())
            .unwrap()
    };
    let res = svc
        .clone()
        .oneshot(req())
        .await
        .unwrap_or_else(|e| e.into_response(true));
    // Judged once the trailers pass by.
    assert_eq!(gauge(&m, "closed"), 1);
    res.into_body().collect().await.unwrap();
    assert_eq!(gauge(&m, "open"), 1);
    let res = svc
        .clone()
        .oneshot(req())
        .await
        .unwrap_or_else(|e| e.into_response(true));
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["grpc-status"], "14");
    assert_eq!(res.headers()["kaname-error"], "circuit_open");
}
