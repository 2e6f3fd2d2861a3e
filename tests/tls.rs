//! TLS end to end: termination (h1 and h2 by ALPN), mutual TLS with
//! identities, two kaname processes talking mTLS, certificate rotation under
//! load, and `kaname check` on broken TLS files. Certificates are made in
//! each test with rcgen.

mod support;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, Version};
use support::client::empty;
use support::tls::{client_config, client_config_tls12, send_tls, write_atomic, LeafSpec, TestCa};
use support::{
    metric_value, metrics, poll_metric, HttpClient, Kaname, TestUpstream, METRIC_DEADLINE,
};

const H1: &[u8] = b"http/1.1";
const H2: &[u8] = b"h2";

fn get(url: &str) -> Request<support::client::Body> {
    Request::get(url).body(empty()).expect("request")
}

fn p(path: &Path) -> String {
    path.display().to_string()
}

#[tokio::test]
async fn https_h1_and_h2_through_a_tls_listener() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new("test CA");
    let server = ca.issue(&LeafSpec {
        validity: Some(((2020, 1, 1), (2090, 1, 1))),
        ..LeafSpec::default()
    });
    let (cert, key) = server.write(dir.path(), "server");
    let up = TestUpstream::start("echo").await;
    let k = Kaname::start(&format!(
        "listeners:
  web:
    listen: 127.0.0.1:0
    tls: {{ cert: {c}, key: {k} }}
    routes: [{{ match: {{ path_prefix: / }}, upstream: echo }}]
  old:
    listen: 127.0.0.1:0
    protocol: http1
    tls: {{ cert: {c}, key: {k} }}
    routes: [{{ match: {{ path_prefix: / }}, upstream: echo }}]
upstreams:
  echo:
    endpoints: [{}]
",
        up.addr,
        c = p(&cert),
        k = p(&key),
    ))
    .await;
    let (auto_port, h1_port) = (k.port("web"), k.port("old"));
    let addr = |port: u16| std::net::SocketAddr::from(([127, 0, 0, 1], port));

    // HTTP/1.1 by ALPN; a client's own identity header never gets through.
    let mut req = get(&format!("https://localhost:{auto_port}/one"));
    req.headers_mut().insert(
        "x-client-identity",
        "spiffe://forged".parse().expect("value"),
    );
    let r = send_tls(
        addr(auto_port),
        client_config(&ca.cert_pem, None, &[H1]),
        req,
    )
    .await
    .expect("h1 over TLS");
    assert_eq!(r.response.status, 200, "{}", r.response.text());
    assert_eq!(r.response.version, Version::HTTP_11);
    assert_eq!(r.alpn.as_deref(), Some(H1));
    assert_eq!(r.served, server.cert_der());
    let seen = up.last();
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    assert_eq!(
        seen.header("x-client-identity"),
        None,
        "forged identity forwarded"
    );

    // HTTP/2 by ALPN.
    let r = send_tls(
        addr(auto_port),
        client_config(&ca.cert_pem, None, &[H2, H1]),
        get(&format!("https://localhost:{auto_port}/two")),
    )
    .await
    .expect("h2 over TLS");
    assert_eq!(r.response.status, 200, "{}", r.response.text());
    assert_eq!(r.response.version, Version::HTTP_2);
    assert_eq!(r.alpn.as_deref(), Some(H2));
    assert_eq!(up.last().path, "/two");
    assert_eq!(r.tls_version, Some(rustls::ProtocolVersion::TLSv1_3));

    // TLS 1.2 clients are served too (h1 and h2).
    for alpn in [H1, H2] {
        let r = send_tls(
            addr(auto_port),
            client_config_tls12(&ca.cert_pem, &[alpn]),
            get(&format!("https://localhost:{auto_port}/tls12")),
        )
        .await
        .expect("TLS 1.2");
        assert_eq!(r.response.status, 200, "{}", r.response.text());
        assert_eq!(r.tls_version, Some(rustls::ProtocolVersion::TLSv1_2));
        assert_eq!(r.alpn.as_deref(), Some(alpn));
    }

    // A `protocol: http1` listener offers only http/1.1.
    let r = send_tls(
        addr(h1_port),
        client_config(&ca.cert_pem, None, &[H2, H1]),
        get(&format!("https://localhost:{h1_port}/three")),
    )
    .await
    .expect("h1-only listener");
    assert_eq!(r.alpn.as_deref(), Some(H1));
    assert_eq!(r.response.version, Version::HTTP_11);

    // A client that does not trust the CA fails; the listener counts it.
    let other = TestCa::new("other CA");
    let err = send_tls(
        addr(auto_port),
        client_config(&other.cert_pem, None, &[H1]),
        get(&format!("https://localhost:{auto_port}/")),
    )
    .await
    .expect_err("untrusted server certificate accepted");
    assert!(err.contains("handshake"), "{err}");

    let text = metrics(&k).await;
    assert_eq!(
        metric_value(
            &text,
            "kaname_tls_cert_expiry_timestamp_seconds{listener=\"web\"}"
        ),
        Some(3786912000.0),
        "{text}"
    );
    let failures = "kaname_tls_handshake_failures_total{listener=\"web\"}";
    let (counted, text) = poll_metric(&k, failures, METRIC_DEADLINE, |v| v == Some(1.0)).await;
    let v = metric_value(&text, failures);
    assert!(counted, "handshake failure not counted: {v:?}");
}

/// A listener with `client_ca` and `allowed_identities`, and its CA.
async fn mtls_sidecar(dir: &Path, up: &TestUpstream) -> (Kaname, TestCa, u16) {
    let ca = TestCa::new("mesh CA");
    let (cert, key) = ca.leaf().write(dir, "server");
    let ca_path = dir.join("ca.crt");
    std::fs::write(&ca_path, &ca.cert_pem).expect("write CA");
    let k = Kaname::start(&format!(
        "listeners:
  inbound:
    listen: 127.0.0.1:0
    tls:
      cert: {}
      key: {}
      client_ca: {}
      allowed_identities: [spiffe://test/ns/shop/sa/a, trusted.test]
    routes: [{{ match: {{ path_prefix: /, methods: [GET, POST] }}, upstream: echo }}]
upstreams:
  echo:
    endpoints: [{}]
",
        p(&cert),
        p(&key),
        p(&ca_path),
        up.addr
    ))
    .await;
    let port = k.port("inbound");
    (k, ca, port)
}

#[tokio::test]
async fn mutual_tls_checks_client_certificates_and_identities() {
    let dir = tempfile::tempdir().expect("tempdir");
    let up = TestUpstream::start("echo").await;
    let (k, ca, port) = mtls_sidecar(dir.path(), &up).await;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let url = format!("https://localhost:{port}/");

    // A good certificate passes; its URI SAN reaches the upstream and a
    // client-sent copy of the header does not.
    let good = ca.client("spiffe://test/ns/shop/sa/a");
    for alpn in [H1, H2] {
        let mut req = get(&url);
        req.headers_mut().insert(
            "x-client-identity",
            "spiffe://test/ns/shop/sa/admin".parse().expect("v"),
        );
        let r = send_tls(addr, client_config(&ca.cert_pem, Some(&good), &[alpn]), req)
            .await
            .expect("good client certificate");
        assert_eq!(r.response.status, 200, "{}", r.response.text());
        let seen = up.last();
        let ids: Vec<_> = seen.headers.get_all("x-client-identity").iter().collect();
        assert_eq!(
            ids,
            ["spiffe://test/ns/shop/sa/a"],
            "identity header at the upstream"
        );
    }

    // A DNS SAN may be allowed too.
    let dns = ca.issue(&LeafSpec {
        dns: &["trusted.test"],
        ..LeafSpec::default()
    });
    let r = send_tls(
        addr,
        client_config(&ca.cert_pem, Some(&dns), &[H1]),
        get(&url),
    )
    .await
    .expect("DNS identity");
    assert_eq!(r.response.status, 200);
    assert_eq!(up.last().header("x-client-identity"), Some("trusted.test"));

    // A certificate of the CA with an identity not allowed: 403 forbidden.
    let hits = up.hits();
    let stranger = ca.client("spiffe://test/ns/shop/sa/b");
    let r = send_tls(
        addr,
        client_config(&ca.cert_pem, Some(&stranger), &[H1]),
        get(&url),
    )
    .await
    .expect("handshake with a disallowed identity succeeds");
    r.response.assert_kaname_error(403, "forbidden");
    assert!(
        r.response.text().contains("spiffe://test/ns/shop/sa/b"),
        "{}",
        r.response.text()
    );
    assert_eq!(up.hits(), hits, "a forbidden request reached the upstream");
    // On a path no route takes it is 403 too: no hint of what is routed.
    let delete = || {
        http::Request::delete(&url)
            .body(support::empty())
            .expect("DELETE")
    };
    let r = send_tls(
        addr,
        client_config(&ca.cert_pem, Some(&stranger), &[H1]),
        delete(),
    )
    .await
    .expect("handshake");
    r.response.assert_kaname_error(403, "forbidden");
    let r = send_tls(
        addr,
        client_config(&ca.cert_pem, Some(&good), &[H1]),
        delete(),
    )
    .await
    .expect("handshake");
    r.response.assert_kaname_error(404, "no_route");

    // No certificate, or one from another CA: the handshake fails.
    let none = send_tls(addr, client_config(&ca.cert_pem, None, &[H1]), get(&url)).await;
    assert!(
        none.is_err(),
        "no client certificate accepted: {:?}",
        none.map(|r| r.response.status)
    );
    let other_ca = TestCa::new("other CA");
    let foreign = other_ca.client("spiffe://test/ns/shop/sa/a");
    let r = send_tls(
        addr,
        client_config(&ca.cert_pem, Some(&foreign), &[H1]),
        get(&url),
    )
    .await;
    assert!(
        r.is_err(),
        "certificate of another CA accepted: {:?}",
        r.map(|r| r.response.status)
    );
    assert_eq!(up.hits(), hits, "a refused client reached the upstream");

    let failures = "kaname_tls_handshake_failures_total{listener=\"inbound\"}";
    let (counted, text) = poll_metric(&k, failures, METRIC_DEADLINE, |v| v == Some(2.0)).await;
    let v = metric_value(&text, failures);
    assert!(counted, "expected 2 handshake failures, got {v:?}");
}

#[tokio::test]
async fn two_sidecars_talk_mutual_tls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let ca = TestCa::new("mesh CA");
    std::fs::write(d.join("ca.crt"), &ca.cert_pem).expect("write CA");
    let b_leaf = ca.issue(&LeafSpec {
        dns: &["b.test"],
        uris: &["spiffe://test/ns/shop/sa/b"],
        ..LeafSpec::default()
    });
    b_leaf.write(d, "b");
    ca.client("spiffe://test/ns/shop/sa/a").write(d, "a");
    ca.client("spiffe://test/ns/shop/sa/intruder")
        .write(d, "intruder");
    let echo = TestUpstream::start("service-b").await;
    let b = Kaname::start(&format!(
        "listeners:
  inbound:
    listen: 127.0.0.1:0
    tls:
      cert: {d}/b.crt
      key: {d}/b.key
      client_ca: {d}/ca.crt
      allowed_identities: [spiffe://test/ns/shop/sa/a]
    routes: [{{ match: {{ path_prefix: / }}, upstream: app }}]
upstreams:
  app:
    endpoints: [{}]
",
        echo.addr,
        d = d.display()
    ))
    .await;
    let b_port = b.port("inbound");
    let upstream = |name: &str, protocol: &str, who: &str| {
        format!(
            "  {name}:
    endpoints: [127.0.0.1:{b_port}]
    protocol: {protocol}
    tls:
      ca: {d}/ca.crt
      server_name: b.test
      cert: {d}/{who}.crt
      key: {d}/{who}.key
",
            d = d.display()
        )
    };
    let a = Kaname::start(&format!(
        "listeners:
  outbound:
    listen: 127.0.0.1:0
    routes:
      - {{ match: {{ path_prefix: /h2/ }}, upstream: b-h2 }}
      - {{ match: {{ path_prefix: /intruder/ }}, upstream: b-intruder }}
      - {{ match: {{ path_prefix: / }}, upstream: b }}
upstreams:
{}{}{}",
        upstream("b", "http1", "a"),
        upstream("b-h2", "http2", "a"),
        upstream("b-intruder", "http1", "intruder"),
    ))
    .await;
    let a_port = a.port("outbound");

    let client = HttpClient::http1();
    for path in ["/orders/1", "/h2/orders/2"] {
        let r = client
            .get(&format!("http://127.0.0.1:{a_port}{path}"))
            .await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        let seen = echo.last();
        assert_eq!(seen.path, path);
        assert_eq!(
            seen.header("x-client-identity"),
            Some("spiffe://test/ns/shop/sa/a")
        );
        assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    }
    // B refuses A's upstream that presents another identity.
    let r = client
        .get(&format!("http://127.0.0.1:{a_port}/intruder/x"))
        .await;
    r.assert_kaname_error(403, "forbidden");
}

#[tokio::test]
async fn certificate_rotation_under_load_drops_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let ca = TestCa::new("rotating CA");
    let first = ca.issue(&LeafSpec {
        validity: Some(((2020, 1, 1), (2090, 1, 1))),
        ..LeafSpec::default()
    });
    let (cert, key) = first.write(d, "server");
    let up = TestUpstream::start("echo").await;
    let k = Kaname::start(&format!(
        "listeners:
  web:
    listen: 127.0.0.1:0
    tls: {{ cert: {}, key: {} }}
    routes: [{{ match: {{ path_prefix: / }}, upstream: echo }}]
upstreams:
  echo:
    endpoints: [{}]
",
        p(&cert),
        p(&key),
        up.addr
    ))
    .await;
    let port = k.port("web");
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let config = client_config(&ca.cert_pem, None, &[H2, H1]);

    // Load: 4 clients, each a new TLS connection per request, for at most
    // 30 s or 3000 requests, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..4 {
        let (stop, ok, config) = (stop.clone(), ok.clone(), config.clone());
        tasks.push(tokio::spawn(async move {
            let started = Instant::now();
            let mut failures = Vec::new();
            for n in 0..750 {
                if stop.load(Ordering::Relaxed) || started.elapsed() > Duration::from_secs(30) {
                    break;
                }
                let req = get(&format!("https://localhost:{port}/load/{i}/{n}"));
                match send_tls(addr, config.clone(), req).await {
                    Ok(r) if r.response.status == 200 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => failures.push(format!("status {}", r.response.status)),
                    Err(e) => failures.push(e),
                }
            }
            failures
        }));
    }
    let wait_ok = |n: usize| {
        let ok = ok.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            while ok.load(Ordering::Relaxed) < n {
                assert!(Instant::now() < deadline, "load made no progress");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    wait_ok(20).await;

    // Rotate: key then certificate, each by rename (the pair is briefly
    // mismatched; that state must not be served).
    let second = ca.issue(&LeafSpec {
        validity: Some(((2020, 1, 1), (2091, 6, 1))),
        ..LeafSpec::default()
    });
    write_atomic(&key, &second.key_pem);
    write_atomic(&cert, &second.cert_pem);
    let probe = || async {
        send_tls(
            addr,
            config.clone(),
            get(&format!("https://localhost:{port}/probe")),
        )
        .await
        .expect("probe")
        .served
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while probe().await != second.cert_der() {
        assert!(
            Instant::now() < deadline,
            "new handshakes still see the old certificate"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let text = metrics(&k).await;
    assert_eq!(
        metric_value(
            &text,
            "kaname_tls_cert_expiry_timestamp_seconds{listener=\"web\"}"
        ),
        Some(3831494400.0)
    );

    // A broken new file keeps the running certificate and says why.
    let before = ok.load(Ordering::Relaxed);
    std::fs::write(&cert, "not a certificate\n").expect("break the certificate");
    let deadline = Instant::now() + Duration::from_secs(15);
    while !k.stderr().contains("do not load") {
        assert!(
            Instant::now() < deadline,
            "broken file not reported: {}",
            k.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        k.stderr().contains("no certificate in the file"),
        "{}",
        k.stderr()
    );
    assert_eq!(probe().await, second.cert_der());
    wait_ok(before + 20).await;

    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for t in tasks {
        failures.extend(t.await.expect("load task"));
    }
    assert!(
        failures.is_empty(),
        "{} failed requests: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(ok.load(Ordering::Relaxed) >= 40);
}

#[test]
fn check_reports_each_tls_file_problem_with_its_position() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let ca = TestCa::new("check CA");
    std::fs::write(d.join("ca.crt"), &ca.cert_pem).expect("write CA");
    ca.leaf().write(d, "server");
    ca.leaf().write(d, "other");
    ca.issue(&LeafSpec {
        validity: Some(((2019, 1, 1), (2020, 1, 1))),
        ..LeafSpec::default()
    })
    .write(d, "expired");
    let route = "    routes: [{ match: { path_prefix: / }, upstream: u }]\n";
    let d = d.display();
    let text = format!(
        "listeners:
  missing:
    listen: 127.0.0.1:18101
    tls:
      cert: {d}/nope.crt
      key: {d}/server.key
{route}  mismatch:
    listen: 127.0.0.1:18102
    tls:
      cert: {d}/server.crt
      key: {d}/other.key
{route}  expired:
    listen: 127.0.0.1:18103
    tls:
      cert: {d}/expired.crt
      key: {d}/expired.key
{route}  notca:
    listen: 127.0.0.1:18104
    tls:
      cert: {d}/server.crt
      key: {d}/server.key
      client_ca: {d}/server.crt
{route}upstreams:
  u:
    endpoints: [127.0.0.1:9]
    tls:
      ca: {d}/other.crt
"
    );
    std::fs::write(dir.path().join("kaname.yaml"), &text).expect("write config");
    let run = |cmd: &str| {
        std::process::Command::new(support::KANAME)
            .current_dir(dir.path())
            .args([cmd, "-c", "kaname.yaml"])
            .env_remove("RUST_LOG")
            .output()
            .expect("run kaname")
    };
    let out = run("check");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    let expected = [
        format!("kaname.yaml:5:7: listener \"missing\" tls.cert: {d}/nope.crt: cannot read the file: No such file or directory"),
        format!("kaname.yaml:12:7: listener \"mismatch\" tls.key: {d}/other.key: the key does not match the certificate {d}/server.crt"),
        format!("kaname.yaml:17:7: listener \"expired\" tls.cert: {d}/expired.crt: certificate expired on "),
        format!("kaname.yaml:25:7: listener \"notca\" tls.client_ca: {d}/server.crt: certificate \"CN=localhost\" is not a CA (basicConstraints CA:FALSE)"),
        format!("kaname.yaml:31:7: upstream \"u\" tls.ca: {d}/other.crt: certificate \"CN=localhost\" is not a CA (basicConstraints CA:FALSE)"),
    ];
    assert_eq!(lines.len(), expected.len(), "{stderr}");
    for (line, want) in lines.iter().zip(&expected) {
        assert!(line.starts_with(want.as_str()), "got  {line}\nwant {want}");
    }

    // `kaname run` refuses the same file with the same words, exit 1.
    let out = run("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(expected[1].as_str()), "{stderr}");

    // Fixed files: check passes.
    let fixed = text
        .replace("nope.crt", "server.crt")
        .replace("other.key", "server.key")
        .replace("expired.", "server.")
        .replace(
            &format!("client_ca: {d}/server.crt"),
            &format!("client_ca: {d}/ca.crt"),
        )
        .replace(&format!("ca: {d}/other.crt"), &format!("ca: {d}/ca.crt"));
    std::fs::write(dir.path().join("kaname.yaml"), fixed).expect("write config");
    let out = run("check");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// examples/mtls as written: its script makes the certificates with
/// openssl, both configs pass `kaname check`, and A reaches B over mTLS
/// (ports and paths moved so the test runs anywhere).
#[tokio::test]
async fn mtls_example_works() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/mtls");
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().join("certs");
    let out = std::process::Command::new("sh")
        .arg(example.join("make-certs.sh"))
        .arg(&certs)
        .output()
        .expect("run make-certs.sh");
    assert!(
        out.status.success(),
        "make-certs.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for name in ["a.yaml", "b.yaml"] {
        std::fs::copy(example.join(name), dir.path().join(name)).expect("copy config");
        let out = std::process::Command::new(support::KANAME)
            .current_dir(dir.path())
            .args(["check", "-c", name])
            .env("APP_ADDR", "127.0.0.1:3000")
            .output()
            .expect("run kaname check");
        assert_eq!(
            out.status.code(),
            Some(0),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let app = TestUpstream::start("service-b").await;
    // A listens on a port the kernel picks and sends to B's: B starts first.
    let body = |name: &str, b_port: &str| {
        let text = std::fs::read_to_string(example.join(name)).expect("read example");
        let start = text.find("listeners:").expect("listeners");
        text[start..]
            .replace("certs/", &format!("{}/", certs.display()))
            .replace("127.0.0.1:15001", "127.0.0.1:0")
            .replace("127.0.0.1:15443", &format!("127.0.0.1:{b_port}"))
    };
    let app_addr = app.addr.to_string();
    let b = Kaname::start_with_env(&body("b.yaml", "0"), &[("APP_ADDR", &app_addr)]).await;
    let b_port = b.port("inbound").to_string();
    let a = Kaname::start(&body("a.yaml", &b_port)).await;
    let a_port = a.port("outbound");
    let r = HttpClient::http1()
        .get(&format!("http://127.0.0.1:{a_port}/hello"))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = app.last();
    assert_eq!(seen.path, "/hello");
    assert_eq!(
        seen.header("x-client-identity"),
        Some("spiffe://example.org/ns/shop/sa/a")
    );
}

/// The upstream side's client certificate is watched too: after A's
/// `cert`/`key` files are replaced, A's new handshakes to B present the new
/// identity, with no failed request while it happens.
#[tokio::test]
async fn upstream_client_certificate_rotation_reaches_new_handshakes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let ca = TestCa::new("mesh CA");
    std::fs::write(d.join("ca.crt"), &ca.cert_pem).expect("write CA");
    ca.issue(&LeafSpec {
        dns: &["b.test"],
        ..LeafSpec::default()
    })
    .write(d, "b");
    ca.client("spiffe://test/sa/a-v1").write(d, "a");
    let echo = TestUpstream::start("service-b").await;
    let b = Kaname::start(&format!(
        "listeners:
  inbound:
    listen: 127.0.0.1:0
    tls:
      cert: {d}/b.crt
      key: {d}/b.key
      client_ca: {d}/ca.crt
      allowed_identities: [spiffe://test/sa/a-v1, spiffe://test/sa/a-v2]
    routes: [{{ match: {{ path_prefix: / }}, upstream: app }}]
upstreams:
  app:
    endpoints: [{}]
",
        echo.addr,
        d = d.display()
    ))
    .await;
    let b_port = b.port("inbound");
    // No idle pooled connections: every request is a new handshake.
    let a = Kaname::start(&format!(
        "listeners:
  outbound:
    listen: 127.0.0.1:0
    routes: [{{ match: {{ path_prefix: / }}, upstream: b }}]
upstreams:
  b:
    endpoints: [127.0.0.1:{b_port}]
    pool: {{ max_idle_per_endpoint: 0 }}
    tls: {{ ca: {d}/ca.crt, server_name: b.test, cert: {d}/a.crt, key: {d}/a.key }}
",
        d = d.display()
    ))
    .await;
    let a_port = a.port("outbound");
    let client = HttpClient::http1();
    let url = format!("http://127.0.0.1:{a_port}/x");
    let r = client.get(&url).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        echo.last().header("x-client-identity"),
        Some("spiffe://test/sa/a-v1")
    );

    ca.client("spiffe://test/sa/a-v2").write(d, "a");
    let start = Instant::now();
    let mut sent = 0;
    loop {
        let r = client.get(&url).await;
        sent += 1;
        assert_eq!(
            r.status,
            200,
            "request {sent} during rotation: {}",
            r.text()
        );
        if echo.last().header("x-client-identity") == Some("spiffe://test/sa/a-v2") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10) && sent < 2000,
            "A still presents the old certificate after {sent} requests"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
