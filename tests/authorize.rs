//! The `authorize` filter end to end (authorization.md): the real binary,
//! real JWTs (HS256 and RS256 from a JWKS file), real mTLS certificates
//! made here, a real HTTP policy service answering OPA's data-API shape,
//! and a real gRPC client.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use jsonwebtoken::Algorithm;
use serde_json::{json, Value};
use support::grpc::{EchoClient, EchoRequest, GrpcUpstream, SERVICE};
use support::jwt::{jwks, now, TestKey};
use support::metrics::{metric, metrics};
use support::net::{accept_each, bind_loopback};
use support::tls::{client_config, send_tls, TestCa};
use support::{empty, HttpClient, Kaname, TestResponse, TestUpstream};

const SECRET: &str = "authorize-test-secret-0123456789abcdef";

/// Rules of the contract's example, over a jwt filter (HS256 secret).
const POLICY: &str = "  auth:
    jwt: { algorithms: [HS256], secret: authorize-test-secret-0123456789abcdef }
  policy:
    authorize:
      rules:
        - name: no-internal
          deny: { paths: [/api/internal/**] }
        - name: readers
          allow: { methods: [GET, HEAD], paths: [/api/orders, /api/orders/*], claims: { scope: orders:read } }
        - name: writers
          allow: { methods: [POST, PUT, DELETE], paths: [/api/orders/**], claims: { scope: orders:write, role: [admin, clerk] } }
        - name: realm-admins
          allow: { paths: [/api/admin/**], claims: { realm_access.roles: admin } }
        - name: tenants
          allow: { paths: [/api/tenant], headers: { x-tenant: [t1, t2] }, hosts: [\"*.shop.test\"] }
";

fn config(up: &TestUpstream, filters: &str, extra_routes: &str) -> String {
    format!(
        "log: {{ level: info, format: json, access_log: true }}
listeners:
  main:
    listen: 127.0.0.1:0
    routes:
{extra_routes}      - {{ match: {{ path_prefix: / }}, upstream: app, filters: [auth, policy] }}
upstreams:
  app: {{ endpoints: [{}] }}
filters:
{filters}",
        up.addr
    )
}

fn token(claims: Value) -> String {
    let key = support::jwt::text_secret_key(Algorithm::HS256, SECRET);
    let mut c = claims;
    c["exp"] = json!(now() + 3600);
    key.sign(&c)
}

async fn send(
    k: &Kaname,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    headers: &[(&str, &str)],
) -> TestResponse {
    let mut b = Request::builder().method(method).uri(k.url("main", path));
    if let Some(t) = bearer {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    HttpClient::http1()
        .send(b.body(empty()).expect("request"))
        .await
}

fn decisions(text: &str, rule: &str, decision: &str) -> f64 {
    support::metric_value(
        text,
        &format!("kaname_authz_decisions_total{{filter=\"policy\",rule=\"{rule}\",decision=\"{decision}\"}}"),
    )
    .unwrap_or(0.0)
}

#[tokio::test]
async fn rules_allow_and_deny_by_every_condition_in_order() {
    let up = TestUpstream::start("app").await;
    let k = Kaname::start(&config(&up, POLICY, "")).await;
    let reader = token(json!({"sub": "r", "scope": "profile orders:read"}));
    let clerk = token(json!({"sub": "c", "scope": "orders:write", "role": ["clerk"]}));
    let viewer = token(json!({"sub": "v", "scope": "orders:write", "role": ["viewer"]}));
    let admin = token(json!({"sub": "a", "realm_access": {"roles": ["admin", "x"]}}));

    // `*` stays in one segment; `**` spans segments.
    assert_eq!(
        send(&k, "GET", "/api/orders/7", Some(&reader), &[])
            .await
            .status,
        200
    );
    assert_eq!(
        send(&k, "GET", "/api/orders", Some(&reader), &[])
            .await
            .status,
        200
    );
    let deep = send(&k, "GET", "/api/orders/7/items", Some(&reader), &[]).await;
    deep.assert_kaname_error(403, "forbidden");
    assert_eq!(
        deep.json()["message"],
        "access denied",
        "no rule is named to the client"
    );
    // Scope words, array membership, and a method outside the rule.
    assert_eq!(
        send(&k, "POST", "/api/orders/7/items", Some(&clerk), &[])
            .await
            .status,
        200
    );
    send(&k, "POST", "/api/orders/7", Some(&viewer), &[])
        .await
        .assert_kaname_error(403, "forbidden");
    send(&k, "POST", "/api/orders/7", Some(&reader), &[])
        .await
        .assert_kaname_error(403, "forbidden");
    // A dotted claim path into a nested object's array.
    assert_eq!(
        send(&k, "GET", "/api/admin/users", Some(&admin), &[])
            .await
            .status,
        200
    );
    // The deny comes first: even an admin-write token cannot reach internal.
    let writer_admin = token(
        json!({"sub": "w", "scope": "orders:write", "role": "admin", "realm_access": {"roles": ["admin"]}}),
    );
    send(&k, "GET", "/api/internal/keys", Some(&writer_admin), &[])
        .await
        .assert_kaname_error(403, "forbidden");
    // Headers (any of the values) and hosts (a `*.` wildcard), both needed.
    let tenant = |host: &'static str, t: &'static str| [("host", host), ("x-tenant", t)];
    assert_eq!(
        send(
            &k,
            "GET",
            "/api/tenant",
            Some(&reader),
            &tenant("eu.shop.test", "t2")
        )
        .await
        .status,
        200
    );
    assert_eq!(
        send(
            &k,
            "GET",
            "/api/tenant",
            Some(&reader),
            &tenant("eu.shop.test:8443", "t1")
        )
        .await
        .status,
        200,
        "the port is ignored"
    );
    send(
        &k,
        "GET",
        "/api/tenant",
        Some(&reader),
        &tenant("eu.shop.test", "t3"),
    )
    .await
    .assert_kaname_error(403, "forbidden");
    send(
        &k,
        "GET",
        "/api/tenant",
        Some(&reader),
        &tenant("shop.test", "t1"),
    )
    .await
    .assert_kaname_error(403, "forbidden");
    // No rule: the default (deny).
    send(&k, "GET", "/elsewhere", Some(&reader), &[])
        .await
        .assert_kaname_error(403, "forbidden");

    let text = metrics(&k).await;
    assert_eq!(decisions(&text, "readers", "allow"), 2.0);
    assert_eq!(decisions(&text, "no-internal", "deny"), 1.0);
    assert_eq!(decisions(&text, "default", "deny"), 6.0, "{text}");
    // The access log names the rule; the client never saw it.
    let log = k.stderr();
    assert!(log.contains(r#""rule":"no-internal""#), "{log}");
    assert!(log.contains(r#""filter":"policy""#), "{log}");
}

#[tokio::test]
async fn path_forms_cannot_walk_past_a_deny_rule() {
    let up = TestUpstream::start("app").await;
    let k = Kaname::start(&config(&up, POLICY, "")).await;
    let writer = token(json!({"sub": "w", "scope": "orders:read orders:write", "role": "admin"}));
    // Every spelling of /api/internal/keys is refused (403 by the rule, or
    // 400 by the request model); none reaches the upstream.
    for path in [
        "/api/%69nternal/keys",
        "/api/./internal/keys",
        "/api/orders/../internal/keys",
        "/api/%2e%2e/api/internal/keys",
        "/api//internal/keys",
        "/api/internal/%6beys",
    ] {
        let resp = send(&k, "GET", path, Some(&writer), &[]).await;
        assert!(
            resp.status == 403 || resp.status == 400,
            "{path}: {}",
            resp.status
        );
    }
    let escaped = send(&k, "GET", "/api%2Finternal/keys", Some(&writer), &[]).await;
    assert_eq!(
        escaped.status, 400,
        "an encoded slash is refused by default"
    );
    assert_eq!(up.hits(), 0, "nothing reached the upstream");
}

#[tokio::test]
async fn audit_mode_counts_a_deny_and_lets_it_pass() {
    let up = TestUpstream::start("app").await;
    let filters = "  auth:
    jwt: { algorithms: [HS256], secret: authorize-test-secret-0123456789abcdef }
  policy:
    authorize:
      mode: audit
      rules: [{ name: readers, allow: { methods: [GET] } }]
";
    let k = Kaname::start(&config(&up, filters, "")).await;
    let t = token(json!({"sub": "x"}));
    assert_eq!(
        send(&k, "DELETE", "/api/orders/1", Some(&t), &[])
            .await
            .status,
        200
    );
    assert_eq!(up.hits(), 1);
    assert_eq!(
        metric(
            &k,
            r#"kaname_authz_decisions_total{filter="policy",rule="default",decision="audit_deny"}"#
        )
        .await,
        1.0
    );
    assert!(k.stderr().contains("audit: would deny"), "{}", k.stderr());
}

/// A route without a jwt filter, for `authenticated: false` and source IPs.
#[tokio::test]
async fn source_ips_and_unauthenticated_callers() {
    let up = TestUpstream::start("app").await;
    let filters = "  auth:
    jwt: { algorithms: [HS256], secret: authorize-test-secret-0123456789abcdef }
  policy:
    authorize: { rules: [{ allow: { paths: [/never] } }] }
  probes:
    authorize:
      rules:
        - { name: loopback, allow: { paths: [/healthz], source_ips: [127.0.0.1/32], authenticated: false } }
        - { name: elsewhere, allow: { paths: [/metrics-ish], source_ips: [10.0.0.0/8] } }
";
    let routes = "      - { match: { path_prefix: /healthz }, upstream: app, filters: [probes] }
      - { match: { path_prefix: /metrics-ish }, upstream: app, filters: [probes] }
";
    let k = Kaname::start(&config(&up, filters, routes)).await;
    assert_eq!(send(&k, "GET", "/healthz", None, &[]).await.status, 200);
    // x-forwarded-for never counts as the source.
    send(
        &k,
        "GET",
        "/metrics-ish",
        None,
        &[("x-forwarded-for", "10.1.2.3")],
    )
    .await
    .assert_kaname_error(403, "forbidden");
}

/// A policy service answering OPA's data API: allows when the input's
/// path starts with /api/open, adds a header, counts its calls; `slow`
/// makes it wait before answering.
struct PolicyService {
    url: String,
    calls: Arc<AtomicUsize>,
    inputs: Arc<Mutex<Vec<Value>>>,
}

async fn policy_service(delay: Duration) -> PolicyService {
    let listener = bind_loopback("policy service").await;
    let url = format!(
        "http://{}/v1/data/http/authz/allow",
        listener.local_addr().expect("addr")
    );
    let calls = Arc::new(AtomicUsize::new(0));
    let inputs = Arc::new(Mutex::new(Vec::new()));
    let (c, i) = (calls.clone(), inputs.clone());
    accept_each(listener, move |io| {
        let (c, i) = (c.clone(), i.clone());
        async move {
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let (c, i) = (c.clone(), i.clone());
                async move {
                    c.fetch_add(1, Ordering::SeqCst);
                    let body = req
                        .into_body()
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    let input: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    let open = input["input"]["path"]
                        .as_str()
                        .is_some_and(|p| p.starts_with("/api/open"));
                    i.lock().unwrap().push(input);
                    tokio::time::sleep(delay).await;
                    let answer = json!({"result": {"allow": open, "headers": {"x-policy": "yes"}}});
                    Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(
                        answer.to_string(),
                    ))))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(io), svc)
                .await;
        }
    });
    PolicyService { url, calls, inputs }
}

fn external_filters(url: &str, timeout: &str, on_error: &str, cache: &str) -> String {
    format!(
        "  auth:
    jwt: {{ algorithms: [HS256], secret: authorize-test-secret-0123456789abcdef }}
  policy:
    authorize:
      rules: [{{ name: no-internal, deny: {{ paths: [/api/internal/**] }} }}]
      external: {{ url: \"{url}\", timeout: {timeout}, on_error: {on_error}, cache: {cache}, include_headers: [x-tenant] }}
"
    )
}

#[tokio::test]
async fn the_policy_service_decides_what_no_rule_does_and_is_cached() {
    let up = TestUpstream::start("app").await;
    let svc = policy_service(Duration::ZERO).await;
    let k = Kaname::start(&config(
        &up,
        &external_filters(&svc.url, "2s", "deny", "30s"),
        "",
    ))
    .await;
    let t = token(json!({"sub": "u7", "scope": "x"}));
    let resp = send(
        &k,
        "GET",
        "/api/open/1?q=2",
        Some(&t),
        &[("x-tenant", "t1")],
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(
        up.last().header("x-policy"),
        Some("yes"),
        "the answer's headers reach the upstream"
    );
    let input = svc.inputs.lock().unwrap()[0].clone();
    assert_eq!(input["input"]["method"], "GET");
    assert_eq!(input["input"]["path"], "/api/open/1");
    assert_eq!(input["input"]["query"], "q=2");
    assert_eq!(input["input"]["claims"]["sub"], "u7");
    assert_eq!(input["input"]["headers"]["x-tenant"], "t1");
    assert_eq!(input["input"]["identity"], Value::Null);
    assert_eq!(input["input"]["source_ip"], "127.0.0.1");
    // The same request again: answered from the cache.
    assert_eq!(
        send(
            &k,
            "GET",
            "/api/open/1?q=2",
            Some(&t),
            &[("x-tenant", "t1")]
        )
        .await
        .status,
        200
    );
    assert_eq!(svc.calls.load(Ordering::SeqCst), 1);
    // The service denies; a rule decides before it is asked.
    send(&k, "GET", "/api/closed", Some(&t), &[])
        .await
        .assert_kaname_error(403, "forbidden");
    send(&k, "GET", "/api/internal/x", Some(&t), &[])
        .await
        .assert_kaname_error(403, "forbidden");
    assert_eq!(svc.calls.load(Ordering::SeqCst), 2);

    // A reload that leaves the filter as it is keeps its cache.
    let path = k.config_path.clone();
    let text = std::fs::read_to_string(&path).expect("config");
    std::fs::write(
        &path,
        text.replace("upstreams:", "shutdown_grace: 5s\nupstreams:"),
    )
    .expect("rewrite");
    let reload = HttpClient::http1()
        .send(Request::post(k.admin_url("/reload")).body(empty()).unwrap())
        .await;
    assert_eq!(reload.status, 200, "{}", reload.text());
    assert_eq!(
        send(
            &k,
            "GET",
            "/api/open/1?q=2",
            Some(&t),
            &[("x-tenant", "t1")]
        )
        .await
        .status,
        200
    );
    assert_eq!(
        svc.calls.load(Ordering::SeqCst),
        2,
        "the decision cache survived the reload"
    );
    let text = metrics(&k).await;
    assert_eq!(decisions(&text, "external", "allow"), 3.0, "{text}");
    assert!(
        text.contains("kaname_authz_external_duration_seconds_count{filter=\"policy\"} 2"),
        "{text}"
    );
}

#[tokio::test]
async fn a_slow_or_dead_policy_service_costs_at_most_timeout() {
    let up = TestUpstream::start("app").await;
    let slow = policy_service(Duration::from_secs(10)).await;
    for (on_error, status) in [("deny", 403), ("allow", 200)] {
        let k = Kaname::start(&config(
            &up,
            &external_filters(&slow.url, "200ms", on_error, "0s"),
            "",
        ))
        .await;
        let t = token(json!({"sub": "u"}));
        let started = std::time::Instant::now();
        let resp = send(&k, "GET", "/api/open/x", Some(&t), &[]).await;
        let took = started.elapsed();
        assert_eq!(resp.status, status, "on_error {on_error}: {}", resp.text());
        assert!(
            took < Duration::from_secs(5),
            "held {took:?}, past its 200ms timeout"
        );
        assert_eq!(
            metric(
                &k,
                r#"kaname_authz_external_errors_total{filter="policy",kind="timeout"}"#
            )
            .await,
            1.0
        );
        assert_eq!(
            metric(&k, &format!(r#"kaname_authz_decisions_total{{filter="policy",rule="external_error",decision="{on_error}"}}"#)).await,
            1.0
        );
    }
    // Nothing listening at all: a connect error, on_error applies.
    let dead = support::net::ClosedPort::new();
    let url = format!("http://127.0.0.1:{}/v1/data/allow", dead.port());
    let k = Kaname::start(&config(
        &up,
        &external_filters(&url, "500ms", "deny", "0s"),
        "",
    ))
    .await;
    send(
        &k,
        "GET",
        "/api/open/x",
        Some(&token(json!({"sub": "u"}))),
        &[],
    )
    .await
    .assert_kaname_error(403, "forbidden");
    assert_eq!(
        metric(
            &k,
            r#"kaname_authz_external_errors_total{filter="policy",kind="connect"}"#
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn identities_from_client_certificates_and_rs256_tokens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let up = TestUpstream::start("app").await;
    let ca = TestCa::new("mesh CA");
    let (cert, key) = ca.leaf().write(dir.path(), "server");
    let ca_path = dir.path().join("ca.crt");
    std::fs::write(&ca_path, &ca.cert_pem).expect("write CA");
    let rsa = TestKey::generate(Algorithm::RS256, "k1");
    let jwks_path = dir.path().join("jwks.json");
    std::fs::write(&jwks_path, jwks(&[&rsa])).expect("write JWKS");
    let yaml = format!(
        "listeners:
  main:
    listen: 127.0.0.1:0
    tls: {{ cert: {}, key: {}, client_ca: {} }}
    routes:
      - {{ match: {{ path_prefix: / }}, upstream: app, filters: [auth, policy] }}
upstreams:
  app: {{ endpoints: [{}] }}
filters:
  auth:
    jwt: {{ algorithms: [RS256], jwks: {{ file: {} }} }}
  policy:
    authorize:
      rules:
        - {{ name: web, allow: {{ identities: [\"spiffe://test/ns/shop/sa/web\"], claims: {{ scope: orders:read }} }} }}
        - {{ name: batch, allow: {{ identities: [\"spiffe://test/ns/batch/*\"] }} }}
",
        cert.display(),
        key.display(),
        ca_path.display(),
        up.addr,
        jwks_path.display()
    );
    let k = Kaname::start(&yaml).await;
    let addr = k.addr("main");
    let url = format!("https://localhost:{}/api/x", addr.port());
    let t = rsa.sign(&json!({"sub": "s", "scope": "orders:read", "exp": now() + 3600}));
    let call = |client: &'static str, token: String| {
        let ca = &ca;
        let url = url.clone();
        async move {
            let leaf = ca.client(client);
            let req = Request::get(&url)
                .header("authorization", format!("Bearer {token}"))
                .body(empty())
                .unwrap();
            send_tls(
                addr,
                client_config(&ca.cert_pem, Some(&leaf), &[b"http/1.1"]),
                req,
            )
            .await
            .expect("TLS exchange")
            .response
        }
    };
    assert_eq!(
        call("spiffe://test/ns/shop/sa/web", t.clone()).await.status,
        200
    );
    assert_eq!(
        call("spiffe://test/ns/batch/sa/nightly", t.clone())
            .await
            .status,
        200,
        "a prefix wildcard"
    );
    call("spiffe://test/ns/shop/sa/other", t.clone())
        .await
        .assert_kaname_error(403, "forbidden");
    let no_scope = rsa.sign(&json!({"sub": "s", "exp": now() + 3600}));
    call("spiffe://test/ns/shop/sa/web", no_scope)
        .await
        .assert_kaname_error(403, "forbidden");
}

#[tokio::test]
async fn a_grpc_call_is_refused_with_permission_denied() {
    let up = GrpcUpstream::start("echo").await;
    let yaml = format!(
        "listeners:
  grpc:
    listen: 127.0.0.1:0
    routes:
      - {{ match: {{ path_prefix: /{SERVICE}/ }}, upstream: echo, filters: [policy] }}
upstreams:
  echo: {{ endpoints: [{}], protocol: http2 }}
filters:
  policy:
    authorize: {{ rules: [{{ allow: {{ headers: {{ x-caller: billing }} }} }}] }}
",
        up.addr
    );
    let k = Kaname::start(&yaml).await;
    let mut client = EchoClient::connect(k.port("grpc")).await;
    let status = client
        .unary(tonic::Request::new(EchoRequest::msg("hi")))
        .await
        .expect_err("refused");
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert_eq!(status.message(), "access denied");
    let mut req = tonic::Request::new(EchoRequest::msg("hi"));
    req.metadata_mut()
        .insert("x-caller", "billing".parse().unwrap());
    assert_eq!(
        client
            .unary(req)
            .await
            .expect("allowed")
            .into_inner()
            .message,
        "hi"
    );
}

#[tokio::test]
async fn the_authorize_example_works_as_its_readme_says() {
    let up = TestUpstream::start("orders").await;
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/authorize/kaname.yaml"
    ))
    .expect("the example");
    let text = text
        .replace("${AUTHZ_LISTEN:-127.0.0.1:8080}", "127.0.0.1:0")
        .replace("${APP_ADDR:-127.0.0.1:3000}", &up.addr.to_string());
    let secret = "example-secret-at-least-32-bytes-long";
    let k = Kaname::start_with_env(&text, &[("JWT_SECRET", secret)]).await;
    let key = support::jwt::text_secret_key(Algorithm::HS256, secret);
    let sign = |c: Value| {
        let mut c = c;
        c["exp"] = json!(now() + 3600);
        key.sign(&c)
    };
    let reader = sign(json!({"sub": "r", "scope": "orders:read"}));
    let clerk = sign(json!({"sub": "c", "scope": "orders:write", "role": ["clerk"]}));
    let go = |method: &'static str, path: &'static str, t: String| {
        let url = k.url("inbound", path);
        async move {
            let req = Request::builder()
                .method(method)
                .uri(url)
                .header("authorization", format!("Bearer {t}"))
                .body(empty())
                .unwrap();
            HttpClient::http1().send(req).await
        }
    };
    assert_eq!(go("GET", "/api/orders/7", reader.clone()).await.status, 200);
    go("POST", "/api/orders", reader.clone())
        .await
        .assert_kaname_error(403, "forbidden");
    assert_eq!(go("POST", "/api/orders", clerk.clone()).await.status, 200);
    go("DELETE", "/api/orders/7", clerk.clone())
        .await
        .assert_kaname_error(403, "forbidden");
    go("GET", "/api/internal/keys", clerk)
        .await
        .assert_kaname_error(403, "forbidden");
    assert_eq!(up.hits(), 2);
    assert!(k.stderr().contains("no-delete"), "{}", k.stderr());
}

/// A deny rule on a host is not walked past by another spelling of it:
/// upper case, a port, or an absolute-form target naming it while `Host`
/// names another. What the rule saw is what the upstream receives.
#[tokio::test]
async fn a_host_rule_holds_for_every_spelling_of_the_host() {
    use support::request_model::Wire;
    let up = TestUpstream::start("app").await;
    let filters = "  auth:
    jwt: { algorithms: [HS256], secret: authorize-test-secret-0123456789abcdef }
  policy:
    authorize:
      default: allow
      rules: [{ name: no-admin-host, deny: { hosts: [admin.shop.test] } }]
";
    let k = Kaname::start(&config(&up, filters, "")).await;
    let t = token(json!({"sub": "x"}));
    for host in ["ADMIN.Shop.Test", "admin.shop.test:8443"] {
        send(&k, "GET", "/x", Some(&t), &[("host", host)])
            .await
            .assert_kaname_error(403, "forbidden");
    }
    assert_eq!(
        send(&k, "GET", "/x", Some(&t), &[("host", "www.shop.test")])
            .await
            .status,
        200
    );
    let mut wire = Wire::connect(k.port("main")).await;
    let req = format!(
        "GET http://admin.shop.test/x HTTP/1.1\r\nhost: www.shop.test\r\nauthorization: Bearer {t}\r\n\r\n"
    );
    wire.send(req.as_bytes()).await.expect("write");
    let resp = wire.response(Duration::from_secs(10)).await;
    assert!(
        resp.head.starts_with("HTTP/1.1 403"),
        "absolute form: {}",
        resp.head
    );
    assert_eq!(up.hits(), 1, "only the www request reached the upstream");
    assert_eq!(up.last().header("host"), Some("www.shop.test"));
}
