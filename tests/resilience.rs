//! Resilience end to end: retries, budgets, circuit breaking, outlier
//! ejection and health checks, against real upstreams on 127.0.0.1 that
//! fail on purpose (tests/support/resilience.rs).

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use support::resilience::{Act, ScriptedUpstream};
use support::{
    accept_each, bind_loopback, endpoints_yaml, eventually, full, metric, metric_value, metrics,
    poll_metric, HttpClient, Kaname,
};

/// One listener, one catch-all route `main-1` to upstream `up` through
/// `filters`, with `upstream_extra` under the upstream and `filters_yaml`
/// as the `filters:` section.
fn config(
    endpoints: &[SocketAddr],
    upstream_extra: &str,
    route_filters: &str,
    filters_yaml: &str,
) -> String {
    format!(
        "listeners:
  main:
    listen: 127.0.0.1:0
    routes:
      - match: {{ path_prefix: / }}
        upstream: up
        filters: [{route_filters}]
upstreams:
  up:
    endpoints: {}
{upstream_extra}
filters:
{filters_yaml}",
        endpoints_yaml(endpoints)
    )
}

const FAST_RETRY: &str = "  retries:
    retry:
      attempts: 3
      retry_on: [connect_failure, reset, timeout, 502, 503, 504]
      per_try_timeout: 300ms
      backoff: { base: 1ms, max: 5ms }
";

fn put(url: &str, body: Bytes) -> Request<support::client::Body> {
    Request::put(url).body(full(body)).expect("request")
}

#[tokio::test]
async fn fails_twice_then_answers_client_sees_200() {
    let up =
        ScriptedUpstream::start("flaky", |n| if n < 2 { Act::Status(503) } else { Act::Ok }).await;
    let k = Kaname::start(&config(&[up.addr], "", "retries", FAST_RETRY)).await;
    let port = k.port("main");
    let res = HttpClient::http1()
        .get(&format!("http://127.0.0.1:{port}/x"))
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.text(), "ok from flaky");
    assert_eq!(up.hits(), 3);
    let retries = metric(&k, r#"kaname_retries_total{route="main-1",upstream="up"}"#).await;
    assert_eq!(retries, 2.0);
}

#[tokio::test]
async fn connection_reset_is_retried() {
    let up = ScriptedUpstream::start("resets", |n| if n == 0 { Act::Reset } else { Act::Ok }).await;
    let k = Kaname::start(&config(&[up.addr], "", "retries", FAST_RETRY)).await;
    let port = k.port("main");
    let res = HttpClient::http1()
        .get(&format!("http://127.0.0.1:{port}/x"))
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(up.hits(), 2);
    let resets = metric(
        &k,
        r#"kaname_upstream_attempts_total{upstream="up",outcome="reset"}"#,
    )
    .await;
    assert_eq!(resets, 1.0);
}

#[tokio::test]
async fn hanging_upstream_is_cut_by_per_try_timeout() {
    // Request 0 hangs, 1 answers; 2 and 3 (the second request) both hang.
    let up = ScriptedUpstream::start("hangs", |n| if n == 1 { Act::Ok } else { Act::Hang }).await;
    let retry = "  retries:
    retry:
      attempts: 2
      per_try_timeout: 300ms
      backoff: { base: 1ms, max: 5ms }
";
    let k = Kaname::start(&config(&[up.addr], "", "retries", retry)).await;
    let port = k.port("main");
    let client = HttpClient::http1();
    let url = format!("http://127.0.0.1:{port}/x");
    let started = Instant::now();
    let res = client.get(&url).await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(up.hits(), 2);
    assert!(started.elapsed() >= Duration::from_millis(300));
    // Every try times out: the last per-try timeout is the client's 504.
    let res = client.get(&url).await;
    res.assert_kaname_error(504, "upstream_timeout");
    assert_eq!(up.hits(), 4);
    // Each cut try is a timeout of the upstream (unlike a client hanging up).
    let timeouts = metric(
        &k,
        r#"kaname_upstream_attempts_total{upstream="up",outcome="timeout"}"#,
    )
    .await;
    assert_eq!(timeouts, 3.0);
}

#[tokio::test]
async fn post_is_retried_only_when_listed() {
    let up = ScriptedUpstream::start("down", |_| Act::Status(503)).await;
    let yaml = format!(
        "listeners:
  main:
    listen: 127.0.0.1:0
    routes:
      - match: {{ path_prefix: /listed }}
        upstream: up
        filters: [post-retries]
      - match: {{ path_prefix: / }}
        upstream: up
        filters: [retries]
upstreams:
  up:
    endpoints: [{}]
filters:
{FAST_RETRY}  post-retries:
    retry:
      attempts: 3
      methods: [GET, POST]
      backoff: {{ base: 1ms, max: 5ms }}
",
        up.addr
    );
    let k = Kaname::start(&yaml).await;
    let port = k.port("main");
    let client = HttpClient::http1();
    let post = |path: &str| {
        Request::post(format!("http://127.0.0.1:{port}{path}"))
            .body(full("order"))
            .expect("request")
    };
    assert_eq!(client.send(post("/default")).await.status, 503);
    assert_eq!(up.hits(), 1, "POST is not idempotent: sent once");
    assert_eq!(client.send(post("/listed")).await.status, 503);
    assert_eq!(up.hits(), 4, "POST listed: three tries");
}

#[tokio::test]
async fn retried_body_arrives_identical_and_large_body_is_sent_once() {
    let up = ScriptedUpstream::start("bodies", |n| match n {
        0 | 1 => Act::Status(503),
        2 => Act::Ok,
        _ => Act::Status(503),
    })
    .await;
    let k = Kaname::start(&config(&[up.addr], "", "retries", FAST_RETRY)).await;
    let port = k.port("main");
    let client = HttpClient::http1();
    let url = format!("http://127.0.0.1:{port}/upload");
    let body: Bytes = (0..60 * 1024).map(|_| rand::random::<u8>()).collect();
    let res = client.send(put(&url, body.clone())).await;
    assert_eq!(res.status, 200, "{}", res.text());
    let bodies = up.bodies();
    assert_eq!(bodies.len(), 3);
    for (i, b) in bodies.iter().enumerate() {
        assert!(*b == body, "try {i}: {} bytes, not the body sent", b.len());
    }

    // 2 MiB is over max_body_bytes (64 KiB): streamed once, never retried.
    let big: Bytes = (0..2 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let res = client.send(put(&url, big.clone())).await;
    assert_eq!(res.status, 503);
    let bodies = up.bodies();
    assert_eq!(bodies.len(), 4, "sent once");
    assert!(bodies[3] == big, "the large body arrived whole");
}

#[tokio::test]
async fn budget_bounds_retries_under_an_always_failing_upstream() {
    let up = ScriptedUpstream::start("down", |_| Act::Status(503)).await;
    let retry = "  retries:
    retry:
      attempts: 3
      backoff: { base: 1ms, max: 2ms }
      budget: { ratio: 0.2, min_per_second: 5 }
";
    let k = Kaname::start(&config(&[up.addr], "", "retries", retry)).await;
    let port = k.port("main");
    let client = HttpClient::http1();
    let url = format!("http://127.0.0.1:{port}/x");
    let started = Instant::now();
    let mut requests = 0usize;
    while started.elapsed() < Duration::from_secs(2) && requests < 3000 {
        let res = client.get(&url).await;
        assert_eq!(res.status, 503);
        requests += 1;
    }
    let seconds = started.elapsed().as_secs_f64();
    let text = metrics(&k).await;
    let retries = metric_value(
        &text,
        r#"kaname_retries_total{route="main-1",upstream="up"}"#,
    )
    .unwrap_or(0.0);
    let exhausted = metric_value(
        &text,
        r#"kaname_retry_budget_exhausted_total{route="main-1",upstream="up"}"#,
    )
    .unwrap_or(0.0);
    assert_eq!(
        up.hits(),
        requests + retries as usize,
        "every retry reached the upstream"
    );
    // The budget's reserve holds one second's worth on top of the refill.
    let bound = 0.2 * requests as f64 + 5.0 * (seconds + 1.0);
    assert!(
        retries <= bound,
        "{retries} retries for {requests} requests in {seconds:.2}s; bound {bound}"
    );
    assert!(retries >= 1.0, "the budget allows some retries");
    assert!(
        exhausted >= 1.0,
        "the budget was spent ({requests} requests)"
    );
}

#[tokio::test]
async fn breaker_opens_refuses_probes_and_closes() {
    let failing = Arc::new(AtomicBool::new(true));
    let f = failing.clone();
    let up = ScriptedUpstream::start("breaks", move |_| {
        if f.load(Ordering::SeqCst) {
            Act::Status(500)
        } else {
            Act::Ok
        }
    })
    .await;
    let breaker = "  breaker:
    circuit_breaker:
      consecutive_failures: 3
      open_for: 1s
      max_open_for: 10s
";
    let k = Kaname::start(&config(&[up.addr], "", "breaker", breaker)).await;
    let port = k.port("main");
    let text = metrics(&k).await;
    let state = |s: &str| {
        format!(r#"kaname_circuit_breaker_state{{filter="breaker",upstream="up",state="{s}"}}"#)
    };
    assert_eq!(metric_value(&text, &state("closed")), Some(1.0));
    assert_eq!(metric_value(&text, &state("open")), Some(0.0));

    let client = HttpClient::http1();
    let url = format!("http://127.0.0.1:{port}/x");
    for _ in 0..3 {
        let res = client.get(&url).await;
        assert_eq!(res.status, 500);
        assert!(
            res.header("kaname-error").is_none(),
            "the upstream's own 500"
        );
    }
    // Open: refused at once, the upstream sees nothing.
    for _ in 0..5 {
        let res = client.get(&url).await;
        res.assert_kaname_error(503, "circuit_open");
        let after: u64 = res
            .header("retry-after")
            .expect("Retry-After")
            .parse()
            .unwrap();
        assert!((1..=1).contains(&after), "Retry-After {after}");
    }
    assert_eq!(up.hits(), 3);
    let text = metrics(&k).await;
    assert_eq!(metric_value(&text, &state("open")), Some(1.0));
    let rejected = metric_value(
        &text,
        r#"kaname_circuit_breaker_rejected_total{filter="breaker",upstream="up"}"#,
    );
    assert_eq!(rejected, Some(5.0));

    // The upstream recovers; after open_for one probe goes through and closes it.
    failing.store(false, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let res = client.get(&url).await;
        if res.status == 200 {
            break;
        }
        res.assert_kaname_error(503, "circuit_open");
        assert!(Instant::now() < deadline, "no probe within 10s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(up.hits(), 4, "exactly one probe");
    for _ in 0..3 {
        assert_eq!(client.get(&url).await.status, 200);
    }
    assert_eq!(up.hits(), 7);
    let text = metrics(&k).await;
    assert_eq!(metric_value(&text, &state("closed")), Some(1.0));
    let to = |s: &str| {
        format!(
            r#"kaname_circuit_breaker_transitions_total{{filter="breaker",upstream="up",to="{s}"}}"#
        )
    };
    assert_eq!(metric_value(&text, &to("open")), Some(1.0));
    assert_eq!(metric_value(&text, &to("half_open")), Some(1.0));
    assert_eq!(metric_value(&text, &to("closed")), Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_endpoint_is_ejected_and_comes_back_without_failed_requests() {
    let a = ScriptedUpstream::start("a", |_| Act::Ok).await;
    let b = ScriptedUpstream::start("b", |_| Act::Ok).await;
    let c = ScriptedUpstream::start("c", |_| Act::Ok).await;
    let upstream_extra = "    load_balancing: round_robin
    health_check: { path: /healthz, interval: 200ms, timeout: 200ms, unhealthy_after: 2, healthy_after: 2 }
    outlier_detection: { consecutive_failures: 2, eject_for: 2s, max_ejected_percent: 50 }
";
    let retry = "  retries:
    retry:
      attempts: 3
      per_try_timeout: 1s
      backoff: { base: 1ms, max: 5ms }
      budget: { ratio: 0.5, min_per_second: 50 }
";
    let k = Kaname::start(&config(
        &[a.addr, b.addr, c.addr],
        upstream_extra,
        "retries",
        retry,
    ))
    .await;
    let port = k.port("main");
    let b_gauge = format!(
        r#"kaname_upstream_endpoint_healthy{{upstream="up",endpoint="{}"}}"#,
        b.addr
    );
    assert_eq!(metric_value(&metrics(&k).await, &b_gauge), Some(1.0));

    // Bounded load: 4 clients until `stop`, at most 60 s.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (stop, sent) = (stop.clone(), sent.clone());
        let url = format!("http://127.0.0.1:{port}/load");
        workers.push(tokio::spawn(async move {
            let client = HttpClient::http1();
            let started = Instant::now();
            let mut failures = Vec::new();
            while !stop.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(60) {
                match client.try_get(&url, Duration::from_secs(10)).await {
                    Ok(r) if r.status == 200 => {}
                    Ok(r) => failures.push(format!("{} {}", r.status, r.text())),
                    Err(e) => failures.push(e),
                }
                sent.fetch_add(1, Ordering::SeqCst);
            }
            failures
        }));
    }
    let wait_until = |what: &'static str, deadline: Duration| {
        let started = Instant::now();
        move || {
            assert!(started.elapsed() < deadline, "{what} within {deadline:?}");
        }
    };

    eventually(Duration::from_secs(10), async || b.hits() > 0).await;
    let b_before = b.hits();
    assert!(b_before > 0, "b took traffic before it was killed");
    // Killed: listener and connections closed; its port held, refusing.
    let b_port = b.kill().await;
    let deadline = Duration::from_secs(10);
    let (out, _) = poll_metric(&k, &b_gauge, deadline, |v| v == Some(0.0)).await;
    assert!(out, "b out of rotation within {deadline:?}");
    let ejections = metric(&k, r#"kaname_upstream_ejections_total{upstream="up"}"#).await;
    assert!(ejections >= 1.0, "b was ejected");
    // Two of three still take traffic: no panic mode (the gauge exists, at 0).
    assert_eq!(
        metric_value(
            &metrics(&k).await,
            r#"kaname_upstream_panic_mode{upstream="up"}"#
        ),
        Some(0.0)
    );
    // The load runs on with b out for a while: a span of traffic, not a
    // wait for an event.
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Restart b on its address; it must pass health checks and take traffic again.
    let b = ScriptedUpstream::start_on(b_port, "b", |_| Act::Ok);
    let check = wait_until("b back in rotation", Duration::from_secs(15));
    loop {
        let back = metric_value(&metrics(&k).await, &b_gauge) == Some(1.0);
        if back && b.hits() > 0 {
            break;
        }
        check();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(b.health_hits() >= 2, "b passed health checks");
    stop.store(true, Ordering::SeqCst);
    let mut failures = Vec::new();
    for w in workers {
        failures.extend(w.await.expect("worker"));
    }
    let total = sent.load(Ordering::SeqCst);
    assert!(total > 100, "the load ran ({total} requests)");
    assert!(
        failures.is_empty(),
        "{} of {total} requests failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(a.hits() > 0 && c.hits() > 0);
}

/// Clients that hang up while their request waits on the upstream say
/// nothing about the upstream: no `timeout` attempt, no ejection, no
/// breaker failure. (Counting them let impatient clients eject a healthy
/// endpoint or open the circuit.) A real timeout still counts: see
/// `hanging_upstream_is_cut_by_per_try_timeout`.
#[tokio::test]
async fn clients_hanging_up_neither_eject_nor_open_the_breaker() {
    let up = ScriptedUpstream::start("slow", |n| if n < 3 { Act::Hang } else { Act::Ok }).await;
    let breaker = "  breaker:
    circuit_breaker:
      consecutive_failures: 2
      open_for: 30s
";
    let outlier = "    outlier_detection: { consecutive_failures: 2, eject_for: 30s, max_ejected_percent: 100 }";
    let k = Kaname::start(&config(&[up.addr], outlier, "breaker", breaker)).await;
    let port = k.port("main");
    let url = format!("http://127.0.0.1:{port}/x");
    for i in 1..=3 {
        let client = HttpClient::http1_no_pool();
        let gone = tokio::time::timeout(Duration::from_millis(300), client.get(&url)).await;
        assert!(
            gone.is_err(),
            "request {i} was answered: the upstream should hang"
        );
        drop(client);
        // kaname has seen the client go: nothing is in flight any more.
        let in_flight = r#"kaname_requests_in_flight{listener="main"}"#;
        let deadline = Duration::from_secs(5);
        let (settled, _) = poll_metric(&k, in_flight, deadline, |v| v.unwrap_or(0.0) == 0.0).await;
        assert!(settled, "request {i} still in flight");
        assert_eq!(up.hits(), i, "request {i} reached the upstream");
    }
    let text = metrics(&k).await;
    let timeouts = metric_value(
        &text,
        r#"kaname_upstream_attempts_total{upstream="up",outcome="timeout"}"#,
    );
    assert_eq!(
        timeouts.unwrap_or(0.0),
        0.0,
        "cancelled tries counted as timeouts"
    );
    let ejections = metric_value(&text, r#"kaname_upstream_ejections_total{upstream="up"}"#);
    assert_eq!(
        ejections.unwrap_or(0.0),
        0.0,
        "cancelled tries ejected the endpoint"
    );
    let open = metric_value(
        &text,
        r#"kaname_circuit_breaker_state{filter="breaker",upstream="up",state="open"}"#,
    );
    assert_eq!(open, Some(0.0), "cancelled tries opened the circuit");

    let client = HttpClient::http1();
    let start = Instant::now();
    loop {
        let r = tokio::time::timeout(Duration::from_millis(300), client.get(&url)).await;
        if let Ok(r) = r {
            assert_eq!(r.status, 200, "the endpoint still serves: {}", r.text());
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "no answer");
    }
}

/// Every endpoint ejected: kaname sends to all of them anyway (panic mode,
/// as Envoy) rather than failing every request, and says so in a log line
/// and the `kaname_upstream_panic_mode` gauge.
#[tokio::test]
async fn every_endpoint_ejected_is_panic_mode_and_traffic_still_flows() {
    let failing = Arc::new(AtomicBool::new(true));
    let script = |f: Arc<AtomicBool>| {
        move |_| {
            if f.load(Ordering::SeqCst) {
                Act::Status(500)
            } else {
                Act::Ok
            }
        }
    };
    let a = ScriptedUpstream::start("a", script(failing.clone())).await;
    let b = ScriptedUpstream::start("b", script(failing.clone())).await;
    let outlier = "    load_balancing: round_robin
    outlier_detection: { consecutive_failures: 1, eject_for: 60s, max_ejected_percent: 100 }";
    let unused = "  unused:\n    retry: { attempts: 2 }\n";
    let k = Kaname::start(&config(&[a.addr, b.addr], outlier, "", unused)).await;
    let port = k.port("main");
    let client = HttpClient::http1();
    let url = format!("http://127.0.0.1:{port}/x");
    let panic_gauge = r#"kaname_upstream_panic_mode{upstream="up"}"#;
    assert_eq!(metric(&k, panic_gauge).await, 0.0);
    for _ in 0..2 {
        assert_eq!(client.get(&url).await.status, 500);
    }
    assert_eq!((a.hits(), b.hits()), (1, 1));
    let ejections = metric(&k, r#"kaname_upstream_ejections_total{upstream="up"}"#).await;
    assert_eq!(ejections, 2.0, "both endpoints ejected");

    failing.store(false, Ordering::SeqCst);
    for _ in 0..4 {
        let res = client.get(&url).await;
        assert_eq!(res.status, 200, "panic mode still sends: {}", res.text());
    }
    assert_eq!(
        a.hits() + b.hits(),
        6,
        "both ejected endpoints still got traffic"
    );
    assert_eq!(metric(&k, panic_gauge).await, 1.0);
    assert!(
        k.stderr().contains("panic mode"),
        "no panic-mode log line:\n{}",
        k.stderr()
    );
}

/// The route `timeout` bounds the whole exchange, retries included: a
/// hanging upstream with 5 attempts of 300 ms each is cut at the route's
/// 500 ms with a 504, after at most two tries.
#[tokio::test]
async fn route_timeout_bounds_all_retries() {
    let up = ScriptedUpstream::start("hangs", |_| Act::Hang).await;
    let yaml = format!(
        "listeners:
  main:
    listen: 127.0.0.1:0
    routes:
      - upstream: up
        timeout: 500ms
        filters: [retries]
upstreams:
  up:
    endpoints: [{}]
filters:
  retries:
    retry:
      attempts: 5
      retry_on: [timeout]
      per_try_timeout: 300ms
      backoff: {{ base: 1ms, max: 5ms }}
",
        up.addr
    );
    let k = Kaname::start(&yaml).await;
    let port = k.port("main");
    let started = Instant::now();
    let res = HttpClient::http1()
        .get(&format!("http://127.0.0.1:{port}/x"))
        .await;
    let took = started.elapsed();
    res.assert_kaname_error(504, "upstream_timeout");
    assert!(
        took >= Duration::from_millis(500),
        "cut before the route timeout: {took:?}"
    );
    assert!(
        took < Duration::from_millis(1400),
        "five tries of 300 ms ran past the 500 ms route timeout: {took:?}"
    );
    assert!(
        (1..=2).contains(&up.hits()),
        "tries after the route timeout: {}",
        up.hits()
    );
}

/// An upstream for the replay-buffer test: each request carries `x-id`;
/// the first try of an id is read whole, held until `first_tries` first
/// tries have arrived whole (so they are all in flight at once), then
/// answered 503; any later try of the id gets 200. Records the body length
/// of every try, by id.
struct FirstTryFails {
    addr: SocketAddr,
    tries: Arc<std::sync::Mutex<std::collections::HashMap<String, Vec<usize>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FirstTryFails {
    async fn start(first_tries: usize) -> Self {
        use http_body_util::BodyExt;
        let listener = bind_loopback("upstream").await;
        let addr = listener.local_addr().expect("addr");
        let tries: Arc<std::sync::Mutex<std::collections::HashMap<String, Vec<usize>>>> =
            Arc::default();
        let (arrived, _) = tokio::sync::watch::channel(0usize);
        let arrived = Arc::new(arrived);
        let state = (tries.clone(), arrived);
        let task = accept_each(listener, move |stream| {
            let (tries, arrived) = state.clone();
            async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let (tries, arrived) = (tries.clone(), arrived.clone());
                    async move {
                        let id = req
                            .headers()
                            .get("x-id")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_string();
                        let len = match req.into_body().collect().await {
                            Ok(c) => c.to_bytes().len(),
                            Err(_) => 0,
                        };
                        let first = {
                            let mut t = tries.lock().expect("lock");
                            let seen = t.entry(id).or_default();
                            seen.push(len);
                            seen.len() == 1
                        };
                        let status = if first {
                            arrived.send_modify(|n| *n += 1);
                            let mut rx = arrived.subscribe();
                            let all = rx.wait_for(|n| *n % first_tries == 0);
                            let _ = tokio::time::timeout(Duration::from_secs(20), all).await;
                            503
                        } else {
                            200
                        };
                        let mut res = http::Response::new(full(Bytes::new()));
                        *res.status_mut() = http::StatusCode::from_u16(status).expect("status");
                        Ok::<_, std::convert::Infallible>(res)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
            }
        });
        FirstTryFails { addr, tries, task }
    }
}

impl Drop for FirstTryFails {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// limits.md `replay_buffer` (issue 18): with `max_body_bytes: 1GiB`, 20
/// concurrent 50 MiB POSTs made kaname hold 1.4 GB of replay copies. Now
/// the copies of all requests share one pool: with `max_body_bytes: 8MiB`
/// and `max_buffered_bytes: 16MiB`, 6 concurrent 4 MiB POSTs whose first
/// tries all fail (and are all in flight at once, see `FirstTryFails`):
/// at most 4 copies fit, so at most 4 are retried (200) and the others are
/// sent once, their first try's 503 standing, each refusal counted. A body
/// is refused only when the pool would pass 16 MiB, which 4 bodies of 4 MiB
/// never do, so refusals stop once 4 copies are left; usually exactly 4
/// are retried, 3 when two bodies hit the full pool at the same moment (both
/// are refused). The copies go back when the requests finish: a second
/// round is served the same way. kaname's RSS stays far below what the
/// uncapped copies would need.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_copies_are_bounded_across_requests() {
    const POSTS: usize = 6;
    const SIZE: usize = 4 << 20;
    let up = FirstTryFails::start(POSTS).await;
    let retry = "  retries:
    retry:
      attempts: 2
      retry_on: [503]
      methods: [POST]
      backoff: { base: 1ms, max: 5ms }
      budget: { ratio: 1.0, min_per_second: 100 }
      max_body_bytes: 8MiB
      max_buffered_bytes: 16MiB
";
    let k = Kaname::start(&config(&[up.addr], "", "retries", retry)).await;
    let port = k.port("main");
    let client = HttpClient::http1();
    let url = format!("http://127.0.0.1:{port}/upload");
    let reset = k.reset_peak_rss();
    let rss_before = k.rss_kib();
    let mut refused_total = 0;
    for round in 0..2 {
        let posts = (0..POSTS).map(|i| {
            let body = Bytes::from(vec![b'a' + i as u8; SIZE]);
            let req = Request::post(&url)
                .header("x-id", format!("{round}-{i}"))
                .body(full(body))
                .expect("request");
            client.send(req)
        });
        let statuses: Vec<u16> = futures_util::future::join_all(posts)
            .await
            .iter()
            .map(|r| r.status.as_u16())
            .collect();
        let tries = up.tries.lock().expect("lock").clone();
        let mut retried = 0;
        for (i, status) in statuses.iter().enumerate() {
            let seen = &tries[&format!("{round}-{i}")];
            assert!(
                seen.iter().all(|n| *n == SIZE),
                "round {round} post {i}: {seen:?}"
            );
            match (status, seen.len()) {
                (200, 2) => retried += 1,
                (503, 1) => {}
                other => panic!("round {round} post {i}: (status, tries) {other:?}"),
            }
        }
        println!("round {round}: {retried} of {POSTS} retried, statuses {statuses:?}");
        assert!(
            (1..=4).contains(&retried),
            "round {round}: {retried} retried; 16 MiB holds at most four 4 MiB copies"
        );
        refused_total += POSTS - retried;
        let refused = metric(&k, r#"kaname_limits_hit_total{limit="replay_buffer"}"#).await;
        assert_eq!(
            refused, refused_total as f64,
            "round {round}: refusals counted"
        );
    }
    let (rss, peak) = (k.rss_kib(), k.peak_rss_kib());
    println!("kaname VmRSS {rss_before} -> {rss} KiB, peak {peak} KiB (peak reset: {reset})");
    assert!(peak < 150 * 1024, "kaname peaked at {peak} KiB");
}
