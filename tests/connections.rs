//! Connection-level behaviour and hostile input on raw sockets: idle and
//! header-read timeouts, oversized heads and bodies, request smuggling
//! shapes. The upstream counts what reaches it.

mod support;

use std::time::{Duration, Instant};

use support::{one_route_config, HttpClient, Kaname, TestUpstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A raw TCP connection to kaname's listener.
async fn connect(port: u16) -> TcpStream {
    TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect")
}

/// Reads until EOF or `deadline`; returns what was read and whether the
/// peer closed.
async fn read_until_close(s: &mut TcpStream, deadline: Duration) -> (String, bool) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let start = Instant::now();
    loop {
        let left = deadline.saturating_sub(start.elapsed());
        if left.is_zero() {
            return (String::from_utf8_lossy(&buf).into_owned(), false);
        }
        match tokio::time::timeout(left, s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&buf).into_owned(), true),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => return (String::from_utf8_lossy(&buf).into_owned(), false),
        }
    }
}

/// Sends request number `i` for `path` on an open connection and expects a
/// 200 (the rest of the small response is drained).
async fn get_200(s: &mut TcpStream, path: &str, i: usize) {
    let req = format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut head = [0u8; 12];
    s.read_exact(&mut head)
        .await
        .unwrap_or_else(|e| panic!("request {i}: connection closed: {e}"));
    assert_eq!(&head, b"HTTP/1.1 200");
    let mut rest = [0u8; 8192];
    let _ = tokio::time::timeout(Duration::from_millis(100), s.read(&mut rest)).await;
}

#[tokio::test]
async fn idle_keep_alive_connection_is_closed_after_idle_timeout() {
    let up = TestUpstream::start("up").await;
    let k = Kaname::start(&one_route_config(up.addr, "    idle_timeout: 300ms\n", "")).await;
    let port = k.port("main");

    let mut s = connect(port).await;
    // Busy for ~1 s (a request every 100 ms): activity keeps it open.
    for i in 0..10 {
        get_200(&mut s, "/busy", i).await;
    }
    let started = Instant::now();
    let (_, closed) = read_until_close(&mut s, Duration::from_secs(5)).await;
    assert!(closed, "idle connection still open 5 s later");
    println!("idle connection closed after {:?}", started.elapsed());
}

/// `header_read_timeout` bounds a head, not the wait between keep-alive
/// requests: that is `idle_timeout`'s (a client reusing a pooled connection
/// the proxy just closed can lose its request).
#[tokio::test]
async fn keep_alive_idle_longer_than_header_read_timeout_stays_open() {
    let up = TestUpstream::start("up").await;
    let k = Kaname::start(&one_route_config(
        up.addr,
        "    header_read_timeout: 300ms\n    idle_timeout: 1m\n",
        "",
    ))
    .await;
    let port = k.port("main");

    let mut s = connect(port).await;
    for i in 0..2 {
        get_200(&mut s, "/kept", i).await;
        // Idle three times header_read_timeout: the time itself is the test.
        tokio::time::sleep(Duration::from_millis(900)).await;
    }
    assert_eq!(
        up.recorded().iter().filter(|r| r.path == "/kept").count(),
        2
    );

    // A connection that never sends a head is cut after header_read_timeout,
    // not after idle_timeout.
    let mut quiet = connect(port).await;
    let started = Instant::now();
    let (text, closed) = read_until_close(&mut quiet, Duration::from_secs(5)).await;
    assert!(closed, "a silent connection still open 5 s later");
    assert!(text.is_empty(), "answered a silent connection: {text:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "closed before header_read_timeout: {:?}",
        started.elapsed()
    );
}

/// The first bytes of a connection decide how it is served (a peek for
/// the HTTP/2 preface): a client that sends a part of the preface, or one
/// byte of a request, and then nothing, is still cut at
/// `header_read_timeout`, and nothing reaches the upstream.
#[tokio::test]
async fn a_partial_preface_or_first_byte_then_silence_is_cut() {
    let up = TestUpstream::start("up").await;
    let k = Kaname::start(&one_route_config(
        up.addr,
        "    header_read_timeout: 300ms\n    idle_timeout: 1m\n",
        "",
    ))
    .await;
    let port = k.port("main");
    for first in [&b"PRI * HTTP/2"[..], b"G", b"GET /slow HTTP/1.1\r\n"] {
        let mut s = connect(port).await;
        s.write_all(first).await.expect("write");
        let started = Instant::now();
        let (_, closed) = read_until_close(&mut s, Duration::from_secs(5)).await;
        assert!(
            closed,
            "{:?} then silence: still open 5 s later",
            String::from_utf8_lossy(first)
        );
        assert!(
            started.elapsed() >= Duration::from_millis(200),
            "{:?}: closed before header_read_timeout ({:?})",
            String::from_utf8_lossy(first),
            started.elapsed()
        );
    }
    assert!(up.recorded().is_empty(), "nothing reached the upstream");
    // The listener still serves.
    let mut s = connect(port).await;
    get_200(&mut s, "/after", 0).await;
}

#[tokio::test]
async fn an_http2_preface_with_no_request_is_closed_at_header_read_timeout() {
    let up = TestUpstream::start("up").await;
    let k = Kaname::start(&one_route_config(
        up.addr,
        "    header_read_timeout: 300ms\n    idle_timeout: 1m\n",
        "",
    ))
    .await;
    let port = k.port("main");
    // The whole preface and an empty SETTINGS frame, then PINGs only: a
    // connection that never asks for anything.
    let mut s = connect(port).await;
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .expect("preface");
    let started = Instant::now();
    let ping = b"\0\0\x08\x06\0\0\0\0\0pingping";
    let _ = s.write_all(ping).await;
    let (seen, closed) = read_until_close(&mut s, Duration::from_secs(5)).await;
    assert!(closed, "preface then nothing: still open 5 s later");
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "closed before header_read_timeout ({:?})",
        started.elapsed()
    );
    assert!(
        !seen.is_empty(),
        "kaname's SETTINGS (and GOAWAY) came first"
    );

    // A connection that asked once is not cut by it: its next request,
    // past header_read_timeout, is served on the same connection.
    let mut client = support::request_model::h2_connect(port).await.expect("h2");
    for i in 0..2 {
        let req = http::Request::get(format!("http://127.0.0.1:{port}/again/{i}"))
            .body(())
            .unwrap();
        client = client.ready().await.expect("ready");
        let (res, _) = client.send_request(req, true).expect("send");
        let res = res.await.expect("answered on the same connection");
        assert_eq!(res.status(), 200);
        if i == 0 {
            // Past header_read_timeout with the connection idle.
            tokio::time::sleep(Duration::from_millis(700)).await;
        }
    }
    assert_eq!(up.recorded().len(), 2);
}

#[tokio::test]
async fn slowloris_is_cut_and_does_not_starve_others() {
    let up = TestUpstream::start("up").await;
    let k = Kaname::start(&one_route_config(
        up.addr,
        "    header_read_timeout: 500ms\n",
        "",
    ))
    .await;
    let port = k.port("main");

    // 50 clients sending their head a byte at a time.
    let mut slow = Vec::new();
    for _ in 0..50 {
        slow.push(tokio::spawn(async move {
            let mut s = connect(port).await;
            let head =
                b"GET /slow HTTP/1.1\r\nhost: x\r\nx-a: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
            let started = Instant::now();
            for b in head.iter() {
                if s.write_all(&[*b]).await.is_err() {
                    return started.elapsed();
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                if started.elapsed() > Duration::from_secs(10) {
                    break;
                }
            }
            let (_, _) = read_until_close(&mut s, Duration::from_secs(1)).await;
            started.elapsed()
        }));
    }
    // Meanwhile a normal client is served at once.
    let client = HttpClient::http1();
    for _ in 0..5 {
        let r = client.get(&format!("http://127.0.0.1:{port}/normal")).await;
        assert_eq!(r.status, 200);
    }
    for t in slow {
        let took = t.await.expect("slow client");
        assert!(
            took < Duration::from_secs(5),
            "a byte-at-a-time client was not cut off ({took:?})"
        );
    }
    assert!(
        up.recorded().iter().all(|r| r.path != "/slow"),
        "no slow request reached the upstream"
    );
}

#[tokio::test]
async fn oversized_head_gets_431() {
    let up = TestUpstream::start("up").await;
    let k = Kaname::start(&one_route_config(
        up.addr,
        "    max_header_bytes: 16KiB\n",
        "",
    ))
    .await;
    let port = k.port("main");
    let mut s = connect(port).await;
    let big = "a".repeat(20 * 1024);
    let req = format!("GET /big HTTP/1.1\r\nhost: x\r\nx-big: {big}\r\n\r\n");
    let _ = s.write_all(req.as_bytes()).await;
    let (text, closed) = read_until_close(&mut s, Duration::from_secs(5)).await;
    assert!(
        text.starts_with("HTTP/1.1 431"),
        "expected 431, got {:?}",
        text.lines().next()
    );
    assert!(closed, "connection closed after 431");
    assert_eq!(up.hits(), 0);
}

#[tokio::test]
async fn body_over_the_limit_gets_413() {
    let up = TestUpstream::start("up").await;
    let k = Kaname::start(&one_route_config(
        up.addr,
        "    max_request_body: 1KiB\n",
        "",
    ))
    .await;
    let port = k.port("main");
    // Declared length over the limit: refused before the upstream is asked.
    let mut s = connect(port).await;
    let body = "b".repeat(4096);
    let req = format!(
        "POST /up HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let (text, _) = read_until_close(&mut s, Duration::from_secs(2)).await;
    assert!(
        text.starts_with("HTTP/1.1 413"),
        "got {:?}",
        text.lines().next()
    );
    assert!(text.contains("kaname-error: payload_too_large"));
    assert_eq!(up.hits(), 0, "the upstream never saw the request");

    // Chunked, no declared length: cut when the limit is crossed.
    let mut s = connect(port).await;
    let mut req =
        String::from("POST /up HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n");
    for _ in 0..8 {
        req.push_str("200\r\n");
        req.push_str(&"c".repeat(0x200));
        req.push_str("\r\n");
    }
    req.push_str("0\r\n\r\n");
    let _ = s.write_all(req.as_bytes()).await;
    let (text, _) = read_until_close(&mut s, Duration::from_secs(5)).await;
    assert!(
        text.starts_with("HTTP/1.1 413"),
        "got {:?}",
        text.lines().next()
    );
    assert!(
        up.recorded()
            .iter()
            .all(|r| r.body_len.unwrap_or(0) <= 1024),
        "the upstream never received more than the limit"
    );
}

/// Each smuggling shape is refused with 400 and the connection closed; the
/// upstream sees none of them.
#[tokio::test]
async fn request_smuggling_shapes_are_refused() {
    refused_with_400(&[
        (
            "two different content-lengths",
            "POST /s HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\ncontent-length: 5\r\n\r\nabcde",
        ),
        (
            "transfer-encoding chunked, identity",
            "POST /s HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        ),
        (
            "obs-fold header line",
            "GET /s HTTP/1.1\r\nhost: x\r\nx-folded: a\r\n b\r\n\r\n",
        ),
        (
            "space before the colon",
            "GET /s HTTP/1.1\r\nhost : x\r\n\r\n",
        ),
    ])
    .await;
}

/// hyper alone accepts these two (TE wins over CL; bare LF is read as
/// CRLF); kaname's strict head check (`h1_guard`) refuses them first.
#[tokio::test]
async fn ambiguous_framing_is_refused() {
    refused_with_400(&[
        (
            "content-length and transfer-encoding",
            "POST /s HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
        ("bare LF line endings", "GET /s HTTP/1.1\nhost: x\n\n"),
    ])
    .await;
}

async fn refused_with_400(cases: &[(&str, &str)]) {
    let up = TestUpstream::start("up").await;
    let k = Kaname::start(&one_route_config(up.addr, "", "")).await;
    let port = k.port("main");
    let mut wrong = Vec::new();
    for (name, raw) in cases {
        let mut s = connect(port).await;
        let _ = s.write_all(raw.as_bytes()).await;
        let (text, closed) = read_until_close(&mut s, Duration::from_secs(3)).await;
        let status = text.lines().next().unwrap_or("").to_owned();
        if !status.starts_with("HTTP/1.1 400") || !closed {
            wrong.push(format!("{name}: {status:?} closed={closed}"));
        }
    }
    assert!(wrong.is_empty(), "not refused with 400 + close: {wrong:#?}");
    assert_eq!(up.hits(), 0, "the upstream saw a smuggling attempt");
}
