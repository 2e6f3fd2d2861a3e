//! End to end: the real `kaname` binary forwarding between real clients and
//! real upstream servers on 127.0.0.1 — HTTP/1.1 and HTTP/2 in, forwarding
//! headers, the routing table, streamed 100 MB bodies, WebSocket, route
//! timeout, upstream down, load balancing and request metrics.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use http::{Request, Version};
use http_body_util::BodyExt;
use support::*;
use tokio_tungstenite::tungstenite::Message;

fn url(port: u16, path: &str) -> String {
    format!("http://127.0.0.1:{port}{path}")
}

#[tokio::test]
async fn http1_client_through_proxy_keeps_status_and_body() {
    let up = TestUpstream::start("echo").await;
    let kaname = Kaname::start(&simple_config(&[up.addr])).await;
    let port = kaname.port("main");
    let client = HttpClient::http1();

    let resp = client.get(&url(port, "/hello?x=1")).await;
    assert_eq!(resp.status, 200, "GET /hello body {:?}", resp.text());
    assert_eq!(resp.version, Version::HTTP_11);
    assert_eq!(resp.header("x-upstream"), Some("echo"));
    let json = resp.json();
    assert_eq!(json["method"], "GET");
    assert_eq!(json["path"], "/hello?x=1");

    let req = Request::post(url(port, "/echo-body"))
        .body(full("hello kaname over HTTP/1.1"))
        .expect("request");
    let resp = client.send(req).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "hello kaname over HTTP/1.1", "echoed body");

    let resp = client.get(&url(port, "/made?status=201")).await;
    assert_eq!(resp.status, 201, "upstream status passed through");
    let resp = client.get(&url(port, "/gone?status=503")).await;
    assert_eq!(resp.status, 503, "upstream 503 passed through");
    assert_eq!(
        resp.header("kaname-error"),
        None,
        "an upstream 503 is not kaname's"
    );

    let rec = up.recorded();
    assert_eq!(rec.len(), 4, "upstream saw every request: {rec:?}");
    assert_eq!(rec[1].method, "POST");
    assert_eq!(rec[0].version, Version::HTTP_11);
}

#[tokio::test]
async fn http2_prior_knowledge_client_through_proxy() {
    let up = TestUpstream::start("echo").await;
    let kaname = Kaname::start(&simple_config(&[up.addr])).await;
    let port = kaname.port("main");
    let client = HttpClient::http2();

    let resp = client.get(&url(port, "/h2?q=2")).await;
    assert_eq!(resp.status, 200, "GET over h2c body {:?}", resp.text());
    assert_eq!(
        resp.version,
        Version::HTTP_2,
        "client spoke HTTP/2 to kaname"
    );
    assert_eq!(resp.json()["path"], "/h2?q=2");

    let body = "hello kaname over HTTP/2 ".repeat(1000);
    let req = Request::put(url(port, "/echo-body"))
        .body(full(body.clone()))
        .expect("request");
    let resp = client.send(req).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), body, "echoed body over h2");

    let resp = client.get(&url(port, "/x?status=202")).await;
    assert_eq!(resp.status, 202);

    let first = &up.recorded()[0];
    assert_eq!(
        first.version,
        Version::HTTP_11,
        "upstream protocol http1 is the default"
    );
    assert_eq!(
        first.header("host"),
        Some(format!("127.0.0.1:{port}").as_str()),
        "Host sent to the HTTP/1.1 upstream comes from the client's :authority"
    );
}

/// A client socket whose first write sends only the first 5 bytes, and
/// whose next waits 100 ms: the HTTP/2 preface reaches kaname in two
/// segments, so a peek at the first bytes sees only a part of it.
struct SplitFirstWrite {
    tcp: tokio::net::TcpStream,
    writes: u32,
    pause: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl tokio::io::AsyncRead for SplitFirstWrite {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for SplitFirstWrite {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        use std::future::Future as _;
        if let Some(p) = self.pause.as_mut() {
            std::task::ready!(p.as_mut().poll(cx));
            self.pause = None;
        }
        let n = if self.writes == 0 {
            buf.len().min(5)
        } else {
            buf.len()
        };
        let r = std::pin::Pin::new(&mut self.tcp).poll_write(cx, &buf[..n]);
        if r.is_ready() && self.writes == 0 {
            self.pause = Some(Box::pin(tokio::time::sleep(Duration::from_millis(100))));
        }
        self.writes += 1;
        r
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

#[tokio::test]
async fn http2_preface_split_across_segments_is_still_served() {
    let up = TestUpstream::start("echo").await;
    let kaname = Kaname::start(&simple_config(&[up.addr])).await;
    let port = kaname.port("main");
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    tcp.set_nodelay(true).expect("nodelay");
    let io = SplitFirstWrite {
        tcp,
        writes: 0,
        pause: None,
    };
    let (client, conn) = h2::client::handshake(io).await.expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut client = client.ready().await.expect("ready");
    let req = Request::get(url(port, "/split")).body(()).expect("request");
    let (resp, _) = client.send_request(req, true).expect("send");
    let resp = tokio::time::timeout(Duration::from_secs(10), resp)
        .await
        .expect("answered in time")
        .expect("response");
    assert_eq!(resp.status(), 200, "a split preface is served as HTTP/2");
    assert_eq!(up.recorded()[0].path, "/split");
    // And a plain HTTP/1.1 client on the same listener is not mistaken for one.
    let r = HttpClient::http1().get(&url(port, "/h1")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.version, Version::HTTP_11);
}

/// HTTP/2 answers carry `x-request-id` as a never-indexed HPACK literal: a
/// value new on every request would only churn the client's dynamic
/// table (and cost kaname a search of it). Both answers on one connection
/// carry exactly one such field; their other fields are indexed as before.
#[tokio::test]
async fn an_http2_answer_never_indexes_its_request_id() {
    use support::h2_frames::{frame, get_block, hpack_representations, read_frame, PREFACE};
    use tokio::io::AsyncWriteExt;
    let up = TestUpstream::start("echo").await;
    let kaname = Kaname::start(&simple_config(&[up.addr])).await;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", kaname.port("main")))
        .await
        .expect("connect");
    let mut out = PREFACE.to_vec();
    out.extend(frame(0x4, 0, 0, &[]));
    // HEADERS with END_STREAM and END_HEADERS, streams 1 and 3.
    out.extend(frame(0x1, 0x5, 1, &get_block("/a")));
    out.extend(frame(0x1, 0x5, 3, &get_block("/b")));
    s.write_all(&out).await.expect("write");
    let mut blocks = HashMap::new();
    let read = async {
        while blocks.len() < 2 {
            let (kind, flags, stream, payload) = read_frame(&mut s).await.expect("frame");
            if kind == 0x1 {
                assert_eq!(flags & 0x4, 0x4, "one HEADERS frame per answer here");
                blocks.insert(stream, payload);
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("both answers in time");
    for stream in [1, 3] {
        let kinds = hpack_representations(&blocks[&stream]);
        let never = kinds.iter().filter(|&&k| k == 0x10).count();
        assert_eq!(
            never, 1,
            "stream {stream}: x-request-id alone never indexed: {kinds:x?}"
        );
        assert!(kinds.len() > 2, "stream {stream}: {kinds:x?}");
    }
    assert_eq!(up.recorded().len(), 2);
}

#[tokio::test]
async fn forwarding_headers_are_set_kept_and_stripped() {
    let up = TestUpstream::start("echo").await;
    let kaname = Kaname::start(&simple_config(&[up.addr])).await;
    let port = kaname.port("main");
    let client = HttpClient::http1();
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    // No x-request-id from the client: one is generated, sent both ways.
    let req = Request::get(url(port, "/headers?hop=1"))
        .header("host", "app.example.com")
        .header("traceparent", traceparent)
        .header("connection", "x-custom")
        .header("x-custom", "1")
        .header("proxy-connection", "keep-alive")
        .header("keep-alive", "timeout=5")
        .header("x-kept", "yes")
        .body(empty())
        .expect("request");
    let resp = client.send(req).await;
    assert_eq!(resp.status, 200, "body {:?}", resp.text());
    let seen = up.last();
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(
        seen.header("traceparent"),
        Some(traceparent),
        "traceparent unchanged"
    );
    assert_eq!(seen.header("host"), Some("app.example.com"), "Host kept");
    assert_eq!(seen.header("x-kept"), Some("yes"), "end-to-end header kept");
    for hop in ["x-custom", "proxy-connection", "keep-alive"] {
        assert_eq!(
            seen.header(hop),
            None,
            "hop-by-hop header {hop} reached the upstream"
        );
    }
    assert!(
        !seen
            .header("connection")
            .unwrap_or_default()
            .contains("x-custom"),
        "client's Connection header reached the upstream: {:?}",
        seen.header("connection")
    );
    let generated = seen
        .header("x-request-id")
        .expect("upstream got a generated x-request-id")
        .to_string();
    assert!(!generated.is_empty());
    assert_eq!(
        resp.header("x-request-id"),
        Some(generated.as_str()),
        "the generated x-request-id is returned to the client"
    );
    // Hop-by-hop headers of the response are removed too.
    assert_eq!(
        resp.header("x-up-custom"),
        None,
        "response x-up-custom not stripped"
    );
    assert_eq!(
        resp.header("keep-alive"),
        None,
        "response keep-alive not stripped"
    );

    // A client's x-request-id and x-forwarded-for are kept (xff appended).
    let req = Request::get(url(port, "/headers"))
        .header("x-request-id", "client-chosen-42")
        .header("x-forwarded-for", "10.1.2.3")
        .body(empty())
        .expect("request");
    let resp = client.send(req).await;
    assert_eq!(resp.status, 200);
    let seen = up.last();
    assert_eq!(seen.header("x-request-id"), Some("client-chosen-42"));
    assert_eq!(resp.header("x-request-id"), Some("client-chosen-42"));
    assert_eq!(seen.header("x-forwarded-for"), Some("10.1.2.3, 127.0.0.1"));

    assert_eq!(
        seen.header("traceparent"),
        None,
        "no traceparent is made unless tracing.start_traces"
    );

    // Two requests without an id get two different ids.
    let other = client.get(&url(port, "/headers")).await;
    assert_ne!(other.header("x-request-id"), Some(generated.as_str()));
    assert!(other.header("x-request-id").is_some());
}

/// `tracing.start_traces`: a request without a `traceparent` (or with a
/// malformed one) gets a new sampled one; a valid one is passed on as is.
/// Without the option (the test above) nothing is made.
#[tokio::test]
async fn start_traces_makes_a_traceparent_only_when_missing_or_malformed() {
    let up = TestUpstream::start("echo").await;
    let config = format!(
        "tracing: {{ start_traces: true }}\n{}",
        simple_config(&[up.addr])
    );
    let kaname = Kaname::start(&config).await;
    let port = kaname.port("main");
    let client = HttpClient::http1();
    let is_w3c = |v: &str| {
        let parts: Vec<&str> = v.split('-').collect();
        parts.len() == 4
            && parts[0] == "00"
            && parts[1].len() == 32
            && parts[2].len() == 16
            && parts[3] == "01"
            && parts[1..3].iter().all(|p| {
                p.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                    && p.bytes().any(|b| b != b'0')
            })
    };

    let mut made = Vec::new();
    for _ in 0..2 {
        assert_eq!(client.get(&url(port, "/t")).await.status, 200);
        let tp = up.last().header("traceparent").map(str::to_owned);
        let tp = tp.expect("upstream got a traceparent");
        assert!(is_w3c(&tp), "made traceparent {tp:?}");
        made.push(tp);
    }
    assert_ne!(made[0], made[1], "each request starts its own trace");

    let valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
    let req = Request::get(url(port, "/t"))
        .header("traceparent", valid)
        .header("tracestate", "vendor=1")
        .body(empty())
        .expect("request");
    assert_eq!(client.send(req).await.status, 200);
    let seen = up.last();
    assert_eq!(
        seen.header("traceparent"),
        Some(valid),
        "a valid one is kept"
    );
    assert_eq!(seen.header("tracestate"), Some("vendor=1"));

    let req = Request::get(url(port, "/t"))
        .header("traceparent", "00-zz-not-a-trace")
        .header("tracestate", "vendor=1")
        .body(empty())
        .expect("request");
    assert_eq!(client.send(req).await.status, 200);
    let seen = up.last();
    let tp = seen.header("traceparent").expect("replaced traceparent");
    assert!(is_w3c(tp), "malformed replaced by a new one, got {tp:?}");
    assert_eq!(seen.header("tracestate"), None, "its tracestate dropped");
}

/// (method, path, extra header, expected upstream or None for no_route)
type RouteCase = (
    &'static str,
    &'static str,
    Option<(&'static str, &'static str)>,
    Option<&'static str>,
);

#[tokio::test]
async fn routing_table_first_match_wins() {
    let names = ["exact", "post", "prefix", "regex", "header", "host"];
    let mut ups = HashMap::new();
    for name in names {
        ups.insert(name, TestUpstream::start(name).await);
    }
    let upstreams: String = names
        .iter()
        .map(|n| format!("  {n}:\n    endpoints: [{}]\n", ups[n].addr))
        .collect();
    let config = format!(
        r#"listeners:
  main:
    listen: 127.0.0.1:0
    routes:
      - name: exact
        match: {{ path: /exact }}
        upstream: exact
      - name: post-api
        match: {{ path_prefix: /api/, methods: [POST, PUT] }}
        upstream: post
      - name: api
        match: {{ path_prefix: /api/ }}
        upstream: prefix
      - name: versioned
        match: {{ path_regex: "^/v[0-9]+/items$" }}
        upstream: regex
      - name: by-header
        match: {{ path_prefix: /h, headers: {{ x-version: "2" }} }}
        upstream: header
      - name: by-host
        match: {{ host: special.example }}
        upstream: host
upstreams:
{upstreams}"#
    );
    let kaname = Kaname::start(&config).await;
    let port = kaname.port("main");
    let client = HttpClient::http1();

    let cases: &[RouteCase] = &[
        ("GET", "/exact", None, Some("exact")),
        ("GET", "/exact/more", None, None),
        ("GET", "/exactly", None, None),
        ("POST", "/api/orders", None, Some("post")),
        ("PUT", "/api/orders/1", None, Some("post")),
        ("GET", "/api/orders", None, Some("prefix")),
        ("DELETE", "/api/orders", None, Some("prefix")),
        ("GET", "/api", None, None),
        ("GET", "/v2/items", None, Some("regex")),
        ("GET", "/v10/items", None, Some("regex")),
        ("GET", "/vx/items", None, None),
        ("GET", "/v2/items/3", None, None),
        ("GET", "/hello", Some(("x-version", "2")), Some("header")),
        ("GET", "/hello", Some(("x-version", "3")), None),
        ("GET", "/hello", None, None),
        (
            "GET",
            "/anything",
            Some(("host", "special.example")),
            Some("host"),
        ),
        (
            "GET",
            "/anything",
            Some(("host", "special.example:8080")),
            Some("host"),
        ),
        ("GET", "/anything", Some(("host", "other.example")), None),
        // First match wins: /exact matches both the exact and the host route.
        (
            "GET",
            "/exact",
            Some(("host", "special.example")),
            Some("exact"),
        ),
        (
            "POST",
            "/api/x",
            Some(("host", "special.example")),
            Some("post"),
        ),
    ];
    for (method, path, header, expected) in cases {
        let mut req = Request::builder().method(*method).uri(url(port, path));
        if let Some((k, v)) = header {
            req = req.header(*k, *v);
        }
        let resp = client.send(req.body(empty()).expect("request")).await;
        let what = format!("{method} {path} {header:?}");
        match expected {
            Some(up) => {
                assert_eq!(resp.status, 200, "{what}: body {:?}", resp.text());
                assert_eq!(
                    resp.header("x-upstream"),
                    Some(*up),
                    "{what} went elsewhere"
                );
            }
            None => {
                assert_eq!(
                    resp.header("x-upstream"),
                    None,
                    "{what} should match no route"
                );
                resp.assert_kaname_error(404, "no_route");
            }
        }
    }
}

const HUNDRED_MIB: u64 = 100 * 1024 * 1024;
/// How much the proxy's resident memory may grow while 100 MiB pass.
const RSS_GROWTH_LIMIT_KIB: u64 = 16 * 1024;

#[tokio::test]
async fn hundred_megabyte_bodies_stream_both_ways_in_bounded_memory() {
    let up = TestUpstream::start("bulk").await;
    let kaname = Kaname::start(&simple_config(&[up.addr])).await;
    let port = kaname.port("main");
    let client = HttpClient::http1();

    // Warm up pools and buffers with 1 MiB each way, then take the baseline.
    let warm = Request::post(url(port, "/upload?size=1048576"))
        .body(sized_body(1024 * 1024))
        .expect("request");
    let warm = client.send(warm).await;
    assert_eq!(warm.body.len(), 1024 * 1024);
    let baseline = kaname.rss_kib();
    let reset = kaname.reset_peak_rss();

    let deadline = Duration::from_secs(180);
    let upload = Request::post(url(port, "/upload"))
        .body(sized_body(HUNDRED_MIB))
        .expect("request");
    let resp = tokio::time::timeout(deadline, client.send(upload))
        .await
        .expect("100 MiB upload finished in time");
    assert_eq!(resp.status, 200, "upload body {:?}", resp.text());
    assert_eq!(
        resp.json()["body_len"],
        HUNDRED_MIB,
        "upstream counted every uploaded byte"
    );

    let download = async {
        let resp = client
            .send_streaming(
                Request::get(url(port, &format!("/download?size={HUNDRED_MIB}")))
                    .body(empty())
                    .expect("request"),
            )
            .await;
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        let mut got = 0u64;
        while let Some(frame) = body.frame().await {
            let frame = frame.expect("download body frame");
            got += frame.data_ref().map_or(0, |d| d.len() as u64);
        }
        got
    };
    let got = tokio::time::timeout(deadline, download)
        .await
        .expect("100 MiB download finished in time");
    assert_eq!(got, HUNDRED_MIB, "client received every downloaded byte");

    let peak = kaname.peak_rss_kib().max(kaname.rss_kib());
    eprintln!("rss baseline {baseline} KiB, peak {peak} KiB, reset {reset}");
    let growth = peak.saturating_sub(baseline);
    assert!(
        growth <= RSS_GROWTH_LIMIT_KIB,
        "proxy RSS grew by {growth} KiB (baseline {baseline} KiB, peak {peak} KiB, \
         peak reset: {reset}) while streaming 2 x 100 MiB; limit {RSS_GROWTH_LIMIT_KIB} KiB"
    );
}

#[tokio::test]
async fn websocket_echo_through_proxy() {
    let ws = WsEchoServer::start().await;
    let kaname = Kaname::start(&simple_config(&[ws.addr])).await;
    let port = kaname.port("main");

    let connect = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/ws"));
    let (mut socket, resp) = tokio::time::timeout(Duration::from_secs(10), connect)
        .await
        .expect("websocket handshake in time")
        .expect("websocket handshake through kaname");
    assert_eq!(resp.status(), 101);

    let exchange = async {
        for i in 0..3 {
            let text = format!("hello {i} through kaname");
            socket
                .send(Message::text(text.clone()))
                .await
                .expect("send");
            let echoed = socket.next().await.expect("a reply").expect("reply ok");
            assert_eq!(echoed, Message::text(text));
        }
        socket
            .send(Message::binary(vec![0u8, 1, 2, 255]))
            .await
            .expect("send binary");
        let echoed = socket.next().await.expect("a reply").expect("reply ok");
        assert_eq!(echoed, Message::binary(vec![0u8, 1, 2, 255]));
        socket.close(None).await.expect("close");
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .expect("websocket messages echoed in time");
}

#[tokio::test]
async fn route_timeout_gives_504_in_about_the_timeout() {
    let slow = TestUpstream::slow("slow", Duration::from_secs(5)).await;
    let config = format!(
        "listeners:
  main:
    listen: 127.0.0.1:0
    routes:
      - match: {{ path_prefix: / }}
        upstream: slow
        timeout: 300ms
upstreams:
  slow:
    endpoints: [{}]
",
        slow.addr
    );
    let kaname = Kaname::start(&config).await;
    let port = kaname.port("main");
    let started = Instant::now();
    let resp = HttpClient::http1().get(&url(port, "/slow")).await;
    let took = started.elapsed();
    resp.assert_kaname_error(504, "upstream_timeout");
    assert!(
        took >= Duration::from_millis(250),
        "504 came before the 300ms timeout: {took:?}"
    );
    assert!(
        took < Duration::from_secs(2),
        "504 took {took:?}; the timeout is 300ms and the upstream waits 5s"
    );
    assert_eq!(slow.hits(), 1, "the request reached the slow upstream");
}

#[tokio::test]
async fn upstream_down_gives_502_json() {
    // Bound, never listening, for the whole test: connections are refused.
    let nothing = ClosedPort::new();
    let kaname = Kaname::start(&simple_config(&[nothing.addr])).await;
    let port = kaname.port("main");
    let started = Instant::now();
    let resp = HttpClient::http1().get(&url(port, "/down")).await;
    resp.assert_kaname_error(502, "upstream_unavailable");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a refused connect should fail fast, took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn round_robin_rotates_strictly_over_three_endpoints() {
    let ups = three_upstreams().await;
    let kaname = Kaname::start(&balanced_config(&ups, "round_robin")).await;
    let port = kaname.port("main");
    let served = sequential_gets(port, 30).await;
    for up in &ups {
        assert_eq!(
            up.hits(),
            10,
            "endpoint {} hits; order {served:?}",
            up.name()
        );
    }
    for (i, window) in served.windows(4).enumerate() {
        assert_eq!(window[0], window[3], "rotation broken at {i}: {served:?}");
        assert!(
            window[0] != window[1] && window[1] != window[2] && window[0] != window[2],
            "rotation broken at {i}: {served:?}"
        );
    }
}

#[tokio::test]
async fn p2c_ewma_uses_every_endpoint() {
    let ups = three_upstreams().await;
    let kaname = Kaname::start(&balanced_config(&ups, "p2c_ewma")).await;
    let port = kaname.port("main");
    let served = sequential_gets(port, 60).await;
    for up in &ups {
        assert!(
            up.hits() >= 1,
            "endpoint {} got no request of 60: {served:?}",
            up.name()
        );
    }
    assert_eq!(ups.iter().map(|u| u.hits()).sum::<usize>(), 60);
}

#[tokio::test]
async fn least_request_serves_every_request() {
    let ups = three_upstreams().await;
    let kaname = Kaname::start(&balanced_config(&ups, "least_request")).await;
    let port = kaname.port("main");
    let served = sequential_gets(port, 30).await;
    assert_eq!(served.len(), 30);
    assert_eq!(ups.iter().map(|u| u.hits()).sum::<usize>(), 30);
}

#[tokio::test]
async fn metrics_count_requests_by_route() {
    let up = TestUpstream::start("echo").await;
    let config = format!(
        "listeners:
  main:
    listen: 127.0.0.1:0
    routes:
      - name: named-route
        match: {{ path_prefix: /named }}
        upstream: echo
      - match: {{ path_prefix: /other }}
        upstream: echo
upstreams:
  echo:
    endpoints: [{}]
",
        up.addr
    );
    let kaname = Kaname::start(&config).await;
    let port = kaname.port("main");
    let client = HttpClient::http1();
    for _ in 0..3 {
        assert_eq!(client.get(&url(port, "/named")).await.status, 200);
    }
    let post = Request::post(url(port, "/named?status=201"))
        .body(full("x"))
        .expect("request");
    assert_eq!(client.send(post).await.status, 201);
    for _ in 0..2 {
        assert_eq!(client.get(&url(port, "/other")).await.status, 200);
    }
    assert_eq!(client.get(&url(port, "/nowhere")).await.status, 404);

    let total = |route: &str, method: &str, code: &str| {
        let upstream = if route.is_empty() { "" } else { "echo" };
        format!(
            "kaname_requests_total{{listener=\"main\",route=\"{route}\",\
             upstream=\"{upstream}\",method=\"{method}\",code=\"{code}\"}}"
        )
    };
    let expected = [
        (total("named-route", "GET", "200"), 3.0),
        (total("named-route", "POST", "201"), 1.0),
        (total("main-2", "GET", "200"), 2.0),
        (total("", "GET", "404"), 1.0),
        (
            r#"kaname_request_duration_seconds_count{listener="main",route="named-route",upstream="echo"}"#.to_string(),
            4.0,
        ),
    ];
    // Counters may be bumped as the response body ends: poll, bounded.
    let admin = HttpClient::http1();
    let started = Instant::now();
    let (metrics, missing) = loop {
        let resp = admin.get(&kaname.admin_url("/metrics")).await;
        assert_eq!(resp.status, 200);
        let text = resp.text();
        let missing: Vec<String> = expected
            .iter()
            .filter(|(sel, value)| metric_value(&text, sel) != Some(*value))
            .map(|(sel, value)| format!("{sel} = {value} (found {:?})", metric_value(&text, sel)))
            .collect();
        if missing.is_empty() || started.elapsed() > Duration::from_secs(3) {
            break (text, missing);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        missing.is_empty(),
        "wrong samples: {missing:#?}\n/metrics:\n{metrics}"
    );
    for needle in [
        "# TYPE kaname_requests_total counter",
        "# TYPE kaname_request_duration_seconds histogram",
        "# TYPE kaname_requests_in_flight gauge",
        "# TYPE kaname_connections_open gauge",
        "# TYPE kaname_build_info gauge",
        r#"kaname_connections_open{listener="main"}"#,
        "process_resident_memory_bytes",
    ] {
        assert!(
            metrics.contains(needle),
            "/metrics lacks {needle:?}:\n{metrics}"
        );
    }
    let in_flight = r#"kaname_requests_in_flight{listener="main"}"#;
    assert_eq!(metric_value(&metrics, in_flight), Some(0.0), "{in_flight}");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("kaname_build_info{") && l.ends_with(" 1")),
        "kaname_build_info missing:\n{metrics}"
    );
}

/// An endpoint given by DNS name (`localhost`) is resolved and served, and
/// its address shows in the endpoint gauge; `dns_refresh` re-resolves it
/// (every 100 ms here) without disturbing traffic.
#[tokio::test]
async fn dns_name_endpoint_is_resolved_and_refreshed() {
    let up = TestUpstream::start("echo").await;
    let config = format!(
        "listeners:\n  main:\n    listen: 127.0.0.1:0\n    routes:\n      - upstream: echo\nupstreams:\n  echo:\n    endpoints: [\"localhost:{}\"]\n    dns_refresh: 100ms\n",
        up.addr.port()
    );
    let k = Kaname::start(&config).await;
    let port = k.port("main");
    let client = HttpClient::http1_no_pool();
    let started = Instant::now();
    let mut served = 0;
    // Requests across several refreshes (about 1 s, at most 200 requests).
    while started.elapsed() < Duration::from_secs(1) && served < 200 {
        let resp = client.get(&url(port, "/dns")).await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        served += 1;
    }
    assert!(served > 0);
    let metrics = client.get(&k.admin_url("/metrics")).await.text();
    let series = format!(
        r#"kaname_upstream_endpoint_healthy{{upstream="echo",endpoint="127.0.0.1:{}"}}"#,
        up.addr.port()
    );
    assert_eq!(metric_value(&metrics, &series), Some(1.0), "{metrics}");
}

/// limits.md `routes`: 100,000 prefix routes and 1,000 regex routes work —
/// the last of each is served by its own upstream, a path no route matches
/// is a 404 — and only routes that served have request series. Startup is
/// bounded by its own deadline (a debug build parses and indexes 6 MB of
/// YAML); no timing is asserted.
#[tokio::test]
async fn a_hundred_thousand_prefix_routes_and_a_thousand_regex_routes() {
    use std::fmt::Write;
    const PREFIX: usize = 100_000;
    const REGEX: usize = 1_000;
    const STARTUP_DEADLINE: Duration = Duration::from_secs(300);
    let prefix_up = TestUpstream::start("prefix").await;
    let regex_up = TestUpstream::start("regex").await;
    let last_up = TestUpstream::start("last").await;
    let mut config = String::from("listeners:\n  main:\n    listen: 127.0.0.1:0\n    routes:\n");
    for i in 0..PREFIX {
        let up = if i == PREFIX - 1 { "last" } else { "prefix" };
        write!(
            config,
            "      - match: {{ path_prefix: /r{i}/ }}\n        upstream: {up}\n"
        )
        .unwrap();
    }
    for i in 0..REGEX {
        let up = if i == REGEX - 1 { "last" } else { "regex" };
        write!(
            config,
            "      - match: {{ path_regex: \"^/re{i}/[0-9]+$\" }}\n        upstream: {up}\n"
        )
        .unwrap();
    }
    for (name, up) in [
        ("prefix", &prefix_up),
        ("regex", &regex_up),
        ("last", &last_up),
    ] {
        if name == "prefix" {
            config.push_str("upstreams:\n");
        }
        writeln!(config, "  {name}:\n    endpoints: [{}]", up.addr).unwrap();
    }

    let started = Instant::now();
    let mut k = Kaname::spawn(&config, &[]);
    k.wait_ready_within(STARTUP_DEADLINE).await;
    let port = k.port("main");
    let client = HttpClient::http1();
    eprintln!(
        "{} routes ready after {:?}",
        PREFIX + REGEX,
        started.elapsed()
    );

    async fn served_by(client: &HttpClient, port: u16, path: &str) -> (u16, Option<String>) {
        let resp = client.get(&url(port, path)).await;
        let upstream = resp.header("x-upstream").map(str::to_owned);
        (resp.status.as_u16(), upstream)
    }
    let served = |path: String| {
        let client = &client;
        async move { served_by(client, port, &path).await }
    };
    let last = format!("/r{}/deep/path", PREFIX - 1);
    assert_eq!(served(last).await, (200, Some("last".into())));
    assert_eq!(served("/r5/x".into()).await, (200, Some("prefix".into())));
    let last_regex = format!("/re{}/42", REGEX - 1);
    assert_eq!(served(last_regex).await, (200, Some("last".into())));
    assert_eq!(served("/re5/7".into()).await, (200, Some("regex".into())));
    for unmatched in ["/nothing", "/r100000/x", "/r99999", "/re999/x", "/re1000/1"] {
        assert_eq!(served(unmatched.into()).await.0, 404, "{unmatched}");
    }

    // Series for the four routes that served and the no-route label only.
    let text = client.get(&k.admin_url("/metrics")).await.text();
    let series: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("kaname_request_duration_seconds_count{"))
        .collect();
    assert_eq!(series.len(), 5, "{series:#?}");
    for (route, upstream, n) in [
        (format!("main-{PREFIX}"), "last", 1.0),
        ("main-6".to_string(), "prefix", 1.0),
        (format!("main-{}", PREFIX + REGEX), "last", 1.0),
        (format!("main-{}", PREFIX + 6), "regex", 1.0),
        (String::new(), "", 5.0),
    ] {
        let sel = format!(
            r#"kaname_request_duration_seconds_count{{listener="main",route="{route}",upstream="{upstream}"}}"#
        );
        assert_eq!(metric_value(&text, &sel), Some(n), "{sel}\n{series:#?}");
    }
    assert!(
        !text.contains("route=\"main-7\""),
        "a route that never served has no series"
    );
}
