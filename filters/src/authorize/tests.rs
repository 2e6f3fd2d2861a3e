//! The authorize filter in front of a counting upstream: rules in order,
//! audit mode, and the external service scripted (allow, deny, slow,
//! failing), its cache on tokio's paused clock.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use kaname_config::authorize::{AuthzRule, Conditions, ExternalPolicy};
use tower::ServiceExt;

use super::*;
use crate::body;
use crate::BuiltFilter;
#[allow(unused_imports)]
use tower::Layer as _;

/// A policy service answering from a script, counting its calls.
struct Scripted {
    answer: Mutex<(u16, &'static str)>,
    delay: Duration,
    calls: AtomicUsize,
    last_input: Mutex<String>,
}

impl PolicyClient for Scripted {
    fn post(&self, body: Bytes) -> external::PolicyCall<'_> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        *self.last_input.lock().unwrap() = String::from_utf8_lossy(&body).into_owned();
        Box::pin(async move {
            tokio::time::sleep(self.delay).await;
            let (status, text) = *self.answer.lock().unwrap();
            Ok((status, Bytes::from_static(text.as_bytes())))
        })
    }
}

fn rule(name: &str, decision: AuthzDecision, c: Conditions) -> AuthzRule {
    AuthzRule {
        name: name.into(),
        decision,
        conditions: c,
    }
}

fn policy(rules: Vec<AuthzRule>, external: Option<ExternalPolicy>, audit: bool) -> AuthorizeConfig {
    AuthorizeConfig {
        mode: if audit {
            AuthzMode::Audit
        } else {
            AuthzMode::Enforce
        },
        default: AuthzDecision::Deny,
        rules,
        external,
    }
}

struct Harness {
    svc: RouteService,
    hits: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
}

fn build(cfg: &AuthorizeConfig, client: Option<Arc<Scripted>>) -> Harness {
    let metrics = Arc::new(Metrics::new());
    let jwks =
        |_: &kaname_config::types::JwksSource| -> Arc<dyn crate::JwksFetcher> { unreachable!() };
    let policy_client = move |_: &ExternalPolicy| -> Arc<dyn PolicyClient> {
        client.clone().expect("a scripted client") as Arc<dyn PolicyClient>
    };
    let ctx = BuildContext {
        metrics: &metrics,
        jwks_fetcher: &jwks,
        policy_client: &policy_client,
        shared_buckets: &crate::registry::no_shared_buckets,
    };
    let filter = Authorize::new("policy", cfg, &ctx).expect("built");
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    let upstream = RouteService::new(tower::service_fn(move |req: Request<Body>| {
        counted.fetch_add(1, Ordering::SeqCst);
        let tenant = req.headers().get("x-tenant").cloned();
        async move {
            let mut res = Response::new(body::empty());
            if let Some(t) = tenant {
                res.headers_mut().insert("x-seen-tenant", t);
            }
            Ok::<_, ProxyError>(res)
        }
    }));
    let route = RouteInfo {
        listener: "l".into(),
        route: "r".into(),
        upstream: "u".into(),
    };
    Harness {
        svc: filter.layer(&route).layer(upstream),
        hits,
        metrics,
    }
}

async fn send(h: &Harness, method: &str, path: &str) -> Response<Body> {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .body(body::empty())
        .unwrap();
    h.svc
        .clone()
        .oneshot(req)
        .await
        .unwrap_or_else(crate::error::rescue)
}

fn count(h: &Harness, rule: &str, decision: &str) -> u64 {
    h.metrics
        .authz_decisions_total
        .with_label_values(&["policy", rule, decision])
        .get()
}

fn paths(p: &[&str]) -> Conditions {
    Conditions {
        paths: p.iter().map(|s| s.to_string()).collect(),
        ..Conditions::default()
    }
}

#[tokio::test]
async fn the_first_matching_rule_decides_and_a_deny_names_no_rule() {
    let h = build(
        &policy(
            vec![
                rule(
                    "no-internal",
                    AuthzDecision::Deny,
                    paths(&["/api/internal/**"]),
                ),
                rule("api", AuthzDecision::Allow, paths(&["/api/**"])),
            ],
            None,
            false,
        ),
        None,
    );
    assert_eq!(send(&h, "GET", "/api/orders").await.status(), 200);
    let res = send(&h, "GET", "/api/internal/keys").await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert_eq!(res.headers()["kaname-error"], "forbidden");
    let rescued = res.extensions().get::<crate::Rescued>().unwrap();
    assert_eq!(rescued.rule.as_deref(), Some("no-internal"));
    let body = http_body_util::BodyExt::collect(res.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert!(
        !String::from_utf8_lossy(&body).contains("internal"),
        "the client is not told the rule"
    );
    assert_eq!(
        send(&h, "GET", "/other").await.status(),
        403,
        "default deny"
    );
    assert_eq!(h.hits.load(Ordering::SeqCst), 1);
    assert_eq!(count(&h, "api", "allow"), 1);
    assert_eq!(count(&h, "no-internal", "deny"), 1);
    assert_eq!(count(&h, "default", "deny"), 1);
}

#[tokio::test]
async fn audit_mode_counts_a_deny_and_lets_it_pass() {
    let h = build(
        &policy(
            vec![rule("api", AuthzDecision::Allow, paths(&["/api/**"]))],
            None,
            true,
        ),
        None,
    );
    assert_eq!(send(&h, "GET", "/admin").await.status(), 200);
    assert_eq!(h.hits.load(Ordering::SeqCst), 1);
    assert_eq!(count(&h, "default", "audit_deny"), 1);
    assert_eq!(count(&h, "default", "deny"), 0);
}

fn external(cache: Duration, on_error: AuthzDecision) -> ExternalPolicy {
    ExternalPolicy {
        url: "http://policy.test/v1/data/authz/allow".into(),
        timeout: Duration::from_millis(100),
        on_error,
        cache,
        include_headers: vec!["x-tenant".into()],
    }
}

fn scripted(status: u16, answer: &'static str, delay: Duration) -> Arc<Scripted> {
    Arc::new(Scripted {
        answer: Mutex::new((status, answer)),
        delay,
        calls: AtomicUsize::new(0),
        last_input: Mutex::new(String::new()),
    })
}

#[tokio::test(start_paused = true)]
async fn the_external_service_decides_when_no_rule_does_and_is_cached() {
    let client = scripted(
        200,
        r#"{"result": {"allow": true, "headers": {"x-tenant": "t9"}}}"#,
        Duration::ZERO,
    );
    let h = build(
        &policy(
            vec![rule("no-admin", AuthzDecision::Deny, paths(&["/admin/**"]))],
            Some(external(Duration::from_secs(10), AuthzDecision::Deny)),
            false,
        ),
        Some(client.clone()),
    );
    let res = send(&h, "GET", "/orders?page=2").await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.headers()["x-seen-tenant"],
        "t9",
        "the answer's headers reach the upstream"
    );
    let input: serde_json::Value =
        serde_json::from_str(&client.last_input.lock().unwrap()).unwrap();
    assert_eq!(input["input"]["method"], "GET");
    assert_eq!(input["input"]["path"], "/orders");
    assert_eq!(input["input"]["query"], "page=2");
    assert_eq!(input["input"]["identity"], serde_json::Value::Null);
    assert_eq!(send(&h, "GET", "/orders?page=3").await.status(), 200);
    assert_eq!(
        client.calls.load(Ordering::SeqCst),
        1,
        "the second is answered from the cache"
    );
    assert_eq!(
        send(&h, "GET", "/admin/x").await.status(),
        403,
        "a rule decides first"
    );
    assert_eq!(client.calls.load(Ordering::SeqCst), 1);
    tokio::time::advance(Duration::from_secs(11)).await;
    assert_eq!(send(&h, "GET", "/orders").await.status(), 200);
    assert_eq!(client.calls.load(Ordering::SeqCst), 2, "the entry expired");
    assert_eq!(count(&h, "external", "allow"), 3);
}

#[tokio::test(start_paused = true)]
async fn a_slow_or_failing_service_costs_timeout_then_on_error() {
    for (on_error, status) in [(AuthzDecision::Deny, 403), (AuthzDecision::Allow, 200)] {
        let client = scripted(200, r#"{"result": true}"#, Duration::from_secs(5));
        let h = build(
            &policy(vec![], Some(external(Duration::ZERO, on_error)), false),
            Some(client),
        );
        let started = tokio::time::Instant::now();
        assert_eq!(send(&h, "GET", "/x").await.status(), status);
        assert_eq!(
            started.elapsed(),
            Duration::from_millis(100),
            "never past timeout"
        );
        assert_eq!(
            h.metrics
                .authz_external_errors_total
                .with_label_values(&["policy", "timeout"])
                .get(),
            1
        );
        let decision = if on_error == AuthzDecision::Deny {
            "deny"
        } else {
            "allow"
        };
        assert_eq!(count(&h, "external_error", decision), 1);
    }
    for (status, answer, kind) in [(500, "{}", "status"), (200, "not json", "body")] {
        let h = build(
            &policy(
                vec![],
                Some(external(Duration::ZERO, AuthzDecision::Deny)),
                false,
            ),
            Some(scripted(status, answer, Duration::ZERO)),
        );
        assert_eq!(send(&h, "GET", "/x").await.status(), 403);
        assert_eq!(
            h.metrics
                .authz_external_errors_total
                .with_label_values(&["policy", kind])
                .get(),
            1
        );
    }
    let h = build(
        &policy(
            vec![],
            Some(external(Duration::ZERO, AuthzDecision::Allow)),
            false,
        ),
        Some(scripted(200, r#"{"result": false}"#, Duration::ZERO)),
    );
    assert_eq!(
        send(&h, "GET", "/x").await.status(),
        403,
        "a false result is a deny, not an error"
    );
}
