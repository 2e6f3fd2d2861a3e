//! The jwt service against a recording upstream: what passes, what is
//! refused and how, and what the upstream receives.

use std::sync::Mutex;
use std::time::Duration;

use http::{HeaderMap, StatusCode};
use jsonwebtoken::{encode, EncodingKey, Header};
use kaname_config::types::{JwksSource, TokenSource};
use serde_json::json;

use tower::ServiceExt;

use std::future::Future;
use std::pin::Pin;

use super::*;
use crate::body;
use crate::metrics::Metrics;
use crate::registry::JwksFetcher;
#[allow(unused_imports)]
use crate::BuiltFilter;
#[allow(unused_imports)]
use tower::Layer as _;

const SECRET: &str = "0123456789abcdef0123456789abcdef";

fn config() -> JwtConfig {
    JwtConfig {
        issuers: vec!["me".into()],
        audiences: vec![],
        algorithms: vec!["HS256".into()],
        jwks: None,
        secret: Some(SECRET.into()),
        leeway: Duration::ZERO,
        from: TokenSource::Header {
            name: "authorization".into(),
            prefix: "Bearer ".into(),
        },
        required_claims: vec!["sub".into()],
        forward_claims: vec![
            ("sub".into(), "x-user-id".into()),
            ("roles".into(), "x-roles".into()),
        ],
        forward_token: true,
        cache: true,
    }
}

struct NoFetch;

impl JwksFetcher for NoFetch {
    fn fetch(&self) -> Pin<Box<dyn Future<Output = Result<bytes::Bytes, String>> + Send + '_>> {
        Box::pin(async { Err("no fetch in these tests".to_string()) })
    }
}

/// What the upstream saw: headers, URI and the claims extension.
type Seen = Arc<Mutex<Vec<(HeaderMap, String, Option<VerifiedClaims>)>>>;

fn service(cfg: &JwtConfig, metrics: &Arc<Metrics>) -> (RouteService, Seen) {
    let fetcher = |_: &JwksSource| -> Arc<dyn JwksFetcher> { Arc::new(NoFetch) };
    let ctx = BuildContext {
        metrics,
        jwks_fetcher: &fetcher,
        policy_client: &crate::authorize::tests_support::no_policy,
        shared_buckets: &crate::registry::no_shared_buckets,
    };
    let layer = Jwt::new("auth", cfg, &ctx).unwrap();
    let seen: Seen = Arc::default();
    let record = seen.clone();
    let upstream = RouteService::new(tower::service_fn(move |req: Request<Body>| {
        record.lock().unwrap().push((
            req.headers().clone(),
            req.uri().to_string(),
            req.extensions().get::<VerifiedClaims>().cloned(),
        ));
        async { Ok::<_, ProxyError>(Response::new(body::empty())) }
    }));
    let route = RouteInfo {
        listener: "l".into(),
        route: "r".into(),
        upstream: "u".into(),
    };
    (layer.layer(&route).layer(upstream), seen)
}

fn token(claims: Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn good_claims() -> Value {
    json!({"sub": "alice", "iss": "me", "roles": ["a", "b"],
           "exp": jsonwebtoken::get_current_timestamp() + 600})
}

async fn send(svc: &RouteService, headers: &[(&str, &str)]) -> Response<Body> {
    let mut b = Request::get("/x");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let grpc = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("content-type") && v.starts_with("application/grpc"));
    svc.clone()
        .oneshot(b.body(body::empty()).unwrap())
        .await
        .unwrap_or_else(|e| e.into_response(grpc))
}

fn result(m: &Metrics, r: &str) -> u64 {
    m.jwt_validations_total
        .with_label_values(&["auth", r])
        .get()
}

#[tokio::test]
async fn valid_token_passes_with_claims() {
    let m = Arc::new(Metrics::new());
    let (svc, seen) = service(&config(), &m);
    let bearer = format!("Bearer {}", token(good_claims()));
    let res = send(
        &svc,
        &[
            ("authorization", &bearer),
            ("x-user-id", "mallory"),
            ("x-roles", "admin"),
        ],
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    let seen = seen.lock().unwrap();
    let (headers, _, claims) = &seen[0];
    let ids: Vec<_> = headers.get_all("x-user-id").iter().collect();
    assert_eq!(ids, ["alice"], "client's x-user-id replaced");
    assert_eq!(headers["x-roles"], "a b");
    assert_eq!(
        headers["authorization"],
        bearer.as_str(),
        "token kept with forward_token: true"
    );
    let claims = claims.as_ref().expect("VerifiedClaims in extensions");
    assert_eq!(claims.get_str("sub").as_deref(), Some("alice"));
    assert_eq!(result(&m, "ok"), 1);
}

#[tokio::test]
async fn missing_token_has_no_error_attribute() {
    let m = Arc::new(Metrics::new());
    let (svc, seen) = service(&config(), &m);
    let res = send(&svc, &[("authorization", "Basic eDp5")]).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(res.headers()["www-authenticate"], "Bearer");
    assert_eq!(res.headers()["kaname-error"], "unauthenticated");
    assert!(seen.lock().unwrap().is_empty());
    assert_eq!(result(&m, "missing"), 1);
}

#[tokio::test]
async fn invalid_token_is_described() {
    let m = Arc::new(Metrics::new());
    let (svc, seen) = service(&config(), &m);
    let mut c = good_claims();
    c["exp"] = json!(1);
    let res = send(&svc, &[("authorization", &format!("Bearer {}", token(c)))]).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        res.headers()["www-authenticate"],
        r#"Bearer error="invalid_token", error_description="token expired""#
    );
    assert!(seen.lock().unwrap().is_empty());
    assert_eq!(result(&m, "expired"), 1);
}

#[tokio::test]
async fn missing_required_claim_is_forbidden() {
    let m = Arc::new(Metrics::new());
    let (svc, _) = service(&config(), &m);
    let mut c = good_claims();
    c.as_object_mut().unwrap().remove("sub");
    let res = send(&svc, &[("authorization", &format!("Bearer {}", token(c)))]).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert_eq!(res.headers()["kaname-error"], "forbidden");
    assert!(res.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .contains("insufficient_scope"));
    assert_eq!(result(&m, "forbidden"), 1);
}

#[tokio::test]
async fn grpc_gets_trailers_only_unauthenticated() {
    let m = Arc::new(Metrics::new());
    let (svc, _) = service(&config(), &m);
    let res = send(&svc, &[("content-type", "application/grpc")]).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["grpc-status"], "16");
}

#[tokio::test]
async fn forward_token_false_strips_query_token() {
    let m = Arc::new(Metrics::new());
    let mut cfg = config();
    cfg.from = TokenSource::Query("access_token".into());
    cfg.forward_token = false;
    let (svc, seen) = service(&cfg, &m);
    let req = Request::get(format!("/x?a=1&access_token={}", token(good_claims())))
        .body(body::empty())
        .unwrap();
    let res = svc
        .clone()
        .oneshot(req)
        .await
        .unwrap_or_else(crate::error::rescue);
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(seen.lock().unwrap()[0].1, "/x?a=1");
}

#[tokio::test]
async fn repeated_token_is_served_from_the_cache() {
    // A cache hit hands back the claims verified the first time (the same
    // allocation) instead of checking the signature and decoding again;
    // with `cache: false` every request makes its own.
    for cache in [true, false] {
        let m = Arc::new(Metrics::new());
        let mut cfg = config();
        cfg.cache = cache;
        let (svc, seen) = service(&cfg, &m);
        let bearer = format!("Bearer {}", token(good_claims()));
        for _ in 0..3 {
            let res = send(&svc, &[("authorization", &bearer)]).await;
            assert_eq!(res.status(), StatusCode::OK);
        }
        assert_eq!(result(&m, "ok"), 3);
        let seen = seen.lock().unwrap();
        let claims: Vec<_> = seen
            .iter()
            .map(|(_, _, c)| c.clone().expect("claims extension").0)
            .collect();
        let shared = Arc::ptr_eq(&claims[0], &claims[1]) && Arc::ptr_eq(&claims[1], &claims[2]);
        assert_eq!(shared, cache, "cache {cache}: claims reused = {shared}");
    }
}

#[tokio::test]
async fn jwks_not_loaded_answers_keys_not_available() {
    let m = Arc::new(Metrics::new());
    let mut cfg = config();
    cfg.secret = None;
    cfg.algorithms = vec!["ES256".into()];
    cfg.jwks = Some(JwksSource::Url {
        url: "http://127.0.0.1:1/jwks".into(),
        refresh: Duration::from_secs(60),
    });
    let (svc, _) = service(&cfg, &m);
    let header = base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        r#"{"alg":"ES256","kid":"k"}"#,
    );
    let res = send(
        &svc,
        &[("authorization", &format!("Bearer {header}.e30.AAAA"))],
    )
    .await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert!(res.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .contains("signing keys not available yet"));
    assert_eq!(result(&m, "unknown_key"), 1);
    assert!(
        m.jwks_refreshes_total
            .with_label_values(&["auth", "failure"])
            .get()
            >= 1
    );
}

#[tokio::test]
async fn refusal_names_the_filter_for_the_access_log() {
    let m = Arc::new(Metrics::new());
    let (svc, seen) = service(&config(), &m);
    let res = send(&svc, &[]).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        res.extensions()
            .get::<crate::Rescued>()
            .and_then(|r| r.refused_by.as_deref()),
        Some("auth")
    );
    assert!(seen.lock().unwrap().is_empty());
    let bearer = format!("Bearer {}", token(good_claims()));
    let res = send(&svc, &[("authorization", &bearer)]).await;
    assert!(res.extensions().get::<crate::Rescued>().is_none());
}

#[tokio::test]
async fn two_bearer_tokens_are_an_invalid_request() {
    let m = Arc::new(Metrics::new());
    let (svc, seen) = service(&config(), &m);
    let good = format!("Bearer {}", token(good_claims()));
    for second in [good.as_str(), "Bearer not.a.token", "bearer x"] {
        let res = send(&svc, &[("authorization", &good), ("authorization", second)]).await;
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "second {second:?}");
        assert_eq!(res.headers()["kaname-error"], "invalid_request");
        assert_eq!(
            res.headers()["www-authenticate"],
            r#"Bearer error="invalid_request", error_description="more than one token in the request""#
        );
        assert_eq!(
            res.extensions()
                .get::<crate::Rescued>()
                .and_then(|r| r.refused_by.as_deref()),
            Some("auth")
        );
    }
    assert!(
        seen.lock().unwrap().is_empty(),
        "nothing reaches the upstream"
    );
    assert_eq!(result(&m, "invalid_request"), 3);
    assert_eq!(result(&m, "ok"), 0);
    // gRPC: trailers-only INVALID_ARGUMENT.
    let res = send(
        &svc,
        &[
            ("content-type", "application/grpc"),
            ("authorization", &good),
            ("authorization", &good),
        ],
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["grpc-status"], "3");
    assert_eq!(res.headers()["kaname-error"], "invalid_request");
    // A Basic value beside the bearer token is not a second token.
    let res = send(
        &svc,
        &[("authorization", "Basic eDp5"), ("authorization", &good)],
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
}

#[tokio::test]
async fn header_token_with_a_query_token_is_an_invalid_request() {
    let m = Arc::new(Metrics::new());
    let (svc, seen) = service(&config(), &m);
    let good = token(good_claims());
    let req = Request::get(format!("/x?access_token={good}"))
        .header("authorization", format!("Bearer {good}"))
        .body(body::empty())
        .unwrap();
    let res = svc
        .clone()
        .oneshot(req)
        .await
        .unwrap_or_else(crate::error::rescue);
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert!(res.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .contains("more than one method"));
    assert!(seen.lock().unwrap().is_empty());
    assert_eq!(result(&m, "invalid_request"), 1);
}

#[tokio::test]
async fn forward_token_false_strips_every_bearer_value_only() {
    let m = Arc::new(Metrics::new());
    let mut cfg = config();
    cfg.forward_token = false;
    let (svc, seen) = service(&cfg, &m);
    let bearer = format!("Bearer {}", token(good_claims()));
    let res = send(
        &svc,
        &[("authorization", "Basic eDp5"), ("authorization", &bearer)],
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    let seen = seen.lock().unwrap();
    let left: Vec<_> = seen[0].0.get_all("authorization").iter().collect();
    assert_eq!(left, ["Basic eDp5"], "the bearer value goes, Basic stays");
    assert_eq!(seen[0].0["x-user-id"], "alice");
}

#[tokio::test]
async fn two_query_tokens_or_cookies_are_an_invalid_request() {
    let good = token(good_claims());
    let m = Arc::new(Metrics::new());
    let mut cfg = config();
    cfg.from = TokenSource::Query("access_token".into());
    let (svc, seen) = service(&cfg, &m);
    for uri in [
        format!("/x?access_token={good}&access_token={good}"),
        format!("/x?access_token={good}&access%5Ftoken=other"),
    ] {
        let req = Request::get(uri.as_str()).body(body::empty()).unwrap();
        let res = svc
            .clone()
            .oneshot(req)
            .await
            .unwrap_or_else(crate::error::rescue);
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{uri}");
    }
    assert_eq!(result(&m, "invalid_request"), 2);

    let mut cfg = config();
    cfg.from = TokenSource::Cookie("session".into());
    let (cookie_svc, cookie_seen) = service(&cfg, &m);
    let res = send(
        &cookie_svc,
        &[("cookie", &format!("session={good}; session={good}"))],
    )
    .await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert!(seen.lock().unwrap().is_empty());
    assert!(cookie_seen.lock().unwrap().is_empty());
}
