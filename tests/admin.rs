//! The admin port's hardening, end to end against the real binary on
//! 127.0.0.1 (limits.md, "Admin port" and `admin_header_timeout`): the
//! `Host` guard and `admin.allowed_hosts`, `Origin` on POST, HTTP/1.1 only,
//! the connection cap and the head timeout, `admin.token`, `/config`
//! redaction, and `kaname check`'s warning about an open admin port and its
//! refusal of a bad `allowed_hosts` entry.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::Request;
use support::{
    empty, metric_value, metrics, metrics_with_token, poll_metric, simple_config, HttpClient,
    Kaname, TestResponse, KANAME,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An upstream nobody calls: the admin port is what these tests use.
const NOWHERE: &str = "127.0.0.1:9";

fn body() -> String {
    let up: SocketAddr = NOWHERE.parse().expect("addr");
    simple_config(&[up])
}

/// `Kaname::start` writes `admin:\n  listen: ...\n` first, then the body:
/// indented lines at the start of the body continue that `admin:` mapping.
/// A top-level `log:` is given so that it does not insert its own in between.
fn with_admin_keys(keys: &[&str], body: &str) -> String {
    let mut out = String::new();
    for k in keys {
        out.push_str("  ");
        out.push_str(k);
        out.push('\n');
    }
    out.push_str("log:\n  level: info\n  format: text\n");
    out.push_str(body);
    out
}

fn get(k: &Kaname, path: &str, headers: &[(&str, &str)]) -> Request<support::client::Body> {
    request("GET", k, path, headers)
}

fn request(
    method: &str,
    k: &Kaname,
    path: &str,
    headers: &[(&str, &str)],
) -> Request<support::client::Body> {
    let mut b = Request::builder().method(method).uri(k.admin_url(path));
    for (name, value) in headers {
        b = b.header(*name, *value);
    }
    b.body(empty()).expect("request")
}

async fn send(req: Request<support::client::Body>) -> TestResponse {
    // A fresh client each time: no pooled connection is kept open.
    HttpClient::http1_no_pool().send(req).await
}

fn reloads(metrics: &str) -> (f64, f64) {
    let of = |result: &str| {
        metric_value(
            metrics,
            &format!("kaname_config_reloads_total{{result=\"{result}\"}}"),
        )
        .unwrap_or(0.0)
    };
    (of("success"), of("failure"))
}

const HEADER_TIMEOUT_HITS: &str = "kaname_limits_hit_total{limit=\"admin_header_timeout\"}";

fn limit_hits(metrics: &str) -> f64 {
    metric_value(metrics, HEADER_TIMEOUT_HITS).unwrap_or(0.0)
}

/// Sends raw bytes and reads until the server closes (at most 5s).
async fn raw(addr: SocketAddr, bytes: &str) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect admin");
    s.write_all(bytes.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// True once the peer has closed `s` (EOF or reset), waiting at most `within`.
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            // An answer (say a 408) before the close: keep reading.
            Ok(Ok(_)) => continue,
        }
    }
}

/// Open, with nothing to read: the peer has neither answered nor closed.
fn still_open(s: &TcpStream) -> bool {
    let mut buf = [0u8; 16];
    matches!(s.try_read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

#[tokio::test]
async fn only_loopback_and_own_hosts_are_answered() {
    let k = Kaname::start(&body()).await;
    let port = k.admin().port();
    for path in ["/metrics", "/config", "/live"] {
        for host in ["evil.example", "evil.example:80", "localhost.evil.example"] {
            let res = send(get(&k, path, &[("host", host)])).await;
            res.assert_kaname_error(403, "forbidden");
        }
    }
    // An absolute-form target names its host too.
    let res = raw(
        k.admin(),
        "GET http://evil.example/metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(res.starts_with("HTTP/1.1 403"), "{res}");
    for host in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        "localhost".to_string(),
        format!("127.0.0.2:{port}"),
    ] {
        let res = send(get(&k, "/metrics", &[("host", &host)])).await;
        assert_eq!(res.status, 200, "Host {host}: {}", res.text());
        assert!(res.text().contains("kaname_"), "Host {host}");
    }
    // No Host at all on HTTP/1.1.
    let res = raw(
        k.admin(),
        "GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(res.starts_with("HTTP/1.1 400"), "{res}");
    assert!(!res.contains("kaname_requests_total"), "{res}");
}

#[tokio::test]
async fn a_cross_origin_post_reload_is_refused_and_reloads_nothing() {
    let k = Kaname::start(&body()).await;
    let before = reloads(&metrics(&k).await);
    for origin in [
        "http://evil.example",
        "null",
        &format!("http://{}", k.admin()),
    ] {
        let res = send(request("POST", &k, "/reload", &[("origin", origin)])).await;
        res.assert_kaname_error(403, "forbidden");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        reloads(&metrics(&k).await),
        before,
        "a refused POST /reload reloaded"
    );
    // The same request without Origin reloads, and is counted: the check
    // above could have seen a change.
    let res = send(request("POST", &k, "/reload", &[])).await;
    assert_eq!(res.status, 200, "{}", res.text());
    let after = reloads(&metrics(&k).await);
    assert_eq!(after, (before.0 + 1.0, before.1));
}

#[tokio::test]
async fn http2_and_h2c_are_not_spoken() {
    let k = Kaname::start(&body()).await;
    let h2 = HttpClient::http2()
        .try_get(&k.admin_url("/live"), Duration::from_secs(5))
        .await;
    assert!(h2.is_err(), "HTTP/2 prior knowledge got an answer: {h2:?}");
    // An h2c upgrade is answered as plain HTTP/1.1, never 101.
    let res = raw(
        k.admin(),
        "GET /live HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade, HTTP2-Settings, close\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    )
    .await;
    assert!(res.starts_with("HTTP/1.1 200"), "{res}");
    let ok = send(get(&k, "/live", &[])).await;
    assert_eq!(
        (ok.status.as_u16(), ok.version),
        (200, http::Version::HTTP_11)
    );
}

#[tokio::test]
async fn at_most_64_connections_and_slow_heads_are_cut_off() {
    const TIMEOUT: Duration = Duration::from_secs(3);
    let k = Kaname::start(&with_admin_keys(&["header_timeout: 3s"], &body())).await;
    // Let the readiness probe's connection go.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = limit_hits(&metrics(&k).await);
    tokio::time::sleep(Duration::from_millis(100)).await;

    let started = Instant::now();
    // A keep-alive connection that was served, then idles.
    let mut served = TcpStream::connect(k.admin()).await.expect("connect");
    served
        .write_all(b"GET /live HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    while !String::from_utf8_lossy(&answer).ends_with("live\n") {
        let mut buf = [0u8; 512];
        let n = tokio::time::timeout(Duration::from_secs(5), served.read(&mut buf))
            .await
            .expect("answer to /live")
            .expect("read");
        assert!(n > 0, "closed before answering: {answer:?}");
        answer.extend_from_slice(&buf[..n]);
    }
    let mut held = Vec::new();
    for i in 0..63 {
        let mut s = TcpStream::connect(k.admin())
            .await
            .unwrap_or_else(|e| panic!("connection {i}: {e}"));
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n")
            .await
            .expect("half a head");
        held.push(s);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Beyond the cap: closed at accept, long before the head timeout.
    for i in 0..8 {
        let mut extra = TcpStream::connect(k.admin()).await.expect("connect");
        let t = Instant::now();
        assert!(
            closed_within(&mut extra, Duration::from_millis(1500)).await,
            "connection {} beyond the cap of 64 was kept open",
            65 + i
        );
        assert!(t.elapsed() < TIMEOUT, "{:?}", t.elapsed());
    }
    assert!(
        started.elapsed() < TIMEOUT,
        "setup took {:?}",
        started.elapsed()
    );
    let open = held.iter().filter(|s| still_open(s)).count();
    assert_eq!(open, 63, "the 63 half-sent heads should still be held");
    assert!(
        still_open(&served),
        "the served keep-alive connection was closed early"
    );

    // The head timeout closes every half-sent one.
    for (i, s) in held.iter_mut().enumerate() {
        let left =
            (started + TIMEOUT + Duration::from_secs(5)).saturating_duration_since(Instant::now());
        assert!(
            closed_within(s, left).await,
            "half-sent head {i} still open {:?} after it started",
            started.elapsed()
        );
    }
    assert!(
        started.elapsed() >= TIMEOUT - Duration::from_millis(500),
        "closed after {:?}, before the head timeout",
        started.elapsed()
    );
    assert!(
        closed_within(&mut served, Duration::from_secs(5)).await,
        "an idle keep-alive connection outlived the head timeout"
    );
    drop(held);

    // Then a normal request is served, and each refusal was counted: the 63
    // cut-off heads and the 8 connections beyond the cap, not the keep-alive
    // connection closed idle after it was served.
    poll_metric(&k, HEADER_TIMEOUT_HITS, Duration::from_secs(5), |v| {
        v.unwrap_or(0.0) - before >= 71.0
    })
    .await;
    // And no more after a while: nothing else is counted.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let hits = limit_hits(&metrics(&k).await) - before;
    assert_eq!(hits, 71.0, "63 timeouts and 8 refusals counted as {hits}");
}

#[tokio::test]
async fn admin_token_guards_config_reload_and_metrics() {
    let token = "admin-t0ken-for-the-test-4c9e";
    let k = Kaname::start_with_env(
        &with_admin_keys(&["token: ${ADMIN_TOKEN}"], &body()),
        &[("ADMIN_TOKEN", token)],
    )
    .await;
    let bearer = format!("Bearer {token}");
    let before = reloads(&metrics_with_token(&k, token).await);
    for (method, path) in [("GET", "/metrics"), ("GET", "/config"), ("POST", "/reload")] {
        for auth in [
            None,
            Some("Bearer wrong-token"),
            Some("Basic YWRtaW46YWRtaW4="),
        ] {
            let headers: Vec<(&str, &str)> =
                auth.map(|a| vec![("authorization", a)]).unwrap_or_default();
            let res = send(request(method, &k, path, &headers)).await;
            res.assert_kaname_error(401, "unauthenticated");
            let challenge = res.header("www-authenticate").unwrap_or_default();
            assert!(
                challenge.starts_with("Bearer"),
                "{method} {path} with {auth:?}: WWW-Authenticate {challenge:?}"
            );
        }
    }
    assert_eq!(
        reloads(&metrics_with_token(&k, token).await),
        before,
        "POST /reload without the token reloaded"
    );
    for path in ["/live", "/ready"] {
        assert_eq!(send(get(&k, path, &[])).await.status, 200, "{path}");
    }
    let res = send(get(&k, "/metrics", &[("authorization", &bearer)])).await;
    assert_eq!(res.status, 200);
    assert!(res.text().contains("kaname_build_info"));
    let res = send(get(&k, "/config", &[("authorization", &bearer)])).await;
    assert_eq!(res.status, 200);
    let config = res.text();
    assert!(
        !config.contains(token),
        "/config shows the token:\n{config}"
    );
    assert!(config.contains("token: \"<redacted>\""), "{config}");
    let res = send(request(
        "POST",
        &k,
        "/reload",
        &[("authorization", &bearer)],
    ))
    .await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(
        reloads(&metrics_with_token(&k, token).await),
        (before.0 + 1.0, before.1)
    );
    // The Host guard still applies with a token.
    let res = send(get(
        &k,
        "/metrics",
        &[("authorization", &bearer), ("host", "evil.example")],
    ))
    .await;
    res.assert_kaname_error(403, "forbidden");
}

#[tokio::test]
async fn config_is_the_typed_config_with_every_secret_redacted() {
    let token = "admin-token-value-b71f";
    let header_value = "header-value-from-env-93a2";
    let jwks_pass = "jwks-pass-from-env-0d4c";
    let config = format!(
        r#"x-secrets:
  jwt: &jwt_secret "anchored-jwt-secret-0123456789abcdefghijkl"
  unused: &unused "only-under-an-x-key-6e0b"
listeners:
  main:
    listen: 127.0.0.1:0
    routes:
      - name: visible-route
        match: {{ path_prefix: /, headers: {{ x-env: "${{HEADER_VALUE}}" }} }}
        upstream: app
        filters: [auth]
upstreams:
  app:
    endpoints: [{NOWHERE}]
filters:
  auth:
    jwt:
      algorithms: [HS256]
      secret: *jwt_secret
  remote:
    jwt:
      algorithms: [RS256]
      jwks:
        url: http://jwksuser:jwks-pass-literal-51@127.0.0.1:9/jwks?key=jwks-query-key-8f
        refresh: 1h
  remote-env:
    jwt:
      algorithms: [ES256]
      jwks: {{ url: "http://user:${{JWKS_PASS}}@127.0.0.1:9/jwks" }}
"#
    );
    let k = Kaname::start_with_env(
        &with_admin_keys(&["token: ${ADMIN_TOKEN}"], &config),
        &[
            ("ADMIN_TOKEN", token),
            ("HEADER_VALUE", header_value),
            ("JWKS_PASS", jwks_pass),
        ],
    )
    .await;
    let res = send(get(
        &k,
        "/config",
        &[("authorization", &format!("Bearer {token}"))],
    ))
    .await;
    assert_eq!(res.status, 200);
    assert_eq!(res.header("content-type"), Some("application/yaml"));
    let text = res.text();
    for hidden in [
        "anchored-jwt-secret",
        "only-under-an-x-key",
        "x-secrets",
        token,
        header_value,
        jwks_pass,
        "jwksuser",
        "jwks-pass-literal",
        "jwks-query-key",
        "key=",
    ] {
        assert!(!text.contains(hidden), "/config shows {hidden:?}:\n{text}");
    }
    for shown in [
        "visible-route",
        "main:",
        "remote:",
        "secret: \"<redacted>\"",
        "token: \"<redacted>\"",
        "x-env: \"<redacted>\"",
        "url: \"http://<redacted>@127.0.0.1:9/jwks?<redacted>\"",
        "url: \"<redacted>\"",
        // Defaults the file left out are shown too: the typed config.
        "header_read_timeout: 10s",
        "header_timeout: 10s",
    ] {
        assert!(text.contains(shown), "/config lacks {shown:?}:\n{text}");
    }
}

fn check(yaml: &str) -> std::process::Output {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("kaname.yaml");
    std::fs::write(&path, yaml).expect("write config");
    std::process::Command::new(KANAME)
        .arg("check")
        .arg("-c")
        .arg(&path)
        .env_remove("KANAME_CONFIG")
        .output()
        .expect("run kaname check")
}

#[test]
fn check_warns_about_an_open_admin_port_without_a_token() {
    let b = body();
    for (admin, warns) in [
        ("admin:\n  listen: 0.0.0.0:19911\n", true),
        ("admin:\n  listen: \"[::]:19911\"\n", true),
        ("admin:\n  listen: 0.0.0.0:19911\n  token: abc-123\n", false),
        ("admin:\n  listen: 127.0.0.1:19911\n", false),
        ("", false),
    ] {
        let out = check(&format!("{admin}{b}"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{admin}: {stderr}");
        let warned =
            stderr.contains("warning: admin.listen") && stderr.contains("admin.token is not set");
        assert_eq!(warned, warns, "{admin:?}: {stderr}");
    }
    // A token that cannot be sent in a header is an error, never printed.
    let out = check(&format!(
        "admin:\n  listen: 127.0.0.1:19911\n  token: \"two words\"\n{b}"
    ));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("admin.token"), "{stderr}");
    assert!(!stderr.contains("two words"), "{stderr}");
}

#[tokio::test]
async fn allowed_hosts_names_are_answered_and_no_others() {
    let k = Kaname::start(&with_admin_keys(
        &["allowed_hosts: [orders, Payments.Shop.Svc]"],
        &body(),
    ))
    .await;
    let port = k.admin().port();
    for host in [
        format!("orders:{port}"),
        "orders".to_string(),
        format!("ORDERS:{port}"),
        "payments.shop.svc:9901".to_string(),
        format!("localhost:{port}"),
    ] {
        let res = send(get(&k, "/metrics", &[("host", &host)])).await;
        assert_eq!(res.status, 200, "Host {host}: {}", res.text());
        assert!(res.text().contains("kaname_"), "Host {host}");
    }
    for host in [
        format!("payments:{port}"),
        "orders.evil.example".to_string(),
        "evil.orders".to_string(),
        "[orders]".to_string(),
    ] {
        let res = send(get(&k, "/metrics", &[("host", &host)])).await;
        res.assert_kaname_error(403, "forbidden");
    }
    // An absolute-form target must name an allowed host too.
    let res = raw(
        k.admin(),
        "GET http://evil.example/metrics HTTP/1.1\r\nHost: orders\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(res.starts_with("HTTP/1.1 403"), "{res}");
    let res = raw(
        k.admin(),
        &format!(
            "GET http://orders:{port}/live HTTP/1.1\r\nHost: orders\r\nConnection: close\r\n\r\n"
        ),
    )
    .await;
    assert!(res.starts_with("HTTP/1.1 200"), "{res}");
    // /config shows the list.
    let res = send(get(&k, "/config", &[])).await;
    assert!(
        res.text()
            .contains("allowed_hosts:\n    - orders\n    - payments.shop.svc\n"),
        "{}",
        res.text()
    );
}

#[test]
fn check_rejects_an_allowed_host_that_is_not_a_host_name() {
    let b = body();
    let out = check(&format!(
        "admin:\n  listen: 127.0.0.1:19911\n  allowed_hosts: [orders, \"orders:9901\"]\n{b}"
    ));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("kaname.yaml:3:27: admin.allowed_hosts: expected a host name"),
        "{stderr}"
    );
    assert!(stderr.contains("without a port"), "{stderr}");
    let out = check(&format!(
        "admin:\n  listen: 127.0.0.1:19911\n  allowed_hosts:\n    - payments\n    - \"evil example\"\n    - -orders\n{b}"
    ));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    for (line, at) in lines.iter().zip(["kaname.yaml:5:7: ", "kaname.yaml:6:7: "]) {
        assert!(
            line.contains(at) && line.contains("admin.allowed_hosts"),
            "{stderr}"
        );
    }
    assert!(!stderr.contains("payments\""), "{stderr}");
    let out = check(&format!(
        "admin:\n  listen: 0.0.0.0:19911\n  token: abc-123\n  allowed_hosts: [orders]\n{b}"
    ));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("warning"), "{stderr}");
}
