//! Distributed tracing end to end (tracing.md): the real binary exporting
//! by OTLP to a real receiver that decodes the official protobufs (gRPC and
//! HTTP/protobuf), real upstreams (HTTP/1.1 and gRPC) that record the
//! `traceparent` they were sent.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use support::grpc::{EchoClient, EchoRequest, GrpcUpstream, SERVICE};
use support::metrics::{metric, wait_metric_at_least};
use support::net::{accept_each, bind_loopback};
use support::otlp::{OtlpReceiver, ReceivedSpan, CLIENT, SERVER, STATUS_ERROR};
use support::{config_file, empty, HttpClient, Kaname, TestUpstream};

/// `00-<trace>-<span>-<flags>` → (trace, span, flags).
fn traceparent(v: &str) -> (String, String, String) {
    let parts: Vec<&str> = v.split('-').collect();
    assert_eq!(parts.len(), 4, "traceparent {v:?}");
    assert_eq!(parts[0], "00");
    (parts[1].into(), parts[2].into(), parts[3].into())
}

fn one_of(spans: &[ReceivedSpan], kind: i32) -> ReceivedSpan {
    let of: Vec<_> = spans.iter().filter(|s| s.kind == kind).collect();
    assert_eq!(of.len(), 1, "one span of kind {kind}: {spans:#?}");
    of[0].clone()
}

fn route_config(upstream: std::net::SocketAddr, tracing: &str, filters: &str) -> String {
    format!(
        "{tracing}listeners:
  main:
    listen: 127.0.0.1:0
    routes:
      - name: orders
        match: {{ path_prefix: /orders }}
        upstream: app
        filters: [{filters}]
upstreams:
  app:
    endpoints: [{upstream}]
"
    )
}

#[tokio::test]
async fn a_request_has_a_server_span_and_a_client_span_the_upstream_sees() {
    let otlp = OtlpReceiver::grpc().await;
    let up = TestUpstream::start("app").await;
    let tracing = otlp.tracing_yaml(
        "    service_name: orders-sidecar
    resource: { deployment.environment: test }
    headers: { authorization: \"Bearer otlp-token-42\" }
",
    );
    let k = Kaname::start(&route_config(up.addr, &tracing, "")).await;
    let res = HttpClient::http1()
        .get(&k.url("main", "/orders/7?x=1"))
        .await;
    assert_eq!(res.status, 200);

    let sent = up.last();
    let (trace_id, client_span_id, flags) =
        traceparent(sent.header("traceparent").expect("a traceparent upstream"));
    assert_eq!(flags, "01", "sampled");
    let spans = otlp.wait_trace(&trace_id, 2).await;
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let server = one_of(&spans, SERVER);
    let client = one_of(&spans, CLIENT);

    assert_eq!(server.name, "GET orders");
    assert_eq!(
        server.parent_span_id, "",
        "a new trace: the SERVER span is its root"
    );
    assert_eq!(server.str("http.request.method"), Some("GET"));
    assert_eq!(server.str("url.path"), Some("/orders/7"));
    assert_eq!(server.str("url.scheme"), Some("http"));
    assert_eq!(server.str("server.address"), Some("127.0.0.1"));
    assert_eq!(server.str("client.address"), Some("127.0.0.1"));
    assert_eq!(server.int("http.response.status_code"), Some(200));
    assert_eq!(server.str("network.protocol.version"), Some("1.1"));
    assert_eq!(server.str("kaname.listener"), Some("main"));
    assert_eq!(server.str("kaname.route"), Some("orders"));
    assert_ne!(server.status_code, STATUS_ERROR);

    assert_eq!(client.name, "GET");
    assert_eq!(
        client.parent_span_id, server.span_id,
        "child of the SERVER span"
    );
    assert_eq!(
        client.span_id, client_span_id,
        "the upstream's parent is the try"
    );
    assert_eq!(client.str("server.address"), Some("127.0.0.1"));
    assert_eq!(client.int("server.port"), Some(i64::from(up.addr.port())));
    assert_eq!(client.str("kaname.upstream"), Some("app"));
    assert_eq!(client.int("kaname.attempt"), Some(1));
    assert_eq!(client.int("http.response.status_code"), Some(200));

    use support::otlp::Attr;
    assert_eq!(
        server.resource.get("service.name"),
        Some(&Attr::Str("orders-sidecar".into()))
    );
    assert_eq!(
        server.resource.get("deployment.environment"),
        Some(&Attr::Str("test".into()))
    );
    let exports = otlp.exports();
    assert!(
        exports.iter().all(|h| h
            .get("authorization")
            .is_some_and(|v| v == "Bearer otlp-token-42")),
        "the export headers reach the collector: {exports:?}"
    );

    // The access log line names the trace and the SERVER span.
    let line = k
        .logs()
        .lines()
        .find(|l| l.contains("kaname::access") && l.contains(&trace_id))
        .map(str::to_owned);
    let line = line.unwrap_or_else(|| panic!("no access log line with {trace_id}:\n{}", k.logs()));
    assert!(line.contains(&server.span_id), "{line}");

    // Counted, and the token is not in /config.
    wait_metric_at_least(
        &k,
        "kaname_tracing_spans_exported_total",
        2.0,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(
        metric(
            &k,
            "kaname_tracing_spans_dropped_total{reason=\"queue_full\"}"
        )
        .await,
        0.0
    );
    let config = HttpClient::http1()
        .get(&k.admin_url("/config"))
        .await
        .text();
    assert!(!config.contains("otlp-token-42"), "{config}");
    assert!(config.contains("authorization: \"<redacted>\""), "{config}");
}

#[tokio::test]
async fn an_incoming_sampled_parent_is_continued_and_http_protobuf_works() {
    let otlp = OtlpReceiver::http().await;
    let up = TestUpstream::start("app").await;
    let k = Kaname::start(&route_config(up.addr, &otlp.tracing_yaml(""), "")).await;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = "00f067aa0ba902b7";
    let req = Request::get(k.url("main", "/orders"))
        .header("traceparent", format!("00-{trace}-{parent}-01"))
        .header("tracestate", "vendor=abc")
        .body(empty())
        .unwrap();
    assert_eq!(HttpClient::http1().send(req).await.status, 200);
    let sent = up.last();
    let (t, span, flags) = traceparent(sent.header("traceparent").unwrap());
    assert_eq!((t.as_str(), flags.as_str()), (trace, "01"));
    assert_ne!(span, parent, "the try's span, not the caller's");
    assert_eq!(sent.header("tracestate"), Some("vendor=abc"));

    let spans = otlp.wait_trace(trace, 2).await;
    let server = one_of(&spans, SERVER);
    let client = one_of(&spans, CLIENT);
    assert_eq!(
        server.parent_span_id, parent,
        "continues the caller's trace"
    );
    assert_eq!(client.parent_span_id, server.span_id);
    assert_eq!(client.span_id, span);
}

/// An upstream that answers 503 to its first `fail` requests, then 200, and
/// keeps the `traceparent` of each.
async fn flaky_upstream(fail: usize) -> (std::net::SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = bind_loopback("flaky").await;
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let n = Arc::new(AtomicUsize::new(0));
    let s = seen.clone();
    accept_each(listener, move |stream| {
        let (seen, n) = (s.clone(), n.clone());
        async move {
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let tp = req
                    .headers()
                    .get("traceparent")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                seen.lock().unwrap().push(tp);
                let status = if n.fetch_add(1, Ordering::SeqCst) < fail {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::OK
                };
                async move {
                    let mut res = Response::new(Full::new(Bytes::from_static(b"done")));
                    *res.status_mut() = status;
                    Ok::<_, std::convert::Infallible>(res)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn retries_are_sibling_client_spans_numbered_by_attempt() {
    let otlp = OtlpReceiver::grpc().await;
    let (addr, seen) = flaky_upstream(2).await;
    let yaml = format!(
        "{}filters:
  retries:
    retry: {{ attempts: 3, backoff: {{ base: 1ms, max: 2ms }}, retry_on: [503] }}
",
        route_config(addr, &otlp.tracing_yaml(""), "retries")
    );
    let k = Kaname::start(&yaml).await;
    let res = HttpClient::http1().get(&k.url("main", "/orders")).await;
    assert_eq!(res.status, 200, "the third try succeeds");
    let sent = seen.lock().unwrap().clone();
    assert_eq!(sent.len(), 3, "{sent:?}");
    let (trace_id, _, _) = traceparent(&sent[0]);
    let spans = otlp.wait_trace(&trace_id, 4).await;
    let server = one_of(&spans, SERVER);
    assert_eq!(server.int("http.response.status_code"), Some(200));
    let mut tries: Vec<_> = spans.iter().filter(|s| s.kind == CLIENT).cloned().collect();
    tries.sort_by_key(|s| s.int("kaname.attempt"));
    assert_eq!(tries.len(), 3, "{spans:#?}");
    for (i, (span, header)) in tries.iter().zip(&sent).enumerate() {
        let (t, parent, _) = traceparent(header);
        assert_eq!(t, trace_id, "one trace for every try");
        assert_eq!(
            parent,
            span.span_id,
            "try {} carried its own span id",
            i + 1
        );
        assert_eq!(
            span.parent_span_id, server.span_id,
            "siblings under the SERVER span"
        );
        assert_eq!(span.int("kaname.attempt"), Some(i as i64 + 1));
    }
    let logs = k.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("kaname::access") && l.contains(&trace_id))
        .unwrap_or_else(|| panic!("an access log line for the trace:\n{logs}"));
    assert!(line.contains("attempts=3"), "{line}");
    assert_eq!(tries[0].int("http.response.status_code"), Some(503));
    assert_eq!(tries[0].status_code, STATUS_ERROR);
    assert_eq!(tries[2].int("http.response.status_code"), Some(200));
    assert_ne!(tries[2].status_code, STATUS_ERROR);
}

#[tokio::test]
async fn a_refusal_has_only_its_server_span_marked_with_the_error() {
    let otlp = OtlpReceiver::grpc().await;
    let up = TestUpstream::start("app").await;
    let yaml = format!(
        "{}filters:
  auth:
    jwt: {{ algorithms: [HS256], secret: tracing-test-secret-0123456789abcdef }}
",
        route_config(up.addr, &otlp.tracing_yaml(""), "auth")
    );
    let k = Kaname::start(&yaml).await;
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let req = Request::get(k.url("main", "/orders"))
        .header("traceparent", format!("00-{trace}-b7ad6b7169203331-01"))
        .body(empty())
        .unwrap();
    let res = HttpClient::http1().send(req).await;
    assert_eq!(res.status, 401);
    otlp.wait_trace(trace, 1).await;
    // A later request's spans arriving proves nothing more of this one is coming.
    let probe = "11111111111111111111111111111111";
    let req = Request::get(k.url("main", "/orders"))
        .header("traceparent", format!("00-{probe}-b7ad6b7169203331-01"))
        .body(empty())
        .unwrap();
    HttpClient::http1().send(req).await;
    otlp.wait_trace(probe, 1).await;
    let spans: Vec<_> = otlp
        .spans()
        .into_iter()
        .filter(|s| s.trace_id == trace)
        .collect();
    assert_eq!(spans.len(), 1, "no try, no CLIENT span: {spans:#?}");
    let server = &spans[0];
    assert_eq!(server.kind, SERVER);
    assert_eq!(server.int("http.response.status_code"), Some(401));
    assert_eq!(
        server.str("kaname.error"),
        Some(res.header("kaname-error").unwrap())
    );
    assert_eq!(up.hits(), 0);
}

#[tokio::test]
async fn a_grpc_call_carries_its_status_on_both_spans() {
    let otlp = OtlpReceiver::grpc().await;
    let up = GrpcUpstream::start("echo").await;
    let yaml = format!(
        "{}listeners:
  grpc:
    listen: 127.0.0.1:0
    routes:
      - {{ name: echo, match: {{ path_prefix: /{SERVICE}/ }}, upstream: echo }}
upstreams:
  echo: {{ endpoints: [{}], protocol: http2 }}
",
        otlp.tracing_yaml(""),
        up.addr
    );
    let k = Kaname::start(&yaml).await;
    let mut client = EchoClient::connect(k.port("grpc")).await;
    let mut req = EchoRequest::msg("hi");
    req.fail_code = 5; // NOT_FOUND
    req.fail_times = 1;
    req.key = "traced".into();
    let status = client
        .unary(tonic::Request::new(req))
        .await
        .expect_err("scripted failure");
    assert_eq!(status.code(), tonic::Code::NotFound);
    let head = up.heads().pop().expect("the call reached the upstream");
    let (trace_id, client_span, _) =
        traceparent(head.get("traceparent").unwrap().to_str().unwrap());
    let spans = otlp.wait_trace(&trace_id, 2).await;
    let server = one_of(&spans, SERVER);
    let client = one_of(&spans, CLIENT);
    assert_eq!(server.name, "POST echo");
    assert_eq!(server.str("network.protocol.version"), Some("2"));
    assert_eq!(server.int("rpc.grpc.status_code"), Some(5));
    assert_eq!(server.int("http.response.status_code"), Some(200));
    assert_eq!(
        server.status_code, STATUS_ERROR,
        "a gRPC status other than OK"
    );
    assert_eq!(client.span_id, client_span);
    assert_eq!(client.int("rpc.grpc.status_code"), Some(5));
}

#[tokio::test]
async fn not_sampled_requests_pass_their_header_unchanged_and_ratio_zero_records_none() {
    let otlp = OtlpReceiver::grpc().await;
    let up = TestUpstream::start("app").await;
    let k = Kaname::start(&route_config(
        up.addr,
        &otlp.tracing_yaml("    sampling: 0\n"),
        "",
    ))
    .await;
    let client = HttpClient::http1();
    // The caller said not sampled: passed on as it came.
    let unsampled = "00-aaaabbbbccccddddeeeeffff00001111-1111222233334444-00";
    let req = Request::get(k.url("main", "/orders"))
        .header("traceparent", unsampled)
        .body(empty())
        .unwrap();
    assert_eq!(client.send(req).await.status, 200);
    assert_eq!(up.last().header("traceparent"), Some(unsampled));
    // A new trace at ratio 0: its ids go on, flagged not sampled.
    assert_eq!(client.get(&k.url("main", "/orders")).await.status, 200);
    let (new_trace, _, flags) = traceparent(up.last().header("traceparent").unwrap());
    assert_eq!(flags, "00");
    // A sampled caller is recorded even at ratio 0 (parent-based); its
    // spans arriving mean the two before would have arrived by now.
    let sampled = "cafecafecafecafecafecafecafecafe";
    let req = Request::get(k.url("main", "/orders"))
        .header("traceparent", format!("00-{sampled}-1111222233334444-01"))
        .body(empty())
        .unwrap();
    assert_eq!(client.send(req).await.status, 200);
    otlp.wait_trace(sampled, 2).await;
    let others: Vec<_> = otlp
        .spans()
        .into_iter()
        .filter(|s| s.trace_id != sampled)
        .collect();
    assert!(others.is_empty(), "not sampled, not exported: {others:#?}");
    // Both unrecorded traces are still in the access log.
    let logs = k.logs();
    assert!(logs.contains("aaaabbbbccccddddeeeeffff00001111"), "{logs}");
    assert!(logs.contains(&new_trace), "{logs}");
}

#[tokio::test]
async fn a_collector_that_goes_away_costs_spans_never_requests() {
    let otlp = OtlpReceiver::grpc().await;
    let up = TestUpstream::start("app").await;
    let k = Kaname::start(&route_config(
        up.addr,
        &otlp.tracing_yaml("    max_queue: 64\n    timeout: 500ms\n"),
        "",
    ))
    .await;
    let client = HttpClient::http1();
    assert_eq!(client.get(&k.url("main", "/orders")).await.status, 200);
    wait_metric_at_least(
        &k,
        "kaname_tracing_spans_exported_total",
        2.0,
        Duration::from_secs(10),
    )
    .await;
    otlp.stop();

    // Thousands of requests with no collector: every one answered.
    let mut failed = 0;
    let mut rss_after_first = 0;
    for round in 0..6 {
        let mut tasks = Vec::new();
        for c in 0..8 {
            let url = k.url("main", &format!("/orders/{round}/{c}"));
            tasks.push(tokio::spawn(async move {
                let client = HttpClient::http1();
                let mut bad = 0;
                for _ in 0..100 {
                    if client.get(&url).await.status != 200 {
                        bad += 1;
                    }
                }
                bad
            }));
        }
        for t in tasks {
            failed += t.await.unwrap();
        }
        if round == 0 {
            rss_after_first = k.rss_kib();
        }
    }
    assert_eq!(failed, 0, "a missing collector must not fail a request");
    let dropped = metric(
        &k,
        "kaname_tracing_spans_dropped_total{reason=\"queue_full\"}",
    )
    .await
        + metric(
            &k,
            "kaname_tracing_spans_dropped_total{reason=\"export_failed\"}",
        )
        .await;
    assert!(dropped >= 1000.0, "the lost spans are counted: {dropped}");
    let rss = k.rss_kib();
    assert!(
        rss < rss_after_first + 16 * 1024,
        "memory stays bounded: {rss_after_first} KiB after 800 requests, {rss} KiB after 4800"
    );
    // Warned, but not once per span.
    let warnings = k.logs().matches("spans are being dropped").count();
    assert!(
        (1..=2).contains(&warnings),
        "{warnings} warnings:\n{}",
        k.logs()
    );
}

#[tokio::test]
async fn a_reload_switches_the_collector() {
    let first = OtlpReceiver::grpc().await;
    let second = OtlpReceiver::http().await;
    let up = TestUpstream::start("app").await;
    let k = Kaname::start(&route_config(up.addr, &first.tracing_yaml(""), "")).await;
    let client = HttpClient::http1();
    let get = |trace: &str| {
        Request::get(k.url("main", "/orders"))
            .header("traceparent", format!("00-{trace}-1111222233334444-01"))
            .body(empty())
            .unwrap()
    };
    let one = "01010101010101010101010101010101";
    assert_eq!(client.send(get(one)).await.status, 200);
    first.wait_trace(one, 2).await;

    std::fs::write(
        &k.config_path,
        config_file(&route_config(up.addr, &second.tracing_yaml(""), "")),
    )
    .unwrap();
    let reload = client
        .send(Request::post(k.admin_url("/reload")).body(empty()).unwrap())
        .await;
    assert_eq!(reload.status, 200, "{}", reload.text());
    let two = "02020202020202020202020202020202";
    assert_eq!(client.send(get(two)).await.status, 200);
    second.wait_trace(two, 2).await;
    assert!(
        first.spans().iter().all(|s| s.trace_id != two),
        "the old collector gets nothing after the reload"
    );
}

#[tokio::test]
async fn start_traces_without_otlp_starts_a_trace_the_log_names() {
    let up = TestUpstream::start("app").await;
    let k = Kaname::start(&route_config(
        up.addr,
        "tracing: { start_traces: true }\n",
        "",
    ))
    .await;
    assert_eq!(
        HttpClient::http1()
            .get(&k.url("main", "/orders"))
            .await
            .status,
        200
    );
    let (trace, _, flags) = traceparent(up.last().header("traceparent").unwrap());
    assert_eq!(flags, "01");
    let logs = k.logs();
    assert!(
        logs.contains(&trace),
        "the access log names the trace:\n{logs}"
    );
}

#[tokio::test]
async fn the_access_log_names_the_failure_of_an_upstream() {
    let closed = support::net::ClosedPort::new();
    let up: std::net::SocketAddr = format!("127.0.0.1:{}", closed.port()).parse().unwrap();
    let k = Kaname::start(&route_config(up, "", "")).await;
    let res = HttpClient::http1().get(&k.url("main", "/orders")).await;
    assert_eq!(res.status, 502);
    let logs = k.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("kaname::access"))
        .unwrap_or_else(|| panic!("an access log line:\n{logs}"));
    assert!(line.contains("attempts=1"), "{line}");
    assert!(
        line.contains("reason=\"connect_failure\"") || line.contains("reason=connect_failure"),
        "{line}"
    );
}

#[tokio::test]
async fn a_repeated_traceparent_is_no_trace_and_is_not_sent_on() {
    // Two traceparents name two traces: kaname could record the first
    // while the upstream's tracer read the second. Neither is believed;
    // one new trace is recorded and sent on, alone.
    let otlp = OtlpReceiver::grpc().await;
    let up = TestUpstream::start("app").await;
    let k = Kaname::start(&route_config(up.addr, &otlp.tracing_yaml(""), "")).await;
    let client = HttpClient::http1();
    let first = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let second = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    for flags in ["01", "00"] {
        let req = Request::get(k.url("main", "/orders"))
            .header(
                "traceparent",
                format!("00-{first}-1111222233334444-{flags}"),
            )
            .header(
                "traceparent",
                format!("00-{second}-5555666677778888-{flags}"),
            )
            .header("tracestate", "vendor=x")
            .body(empty())
            .unwrap();
        assert_eq!(client.send(req).await.status, 200);
        let sent = up.last();
        let values: Vec<_> = sent.headers.get_all("traceparent").iter().collect();
        assert_eq!(values.len(), 1, "one traceparent upstream: {values:?}");
        let (trace, client_span, sampled) = traceparent(values[0].to_str().unwrap());
        assert!(trace != first && trace != second, "a new trace: {trace}");
        assert_eq!(sampled, "01", "recorded at the default ratio 1.0");
        assert_eq!(
            sent.header("tracestate"),
            None,
            "no state of a trace not continued"
        );
        let spans = otlp.wait_trace(&trace, 2).await;
        let server = one_of(&spans, SERVER);
        assert_eq!(server.parent_span_id, "", "the new trace's root");
        assert_eq!(one_of(&spans, CLIENT).span_id, client_span);
    }
    let exported = otlp.spans();
    assert!(
        exported
            .iter()
            .all(|s| s.trace_id != first && s.trace_id != second),
        "neither repeated trace recorded: {exported:#?}"
    );
}
