//! The pipeline in-process, on tokio's paused clock: a whole sidecar from
//! the library (`kaname::Sidecar`), real sockets on 127.0.0.1, and time
//! that moves only when nothing else can (so a 2 s route timeout takes no
//! wall-clock time, and a breaker's `open_for` passes with one `advance`).
//! Every timer on the request path is tokio's, which is what makes this
//! possible.

mod support;

use std::time::Duration;

use support::{endpoints_yaml, HttpClient, TestUpstream};
use tokio::time::Instant;

/// A sidecar with one listener `main` on a free port and the given route
/// settings and filters, in front of `up`.
async fn sidecar(up: &TestUpstream, route: &str, filters: &str) -> (kaname::Sidecar, String) {
    let yaml = format!(
        "admin: {{ listen: 127.0.0.1:0 }}
listeners:
  main:
    listen: 127.0.0.1:0
    routes:
      - match: {{ path_prefix: / }}
        upstream: up
{route}
upstreams:
  up:
    endpoints: {}
{filters}",
        endpoints_yaml(&[up.addr])
    );
    let sidecar = kaname::Sidecar::start(&yaml).await.expect("sidecar starts");
    let addr = sidecar.addrs().await.listeners["main"];
    (sidecar, format!("http://{addr}"))
}

#[tokio::test(start_paused = true)]
async fn a_route_timeout_answers_504_at_its_deadline() {
    let up = TestUpstream::slow("up", Duration::from_secs(60)).await;
    let (sidecar, url) = sidecar(&up, "        timeout: 2s", "").await;
    let started = Instant::now();
    let resp = HttpClient::http1().get(&format!("{url}/slow")).await;
    resp.assert_kaname_error(504, "upstream_timeout");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(3),
        "answered after {took:?} of tokio time"
    );
    sidecar.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn each_try_is_cut_by_per_try_timeout_and_retried() {
    let up = TestUpstream::slow("up", Duration::from_secs(60)).await;
    let filters = "filters:
  retries:
    retry: { attempts: 3, retry_on: [timeout], per_try_timeout: 500ms, backoff: { base: 10ms, max: 20ms } }
";
    let (sidecar, url) = sidecar(&up, "        filters: [retries]", filters).await;
    let started = Instant::now();
    let resp = HttpClient::http1().get(&format!("{url}/slow")).await;
    resp.assert_kaname_error(504, "upstream_timeout");
    let took = started.elapsed();
    // Three tries of 500 ms and two backoffs of at most 20 ms.
    assert!(
        took >= Duration::from_millis(1500) && took <= Duration::from_millis(1600),
        "answered after {took:?} of tokio time"
    );
    assert_eq!(up.hits(), 3, "every try reached the upstream");
    sidecar.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn an_open_breaker_closes_after_open_for() {
    let up = TestUpstream::start("up").await;
    let filters = "filters:
  breaker:
    circuit_breaker: { consecutive_failures: 2, open_for: 10s, failure_on: [5xx] }
";
    let (sidecar, url) = sidecar(&up, "        filters: [breaker]", filters).await;
    let client = HttpClient::http1();
    for _ in 0..2 {
        let resp = client.get(&format!("{url}/fail?status=503")).await;
        assert_eq!(resp.status, 503);
        assert_eq!(resp.header("kaname-error"), None, "the upstream's own 503");
    }
    let resp = client.get(&format!("{url}/ok")).await;
    resp.assert_kaname_error(503, "circuit_open");
    assert_eq!(up.hits(), 2, "an open circuit sends nothing");
    tokio::time::advance(Duration::from_secs(10)).await;
    let resp = client.get(&format!("{url}/ok")).await;
    assert_eq!(
        resp.status,
        200,
        "half-open lets a probe through: {}",
        resp.text()
    );
    let resp = client.get(&format!("{url}/ok")).await;
    assert_eq!(resp.status, 200, "and its success closes the circuit");
    assert_eq!(up.hits(), 4);
    sidecar.shutdown().await;
}

#[tokio::test]
async fn a_sidecar_reports_the_ports_it_bound() {
    let up = TestUpstream::start("up").await;
    let (sidecar, url) = sidecar(&up, "", "").await;
    let addrs = sidecar.addrs().await;
    assert_ne!(addrs.admin.port(), 0);
    assert_ne!(addrs.listeners["main"].port(), 0);
    let client = HttpClient::http1();
    let ready = client.get(&format!("http://{}/ready", addrs.admin)).await;
    assert_eq!(ready.status, 200);
    let resp = client.get(&format!("{url}/hello")).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("x-upstream"), Some("up"));
    sidecar.shutdown().await;
}
