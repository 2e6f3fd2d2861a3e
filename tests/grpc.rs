//! gRPC through kaname end to end, with a real gRPC stack on both sides:
//! a tonic client speaking h2c to a kaname listener, kaname forwarding to a
//! tonic-based upstream with `protocol: http2` (tests/support/grpc.rs).
//! Every status is checked as the client library reports it (`tonic::Status`).

mod support;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use support::grpc::{meta, EchoClient, EchoRequest, GrpcUpstream, SERVICE};
use support::tls::{client_config, TestCa};
use support::{metric_value, metrics, poll_metric, ClosedPort, Kaname};
use tokio::sync::mpsc;
use tonic::metadata::{BinaryMetadataValue, MetadataValue};
use tonic::{Code, Request, Status};

/// How long any one call may take in these tests before the test fails.
const CALL_DEADLINE: Duration = Duration::from_secs(30);

/// Listener `grpc` with route `echo` (`/kaname.test.Echo/`) to upstream
/// `echo` (`protocol: http2`), through `route_filters`; `filters_yaml` is
/// the `filters:` section's body (empty for none). The stream cap is
/// raised from its default of 100 for the test of 200 calls at once.
fn config(up: SocketAddr, route_filters: &str, filters_yaml: &str) -> String {
    let mut yaml = format!(
        "listeners:
  grpc:
    listen: 127.0.0.1:0
    http2: {{ max_concurrent_streams: 256 }}
    routes:
      - name: echo
        match: {{ path_prefix: /{SERVICE}/ }}
        upstream: echo
        timeout: 20s
        filters: [{route_filters}]
upstreams:
  echo:
    endpoints: [{up}]
    protocol: http2
"
    );
    if !filters_yaml.is_empty() {
        yaml.push_str("filters:\n");
        yaml.push_str(filters_yaml);
    }
    yaml
}

/// kaname in front of a fresh gRPC upstream named `echo-1`, and its port.
async fn start(route_filters: &str, filters_yaml: &str) -> (Kaname, GrpcUpstream, u16) {
    let up = GrpcUpstream::start("echo-1").await;
    let k = Kaname::start(&config(up.addr, route_filters, filters_yaml)).await;
    let port = k.port("grpc");
    (k, up, port)
}

/// `start`, and a client over one connection.
async fn setup(route_filters: &str, filters_yaml: &str) -> (Kaname, GrpcUpstream, EchoClient) {
    let (k, up, port) = start(route_filters, filters_yaml).await;
    (k, up, EchoClient::connect(port).await)
}

/// Bounds a call so a hang fails the test instead of stalling it.
async fn bounded<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(CALL_DEADLINE, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {CALL_DEADLINE:?}"))
}

fn grpc_count(text: &str, route: &str, upstream: &str, status: &str) -> f64 {
    let sel = format!(
        r#"kaname_grpc_requests_total{{listener="grpc",route="{route}",upstream="{upstream}",grpc_status="{status}"}}"#
    );
    metric_value(text, &sel).unwrap_or(0.0)
}

/// Asserts a refusal kaname made: the code, a useful message and the
/// `kaname-error` metadata naming `kind`.
fn assert_refusal(status: &Status, code: Code, kind: &str, message_part: &str) {
    assert_eq!(status.code(), code, "status {status:?}");
    assert!(
        status.message().contains(message_part),
        "message {:?} should mention {message_part:?}",
        status.message()
    );
    assert_eq!(
        meta(status.metadata(), "kaname-error"),
        Some(kind),
        "kaname-error in {status:?}"
    );
}

// === the four call shapes, metadata and trailers ===

#[tokio::test]
async fn unary_call_carries_metadata_both_ways_and_trailers() {
    let (_k, up, mut client) = setup("", "").await;
    let mut req = Request::new(EchoRequest::msg("hello"));
    req.metadata_mut()
        .insert("x-test-meta", MetadataValue::from_static("from-client"));
    let bin: &[u8] = &[0, 1, 2, 0xfe, 0xff];
    req.metadata_mut()
        .insert_bin("x-bin-bin", BinaryMetadataValue::from_bytes(bin));
    let res = bounded("unary", client.unary(req))
        .await
        .expect("unary call");

    let md = res.metadata().clone();
    let reply = res.into_inner();
    assert_eq!(reply.message, "hello");
    assert_eq!(reply.server, "echo-1");
    // Response initial metadata from the server, request metadata seen by it.
    assert_eq!(meta(&md, "x-server"), Some("echo-1"));
    assert_eq!(meta(&md, "x-seen-meta"), Some("from-client"));
    let echoed_bin = md.get_bin("x-bin-bin").expect("binary metadata back");
    assert_eq!(echoed_bin.to_bytes().expect("base64").as_ref(), bin);
    // Trailing metadata (tonic merges trailers into a unary response's map).
    assert_eq!(meta(&md, "x-trailer"), Some("done"));
    assert!(
        md.get("x-request-id").is_some(),
        "x-request-id back: {md:?}"
    );

    // What reached the upstream: a gRPC request over HTTP/2 with TE: trailers.
    let head = up.heads().pop().expect("upstream saw the call");
    assert_eq!(head.get("te").map(|v| v.as_bytes()), Some(&b"trailers"[..]));
    let ct = head.get("content-type").and_then(|v| v.to_str().ok());
    assert!(
        ct.is_some_and(|c| c.starts_with("application/grpc")),
        "{ct:?}"
    );
    assert_eq!(
        head.get("x-forwarded-for").and_then(|v| v.to_str().ok()),
        Some("127.0.0.1")
    );
}

#[tokio::test]
async fn server_streaming_delivers_every_message_then_trailers() {
    let (_k, _up, mut client) = setup("", "").await;
    let req = Request::new(EchoRequest {
        message: "tick".into(),
        count: 50,
        ..Default::default()
    });
    let res = bounded("server stream", client.server_stream(req))
        .await
        .expect("server streaming call");
    assert_eq!(meta(res.metadata(), "x-server"), Some("echo-1"));
    let mut stream = res.into_inner();
    let mut seqs = Vec::new();
    while let Some(reply) = bounded("next message", stream.message())
        .await
        .expect("stream message")
    {
        assert_eq!(reply.message, format!("tick #{}", reply.seq));
        seqs.push(reply.seq);
    }
    assert_eq!(seqs, (0..50).collect::<Vec<u32>>());
    let trailers = bounded("trailers", stream.trailers())
        .await
        .expect("trailers")
        .expect("trailers present");
    assert_eq!(meta(&trailers, "x-trailer"), Some("done"));
}

/// UNAVAILABLE that arrives in the trailers (after messages were streamed)
/// counts for outlier detection as it does in a trailers-only answer; OK in
/// the trailers does not.
#[tokio::test]
async fn unavailable_in_trailers_counts_for_outlier_detection() {
    let up = GrpcUpstream::start("echo-1").await;
    let yaml = config(up.addr, "", "").replace(
        "    protocol: http2\n",
        "    protocol: http2\n    outlier_detection: { consecutive_failures: 2, eject_for: 60s, max_ejected_percent: 100 }\n",
    );
    let k = Kaname::start(&yaml).await;
    let port = k.port("grpc");
    let mut client = EchoClient::connect(port).await;
    let ejections = r#"kaname_upstream_ejections_total{upstream="echo"}"#;
    let call = |end_code: i32| EchoRequest {
        message: "tick".into(),
        count: 2,
        end_code,
        ..Default::default()
    };
    for _ in 0..2 {
        let res = bounded("server stream", client.server_stream(Request::new(call(0))))
            .await
            .expect("call");
        let mut stream = res.into_inner();
        while bounded("message", stream.message())
            .await
            .expect("ok")
            .is_some()
        {}
    }
    let text = metrics(&k).await;
    assert_eq!(
        support::metric_value(&text, ejections).unwrap_or(0.0),
        0.0,
        "OK ends eject nothing"
    );

    for _ in 0..2 {
        let res = bounded(
            "server stream",
            client.server_stream(Request::new(call(14))),
        )
        .await
        .expect("head is OK: the status comes later");
        let mut stream = res.into_inner();
        let mut got = 0;
        let end = loop {
            match bounded("message", stream.message()).await {
                Ok(Some(_)) => got += 1,
                Ok(None) => panic!("stream ended OK"),
                Err(status) => break status,
            }
        };
        assert_eq!(got, 2, "both messages came before the status");
        assert_eq!(end.code(), Code::Unavailable);
    }
    let (ejected, text) =
        poll_metric(&k, ejections, Duration::from_secs(5), |v| v == Some(1.0)).await;
    assert!(
        ejected,
        "two UNAVAILABLE trailers did not eject the endpoint: {text}"
    );
    // The attempt outcomes come from the trailers too.
    let text = metrics(&k).await;
    let outcome = |o: &str| {
        support::metric_value(
            &text,
            &format!(r#"kaname_upstream_attempts_total{{upstream="echo",outcome="{o}"}}"#),
        )
    };
    assert_eq!(outcome("success"), Some(2.0), "{text}");
    assert_eq!(outcome("grpc_error"), Some(2.0), "{text}");
}

#[tokio::test]
async fn client_streaming_reaches_the_server_whole() {
    let (_k, _up, mut client) = setup("", "").await;
    let messages: Vec<EchoRequest> = (0..20)
        .map(|i| EchoRequest {
            message: format!("m{i}"),
            payload: vec![i as u8; 1000],
            ..Default::default()
        })
        .collect();
    let res = bounded(
        "client stream",
        client.client_stream(Request::new(futures_util::stream::iter(messages))),
    )
    .await
    .expect("client streaming call");
    assert_eq!(meta(res.metadata(), "x-trailer"), Some("done"));
    let reply = res.into_inner();
    assert_eq!(reply.seq, 20);
    let want: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
    assert_eq!(reply.message, want.join(","));
    assert_eq!(reply.payload.len(), 20_000);
}

#[tokio::test]
async fn bidi_streaming_interleaves_messages() {
    let (_k, _up, mut client) = setup("", "").await;
    bidi_ping_pong(&mut client).await;
}

/// Sends a message, waits for its echo, then sends the next: passes only if
/// kaname forwards each message as it comes, both ways, holding none back.
async fn bidi_ping_pong(client: &mut EchoClient) {
    let (tx, rx) = mpsc::channel::<EchoRequest>(4);
    let outbound =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    tx.send(EchoRequest::msg("ping 0")).await.expect("send");
    let res = bounded("bidi call", client.bidi(Request::new(outbound)))
        .await
        .expect("bidi call");
    let mut inbound = res.into_inner();
    for i in 0..5u32 {
        if i > 0 {
            tx.send(EchoRequest::msg(&format!("ping {i}")))
                .await
                .expect("send");
        }
        let reply = bounded("bidi reply", inbound.message())
            .await
            .expect("bidi message")
            .expect("a reply before the end");
        assert_eq!(reply.message, format!("echo ping {i}"));
        assert_eq!(reply.seq, i);
    }
    drop(tx); // ends the request stream: the server ends the call OK
    let end = bounded("bidi end", inbound.message()).await.expect("end");
    assert!(end.is_none(), "no message after the last: {end:?}");
    let trailers = bounded("trailers", inbound.trailers())
        .await
        .expect("trailers")
        .expect("trailers present");
    assert_eq!(meta(&trailers, "x-trailer"), Some("done"));
}

#[tokio::test]
async fn four_mib_messages_pass_both_ways() {
    let (_k, _up, mut client) = setup("", "").await;
    let payload: Vec<u8> = (0..4 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let req = Request::new(EchoRequest {
        message: "big".into(),
        payload: payload.clone(),
        ..Default::default()
    });
    let reply = bounded("4 MiB unary", client.unary(req))
        .await
        .expect("4 MiB call")
        .into_inner();
    assert_eq!(reply.payload.len(), payload.len());
    assert!(
        reply.payload == payload,
        "the 4 MiB payload came back changed"
    );
}

#[tokio::test]
async fn two_hundred_concurrent_calls_share_one_connection() {
    let (k, up, client) = setup("", "").await;
    // Each call is held at the server until all 200 are in flight at once,
    // so they cannot have been sent one after another.
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..200u32 {
        let mut c = client.clone();
        calls.spawn(async move {
            let req = Request::new(EchoRequest {
                message: format!("call {i}"),
                key: "together".into(),
                rendezvous: 200,
                ..Default::default()
            });
            (i, c.unary(req).await)
        });
    }
    let mut ok = 0;
    let all = bounded("200 calls", async {
        while let Some(joined) = calls.join_next().await {
            let (i, res) = joined.expect("call task");
            let reply = res
                .unwrap_or_else(|s| panic!("call {i}: {s:?}"))
                .into_inner();
            assert_eq!(reply.message, format!("call {i}"));
            ok += 1;
        }
    });
    all.await;
    assert_eq!(ok, 200);
    assert_eq!(up.calls("together"), 200);
    // One client connection to kaname carried them all.
    let text = metrics(&k).await;
    assert_eq!(
        metric_value(&text, r#"kaname_connections_open{listener="grpc"}"#),
        Some(1.0),
        "client connections open at kaname"
    );
}

#[tokio::test]
async fn calls_pass_over_h2_in_tls() {
    let up = GrpcUpstream::start("echo-1").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new("grpc test CA");
    let (cert, key) = ca.leaf().write(dir.path(), "server");
    let yaml = config(up.addr, "", "").replace(
        "    routes:\n",
        &format!(
            "    tls: {{ cert: {}, key: {} }}\n    routes:\n",
            cert.display(),
            key.display()
        ),
    );
    let k = Kaname::start(&yaml).await;
    let port = k.port("grpc");
    // hyper-rustls sets the ALPN (h2) itself.
    let tls = (*client_config(&ca.cert_pem, None, &[])).clone();
    let mut client = EchoClient::connect_tls(port, tls);
    let mut req = Request::new(EchoRequest::msg("over tls"));
    req.metadata_mut()
        .insert("x-test-meta", MetadataValue::from_static("tls"));
    let res = bounded("unary over TLS", client.unary(req))
        .await
        .expect("unary over h2 in TLS");
    assert_eq!(meta(res.metadata(), "x-seen-meta"), Some("tls"));
    assert_eq!(meta(res.metadata(), "x-trailer"), Some("done"));
    assert_eq!(res.into_inner().message, "over tls");
    bidi_ping_pong(&mut client).await;
    let head = up.heads().pop().expect("upstream saw the calls");
    assert_eq!(
        head.get("x-forwarded-proto").and_then(|v| v.to_str().ok()),
        Some("https")
    );
}

// === statuses ===

#[tokio::test]
async fn error_status_and_message_pass_unchanged() {
    let (_k, up, mut client) = setup("", "").await;
    let req = Request::new(EchoRequest {
        key: "bad-arg".into(),
        fail_code: Code::InvalidArgument as i32,
        fail_times: 1,
        ..Default::default()
    });
    let status = bounded("failing call", client.unary(req))
        .await
        .expect_err("the upstream fails the call");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(status.message(), "scripted failure 1 of 1");
    assert_eq!(meta(status.metadata(), "x-server"), Some("echo-1"));
    assert!(
        status.metadata().get("kaname-error").is_none(),
        "the upstream's answer is not kaname's own: {status:?}"
    );
    assert_eq!(up.calls("bad-arg"), 1);
}

#[tokio::test]
async fn client_deadline_shorter_than_the_method_gives_deadline_exceeded() {
    let (k, up, port) = start("", "").await;
    // A client that sends grpc-timeout without enforcing it: the answer at
    // the deadline can only be kaname's.
    let mut client = EchoClient::connect_no_deadline(port);
    let mut req = Request::new(EchoRequest {
        key: "slow".into(),
        delay_ms: 20_000,
        ..Default::default()
    });
    req.set_timeout(Duration::from_millis(300));
    let started = Instant::now();
    let status = bounded("slow call", client.unary(req))
        .await
        .expect_err("the deadline passes first");
    let took = started.elapsed();
    assert_refusal(
        &status,
        Code::DeadlineExceeded,
        "upstream_timeout",
        "within",
    );
    // The method would take 20 s; the 300 ms deadline ends the call long
    // before (bound generous for a loaded machine).
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert_eq!(up.calls("slow"), 1);
    let text = metrics(&k).await;
    assert_eq!(grpc_count(&text, "echo", "echo", "DEADLINE_EXCEEDED"), 1.0);
}

#[tokio::test]
async fn a_stream_running_past_its_deadline_ends_with_deadline_exceeded() {
    let (k, _up, port) = start("", "").await;
    let mut client = EchoClient::connect_no_deadline(port);
    // 100 replies 100 ms apart would take 10 s; the deadline is 1 s.
    let mut req = Request::new(EchoRequest {
        message: "slow".into(),
        count: 100,
        interval_ms: 100,
        ..Default::default()
    });
    req.set_timeout(Duration::from_secs(1));
    let started = Instant::now();
    let mut stream = bounded("slow stream", client.server_stream(req))
        .await
        .expect("the head comes in time")
        .into_inner();
    let mut received = 0;
    let status = loop {
        match bounded("next message", stream.message()).await {
            Ok(Some(_)) => received += 1,
            Ok(None) => panic!("the stream ended OK after {received} messages"),
            Err(status) => break status,
        }
    };
    let took = started.elapsed();
    assert_refusal(
        &status,
        Code::DeadlineExceeded,
        "upstream_timeout",
        "deadline",
    );
    assert!(
        (1..100).contains(&received),
        "{received} messages before the deadline"
    );
    assert!(took < Duration::from_secs(6), "took {took:?}");
    let text = metrics(&k).await;
    assert_eq!(grpc_count(&text, "echo", "echo", "DEADLINE_EXCEEDED"), 1.0);
}

#[tokio::test]
async fn unknown_service_is_unimplemented() {
    let (k, up, mut client) = setup("", "").await;
    let status = bounded(
        "unknown service",
        client.unary_at(
            "/kaname.test.Nope/Unary",
            Request::new(EchoRequest::msg("x")),
        ),
    )
    .await
    .expect_err("no route");
    assert_refusal(
        &status,
        Code::Unimplemented,
        "no_route",
        "/kaname.test.Nope/Unary",
    );
    assert!(up.heads().is_empty(), "nothing reached the upstream");
    let text = metrics(&k).await;
    assert_eq!(grpc_count(&text, "", "", "UNIMPLEMENTED"), 1.0);
}

#[tokio::test]
async fn upstream_down_is_unavailable() {
    // An address nothing listens on (bound, never listening, for the whole test).
    let dead = ClosedPort::new();
    let k = Kaname::start(&config(dead.addr, "", "")).await;
    let port = k.port("grpc");
    let mut client = EchoClient::connect(port).await;
    let status = bounded(
        "call to a dead upstream",
        client.unary(Request::new(EchoRequest::msg("x"))),
    )
    .await
    .expect_err("no upstream");
    assert_refusal(&status, Code::Unavailable, "upstream_unavailable", "echo");
}

#[tokio::test]
async fn metric_counts_calls_by_final_status() {
    let (k, _up, port) = start("", "").await;
    let mut client = EchoClient::connect(port).await;
    // OK twice: in trailers after a message (unary), and a stream.
    client
        .unary(Request::new(EchoRequest::msg("a")))
        .await
        .expect("ok call");
    let mut s = client
        .server_stream(Request::new(EchoRequest {
            count: 3,
            ..Default::default()
        }))
        .await
        .expect("stream")
        .into_inner();
    while bounded("stream", s.message()).await.expect("msg").is_some() {}
    // UNAVAILABLE from the upstream (trailers-only), no retry filter here.
    let failing = Request::new(EchoRequest {
        key: "down".into(),
        fail_code: Code::Unavailable as i32,
        fail_times: 1,
        ..Default::default()
    });
    let st = client.unary(failing).await.expect_err("unavailable");
    assert_eq!(st.code(), Code::Unavailable);
    // DEADLINE_EXCEEDED made by kaname.
    let mut slow = Request::new(EchoRequest {
        delay_ms: 20_000,
        ..Default::default()
    });
    slow.set_timeout(Duration::from_millis(200));
    let mut unenforcing = EchoClient::connect_no_deadline(port);
    let st = bounded("slow", unenforcing.unary(slow))
        .await
        .expect_err("deadline");
    assert_eq!(st.code(), Code::DeadlineExceeded);

    let text = metrics(&k).await;
    assert_eq!(grpc_count(&text, "echo", "echo", "OK"), 2.0, "{text}");
    assert_eq!(grpc_count(&text, "echo", "echo", "UNAVAILABLE"), 1.0);
    assert_eq!(grpc_count(&text, "echo", "echo", "DEADLINE_EXCEEDED"), 1.0);
    assert_eq!(grpc_count(&text, "echo", "echo", "UNKNOWN"), 0.0);
}

// === retries and breaker on gRPC codes (filters/src/retry, circuit_breaker) ===

const GRPC_RETRY: &str = "  retries:
    retry:
      attempts: 3
      retry_on: [unavailable]
      backoff: { base: 1ms, max: 5ms }
";

#[tokio::test]
async fn unavailable_twice_then_ok_is_retried_but_invalid_argument_is_not() {
    let (k, up, mut client) = setup("retries", GRPC_RETRY).await;
    let flaky = Request::new(EchoRequest {
        message: "third time lucky".into(),
        key: "flaky".into(),
        fail_code: Code::Unavailable as i32,
        fail_times: 2,
        ..Default::default()
    });
    let reply = bounded("flaky call", client.unary(flaky))
        .await
        .expect("retried to success")
        .into_inner();
    assert_eq!(reply.message, "third time lucky");
    assert_eq!(up.calls("flaky"), 3, "two failed tries and one success");

    let bad = Request::new(EchoRequest {
        key: "bad".into(),
        fail_code: Code::InvalidArgument as i32,
        fail_times: 5,
        ..Default::default()
    });
    let status = bounded("bad call", client.unary(bad))
        .await
        .expect_err("not retryable");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        up.calls("bad"),
        1,
        "a status not in retry_on is not retried"
    );

    let text = metrics(&k).await;
    assert_eq!(grpc_count(&text, "echo", "echo", "OK"), 1.0);
    assert_eq!(grpc_count(&text, "echo", "echo", "INVALID_ARGUMENT"), 1.0);
    assert_eq!(grpc_count(&text, "echo", "echo", "UNAVAILABLE"), 0.0);
    assert_eq!(
        metric_value(
            &text,
            r#"kaname_retries_total{route="echo",upstream="echo"}"#
        ),
        Some(2.0)
    );
}

#[tokio::test]
async fn streams_pass_through_a_route_that_retries_on_grpc_codes() {
    // A retry filter may hold a gRPC answer back to read its trailers; a
    // bidi call that waits for each reply must still flow.
    let (_k, _up, mut client) = setup("retries", GRPC_RETRY).await;
    bidi_ping_pong(&mut client).await;
}

#[tokio::test]
async fn breaker_counts_unavailable_and_opens() {
    let breaker = "  breaker:
    circuit_breaker:
      consecutive_failures: 2
      open_for: 60s
      failure_on: [5xx]
";
    let (_k, up, mut client) = setup("breaker", breaker).await;
    for _ in 0..2 {
        let req = Request::new(EchoRequest {
            key: "sick".into(),
            fail_code: Code::Unavailable as i32,
            fail_times: 100,
            ..Default::default()
        });
        let st = bounded("sick call", client.unary(req))
            .await
            .expect_err("sick");
        assert_eq!(st.code(), Code::Unavailable);
        assert!(st.metadata().get("kaname-error").is_none(), "{st:?}");
    }
    let st = bounded(
        "call on an open circuit",
        client.unary(Request::new(EchoRequest::msg("x"))),
    )
    .await
    .expect_err("circuit open");
    assert_refusal(&st, Code::Unavailable, "circuit_open", "echo");
    assert_eq!(up.calls("sick"), 2);
    assert_eq!(
        up.calls(""),
        0,
        "the refused call never reached the upstream"
    );
}

// === refusals by filters ===

const SECRET: &str = "grpc-test-secret-0123456789abcdef";

#[tokio::test]
async fn bad_token_is_unauthenticated() {
    let jwt = format!(
        "  auth:
    jwt:
      issuer: https://issuer.test
      algorithms: [HS256]
      secret: {SECRET}
"
    );
    let (_k, up, mut client) = setup("auth", &jwt).await;
    let mut req = Request::new(EchoRequest::msg("x"));
    req.metadata_mut().insert(
        "authorization",
        MetadataValue::from_static("Bearer not.a.token"),
    );
    let st = bounded("bad token", client.unary(req))
        .await
        .expect_err("refused");
    assert_refusal(&st, Code::Unauthenticated, "unauthenticated", "");
    assert!(!st.message().is_empty(), "a useful message: {st:?}");

    let st = bounded(
        "no token",
        client.unary(Request::new(EchoRequest::msg("x"))),
    )
    .await
    .expect_err("refused");
    assert_refusal(&st, Code::Unauthenticated, "unauthenticated", "");
    assert!(!st.message().is_empty(), "a useful message: {st:?}");
    assert!(up.heads().is_empty(), "nothing reached the upstream");

    // A good token passes.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let claims = serde_json::json!({"iss": "https://issuer.test", "sub": "u1", "exp": now + 600});
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign");
    let mut req = Request::new(EchoRequest::msg("with token"));
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("metadata"),
    );
    let reply = bounded("good token", client.unary(req))
        .await
        .expect("a valid token passes")
        .into_inner();
    assert_eq!(reply.message, "with token");
}

#[tokio::test]
async fn over_rate_limit_is_resource_exhausted() {
    let limit = "  limit:
    rate_limit:
      key: global
      rate: 1/m
      burst: 1
";
    let (k, up, mut client) = setup("limit", limit).await;
    bounded(
        "first call",
        client.unary(Request::new(EchoRequest::msg("1"))),
    )
    .await
    .expect("within the limit");
    let st = bounded(
        "second call",
        client.unary(Request::new(EchoRequest::msg("2"))),
    )
    .await
    .expect_err("over the limit");
    assert_refusal(&st, Code::ResourceExhausted, "rate_limited", "");
    assert!(!st.message().is_empty(), "a useful message: {st:?}");
    assert_eq!(
        up.heads().len(),
        1,
        "only the first call reached the upstream"
    );
    let text = metrics(&k).await;
    assert_eq!(grpc_count(&text, "echo", "echo", "RESOURCE_EXHAUSTED"), 1.0);
}

// === examples/grpc ===

#[tokio::test]
async fn the_grpc_example_works_as_its_readme_says() {
    let up = GrpcUpstream::start("greeter").await;
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/grpc/kaname.yaml"
    ))
    .expect("read examples/grpc/kaname.yaml");
    let upstream = up.addr.to_string();
    let k = Kaname::start_with_env(
        &example,
        &[("GRPC_LISTEN", "127.0.0.1:0"), ("GRPC_UPSTREAM", &upstream)],
    )
    .await;
    let port = k.port("grpc");
    let mut client = EchoClient::connect(port).await;
    let reply = bounded("SayHello", client.say_hello("kaname"))
        .await
        .expect("SayHello through the example")
        .into_inner();
    assert_eq!(reply.message, "Hello kaname");
    assert_eq!(up.calls("hello"), 1);
    // A service the example has no route for.
    let st = bounded(
        "unrouted",
        client.unary(Request::new(EchoRequest::msg("x"))),
    )
    .await
    .expect_err("no route for kaname.test.Echo in the example");
    assert_refusal(
        &st,
        Code::Unimplemented,
        "no_route",
        "/kaname.test.Echo/Unary",
    );
}

// === kaname check ===

#[test]
fn check_warns_when_a_grpc_route_points_at_an_http1_upstream() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("kaname.yaml");
    // `kaname check` binds nothing: any ports do.
    let yaml = format!(
        "admin:
  listen: 127.0.0.1:19901
listeners:
  grpc:
    listen: 127.0.0.1:18080
    routes:
      - name: echo
        match: {{ path_prefix: /{SERVICE}/ }}
        upstream: plain
upstreams:
  plain:
    endpoints: [127.0.0.1:9]
"
    );
    std::fs::write(&path, yaml).expect("write config");
    let out = Command::new(support::KANAME)
        .arg("check")
        .arg("-c")
        .arg(&path)
        .output()
        .expect("run kaname check");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "a warning is not an error: {text}");
    assert!(
        text.contains("route \"echo\" can receive gRPC but upstream \"plain\" is http1"),
        "warning missing: {text}"
    );

    // With protocol: http2 the warning goes away.
    let fixed = std::fs::read_to_string(&path).expect("read").replace(
        "endpoints: [127.0.0.1:9]\n",
        "endpoints: [127.0.0.1:9]\n    protocol: http2\n",
    );
    std::fs::write(&path, fixed).expect("write config");
    let out = Command::new(support::KANAME)
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .expect("run kaname check");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(
        !text.contains("can receive gRPC"),
        "no warning expected: {text}"
    );
}
