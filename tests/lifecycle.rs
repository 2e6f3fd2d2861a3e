//! End to end: the `kaname` process's life — graceful shutdown on SIGTERM,
//! the admin `/live` and `/config` endpoints, exit code 3 on a taken port,
//! and `kaname demo`.

mod support;

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::*;

fn url(port: u16, path: &str) -> String {
    format!("http://127.0.0.1:{port}{path}")
}

/// Polls `GET url` on fresh connections until it answers `status`, at most
/// `deadline`; returns how long it took.
async fn wait_status(url: &str, status: u16, deadline: Duration) -> Duration {
    let client = HttpClient::http1_no_pool();
    let started = Instant::now();
    let mut last = String::from("no answer yet");
    while started.elapsed() < deadline {
        match client.try_get(url, Duration::from_secs(1)).await {
            Ok(resp) if resp.status == status => return started.elapsed(),
            Ok(resp) => last = format!("status {}", resp.status),
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{url} did not answer {status} within {deadline:?}; last: {last}");
}

/// Connects to `addr` until the connection is refused, at most `deadline`.
async fn wait_refused(addr: SocketAddr, deadline: Duration) {
    let started = Instant::now();
    let mut last = String::new();
    while started.elapsed() < deadline {
        match tokio::net::TcpStream::connect(addr).await {
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => return,
            Err(e) => last = format!("error {e}"),
            Ok(_) => last = "connection accepted".into(),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("new connections to {addr} still not refused after {deadline:?}; last: {last}");
}

#[tokio::test]
async fn sigterm_finishes_requests_in_flight_refuses_new_ones_and_exits_0() {
    let delay = Duration::from_secs(3);
    let slow = TestUpstream::slow("slow", delay).await;
    let config = format!("shutdown_grace: 15s\n{}", simple_config(&[slow.addr]));
    let mut kaname = Kaname::start(&config).await;
    let port = kaname.port("main");

    let client = HttpClient::http1();
    let in_flight = tokio::spawn(async move { client.get(&url(port, "/slow")).await });
    slow.wait_hits(1, Duration::from_secs(5)).await;
    let sent_at = Instant::now();
    kaname.sigterm();

    let took = wait_status(&kaname.admin_url("/ready"), 503, Duration::from_secs(2)).await;
    assert!(
        !in_flight.is_finished(),
        "/ready turned 503 only after the request in flight ended ({took:?})"
    );
    wait_refused(
        SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(2),
    )
    .await;
    assert!(
        !in_flight.is_finished(),
        "the listener stopped accepting only after the request in flight ended"
    );

    let resp = tokio::time::timeout(Duration::from_secs(10), in_flight)
        .await
        .expect("request in flight finished within the grace period")
        .expect("request task");
    assert_eq!(resp.status, 200, "in-flight request body {:?}", resp.text());
    assert_eq!(resp.header("x-upstream"), Some("slow"));
    assert!(
        sent_at.elapsed() < delay + Duration::from_secs(2),
        "the in-flight request took {:?}",
        sent_at.elapsed()
    );

    let status = kaname.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM; stderr:\n{}",
        kaname.stderr()
    );
}

#[tokio::test]
async fn sigterm_with_nothing_in_flight_exits_0_promptly() {
    let up = TestUpstream::start("echo").await;
    let mut kaname = Kaname::start(&simple_config(&[up.addr])).await;
    let port = kaname.port("main");
    assert_eq!(HttpClient::http1().get(&url(port, "/")).await.status, 200);
    let started = Instant::now();
    kaname.sigterm();
    let status = kaname.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "exit status after SIGTERM");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "an idle proxy took {:?} to stop (an idle keep-alive connection must not hold shutdown for the 30s grace)",
        started.elapsed()
    );
}

#[tokio::test]
async fn admin_live_and_config_with_var_values_redacted() {
    let up = TestUpstream::start("echo").await;
    let env_secret = "tok-s3cr3t-from-env-81";
    let config = format!(
        r#"listeners:
  main:
    listen: 127.0.0.1:0
    routes:
      - name: config-route
        match: {{ path_prefix: /, headers: {{ x-token: "${{KANAME_TEST_TOKEN}}" }} }}
        upstream: echo
upstreams:
  echo:
    endpoints: [{}]
"#,
        up.addr
    );
    let kaname = Kaname::start_with_env(&config, &[("KANAME_TEST_TOKEN", env_secret)]).await;
    let port = kaname.port("main");
    let client = HttpClient::http1();

    let live = client.get(&kaname.admin_url("/live")).await;
    assert_eq!(live.status, 200, "/live");
    let ready = client.get(&kaname.admin_url("/ready")).await;
    assert_eq!(ready.status, 200, "/ready");

    // The ${VAR} value is substituted: the header match uses it.
    let req = http::Request::get(url(port, "/x"))
        .header("x-token", env_secret)
        .body(empty())
        .expect("request");
    assert_eq!(
        client.send(req).await.status,
        200,
        "substituted header matched"
    );
    let req = http::Request::get(url(port, "/x"))
        .header("x-token", "${KANAME_TEST_TOKEN}")
        .body(empty())
        .expect("request");
    client.send(req).await.assert_kaname_error(404, "no_route");

    let resp = client.get(&kaname.admin_url("/config")).await;
    assert_eq!(resp.status, 200, "/config");
    let text = resp.text();
    assert!(
        text.contains("config-route"),
        "/config shows the routes:\n{text}"
    );
    assert!(text.contains("main"), "/config shows the listener:\n{text}");
    assert!(
        !text.contains(env_secret),
        "/config shows a ${{VAR}} value:\n{text}"
    );
    assert!(
        text.contains("<redacted>"),
        "/config should show the ${{VAR}} value as <redacted>:\n{text}"
    );
}

#[tokio::test]
async fn admin_config_redacts_jwt_secret() {
    let up = TestUpstream::start("echo").await;
    let jwt_secret = "jwt-shared-s3cr3t-value-of-32-bytes-or-more";
    let config = format!(
        "{}filters:\n  auth:\n    jwt:\n      algorithms: [HS256]\n      secret: {jwt_secret}\n",
        simple_config(&[up.addr])
    );
    let kaname = Kaname::start(&config).await;
    let resp = HttpClient::http1().get(&kaname.admin_url("/config")).await;
    assert_eq!(resp.status, 200, "/config");
    let text = resp.text();
    assert!(text.contains("auth"), "/config shows the filter:\n{text}");
    assert!(
        !text.contains(jwt_secret),
        "/config shows the jwt secret:\n{text}"
    );
    assert!(
        text.contains("<redacted>"),
        "/config should show the jwt secret as <redacted>:\n{text}"
    );
}

#[tokio::test]
async fn taken_listen_port_exits_3_naming_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let up = TestUpstream::start("echo").await;
    let config = simple_config(&[up.addr]).replace("127.0.0.1:0", &addr.to_string());
    let mut kaname = Kaname::spawn(&config, &[]);
    let status = kaname.wait_exit(Duration::from_secs(10)).await;
    let stderr = kaname.stderr();
    assert_eq!(
        status.code(),
        Some(3),
        "exit code for a taken port; stderr:\n{stderr}"
    );
    assert_eq!(
        stderr.matches(&format!("cannot listen on {addr}")).count(),
        1,
        "stderr should name {addr}, once:\n{stderr}"
    );
    drop(taken);
}

#[tokio::test]
async fn demo_starts_answers_and_stops_on_ctrl_c() {
    let (mut demo, first) = Kaname::demo().await;
    let pattern = regex::Regex::new(
        r"^kaname demo: proxy on http://(127\.0\.0\.1:\d+), admin on http://(127\.0\.0\.1:\d+), echo upstream on http://(127\.0\.0\.1:\d+)$",
    )
    .expect("regex");
    let caps = pattern
        .captures(&first)
        .unwrap_or_else(|| panic!("demo's first line has the wrong shape: {first:?}"));
    let proxy = caps[1].to_string();
    let admin = caps[2].to_string();
    let echo = caps[3].to_string();
    demo.wait_ready().await;

    let client = HttpClient::http1();
    // The path the demo's own first curl command uses.
    let resp = client.get(&format!("http://{proxy}/api/hello")).await;
    assert_eq!(
        resp.status,
        200,
        "GET /api/hello through the demo proxy: {:?}",
        resp.text()
    );
    let json = resp.json();
    assert_eq!(json["method"], "GET", "echo upstream answered: {json}");
    assert_eq!(json["path"], "/api/hello", "echo upstream answered: {json}");
    assert!(
        json["headers"].is_object(),
        "echo lists the headers: {json}"
    );
    assert!(
        json["headers"]["x-request-id"].is_string(),
        "the echo saw the forwarded x-request-id: {json}"
    );

    let direct = client.get(&format!("http://{echo}/direct")).await;
    assert_eq!(direct.status, 200, "the echo upstream answers directly");
    assert_eq!(direct.json()["path"], "/direct");

    // A retry saving a request, as the banner shows it: the echo fails the
    // first two tries, the third answers, and the access log says so.
    let r = client
        .get(&format!("http://{proxy}/flaky/?fail_first=2"))
        .await;
    assert_eq!(r.status, 200, "saved by its third try: {:?}", r.text());
    let saved = r.json()["headers"]["x-request-id"]
        .as_str()
        .expect("the echo saw x-request-id")
        .to_string();
    let start = Instant::now();
    let line = loop {
        let logs = demo.logs();
        if let Some(l) = logs.lines().find(|l| l.contains(&saved)) {
            break l.to_string();
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no access log line for request {saved}:\n{logs}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(line.contains("attempts=3"), "access log: {line}");
    assert!(line.contains("status=200"), "access log: {line}");

    // The demo's retry and circuit breaker, as its banner shows them: the
    // retry is outside the breaker, so each try counts and the first failed
    // request's three tries open the circuit.
    let r = client
        .get(&format!("http://{proxy}/flaky/?status=503"))
        .await;
    assert_eq!(r.status, 503, "the first failing request");
    assert_eq!(r.header("kaname-error"), None, "the echo's own 503");
    for _ in 0..2 {
        let r = client
            .get(&format!("http://{proxy}/flaky/?status=503"))
            .await;
        r.assert_kaname_error(503, "circuit_open");
    }
    let metrics = client.get(&format!("http://{admin}/metrics")).await.text();
    assert_eq!(
        support::metric_value(
            &metrics,
            r#"kaname_retries_total{route="flaky",upstream="echo"}"#
        ),
        Some(4.0),
        "two retries saving the first request, two for the failing one, none once the circuit is open"
    );

    send_signal(demo.pid, "INT");
    let status = demo.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "demo exit status after Ctrl-C");
}
