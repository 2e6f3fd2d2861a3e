//! End-to-end tests of the `jwt` filter: the real binary, real keys
//! generated here, tokens signed here, a recording upstream and a JWKS
//! server on loopback.

mod support;

use std::time::{Duration, Instant};

use http::Request;
use jsonwebtoken::{Algorithm, Header};
use serde_json::{json, Value};
use support::jwt::{
    alg_name, b64, forge, hs256_with_secret, jwks, now, text_secret_key, JwksServer, TestKey,
    ALL_ALGORITHMS,
};
use support::{
    empty, metric_value, metrics, poll_metric, ClosedPort, HttpClient, Kaname, TestResponse,
    TestUpstream,
};

const ISSUER: &str = "https://issuer.test";
/// How long a wait for the JWKS to (re)appear may take.
const JWKS_DEADLINE: Duration = Duration::from_secs(40);

/// One listener, one catch-all route through filter `auth` to `up`.
fn config(up: &TestUpstream, jwt: &str) -> String {
    format!(
        "listeners:
  main:
    listen: 127.0.0.1:0
    routes:
      - match: {{ path_prefix: / }}
        upstream: echo
        filters: [auth]
upstreams:
  echo:
    endpoints: [{}]
filters:
  auth:
    jwt:
{jwt}",
        up.addr
    )
}

fn claims(sub: &str) -> Value {
    json!({"sub": sub, "iss": ISSUER, "aud": ["orders"], "exp": now() + 3600, "iat": now()})
}

async fn send(port: u16, token: Option<&str>, extra: &[(&str, &str)]) -> TestResponse {
    let mut b = Request::get(format!("http://127.0.0.1:{port}/api/x"));
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    for (k, v) in extra {
        b = b.header(*k, *v);
    }
    HttpClient::http1()
        .send(b.body(empty()).expect("request"))
        .await
}

/// The error_description of a 401/403, after checking the answer's shape.
fn refused(resp: &TestResponse, status: u16, kind: &str) -> String {
    resp.assert_kaname_error(status, kind);
    let challenge = resp
        .header("www-authenticate")
        .unwrap_or_else(|| panic!("no WWW-Authenticate in {:?}", resp.headers))
        .to_string();
    let error = if status == 403 {
        "insufficient_scope"
    } else {
        "invalid_token"
    };
    assert!(
        challenge.starts_with(&format!("Bearer error=\"{error}\", error_description=\"")),
        "challenge {challenge:?}"
    );
    challenge
        .split("error_description=\"")
        .nth(1)
        .and_then(|d| d.strip_suffix('"'))
        .expect("description")
        .to_string()
}

fn jwks_yaml(source: &str, algs: &[Algorithm]) -> String {
    let algs: Vec<String> = algs.iter().map(|a| alg_name(*a)).collect();
    format!(
        "      issuer: {ISSUER}
      audiences: [orders]
      algorithms: [{}]
      jwks: {source}
      required_claims: [sub]
      forward_claims: {{ sub: x-user-id, scope: x-user-scope }}
",
        algs.join(", ")
    )
}

#[tokio::test]
async fn every_algorithm_is_accepted() {
    let up = TestUpstream::start("echo").await;
    // Asymmetric algorithms through one JWKS file.
    let asymmetric: Vec<TestKey> = ALL_ALGORITHMS[3..]
        .iter()
        .map(|a| TestKey::generate(*a, &format!("kid-{}", alg_name(*a))))
        .collect();
    let refs: Vec<&TestKey> = asymmetric.iter().collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("jwks.json");
    std::fs::write(&file, jwks(&refs)).expect("write jwks");
    let algs: Vec<Algorithm> = ALL_ALGORITHMS[3..].to_vec();
    let yaml = jwks_yaml(&format!("{{ file: {} }}", file.display()), &algs);
    let k = Kaname::start(&config(&up, &yaml)).await;
    let port = k.port("main");
    for key in &asymmetric {
        let resp = send(port, Some(&key.sign(&claims(&alg_name(key.alg)))), &[]).await;
        assert_eq!(resp.status, 200, "{:?}: {}", key.alg, resp.text());
        assert_eq!(
            up.last().header("x-user-id"),
            Some(alg_name(key.alg).as_str())
        );
    }
    let m = metrics(&k).await;
    assert_eq!(
        metric_value(
            &m,
            r#"kaname_jwt_validations_total{filter="auth",result="ok"}"#
        ),
        Some(asymmetric.len() as f64)
    );
    assert!(
        metric_value(
            &m,
            r#"kaname_jwks_refreshes_total{filter="auth",result="success"}"#
        )
        .unwrap_or(0.0)
            >= 1.0
    );
    drop(k);

    // HS256/384/512 with a secret from the config: 64 bytes, as HS512 needs
    // (RFC 7518 §3.2).
    let secret = "a-test-secret-long-enough-for-hs512-0123456789abcdef-0123456789a";
    assert_eq!(secret.len(), 64);
    let yaml = format!(
        "      issuer: {ISSUER}
      audiences: [orders]
      algorithms: [HS256, HS384, HS512]
      secret: {secret}
      forward_claims: {{ sub: x-user-id }}
"
    );
    let k = Kaname::start(&config(&up, &yaml)).await;
    let port = k.port("main");
    for alg in &ALL_ALGORITHMS[..3] {
        let key = text_secret_key(*alg, secret);
        let resp = send(port, Some(&key.sign(&claims("hs"))), &[]).await;
        assert_eq!(resp.status, 200, "{alg:?}: {}", resp.text());
    }
    // A fresh random secret is another key.
    let other = TestKey::generate(Algorithm::HS256, "hs");
    let resp = send(port, Some(&other.sign(&claims("x"))), &[]).await;
    assert_eq!(refused(&resp, 401, "unauthenticated"), "invalid signature");
}

#[tokio::test]
async fn attack_matrix_is_refused_before_the_upstream() {
    let up = TestUpstream::start("echo").await;
    let rsa = TestKey::generate(Algorithm::RS256, "rs");
    let ec = TestKey::generate(Algorithm::ES256, "ec");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("jwks.json");
    std::fs::write(&file, jwks(&[&rsa, &ec])).expect("write jwks");
    let yaml = jwks_yaml(
        &format!("{{ file: {} }}", file.display()),
        &[Algorithm::RS256, Algorithm::ES256],
    );
    let k = Kaname::start(&config(&up, &yaml)).await;
    let port = k.port("main");

    let good = rsa.sign(&claims("alice"));
    let (h, rest) = good.split_once('.').expect("token");
    let (p, sig) = rest.split_once('.').expect("token");
    let with = |key: &str, v: Value| {
        let mut c = claims("alice");
        c[key] = v;
        c
    };
    let mut crit = Header::new(Algorithm::RS256);
    crit.kid = Some("rs".into());
    crit.crit = Some(vec!["x-unknown".into()]);
    let another_rsa = TestKey::generate(Algorithm::RS256, "rs");
    let mut no_sub = claims("alice");
    no_sub.as_object_mut().expect("object").remove("sub");

    let cases: Vec<(&str, String, &str, &str)> = vec![
        (
            "alg none",
            forge(&json!({"alg": "none", "kid": "rs"}), &claims("alice"), ""),
            "bad_signature",
            "unsigned tokens (alg none) are not accepted",
        ),
        (
            "HS256 signed with the RSA public key's bytes",
            hs256_with_secret(
                "rs",
                &claims("alice"),
                rsa.public_der.as_deref().expect("der"),
            ),
            "bad_signature",
            "token algorithm is not accepted",
        ),
        (
            "valid signature from another key",
            another_rsa.sign(&claims("alice")),
            "bad_signature",
            "invalid signature",
        ),
        (
            "ES256 header with the RSA key's kid",
            ec.sign_with(
                {
                    let mut h = Header::new(Algorithm::ES256);
                    h.kid = Some("rs".into());
                    h
                },
                &claims("alice"),
            ),
            "bad_signature",
            "token algorithm does not match its signing key",
        ),
        (
            "unknown kid",
            TestKey::generate(Algorithm::ES256, "nobody").sign(&claims("alice")),
            "unknown_key",
            "no signing key matches the token's kid",
        ),
        (
            "expired",
            rsa.sign(&with("exp", json!(now() - 120))),
            "expired",
            "token expired",
        ),
        (
            "nbf in the future",
            rsa.sign(&with("nbf", json!(now() + 3600))),
            "not_yet_valid",
            "token not valid yet (nbf)",
        ),
        (
            "wrong issuer",
            rsa.sign(&with("iss", json!("https://evil.test"))),
            "wrong_issuer",
            "wrong issuer",
        ),
        (
            "wrong audience",
            rsa.sign(&with("aud", json!("billing"))),
            "wrong_audience",
            "wrong audience",
        ),
        (
            "truncated (no signature part)",
            format!("{h}.{p}"),
            "malformed",
            "token must have three dot-separated parts",
        ),
        (
            "truncated signature",
            // Cut at a multiple of 4 characters: still base64url, half a signature.
            format!("{h}.{p}.{}", &sig[..(sig.len() / 2) & !3]),
            "bad_signature",
            "invalid signature",
        ),
        (
            "truncated signature, not a whole base64 quantum",
            // 4n+1 characters can never decode (a 3-character tail could,
            // when its spare bits happen to be zero: a flaky 1 in 4).
            format!("{h}.{p}.{}", &sig[..((sig.len() / 2) & !3) + 1]),
            "malformed",
            "token is not base64url",
        ),
        (
            // The signature is checked before the payload is parsed.
            "payload swapped for non-JSON",
            format!("{h}.{}.{sig}", b64("not json")),
            "bad_signature",
            "invalid signature",
        ),
        (
            "four segments",
            format!("{good}.{sig}"),
            "malformed",
            "token must have three dot-separated parts",
        ),
        (
            "bad base64",
            format!("{h}.{p}*%.{sig}"),
            "malformed",
            "token is not base64url",
        ),
        (
            "a 20 KB token",
            format!("{h}.{}.{sig}", b64("x".repeat(15_000))),
            "malformed",
            "token is too large",
        ),
        (
            "crit header",
            rsa.sign_with(crit, &claims("alice")),
            "malformed",
            "token has critical header parameters kaname does not support",
        ),
    ];
    for (name, token, result, description) in &cases {
        let resp = send(port, Some(token), &[]).await;
        let got = refused(&resp, 401, "unauthenticated");
        assert_eq!(&got, description, "{name}");
        let m = metrics(&k).await;
        let sel = format!(r#"kaname_jwt_validations_total{{filter="auth",result="{result}"}}"#);
        assert!(
            metric_value(&m, &sel).unwrap_or(0.0) >= 1.0,
            "{name}: no {sel} in metrics"
        );
    }

    // No token at all: 401 without an error attribute (RFC 6750 §3.1).
    let resp = send(port, None, &[]).await;
    resp.assert_kaname_error(401, "unauthenticated");
    assert_eq!(resp.header("www-authenticate"), Some("Bearer"));

    // A valid token without the required claim: 403.
    let resp = send(port, Some(&rsa.sign(&no_sub)), &[]).await;
    assert_eq!(
        refused(&resp, 403, "forbidden"),
        "token lacks the required claim sub"
    );

    assert_eq!(up.hits(), 0, "nothing refused may reach the upstream");

    // A valid token passes; the client's x-user-id is replaced, and an
    // x-user-scope the token has no claim for is removed.
    let resp = send(
        port,
        Some(&good),
        &[("x-user-id", "admin"), ("x-user-scope", "everything")],
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let seen = up.last();
    let ids: Vec<_> = seen.headers.get_all("x-user-id").iter().collect();
    assert_eq!(ids, ["alice"]);
    assert_eq!(seen.header("x-user-scope"), None);
    assert_eq!(
        seen.header("authorization"),
        None,
        "forward_token defaults to false: the token stays at kaname"
    );
    assert_eq!(up.hits(), 1);

    // The access log names the filter that refused a request, and no filter
    // for one that passed (text format: `filter="auth"`, `filter=""`).
    let passed_id = resp.header("x-request-id").expect("request id").to_owned();
    let refused = send(port, None, &[]).await;
    let refused_id = refused
        .header("x-request-id")
        .expect("request id")
        .to_owned();
    let logs = k.stderr();
    let access_line = |id: &str| {
        logs.lines()
            .find(|l| l.contains("kaname::access") && l.contains(id))
            .unwrap_or_else(|| panic!("no access line for request {id} in:\n{logs}"))
            .to_owned()
    };
    let line = access_line(&refused_id);
    assert!(
        line.contains("filter=\"auth\"") && line.contains("status=401"),
        "{line}"
    );
    let line = access_line(&passed_id);
    assert!(
        line.contains("filter=\"\"") && line.contains("status=200"),
        "{line}"
    );

    // gRPC calls get the trailers-only UNAUTHENTICATED form.
    let resp = send(port, None, &[("content-type", "application/grpc")]).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("grpc-status"), Some("16"));
    assert_eq!(up.hits(), 1);
}

#[tokio::test]
async fn cookie_token_is_stripped_when_forward_token_is_false() {
    let up = TestUpstream::start("echo").await;
    let key = TestKey::generate(Algorithm::EdDSA, "ed");
    let server = JwksServer::start(&jwks(&[&key])).await;
    let yaml = format!(
        "{}      from: {{ cookie: session }}\n      forward_token: false\n",
        jwks_yaml(
            &format!("{{ url: \"{}\" }}", server.url()),
            &[Algorithm::EdDSA]
        )
    );
    let k = Kaname::start(&config(&up, &yaml)).await;
    let port = k.port("main");
    let cookie = format!("theme=dark; session={}; lang=en", key.sign(&claims("bob")));
    let resp = send(port, None, &[("cookie", &cookie)]).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let seen = up.last();
    assert_eq!(seen.header("cookie"), Some("theme=dark; lang=en"));
    assert_eq!(seen.header("x-user-id"), Some("bob"));
    // A bearer header is not where this filter looks.
    let resp = send(port, Some(&key.sign(&claims("bob"))), &[]).await;
    resp.assert_kaname_error(401, "unauthenticated");
}

/// Token from a query parameter (stripped before the upstream with
/// `forward_token: false`), from a custom header without prefix, and
/// `issuer` / `audiences` as lists: one of the issuers, any of the audiences.
#[tokio::test]
async fn query_and_custom_header_sources_with_issuer_and_audience_lists() {
    let up = TestUpstream::start("echo").await;
    let key = text_secret_key(Algorithm::HS256, "query-and-header-secret-of-32-bytes!");
    let common = format!(
        "      issuer: [{ISSUER}, https://other-issuer.test]
      audiences: [orders, billing]
      algorithms: [HS256]
      secret: \"{}\"
",
        key.secret()
    );
    let yaml = format!(
        "listeners:
  q:
    listen: 127.0.0.1:0
    routes: [{{ upstream: echo, filters: [by-query] }}]
  h:
    listen: 127.0.0.1:0
    routes: [{{ upstream: echo, filters: [by-header] }}]
upstreams:
  echo:
    endpoints: [{}]
filters:
  by-query:
    jwt:
{common}      from: {{ query: access_token }}
      forward_token: false
  by-header:
    jwt:
{common}      from: {{ header: x-token }}
",
        up.addr
    );
    let k = Kaname::start(&yaml).await;
    let (q_port, h_port) = (k.port("q"), k.port("h"));
    let client = HttpClient::http1();
    let with = |iss: &str, aud: Value| {
        key.sign(&json!({"sub": "ann", "iss": iss, "aud": aud, "exp": now() + 600}))
    };
    let good = with("https://other-issuer.test", json!("billing"));

    let resp = client
        .get(&format!(
            "http://127.0.0.1:{q_port}/r?a=1&access_token={good}&b=2"
        ))
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(
        up.last().path,
        "/r?a=1&b=2",
        "the token is taken out of the query, the rest kept"
    );
    let resp = client
        .get(&format!("http://127.0.0.1:{q_port}/r?token={good}"))
        .await;
    resp.assert_kaname_error(401, "unauthenticated");

    let send_h = |token: String| {
        let client = client.clone();
        async move {
            let req = Request::get(format!("http://127.0.0.1:{h_port}/h"))
                .header("x-token", token)
                .body(empty())
                .expect("request");
            client.send(req).await
        }
    };
    let resp = send_h(with(ISSUER, json!(["nobody", "orders"]))).await;
    assert_eq!(
        resp.status,
        200,
        "issuer one of, audience any of: {}",
        resp.text()
    );
    assert_eq!(
        up.last().header("x-token"),
        None,
        "forward_token defaults to false: the header goes"
    );
    let resp = send_h(format!("Bearer {good}")).await;
    resp.assert_kaname_error(401, "unauthenticated");
    let resp = send_h(with("https://evil.test", json!("orders"))).await;
    assert!(refused(&resp, 401, "unauthenticated").contains("issuer"));
    let resp = send_h(with(ISSUER, json!(["shipping"]))).await;
    assert!(refused(&resp, 401, "unauthenticated").contains("audience"));
}

/// Polls until `check` holds for the answer to `token`, at most `JWKS_DEADLINE`.
async fn wait_for(port: u16, token: &str, what: &str, check: impl Fn(&TestResponse) -> bool) {
    let start = Instant::now();
    loop {
        let resp = send(port, Some(token), &[]).await;
        if check(&resp) {
            return;
        }
        assert!(
            start.elapsed() < JWKS_DEADLINE,
            "{what}: still {} {:?} after {JWKS_DEADLINE:?}",
            resp.status,
            resp.header("www-authenticate")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn new_kid_is_fetched_at_once() {
    let up = TestUpstream::start("echo").await;
    let a = TestKey::generate(Algorithm::ES256, "a");
    let b = TestKey::generate(Algorithm::ES256, "b");
    let server = JwksServer::start(&jwks(&[&a])).await;
    // A long refresh: only the unknown kid can make kaname fetch again.
    let yaml = jwks_yaml(
        &format!("{{ url: \"{}\", refresh: 1h }}", server.url()),
        &[Algorithm::ES256],
    );
    let k = Kaname::start(&config(&up, &yaml)).await;
    let port = k.port("main");
    assert_eq!(
        send(port, Some(&a.sign(&claims("a"))), &[]).await.status,
        200
    );
    let fetched = server.fetches();
    server.set(&jwks(&[&a, &b]));
    let resp = send(port, Some(&b.sign(&claims("b"))), &[]).await;
    assert_eq!(
        resp.status,
        200,
        "new kid after one refetch: {}",
        resp.text()
    );
    assert_eq!(server.fetches(), fetched + 1);
    // A flood of unknown kids costs the issuer nothing more (one refetch
    // per 10 s at most).
    for i in 0..50 {
        let t = TestKey::generate(Algorithm::ES256, &format!("rnd{i}")).sign(&claims("x"));
        let resp = send(port, Some(&t), &[]).await;
        assert_eq!(
            refused(&resp, 401, "unauthenticated"),
            "no signing key matches the token's kid"
        );
    }
    assert!(
        server.fetches() <= fetched + 2,
        "{} fetches for a flood of unknown kids",
        server.fetches() - fetched
    );
    drop(k);
}

#[tokio::test]
async fn removed_key_is_refused_after_refresh() {
    let up = TestUpstream::start("echo").await;
    let a = TestKey::generate(Algorithm::PS256, "a");
    let b = TestKey::generate(Algorithm::PS256, "b");
    let server = JwksServer::start(&jwks(&[&a, &b])).await;
    let yaml = jwks_yaml(
        &format!("{{ url: \"{}\", refresh: 1s }}", server.url()),
        &[Algorithm::PS256],
    );
    let k = Kaname::start(&config(&up, &yaml)).await;
    let port = k.port("main");
    let old = a.sign(&claims("a"));
    assert_eq!(send(port, Some(&old), &[]).await.status, 200);
    server.set(&jwks(&[&b]));
    // The same token, cached as verified, must be dropped with the old key.
    wait_for(port, &old, "old kid refused once removed", |r| {
        r.status == 401
    })
    .await;
    let resp = send(port, Some(&old), &[]).await;
    assert_eq!(
        refused(&resp, 401, "unauthenticated"),
        "no signing key matches the token's kid"
    );
    assert_eq!(
        send(port, Some(&b.sign(&claims("b"))), &[]).await.status,
        200
    );
}

#[tokio::test]
async fn jwks_down_after_first_fetch_keeps_serving() {
    let up = TestUpstream::start("echo").await;
    let key = TestKey::generate(Algorithm::RS384, "k");
    let mut server = JwksServer::start(&jwks(&[&key])).await;
    let yaml = jwks_yaml(
        &format!("{{ url: \"{}\", refresh: 1s }}", server.url()),
        &[Algorithm::RS384],
    );
    let k = Kaname::start(&config(&up, &yaml)).await;
    let port = k.port("main");
    assert_eq!(
        send(port, Some(&key.sign(&claims("1"))), &[]).await.status,
        200
    );
    server.stop().await;
    // Wait for a failed refresh to be recorded.
    let failures = r#"kaname_jwks_refreshes_total{filter="auth",result="failure"}"#;
    let (seen, _) = poll_metric(&k, failures, JWKS_DEADLINE, |v| v.unwrap_or(0.0) >= 1.0).await;
    assert!(seen, "no failed refresh seen");
    // New tokens (not in the verified cache) still pass on the last good keys.
    for i in 0..5 {
        let resp = send(port, Some(&key.sign(&claims(&format!("u{i}")))), &[]).await;
        assert_eq!(resp.status, 200, "{}", resp.text());
    }
}

#[tokio::test]
async fn jwks_down_at_startup_then_up_without_restart() {
    let up = TestUpstream::start("echo").await;
    let key = TestKey::generate(Algorithm::ES384, "k");
    // Down until the server starts on it: bound, not listening, meanwhile.
    let jwks_port = ClosedPort::new();
    let jwks_addr = jwks_port.addr;
    let yaml = jwks_yaml(
        &format!("{{ url: \"http://{jwks_addr}/jwks\", refresh: 5m }}"),
        &[Algorithm::ES384],
    );
    let k = Kaname::start(&config(&up, &yaml)).await;
    let port = k.port("main");
    let token = key.sign(&claims("late"));
    let resp = send(port, Some(&token), &[]).await;
    assert_eq!(
        refused(&resp, 401, "unauthenticated"),
        "signing keys not available yet"
    );
    let _server = JwksServer::start_on(jwks_port, &jwks(&[&key]));
    wait_for(port, &token, "200 once the JWKS is up", |r| r.status == 200).await;
    assert_eq!(up.last().header("x-user-id"), Some("late"));
    let m = metrics(&k).await;
    assert!(
        metric_value(
            &m,
            r#"kaname_jwks_refreshes_total{filter="auth",result="failure"}"#
        )
        .unwrap_or(0.0)
            >= 1.0
    );
}

#[tokio::test]
async fn demo_prints_working_curl_commands() {
    let (k, first) = Kaname::demo().await;
    let _ = first;
    // The banner follows the first line; wait for the curl with a token.
    let start = Instant::now();
    let banner = loop {
        let out = k.logs();
        if out.contains("Authorization: Bearer ") {
            break out;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no token in the demo banner:\n{out}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let line = banner
        .lines()
        .find(|l| l.contains("Authorization: Bearer "))
        .expect("curl line");
    let token = line
        .split("Authorization: Bearer ")
        .nth(1)
        .and_then(|r| r.split('\'').next())
        .expect("token in the curl line");
    let url = line
        .split_whitespace()
        .find(|w| w.trim_matches('\'').starts_with("http://"))
        .expect("url in the curl line")
        .trim_matches('\'')
        .to_string();
    let client = HttpClient::http1();
    let with = Request::get(&url)
        .header("authorization", format!("Bearer {token}"))
        .body(empty())
        .expect("request");
    let resp = client.send(with).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let resp = client.get(&url).await;
    resp.assert_kaname_error(401, "unauthenticated");
}

// === one token per request (request-model.md "Tokens") ===

/// 32 bytes: HS256's shortest secret (RFC 7518 §3.2).
const HS_SECRET: &str = "tokens-test-secret-of-32-bytes!!";

/// An HS256 filter reading `from` (empty: the default bearer header), with
/// `extra` keys.
fn hs_filter(from: &str, extra: &str) -> String {
    let from = if from.is_empty() {
        String::new()
    } else {
        format!("      from: {from}\n")
    };
    format!(
        "      issuer: {ISSUER}
      audiences: [orders]
      algorithms: [HS256]
      secret: \"{HS_SECRET}\"
      forward_claims: {{ sub: x-user-id }}
{from}{extra}"
    )
}

async fn get_with(port: u16, path_and_query: &str, headers: &[(&str, &str)]) -> TestResponse {
    let mut b = Request::get(format!("http://127.0.0.1:{port}{path_and_query}"));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    HttpClient::http1()
        .send(b.body(empty()).expect("request"))
        .await
}

/// A 400 `invalid_request` with RFC 6750's challenge; its description.
fn invalid_request(resp: &TestResponse) -> String {
    resp.assert_kaname_error(400, "invalid_request");
    let challenge = resp
        .header("www-authenticate")
        .unwrap_or_else(|| panic!("no WWW-Authenticate in {:?}", resp.headers));
    challenge
        .strip_prefix("Bearer error=\"invalid_request\", error_description=\"")
        .and_then(|d| d.strip_suffix('"'))
        .unwrap_or_else(|| panic!("challenge {challenge:?}"))
        .to_string()
}

#[tokio::test]
async fn two_authorization_headers_are_an_invalid_request() {
    let up = TestUpstream::start("echo").await;
    let k = Kaname::start(&config(&up, &hs_filter("", ""))).await;
    let port = k.port("main");
    let key = text_secret_key(Algorithm::HS256, HS_SECRET);
    let good = format!("Bearer {}", key.sign(&claims("alice")));
    let unsigned = format!(
        "Bearer {}",
        forge(&json!({"alg": "none"}), &claims("mallory"), "")
    );
    // Either order, a second valid copy, another case of the scheme: each
    // is two tokens, refused before any verification or upstream.
    let pairs = [
        (good.clone(), unsigned.clone()),
        (unsigned.clone(), good.clone()),
        (good.clone(), good.clone()),
        (good.clone(), good.replacen("Bearer", "bearer", 1)),
    ];
    for (first, second) in &pairs {
        let resp = get_with(
            port,
            "/api/x",
            &[("authorization", first), ("authorization", second)],
        )
        .await;
        assert_eq!(invalid_request(&resp), "more than one token in the request");
    }
    assert_eq!(up.hits(), 0, "the upstream sees nothing");

    let m = metrics(&k).await;
    let result = |r: &str| {
        metric_value(
            &m,
            &format!(r#"kaname_jwt_validations_total{{filter="auth",result="{r}"}}"#),
        )
        .unwrap_or(0.0)
    };
    assert_eq!(result("invalid_request"), pairs.len() as f64);
    assert_eq!(result("ok"), 0.0);
    assert_eq!(
        result("bad_signature"),
        0.0,
        "the unsigned copy was never verified"
    );

    // gRPC: trailers-only INVALID_ARGUMENT.
    let resp = get_with(
        port,
        "/api/x",
        &[
            ("content-type", "application/grpc"),
            ("authorization", &good),
            ("authorization", &unsigned),
        ],
    )
    .await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("grpc-status"), Some("3"));
    assert_eq!(resp.header("kaname-error"), Some("invalid_request"));

    // One token, next to a header of another scheme, passes.
    let resp = get_with(
        port,
        "/api/x",
        &[("authorization", "Basic eDp5"), ("authorization", &good)],
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(up.hits(), 1);
    assert_eq!(up.last().header("x-user-id"), Some("alice"));
}

/// A filter reads the one source its `from:` names; a second copy there,
/// or a bearer token by the other RFC 6750 method (header and query), is
/// a 400 and never reaches the upstream.
#[tokio::test]
async fn header_and_query_tokens_together_are_an_invalid_request() {
    let up = TestUpstream::start("echo").await;
    let yaml = format!(
        "listeners:
  q:
    listen: 127.0.0.1:0
    routes: [{{ upstream: echo, filters: [by-query] }}]
  h:
    listen: 127.0.0.1:0
    routes: [{{ upstream: echo, filters: [by-header] }}]
upstreams:
  echo:
    endpoints: [{}]
filters:
  by-query:
    jwt:
{}  by-header:
    jwt:
{}",
        up.addr,
        hs_filter("{ query: access_token }", ""),
        hs_filter("", ""),
    );
    let k = Kaname::start(&yaml).await;
    let (q_port, h_port) = (k.port("q"), k.port("h"));
    let key = text_secret_key(Algorithm::HS256, HS_SECRET);
    let good = key.sign(&claims("ann"));
    let other = key.sign(&claims("eve"));
    let bearer = format!("Bearer {good}");

    // The query filter: a bearer header beside its query token.
    let resp = get_with(
        q_port,
        &format!("/r?access_token={good}"),
        &[("authorization", &bearer)],
    )
    .await;
    assert_eq!(
        invalid_request(&resp),
        "token sent by more than one method (header and query)"
    );
    // Two values of its parameter, the second spelt encoded.
    for q in [
        format!("access_token={good}&access_token={other}"),
        format!("access_token={good}&access%5Ftoken={other}"),
        format!("access_token={good}&access_token={good}"),
    ] {
        let resp = get_with(q_port, &format!("/r?{q}"), &[]).await;
        assert_eq!(
            invalid_request(&resp),
            "more than one token in the request",
            "{q}"
        );
    }
    // The header filter: a query token beside its header token.
    let resp = get_with(
        h_port,
        &format!("/r?access_token={other}"),
        &[("authorization", &bearer)],
    )
    .await;
    assert_eq!(
        invalid_request(&resp),
        "token sent by more than one method (header and query)"
    );
    assert_eq!(up.hits(), 0, "no refused request reached the upstream");

    // Each source alone passes.
    let resp = get_with(q_port, &format!("/r?access_token={good}"), &[]).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let resp = get_with(h_port, "/r?token=unrelated", &[("authorization", &bearer)]).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(up.hits(), 2);
}

#[tokio::test]
async fn by_default_no_copy_of_the_token_reaches_the_upstream() {
    let up = TestUpstream::start("echo").await;
    let yaml = format!(
        "listeners:
  h:
    listen: 127.0.0.1:0
    routes: [{{ upstream: echo, filters: [by-header] }}]
  q:
    listen: 127.0.0.1:0
    routes: [{{ upstream: echo, filters: [by-query] }}]
upstreams:
  echo:
    endpoints: [{}]
filters:
  by-header:
    jwt:
{}  by-query:
    jwt:
{}",
        up.addr,
        hs_filter("", ""),
        hs_filter("{ query: access_token }", ""),
    );
    let k = Kaname::start(&yaml).await;
    let (h_port, q_port) = (k.port("h"), k.port("q"));
    let key = text_secret_key(Algorithm::HS256, HS_SECRET);
    let token = key.sign(&claims("ann"));

    // Header: the bearer value goes, a Basic one and the query stay.
    let resp = get_with(
        h_port,
        "/r?a=1&b=%2Fx%20y&c&d=",
        &[
            ("authorization", &format!("Bearer {token}")),
            ("authorization", "Basic eDp5"),
        ],
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let seen = up.last();
    let auth: Vec<_> = seen.headers.get_all("authorization").iter().collect();
    assert_eq!(auth, ["Basic eDp5"], "no bearer token at the upstream");
    assert!(!format!("{:?}", seen.headers).contains(&token));
    assert_eq!(seen.path, "/r?a=1&b=%2Fx%20y&c&d=");
    assert_eq!(seen.header("x-user-id"), Some("ann"));

    // Query: the parameter goes wherever it was; the others stay byte for
    // byte, in order.
    for (sent, kept) in [
        (
            format!("/r?a=1&access_token={token}&b=%2Fx+y"),
            "/r?a=1&b=%2Fx+y",
        ),
        (format!("/r?access_token={token}&a=1"), "/r?a=1"),
        (format!("/r?a=%41&c&access%5Ftoken={token}"), "/r?a=%41&c"),
        (format!("/r?access_token={token}"), "/r"),
    ] {
        let resp = get_with(q_port, &sent, &[]).await;
        assert_eq!(resp.status, 200, "{sent}: {}", resp.text());
        let seen = up.last();
        assert_eq!(seen.path, kept, "sent {sent}");
        assert_eq!(seen.header("authorization"), None);
        assert_eq!(seen.header("x-user-id"), Some("ann"));
    }
}

#[tokio::test]
async fn forward_token_true_forwards_exactly_the_verified_token() {
    let up = TestUpstream::start("echo").await;
    let yaml = format!(
        "listeners:
  h:
    listen: 127.0.0.1:0
    routes: [{{ upstream: echo, filters: [by-header] }}]
  q:
    listen: 127.0.0.1:0
    routes: [{{ upstream: echo, filters: [by-query] }}]
  c:
    listen: 127.0.0.1:0
    routes: [{{ upstream: echo, filters: [by-cookie] }}]
upstreams:
  echo:
    endpoints: [{}]
filters:
  by-header:
    jwt:
{}  by-query:
    jwt:
{}  by-cookie:
    jwt:
{}",
        up.addr,
        hs_filter("", "      forward_token: true\n"),
        hs_filter("{ query: access_token }", "      forward_token: true\n"),
        hs_filter("{ cookie: session }", "      forward_token: true\n"),
    );
    let k = Kaname::start(&yaml).await;
    let (h_port, q_port, c_port) = (k.port("h"), k.port("q"), k.port("c"));
    let key = text_secret_key(Algorithm::HS256, HS_SECRET);
    let token = key.sign(&claims("ann"));
    let bearer = format!("Bearer {token}");

    let resp = get_with(h_port, "/r?a=1", &[("authorization", &bearer)]).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let seen = up.last();
    let auth: Vec<_> = seen.headers.get_all("authorization").iter().collect();
    assert_eq!(auth, [bearer.as_str()], "the one verified token, as sent");
    assert_eq!(seen.path, "/r?a=1");

    let sent = format!("/r?a=1&access_token={token}&b=2");
    let resp = get_with(q_port, &sent, &[]).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(up.last().path, sent);

    let cookie = format!("theme=dark; session={token}");
    let resp = get_with(c_port, "/r", &[("cookie", &cookie)]).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(up.last().header("cookie"), Some(cookie.as_str()));

    // A second copy is still refused: forwarding never picks one of two.
    let resp = get_with(
        h_port,
        "/r",
        &[("authorization", &bearer), ("authorization", &bearer)],
    )
    .await;
    invalid_request(&resp);
    let resp = get_with(
        c_port,
        "/r",
        &[("cookie", &format!("session={token}; session={token}"))],
    )
    .await;
    invalid_request(&resp);
    assert_eq!(up.hits(), 3);
}

#[test]
fn check_refuses_a_short_hs256_secret_at_its_position() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = |yaml: &str, env: Option<&str>| {
        std::fs::write(dir.path().join("kaname.yaml"), yaml).expect("write config");
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_kaname"));
        cmd.current_dir(dir.path())
            .args(["check", "-c", "kaname.yaml"])
            .env_remove("RUST_LOG")
            .env_remove("KANAME_CONFIG");
        match env {
            Some(v) => cmd.env("KANAME_TEST_SHORT_SECRET", v),
            None => cmd.env_remove("KANAME_TEST_SHORT_SECRET"),
        };
        cmd.output().expect("run kaname check")
    };
    let yaml = |secret: &str| {
        format!(
            "listeners:
  main:
    listen: 127.0.0.1:18071
    routes: [{{ upstream: app, filters: [auth] }}]
upstreams:
  app: {{ endpoints: [127.0.0.1:3000] }}
filters:
  auth:
    jwt:
      algorithms: [HS256]
      secret: {secret}
"
        )
    };
    let expect = |out: std::process::Output, len: usize| {
        assert_eq!(out.status.code(), Some(1), "exit code");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "");
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            format!(
                "kaname.yaml:11:15: jwt filter \"auth\": secret is {len} bytes; \
                 HS256 needs at least 32 (RFC 7518 §3.2)\n"
            )
        );
    };
    // Written in the file: 10 bytes.
    expect(run(&yaml("0123456789"), None), 10);
    // From the environment: the value is measured, not `${...}`.
    expect(
        run(&yaml("${KANAME_TEST_SHORT_SECRET}"), Some("ten-bytes!")),
        10,
    );
    // 32 bytes pass.
    let out = run(
        &yaml("${KANAME_TEST_SHORT_SECRET}"),
        Some("thirty-two-bytes-thirty-two-byte"),
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
