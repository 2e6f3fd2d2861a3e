//! `/metrics` checked with real Prometheus tooling (Debian package
//! `prometheus`; `.ci/run` installs it): `promtool check metrics` after
//! mixed traffic through every filter kind, a real Prometheus server
//! scraping kaname and answering queries, the shipped rules and their unit
//! tests, and series that do not grow with traffic.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use http::Request;
use support::{full, ClosedPort, HttpClient, Kaname, TestUpstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const JWT_SECRET: &str = "observability-test-secret-of-32-bytes!";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn promtool(args: &[&str], stdin: Option<&str>) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool (Debian package prometheus; .ci/run installs it)");
    {
        use std::io::Write;
        let mut pipe = child.stdin.take().expect("stdin");
        if let Some(input) = stdin {
            pipe.write_all(input.as_bytes())
                .expect("write promtool stdin");
        }
    }
    let out = child.wait_with_output().expect("promtool output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

async fn scrape(kaname: &Kaname) -> String {
    let resp = HttpClient::http1().get(&kaname.admin_url("/metrics")).await;
    assert_eq!(resp.status, 200);
    assert!(
        resp.header("content-type")
            .is_some_and(|c| c.starts_with("text/plain; version=0.0.4")),
        "{:?}",
        resp.header("content-type")
    );
    resp.text()
}

fn hs256_token(sub: &str) -> String {
    let claims = serde_json::json!({ "sub": sub, "exp": 4_000_000_000u64 });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .expect("sign token")
}

// === The catalogue of metrics.md ===

/// (family, type, label names) as the contract lists them.
const CATALOGUE: &[(&str, &str, &[&str])] = &[
    (
        "kaname_requests_total",
        "counter",
        &["listener", "route", "upstream", "method", "code"],
    ),
    (
        "kaname_grpc_requests_total",
        "counter",
        &["listener", "route", "upstream", "grpc_status"],
    ),
    (
        "kaname_request_duration_seconds",
        "histogram",
        &["listener", "route", "upstream"],
    ),
    ("kaname_requests_in_flight", "gauge", &["listener"]),
    (
        "kaname_upstream_attempts_total",
        "counter",
        &["upstream", "outcome"],
    ),
    (
        "kaname_upstream_attempt_duration_seconds",
        "histogram",
        &["upstream"],
    ),
    ("kaname_retries_total", "counter", &["route", "upstream"]),
    (
        "kaname_retry_budget_exhausted_total",
        "counter",
        &["route", "upstream"],
    ),
    (
        "kaname_circuit_breaker_state",
        "gauge",
        &["filter", "upstream", "state"],
    ),
    (
        "kaname_circuit_breaker_transitions_total",
        "counter",
        &["filter", "upstream", "to"],
    ),
    (
        "kaname_circuit_breaker_rejected_total",
        "counter",
        &["filter", "upstream"],
    ),
    ("kaname_rate_limited_total", "counter", &["filter", "route"]),
    ("kaname_concurrency_in_flight", "gauge", &["filter"]),
    ("kaname_queue_depth", "gauge", &["filter"]),
    ("kaname_shed_total", "counter", &["filter", "priority"]),
    (
        "kaname_jwt_validations_total",
        "counter",
        &["filter", "result"],
    ),
    (
        "kaname_jwks_refreshes_total",
        "counter",
        &["filter", "result"],
    ),
    (
        "kaname_upstream_endpoint_healthy",
        "gauge",
        &["upstream", "endpoint"],
    ),
    ("kaname_upstream_ejections_total", "counter", &["upstream"]),
    ("kaname_upstream_panic_mode", "gauge", &["upstream"]),
    ("kaname_connections_open", "gauge", &["listener"]),
    (
        "kaname_tls_handshake_failures_total",
        "counter",
        &["listener"],
    ),
    (
        "kaname_tls_cert_expiry_timestamp_seconds",
        "gauge",
        &["listener"],
    ),
    ("kaname_config_reloads_total", "counter", &["result"]),
    (
        "kaname_config_last_reload_success_timestamp_seconds",
        "gauge",
        &[],
    ),
    ("kaname_build_info", "gauge", &["version"]),
];

/// Families that need what the mixed-traffic config has no use for (gRPC
/// calls, a TLS listener): checked when present, not required.
const OPTIONAL: &[&str] = &[
    "kaname_grpc_requests_total",
    "kaname_tls_handshake_failures_total",
    "kaname_tls_cert_expiry_timestamp_seconds",
];

/// One sample line: name, labels in order, value.
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
}

fn samples(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|line| {
            let (name, rest) = match line.find(['{', ' ']) {
                Some(i) => line.split_at(i),
                None => (line, ""),
            };
            let mut labels = Vec::new();
            if let Some(inner) = rest.strip_prefix('{') {
                let inner = &inner[..inner.rfind('}').expect("closing brace")];
                // Label values here never hold `",` (they are config names).
                for pair in inner.split("\",").filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once("=\"").expect("label pair");
                    labels.push((k.to_string(), v.trim_end_matches('"').to_string()));
                }
            }
            Sample {
                name: name.to_string(),
                labels,
            }
        })
        .collect()
}

/// Every required family has HELP and TYPE once, the contract's type, and
/// exactly the contract's label names; label values are config names.
fn assert_catalogue(text: &str, config_names: &BTreeSet<&str>) {
    let all = samples(text);
    for (family, kind, labels) in CATALOGUE {
        let help = text
            .lines()
            .filter(|l| l.starts_with(&format!("# HELP {family} ")))
            .count();
        let types: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with(&format!("# TYPE {family} ")))
            .collect();
        if help == 0 && OPTIONAL.contains(family) {
            continue;
        }
        assert_eq!(help, 1, "# HELP {family}: {help} lines");
        assert_eq!(types, [format!("# TYPE {family} {kind}")], "{family}");
        let own: Vec<&Sample> = all
            .iter()
            .filter(|s| {
                s.name == *family
                    || (*kind == "histogram"
                        && ["_bucket", "_sum", "_count"]
                            .iter()
                            .any(|suffix| s.name == format!("{family}{suffix}")))
            })
            .collect();
        assert!(!own.is_empty(), "{family}: HELP and TYPE but no sample");
        for s in own {
            let mut want: BTreeSet<&str> = labels.iter().copied().collect();
            if s.name.ends_with("_bucket") {
                want.insert("le");
            }
            let got: BTreeSet<&str> = s.labels.iter().map(|(k, _)| k.as_str()).collect();
            assert_eq!(got, want, "labels of {}", s.name);
            for (k, v) in &s.labels {
                match k.as_str() {
                    "listener" | "route" | "upstream" | "filter" => assert!(
                        v.is_empty() || config_names.contains(v.as_str()),
                        "{}: {k}={v:?} is not a name from the config",
                        s.name
                    ),
                    "code" => assert!(v.len() == 3 && v.parse::<u16>().is_ok(), "code {v:?}"),
                    "method" => assert!(
                        [
                            "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE",
                            "PATCH", "OTHER"
                        ]
                        .contains(&v.as_str()),
                        "method {v:?}"
                    ),
                    "endpoint" => assert!(v.parse::<SocketAddr>().is_ok(), "endpoint {v:?}"),
                    _ => {}
                }
            }
        }
    }
    for process in [
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
        "process_start_time_seconds",
    ] {
        assert!(
            text.contains(&format!("# TYPE {process} ")),
            "no {process} family"
        );
    }
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        support::metric_value(text, &format!("kaname_build_info{{version=\"{version}\"}}")),
        Some(1.0)
    );
}

// === 1. promtool check metrics after mixed traffic ===

struct MixedSetup {
    kaname: Kaname,
    port: u16,
    _echo: TestUpstream,
    _slow: TestUpstream,
    _closed: ClosedPort,
    _jwks_closed: ClosedPort,
}

/// One listener, one route per outcome and per filter kind.
async fn mixed_setup() -> MixedSetup {
    let echo = TestUpstream::start("echo").await;
    let slow = TestUpstream::slow("slow", Duration::from_millis(400)).await;
    // Bound, never listening, while the setup lives: connections refused.
    let closed = ClosedPort::new(); // 502
    let jwks_closed = ClosedPort::new();
    let config = format!(
        "listeners:
  main:
    listen: 127.0.0.1:0
    protocol: auto
    routes:
      - name: ok
        match: {{ path_prefix: /ok/ }}
        upstream: echo
      - name: down
        match: {{ path_prefix: /down/ }}
        upstream: down
      - name: slow
        match: {{ path_prefix: /slow/ }}
        upstream: slow
        timeout: 100ms
      - name: auth
        match: {{ path_prefix: /auth/ }}
        upstream: echo
        filters: [auth]
      - name: remote-auth
        match: {{ path_prefix: /remote-auth/ }}
        upstream: echo
        filters: [remote-auth]
      - name: limited
        match: {{ path_prefix: /limited/ }}
        upstream: echo
        filters: [limit]
      - name: retried
        match: {{ path_prefix: /retried/ }}
        upstream: flaky
        filters: [breaker, retries]
      - name: protected
        match: {{ path_prefix: /protected/ }}
        upstream: slow
        filters: [protect]
upstreams:
  echo:
    endpoints: [{echo}]
    health_check: {{ path: /healthz, interval: 1s }}
    outlier_detection: {{ consecutive_failures: 5, eject_for: 1s }}
  flaky:
    endpoints: [{echo}]
  slow:
    endpoints: [{slow}]
  down:
    endpoints: [{closed}]
    connect_timeout: 200ms
filters:
  auth:
    jwt:
      algorithms: [HS256]
      secret: ${{JWT_SECRET}}
  remote-auth:
    jwt:
      algorithms: [RS256]
      jwks: {{ url: http://{jwks_closed}/jwks.json, refresh: 1s }}
  limit:
    rate_limit:
      key: global
      rate: 1/h
      burst: 2
  retries:
    retry:
      attempts: 3
      retry_on: [503]
      methods: idempotent
      backoff: {{ base: 1ms, max: 2ms }}
      budget: {{ ratio: 0.1, min_per_second: 1 }}
  breaker:
    circuit_breaker:
      consecutive_failures: 3
      open_for: 1m
  protect:
    concurrency_limit:
      max_in_flight: 1
      max_queue: 1
      queue_timeout: 50ms
",
        echo = echo.addr,
        slow = slow.addr,
        closed = closed.addr,
        jwks_closed = jwks_closed.addr,
    );
    let kaname = Kaname::start_with_env(&config, &[("JWT_SECRET", JWT_SECRET)]).await;
    let port = kaname.port("main");
    MixedSetup {
        kaname,
        port,
        _echo: echo,
        _slow: slow,
        _closed: closed,
        _jwks_closed: jwks_closed,
    }
}

async fn status_of(client: &HttpClient, req: Request<support::client::Body>) -> u16 {
    client.send(req).await.status.as_u16()
}

fn get_with(url: &str, headers: &[(&str, &str)]) -> Request<support::client::Body> {
    let mut b = Request::get(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(support::empty()).expect("request")
}

/// Sends every kind of outcome; asserts each answer so the traffic is what
/// the metrics are expected to show.
async fn mixed_traffic(port: u16) {
    let client = HttpClient::http1();
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
    for i in 0..5 {
        assert_eq!(
            status_of(&client, get_with(&url(&format!("/ok/{i}")), &[])).await,
            200
        );
    }
    let post = Request::post(url("/ok/form"))
        .body(full("a=1"))
        .expect("request");
    assert_eq!(status_of(&client, post).await, 200);
    let other = Request::builder()
        .method("PURGE")
        .uri(url("/ok/purge"))
        .body(support::empty())
        .expect("request");
    assert_eq!(status_of(&client, other).await, 200);
    client
        .get(&url("/nowhere"))
        .await
        .assert_kaname_error(404, "no_route");
    client
        .get(&url("/down/x"))
        .await
        .assert_kaname_error(502, "upstream_unavailable");
    client
        .get(&url("/slow/x"))
        .await
        .assert_kaname_error(504, "upstream_timeout");
    assert_eq!(
        status_of(&client, get_with(&url("/ok/x?status=500"), &[])).await,
        500
    );

    // jwt: missing, malformed, valid.
    client
        .get(&url("/auth/x"))
        .await
        .assert_kaname_error(401, "unauthenticated");
    let bad = get_with(&url("/auth/x"), &[("authorization", "Bearer not.a.token")]);
    assert_eq!(status_of(&client, bad).await, 401);
    let token = format!("Bearer {}", hs256_token("alice"));
    let good = get_with(&url("/auth/x"), &[("authorization", &token)]);
    assert_eq!(status_of(&client, good).await, 200);
    // Its JWKS cannot be fetched: no key, the token is refused.
    let remote = get_with(&url("/remote-auth/x"), &[("authorization", &token)]);
    assert_ne!(status_of(&client, remote).await, 200);

    // rate_limit: a burst of 2, then 429.
    let limited: Vec<u16> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(status_of(&client, get_with(&url("/limited/x"), &[])).await);
        }
        v
    };
    assert_eq!(limited, [200, 200, 429]);

    // retry + circuit_breaker: every try fails with 503, retried, until the
    // breaker opens (3 failures in a row) and refuses.
    let mut statuses = BTreeSet::new();
    for _ in 0..4 {
        let resp = client.get(&url("/retried/x?status=503")).await;
        statuses.insert((
            resp.status.as_u16(),
            resp.header("kaname-error").map(str::to_owned),
        ));
    }
    assert!(
        statuses.contains(&(503, Some("circuit_open".to_string()))),
        "{statuses:?}"
    );

    // concurrency_limit: 1 inside, 1 queued (times out after 50ms), the
    // others shed at once.
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let client = client.clone();
        let u = url("/protected/x");
        tasks.push(tokio::spawn(async move { client.get(&u).await }));
    }
    let mut shed = 0;
    for t in tasks {
        let resp = t.await.expect("task");
        if resp.header("kaname-error") == Some("overloaded") {
            shed += 1;
        }
    }
    assert!(shed >= 2, "{shed} of 4 shed");
}

#[tokio::test]
async fn promtool_finds_nothing_wrong_after_mixed_traffic() {
    let setup = mixed_setup().await;
    mixed_traffic(setup.port).await;
    // A reload, so config_reloads_total has a series.
    let reload = HttpClient::http1()
        .send(
            Request::post(setup.kaname.admin_url("/reload"))
                .body(support::empty())
                .expect("request"),
        )
        .await;
    assert_eq!(reload.status, 200, "{}", reload.text());

    let text = scrape(&setup.kaname).await;
    let (ok, output) = promtool(&["check", "metrics"], Some(&text));
    assert!(
        ok && output.trim().is_empty(),
        "promtool check metrics:\n{output}\n---\n{text}"
    );

    let names: BTreeSet<&str> = [
        "main",
        "ok",
        "down",
        "slow",
        "auth",
        "remote-auth",
        "limited",
        "retried",
        "protected",
        "echo",
        "flaky",
        "limit",
        "retries",
        "breaker",
        "protect",
    ]
    .into_iter()
    .collect();
    assert_catalogue(&text, &names);

    // The traffic shows up with the labels it should have.
    let v = |sel: &str| support::metric_value(&text, sel).unwrap_or(0.0);
    let req = |route: &str, upstream: &str, method: &str, code: &str| {
        v(&format!(
            "kaname_requests_total{{listener=\"main\",route=\"{route}\",upstream=\"{upstream}\",method=\"{method}\",code=\"{code}\"}}"
        ))
    };
    assert_eq!(req("ok", "echo", "GET", "200"), 5.0);
    assert_eq!(req("ok", "echo", "POST", "200"), 1.0);
    assert_eq!(req("ok", "echo", "OTHER", "200"), 1.0);
    assert_eq!(req("", "", "GET", "404"), 1.0);
    assert_eq!(req("down", "down", "GET", "502"), 1.0);
    assert_eq!(req("slow", "slow", "GET", "504"), 1.0);
    assert_eq!(req("limited", "echo", "GET", "429"), 1.0);
    assert_eq!(
        v("kaname_rate_limited_total{filter=\"limit\",route=\"limited\"}"),
        1.0
    );
    assert!(v("kaname_retries_total{route=\"retried\",upstream=\"flaky\"}") >= 1.0);
    assert!(v("kaname_jwt_validations_total{filter=\"auth\",result=\"missing\"}") >= 1.0);
    assert!(v("kaname_jwt_validations_total{filter=\"auth\",result=\"ok\"}") >= 1.0);
    assert!(v("kaname_jwks_refreshes_total{filter=\"remote-auth\",result=\"failure\"}") >= 1.0);
    assert_eq!(
        v("kaname_circuit_breaker_state{filter=\"breaker\",upstream=\"flaky\",state=\"open\"}"),
        1.0
    );
    assert!(
        v("kaname_circuit_breaker_rejected_total{filter=\"breaker\",upstream=\"flaky\"}") >= 1.0
    );
    assert!(
        v("kaname_upstream_attempts_total{upstream=\"down\",outcome=\"connect_failure\"}") >= 1.0
    );
    assert_eq!(v("kaname_config_reloads_total{result=\"success\"}"), 1.0);
    // Present; its value depends on when kaname saw the clients close.
    assert!(support::metric_value(&text, "kaname_connections_open{listener=\"main\"}").is_some());
    // Nothing taken from the requests: no path, token or query as a label.
    for leaked in ["/ok/", "nowhere", "status=", "alice", "Bearer", "PURGE"] {
        assert!(!text.contains(leaked), "{leaked:?} appears in /metrics");
    }
}

// === 2. A real Prometheus server scraping kaname ===

/// `prometheus` on a loopback port the kernel picks, with its data in a
/// tempdir; killed on drop.
struct Prometheus {
    child: std::process::Child,
    url: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    async fn start(scrape_target: SocketAddr, rules: &[PathBuf]) -> Prometheus {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut rule_files = String::new();
        for r in rules {
            let name = r.file_name().expect("rules file name");
            std::fs::copy(r, dir.path().join(name)).expect("copy rules");
            rule_files.push_str(&format!("  - {}\n", name.to_string_lossy()));
        }
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n{rule_files}\
             scrape_configs:\n  - job_name: kaname\n    static_configs:\n      - targets: [\"{scrape_target}\"]\n"
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write prometheus.yml");
        let log = dir.path().join("prometheus.log");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            // The kernel picks the port; Prometheus logs the one it got.
            .arg("--web.listen-address=127.0.0.1:0")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start prometheus (Debian package prometheus; .ci/run installs it)");
        let mut p = Prometheus {
            child,
            url: String::new(),
            log,
            _dir: dir,
        };
        p.wait_ready().await;
        p
    }

    /// Waits for the log line naming the bound address, then `/-/ready`.
    async fn wait_ready(&mut self) {
        let client = HttpClient::http1();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!("prometheus exited with {status}:\n{}", self.logs());
            }
            if self.url.is_empty() {
                // `msg="Listening on" address=127.0.0.1:PORT`
                let logs = self.logs();
                let bound = logs
                    .lines()
                    .filter(|l| l.contains("msg=\"Listening on\""))
                    .find_map(|l| l.split("address=").nth(1))
                    .and_then(|a| a.split_whitespace().next())
                    .and_then(|a| a.parse::<SocketAddr>().ok());
                match bound {
                    Some(addr) => self.url = format!("http://{addr}"),
                    None => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                }
            }
            let url = format!("{}/-/ready", self.url);
            if let Ok(r) = client.try_get(&url, Duration::from_secs(1)).await {
                if r.status == 200 {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("prometheus not ready within 30s:\n{}", self.logs());
    }

    fn logs(&self) -> String {
        support::read_lossy(&self.log)
    }

    async fn api(&self, path_and_query: &str) -> serde_json::Value {
        let resp = HttpClient::http1()
            .get(&format!("{}{path_and_query}", self.url))
            .await;
        let body = resp.json();
        assert_eq!(resp.status, 200, "{path_and_query}: {body}");
        body
    }

    /// `/api/v1/query` of `expr`: the result vector.
    async fn query(&self, expr: &str) -> Vec<serde_json::Value> {
        let body = self
            .api(&format!("/api/v1/query?query={}", url_encode(expr)))
            .await;
        assert_eq!(body["status"], "success", "{expr}: {body}");
        body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- prometheus logs ----\n{}", self.logs());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn labels_of(series: &serde_json::Value) -> BTreeMap<String, String> {
    series["metric"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

fn value_of(series: &serde_json::Value) -> f64 {
    series["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

#[tokio::test]
async fn a_real_prometheus_scrapes_and_queries_kaname() {
    let echo = TestUpstream::start("echo").await;
    let kaname = Kaname::start(&format!(
        "listeners:
  main:
    listen: 127.0.0.1:0
    routes:
      - name: api
        match: {{ path_prefix: /api/ }}
        upstream: echo
upstreams:
  echo:
    endpoints: [{}]
",
        echo.addr
    ))
    .await;
    let port = kaname.port("main");
    let rules = repo().join("examples/prometheus/kaname-rules.yml");
    let prom = Prometheus::start(kaname.admin(), &[rules]).await;

    // Traffic for as long as the polling below runs (bounded in time and
    // count), so rate() over a few seconds is never zero.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let traffic = tokio::spawn(async move {
        let client = HttpClient::http1();
        let start = Instant::now();
        let mut sent = 0u32;
        while !*stop_rx.borrow() && sent < 20_000 && start.elapsed() < Duration::from_secs(45) {
            let resp = client
                .get(&format!("http://127.0.0.1:{port}/api/{}", sent % 7))
                .await;
            assert_eq!(resp.status, 200);
            sent += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        sent
    });

    let rate_expr =
        "sum by (listener, route, upstream, method, code) (rate(kaname_requests_total[5s]))";
    let p99_expr =
        "histogram_quantile(0.99, sum by (le, route) (rate(kaname_request_duration_seconds_bucket[5s])))";
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut rate, mut p99) = (None, None);
    while Instant::now() < deadline && (rate.is_none() || p99.is_none()) {
        if rate.is_none() {
            rate = prom.query(rate_expr).await.into_iter().find(|s| {
                let l = labels_of(s);
                l.get("listener").map(String::as_str) == Some("main")
                    && l.get("route").map(String::as_str) == Some("api")
                    && l.get("upstream").map(String::as_str) == Some("echo")
                    && l.get("method").map(String::as_str) == Some("GET")
                    && l.get("code").map(String::as_str) == Some("200")
                    && value_of(s) > 0.0
            });
        }
        if p99.is_none() {
            p99 = prom.query(p99_expr).await.into_iter().find(|s| {
                labels_of(s).get("route").map(String::as_str) == Some("api")
                    && value_of(s).is_finite()
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let rate = rate.unwrap_or_else(|| panic!("no rate() series for route api within 30s"));
    let p99 = p99.unwrap_or_else(|| panic!("no p99 for route api within 30s"));
    let p99 = value_of(&p99);
    assert!(p99 > 0.0 && p99 <= 10.0, "p99 {p99}");
    assert!(value_of(&rate) > 0.0);

    // The scrape itself is healthy, and process_* and build info came along.
    let up = prom.query("up{job=\"kaname\"}").await;
    assert_eq!(up.len(), 1);
    assert_eq!(value_of(&up[0]), 1.0);
    assert_eq!(prom.query("kaname_build_info").await.len(), 1);
    assert!(!prom.query("process_resident_memory_bytes").await.is_empty());

    // Every query of the shipped dashboard is valid PromQL and the traffic
    // panel has data.
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("examples/grafana/kaname-dashboard.json"))
            .expect("read dashboard"),
    )
    .expect("dashboard JSON");
    let mut exprs = 0;
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("expr");
            let expr = expr
                .replace("$__rate_interval", "5s")
                .replace("$job", ".*")
                .replace("$instance", ".*")
                .replace("$route", ".*");
            let result = prom.query(&expr).await;
            if panel["title"] == "Requests/s by route" {
                assert!(!result.is_empty(), "{expr}: no data");
            }
            exprs += 1;
        }
    }
    assert!(exprs >= 20, "{exprs} dashboard queries");

    // The shipped rules loaded and evaluate without error against real data.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let body = prom.api("/api/v1/rules").await;
        let rules: Vec<&serde_json::Value> = body["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().into_iter().flatten())
            .collect();
        assert!(rules.len() >= 10, "{body}");
        let bad: Vec<_> = rules.iter().filter(|r| r["health"] == "err").collect();
        assert!(bad.is_empty(), "rules with errors: {bad:?}");
        if rules.iter().all(|r| r["health"] == "ok") {
            break;
        }
        assert!(Instant::now() < deadline, "rules not all evaluated: {body}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    stop_tx.send(true).expect("stop traffic");
    let sent = traffic.await.expect("traffic task");
    assert!(sent > 0);
}

// === 3. The shipped rules and configs pass promtool ===

#[test]
fn shipped_rules_and_scrape_configs_pass_promtool() {
    let dir = repo().join("examples/prometheus");
    let rules = dir.join("kaname-rules.yml");
    let (ok, out) = promtool(&["check", "rules", &rules.to_string_lossy()], None);
    assert!(ok && out.contains("SUCCESS"), "{out}");
    let tests = dir.join("kaname-rules.test.yml");
    let (ok, out) = promtool(&["test", "rules", &tests.to_string_lossy()], None);
    assert!(ok && out.contains("SUCCESS"), "{out}");
    let config = dir.join("prometheus.yml");
    let (ok, out) = promtool(&["check", "config", &config.to_string_lossy()], None);
    assert!(ok && !out.contains("WARNING"), "{out}");

    // compose's Prometheus finds the rules next to its config in the
    // container: rebuild that layout here.
    let tmp = tempfile::tempdir().expect("tempdir");
    std::fs::copy(
        repo().join("examples/compose/prometheus.yml"),
        tmp.path().join("prometheus.yml"),
    )
    .expect("copy");
    std::fs::copy(&rules, tmp.path().join("kaname-rules.yml")).expect("copy");
    let compose = tmp.path().join("prometheus.yml");
    let (ok, out) = promtool(&["check", "config", &compose.to_string_lossy()], None);
    assert!(ok && !out.contains("WARNING"), "{out}");
}

#[test]
fn promtool_test_rules_can_fail() {
    // The rules test above means something: a test expecting an alert that
    // the input cannot raise fails.
    let tmp = tempfile::tempdir().expect("tempdir");
    std::fs::copy(
        repo().join("examples/prometheus/kaname-rules.yml"),
        tmp.path().join("kaname-rules.yml"),
    )
    .expect("copy");
    let test = tmp.path().join("wrong.test.yml");
    std::fs::write(
        &test,
        "rule_files: [kaname-rules.yml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'kaname_circuit_breaker_state{filter=\"b\",upstream=\"u\",state=\"open\"}'
        values: '0x10'
    alert_rule_test:
      - eval_time: 5m
        alertname: KanameCircuitBreakerOpen
        exp_alerts:
          - exp_labels: { severity: warning, filter: b, upstream: u }
",
    )
    .expect("write");
    let (ok, out) = promtool(&["test", "rules", &test.to_string_lossy()], None);
    assert!(!ok && out.contains("FAILED"), "{out}");
}

// === 4. Series are bounded by the config, not by traffic ===

/// A raw HTTP/1.1 request from a chosen loopback source address (Linux
/// routes all of 127.0.0.0/8 to lo), so kaname sees many client IPs.
async fn get_from(source: [u8; 4], port: u16, path: &str, user: &str) -> u16 {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::from((source, 0)))
        .expect("bind source address");
    let mut stream = socket
        .connect(SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .expect("connect");
    let req = format!(
        "GET {path} HTTP/1.1\r\nhost: svc-{user}\r\nx-user-id: {user}\r\nx-forwarded-for: 10.9.{}.{}\r\nconnection: close\r\n\r\n",
        source[2], source[3]
    );
    stream.write_all(req.as_bytes()).await.expect("write");
    let mut resp = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut resp))
        .await
        .expect("response within 10s")
        .expect("read");
    let head = String::from_utf8_lossy(&resp);
    head.get(9..12)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad response {head:?}"))
}

/// `n` requests with distinct paths, query strings, user ids, hosts and
/// client addresses, 16 at a time; the mix of routes and codes is the same
/// in every round.
async fn hammer(port: u16, round: u32, n: u32) {
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        let id = round * 100_000 + i;
        let source = [127, 1 + (round as u8), (i / 250) as u8, (i % 250) as u8 + 1];
        let (path, want) = match i % 4 {
            0 | 1 => (format!("/api/item-{id}?q={id}&page={i}"), 200),
            2 => (format!("/api/item-{id}?status=503&t={id}"), 503),
            _ => (format!("/unrouted-{id}/x?y={id}"), 404),
        };
        let user = format!("user-{id}");
        set.spawn(async move {
            let got = get_from(source, port, &path, &user).await;
            assert_eq!(got, want, "{path}");
        });
        while set.len() >= 16 {
            set.join_next().await.expect("task").expect("request");
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "round {round} too slow"
        );
    }
    while let Some(r) = set.join_next().await {
        r.expect("request");
    }
}

fn series_lines(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            l.rsplit_once(' ')
                .map_or(l, |(series, _)| series)
                .to_string()
        })
        .collect()
}

#[tokio::test]
async fn series_do_not_grow_with_distinct_paths_users_and_clients() {
    let echo = TestUpstream::start("echo").await;
    let kaname = Kaname::start(&format!(
        "listeners:
  main:
    listen: 127.0.0.1:0
    routes:
      - name: api
        match: {{ path_prefix: /api/ }}
        upstream: echo
        filters: [per-user]
upstreams:
  echo:
    endpoints: [{}]
filters:
  per-user:
    rate_limit:
      key: header:x-user-id
      rate: 100/s
      burst: 100
      max_keys: 100000
",
        echo.addr
    ))
    .await;
    let port = kaname.port("main");

    hammer(port, 0, 1000).await;
    let first = series_lines(&scrape(&kaname).await);
    hammer(port, 1, 1000).await;
    let text = scrape(&kaname).await;
    let second = series_lines(&text);
    let new: Vec<&String> = second.difference(&first).collect();
    assert!(new.is_empty(), "series appeared in round 2: {new:?}");
    assert_eq!(first.len(), second.len());

    // The traffic was counted, under config names only.
    let ok = support::metric_value(
        &text,
        "kaname_requests_total{listener=\"main\",route=\"api\",upstream=\"echo\",method=\"GET\",code=\"200\"}",
    );
    assert_eq!(ok, Some(1000.0));
    for leaked in ["item-", "user-", "unrouted", "svc-", "127.1.", "10.9."] {
        assert!(!text.contains(leaked), "{leaked:?} appears in /metrics");
    }
}

/// The access log in JSON: emitted even when `log.level` is `warn` (its own
/// target), off with `access_log: false`, and turned on by a reload.
#[tokio::test]
async fn access_log_json_survives_level_warn_and_follows_reload() {
    let up = TestUpstream::start("echo").await;
    let routes = support::simple_config(&[up.addr]);
    let body =
        |on: bool| format!("log:\n  level: warn\n  format: json\n  access_log: {on}\n{routes}");
    let k = Kaname::start(&body(false)).await;
    let port = k.port("main");
    let client = HttpClient::http1();
    let quiet = client.get(&format!("http://127.0.0.1:{port}/quiet")).await;
    assert_eq!(quiet.status, 200);
    let quiet_id = quiet.header("x-request-id").expect("request id").to_owned();

    let tmp = k.config_path.with_extension("yaml.tmp");
    let yaml = support::config_file(&body(true));
    std::fs::write(&tmp, yaml).expect("write config");
    std::fs::rename(&tmp, &k.config_path).expect("rename config");
    let req = Request::post(k.admin_url("/reload"))
        .body(support::empty())
        .expect("POST /reload");
    let reload = client.send(req).await;
    assert_eq!(reload.status, 200, "reload: {}", reload.text());

    let loud = client
        .get(&format!("http://127.0.0.1:{port}/loud?x=1"))
        .await;
    assert_eq!(loud.status, 200);
    let loud_id = loud.header("x-request-id").expect("request id").to_owned();
    let logs = k.stderr();
    assert!(
        !logs.contains(&quiet_id),
        "access_log: false logged request {quiet_id}:\n{logs}"
    );
    let line: serde_json::Value = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["request_id"] == loud_id.as_str())
        .unwrap_or_else(|| panic!("no JSON access line for {loud_id} at level warn:\n{logs}"));
    assert_eq!(line["target"], "kaname::access", "{line}");
    assert_eq!(line["method"], "GET");
    assert_eq!(line["path"], "/loud");
    assert_eq!(line["status"], 200);
    assert_eq!(line["route"], "main-1", "{line}");
    assert_eq!(line["upstream"], "echo");
    assert_eq!(line["filter"], "");
    assert!(line["duration_ms"].as_f64().is_some(), "{line}");
    assert!(
        line["client"]
            .as_str()
            .is_some_and(|c| c.starts_with("127.0.0.1:")),
        "{line}"
    );
    assert!(
        !logs
            .lines()
            .any(|l| l.contains("\"level\":\"INFO\"") && !l.contains("kaname::access")),
        "level warn let other info lines through:\n{logs}"
    );
}
