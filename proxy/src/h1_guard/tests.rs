//! Unit tests: the scanner alone, then the guard in front of a real hyper
//! server.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::scanner::{Scanner, State, Verdict};
use super::H1Guard;

// === the scanner alone ===

/// Feeds `chunks` one after the other; returns the bytes passed and the
/// first verdict that was not a pass.
fn scan_all(s: &mut Scanner, chunks: &[&[u8]]) -> (Vec<u8>, Option<Verdict>) {
    let mut passed = Vec::new();
    for chunk in chunks {
        let mut rest = *chunk;
        while !rest.is_empty() {
            match s.scan(rest) {
                Verdict::Pass(n) => {
                    assert!(n > 0 && n <= rest.len(), "pass of {n}");
                    passed.extend_from_slice(&rest[..n]);
                    rest = &rest[n..];
                }
                other => return (passed, Some(other)),
            }
        }
    }
    (passed, None)
}

/// The same input fed whole, byte by byte, and cut at every place.
fn every_split(input: &[u8]) -> Vec<Vec<&[u8]>> {
    let mut out = vec![vec![input], input.chunks(1).collect()];
    for cut in 1..input.len() {
        out.push(vec![&input[..cut], &input[cut..]]);
    }
    out
}

#[test]
fn good_pipelined_requests_pass_whole_however_split() {
    let input: &[u8] = b"GET /a HTTP/1.1\r\nhost: x\r\n\r\n\
POST /b HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello\
POST /c HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n\
5;ext=1\r\nhello\r\na \r\n0123456789\r\n0\r\nx-t: 1\r\ny-t: 2\r\n\r\n\
\r\nGET /d HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n";
    for chunks in every_split(input) {
        let mut s = Scanner::new(8192);
        let (passed, verdict) = scan_all(&mut s, &chunks);
        assert_eq!(
            verdict,
            None,
            "split {:?}",
            chunks.iter().map(|c| c.len()).collect::<Vec<_>>()
        );
        assert_eq!(passed, input);
        assert_eq!(s.state, State::Head, "ready for the next head");
    }
}

#[test]
fn body_bytes_are_not_read_as_heads() {
    // A body that looks like a bad head is only a body.
    let body = b"GET /x HTTP/1.1\nhost: y\n\n";
    let mut input = format!(
        "POST /b HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    input.extend_from_slice(body);
    input.extend_from_slice(b"POST /c HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n19\r\n");
    input.extend_from_slice(body);
    input.extend_from_slice(b"\r\n0\r\n\r\n");
    for chunks in every_split(&input) {
        let mut s = Scanner::new(8192);
        assert_eq!(scan_all(&mut s, &chunks), (input.clone(), None));
    }
}

fn refused(head: &str) -> &'static str {
    let mut s = Scanner::new(8192);
    match scan_all(&mut s, &[head.as_bytes()]) {
        (_, Some(Verdict::BadHead(r))) => r,
        other => panic!("{head:?} was not refused: {other:?}"),
    }
}

#[test]
fn smuggling_shapes_are_refused() {
    let cases = [
        (
            "POST / HTTP/1.1\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n",
            "both",
        ),
        (
            "POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length: 4\r\n\r\n",
            "both",
        ),
        ("GET / HTTP/1.1\nhost: x\n\n", "bare LF"),
        ("GET / HTTP/1.1\r\nhost: x\n\r\n", "bare LF"),
        ("GET / HTTP/1.1\r\nhost: x\r\n\n", "bare LF"),
        (
            "POST / HTTP/1.1\r\ncontent-length: 4\r\ncontent-length: 5\r\n\r\n",
            "differing",
        ),
        (
            "POST / HTTP/1.1\r\ncontent-length: 4, 5\r\n\r\n",
            "differing",
        ),
        (
            "POST / HTTP/1.1\r\ncontent-length: +4\r\n\r\n",
            "invalid content-length",
        ),
        (
            "POST / HTTP/1.1\r\ncontent-length: 99999999999999999999\r\n\r\n",
            "invalid",
        ),
        (
            "POST / HTTP/1.1\r\ntransfer-encoding: chunked, identity\r\n\r\n",
            "not ending",
        ),
        (
            "POST / HTTP/1.1\r\ntransfer-encoding: gzip\r\n\r\n",
            "not ending",
        ),
        (
            "POST / HTTP/1.1\r\ntransfer-encoding: chunked, chunked\r\n\r\n",
            "not ending",
        ),
        (
            "POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ntransfer-encoding: x\r\n\r\n",
            "not ending",
        ),
        ("GET / HTTP/1.1\r\nx-a: a\r\n b\r\n\r\n", "obs-fold"),
        ("GET / HTTP/1.1\r\nx-a: a\r\n\tb\r\n\r\n", "obs-fold"),
        ("GET / HTTP/1.1\r\nhost : x\r\n\r\n", "whitespace"),
        (
            "GET / HTTP/1.1\r\ncontent-length\t: 0\r\n\r\n",
            "whitespace",
        ),
        ("GET / HTTP/1.1\r\nx-a: a\0b\r\n\r\n", "NUL"),
        ("GET / HTTP/1.1\r\nx-a: a\rb\r\n\r\n", "bare CR"),
        ("GET / HTTP/1.1\r\nno colon\r\n\r\n", "colon"),
        // A bad byte is the verdict even after a bad line.
        ("GET / HTTP/1.1\r\nhost : x\r\nx-a: a\0b\r\n\r\n", "NUL"),
        ("GET / HTTP/1.1\r\nno colon\r\nhost: x\n\r\n", "bare LF"),
    ];
    for (head, want) in cases {
        let reason = refused(head);
        assert!(reason.contains(want), "{head:?}: {reason:?} lacks {want:?}");
        // Whole, a head is checked as its end is found (one pass); cut, it
        // is gathered first. Either way the same reason.
        for chunks in every_split(head.as_bytes()) {
            let mut s = Scanner::new(8192);
            match scan_all(&mut s, &chunks) {
                (_, Some(Verdict::BadHead(r))) => {
                    assert_eq!(r, reason, "{head:?} cut as {chunks:?}");
                }
                other => panic!("{head:?} cut as {chunks:?}: {other:?}"),
            }
        }
    }
}

#[test]
fn a_head_in_one_read_is_checked_as_its_end_is_found() {
    use super::head::{scan_head, Framing, HeadScan};
    let head = b"POST /a HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n\r\n";
    // What follows the blank line is the body's, whatever its bytes.
    let mut data = head.to_vec();
    data.extend_from_slice(b"\0\n\r");
    match scan_head(&data) {
        HeadScan::Done(Ok(info), end) => {
            assert_eq!(end, head.len());
            assert_eq!(info.framing, Framing::Length(3));
        }
        other => panic!("{other:?}"),
    }
    // Any part of it is a head still to come.
    for cut in 0..head.len() {
        assert_eq!(scan_head(&head[..cut]), HeadScan::More, "cut at {cut}");
    }
    // A bad line is known at the blank line; a bad byte at once.
    assert!(matches!(
        scan_head(b"GET / HTTP/1.1\r\nno colon\r\n\r\nrest"),
        HeadScan::Done(Err("header line without a colon"), 28)
    ));
    assert_eq!(
        scan_head(b"GET / HTTP/1.1\r\nx: a\0"),
        HeadScan::BadByte("NUL byte")
    );
}

#[test]
fn accepted_framings() {
    let ok = [
        "POST / HTTP/1.1\r\ncontent-length: 3\r\ncontent-length: 3\r\n\r\nabc",
        "POST / HTTP/1.1\r\ncontent-length: 3, 3\r\n\r\nabc",
        "POST / HTTP/1.1\r\ntransfer-encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        "POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\ntransfer-encoding: CHUNKED\r\n\r\n0\r\n\r\n",
        "GET / HTTP/1.1\r\nx-empty:\r\nx-tab:\ta\t\r\n\r\n",
    ];
    for input in ok {
        let mut s = Scanner::new(8192);
        let got = scan_all(&mut s, &[input.as_bytes()]);
        assert_eq!(got, (input.as_bytes().to_vec(), None), "{input:?}");
        assert_eq!(s.state, State::Head, "{input:?}");
    }
}

#[test]
fn a_bad_head_after_good_bytes_lets_them_go_first() {
    let good = b"POST /a HTTP/1.1\r\ncontent-length: 2\r\n\r\nok";
    let mut input = good.to_vec();
    input.extend_from_slice(b"GET /b HTTP/1.1\nhost: x\n\n");
    let mut s = Scanner::new(8192);
    let (passed, verdict) = scan_all(&mut s, &[&input]);
    assert_eq!(passed, good);
    assert_eq!(verdict, Some(Verdict::BadHead("bare LF line ending")));
    // Once refused, always refused.
    assert!(matches!(
        s.scan(b"GET / HTTP/1.1\r\n\r\n"),
        Verdict::BadHead(_)
    ));
}

#[test]
fn malformed_chunks_fail_after_the_good_bytes() {
    let cases: [&[u8]; 6] = [
        b"5\nhello\r\n0\r\n\r\n",      // bare LF after the size
        b"5\r\nhelloX\r\n0\r\n\r\n",   // no CRLF after the data
        b"\r\nhello\r\n0\r\n\r\n",     // no size digits
        b"11111111111111111\r\n",      // size overflow
        b"0\r\nx-t: 1\n\r\n",          // bare LF in a trailer
        b"3;a\nb\r\nabc\r\n0\r\n\r\n", // bare LF in an extension
    ];
    let head = b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n";
    for body in cases {
        let mut input = head.to_vec();
        input.extend_from_slice(body);
        let mut s = Scanner::new(8192);
        let (passed, verdict) = scan_all(&mut s, &[&input]);
        assert!(
            matches!(verdict, Some(Verdict::BadBody(_))),
            "{:?}: {verdict:?}",
            String::from_utf8_lossy(body)
        );
        assert!(passed.len() >= head.len() && passed.len() < input.len());
    }
}

#[test]
fn http2_preface_turns_the_check_off() {
    let input: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04\x00\x00\x00\x00\x00\n\n";
    for chunks in every_split(input) {
        let mut s = Scanner::new(8192);
        assert_eq!(scan_all(&mut s, &chunks), (input.to_vec(), None));
        assert!(s.is_off());
    }
    // Only as the first bytes of a connection.
    let mut s = Scanner::new(8192);
    let input: &[u8] = b"GET / HTTP/1.1\r\n\r\nPRI * HTTP/2.0\r\n\r\nSM\n\n";
    let (passed, _) = scan_all(&mut s, &[input]);
    assert!(!s.is_off(), "still checked (hyper refuses that version)");
    assert!(
        passed.len() < input.len(),
        "the bare LF after it was not passed"
    );
}

#[test]
fn a_head_over_the_limit_is_left_to_hyper() {
    let mut s = Scanner::new(64);
    let big = format!("GET / HTTP/1.1\r\nx-big: {}\r\n", "a".repeat(100));
    let (passed, verdict) = scan_all(&mut s, &[big.as_bytes()]);
    assert_eq!((passed.len(), verdict), (big.len(), None));
    assert!(s.is_off(), "hyper answers 431 and closes");
}

#[test]
fn switching_protocols_waits_for_the_response() {
    let head = b"GET /ws HTTP/1.1\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n";
    let mut s = Scanner::new(8192);
    assert_eq!(s.scan(head), Verdict::Pass(head.len()));
    assert_eq!(s.scan(b"\x81\x05hello"), Verdict::Hold);
    assert!(s.saw_response(b"HTTP/1.1 101 Switching Protocols\r\n"));
    assert!(s.is_off());

    // Refused upgrade: still HTTP/1, still checked.
    let mut s = Scanner::new(8192);
    assert_eq!(s.scan(head), Verdict::Pass(head.len()));
    assert!(s.saw_response(b"HTTP/1.1 404 Not Found\r\n"));
    assert!(matches!(s.scan(b"GET / HTTP/1.1\n\n"), Verdict::BadHead(_)));

    // CONNECT switches on any 2xx.
    let mut s = Scanner::new(8192);
    let connect = b"CONNECT a:443 HTTP/1.1\r\nhost: a:443\r\n\r\n";
    assert_eq!(s.scan(connect), Verdict::Pass(connect.len()));
    assert!(s.saw_response(b"HTTP/1.1 200 OK\r\n"));
    assert!(s.is_off());
}

// === the guard in front of a real hyper server ===

/// The head timeout of the served connections.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Answers `METHOD PATH BODYLEN`, counting the requests it saw; `/ws`
/// with an upgrade header switches and echoes the raw bytes.
async fn serve(io: DuplexStream, seen: Arc<AtomicUsize>) {
    let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        let seen = seen.clone();
        async move {
            seen.fetch_add(1, Ordering::SeqCst);
            if req.uri().path() == "/ws" && req.headers().contains_key("upgrade") {
                let on = hyper::upgrade::on(&mut req);
                tokio::spawn(async move {
                    if let Ok(up) = on.await {
                        let mut up = TokioIo::new(up);
                        let mut buf = [0u8; 64];
                        while let Ok(n) = up.read(&mut buf).await {
                            if n == 0 || up.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                });
                let res = Response::builder()
                    .status(StatusCode::SWITCHING_PROTOCOLS)
                    .header("upgrade", "echo")
                    .header("connection", "upgrade")
                    .body(Full::new(Bytes::new()))
                    .unwrap_or_default();
                return Ok::<_, hyper::Error>(res);
            }
            let line = format!("{} {}", req.method(), req.uri().path());
            let body = req.into_body().collect().await?.to_bytes();
            Ok(Response::new(Full::new(Bytes::from(format!(
                "{line} {}",
                body.len()
            )))))
        }
    });
    let io = H1Guard::new(TokioIo::new(io), 8192, true, HEAD_TIMEOUT);
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(io, svc)
        .with_upgrades()
        .await;
}

/// Sends `chunks` (yielding between them so the server reads them apart)
/// and reads until the server closes or goes quiet.
async fn exchange(chunks: &[&[u8]]) -> (String, usize) {
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let seen = Arc::new(AtomicUsize::new(0));
    tokio::spawn(serve(server, seen.clone()));
    for c in chunks {
        // The server may refuse and close before all is sent.
        if client.write_all(c).await.is_err() {
            break;
        }
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    // Paused time: the timeout fires as soon as everything is idle.
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf)).await
    {
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    (
        String::from_utf8_lossy(&got).into_owned(),
        seen.load(Ordering::SeqCst),
    )
}

fn statuses(text: &str) -> Vec<&str> {
    text.match_indices("HTTP/1.1 ")
        .map(|(i, _)| &text[i + 9..i + 12])
        .collect()
}

#[tokio::test(start_paused = true)]
async fn hyper_serves_pipelined_requests_through_the_guard() {
    let input: &[u8] = b"GET /a HTTP/1.1\r\nhost: x\r\n\r\n\
POST /b HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello\
POST /c HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n\
5\r\nhello\r\n3\r\nabc\r\n0\r\nx-t: 1\r\n\r\n\
GET /d HTTP/1.1\r\nhost: x\r\n\r\n";
    for chunks in [
        vec![input],
        input.chunks(1).collect(),
        input.chunks(7).collect(),
    ] {
        let (text, seen) = exchange(&chunks).await;
        assert_eq!(statuses(&text), ["200"; 4], "{text}");
        for want in ["GET /a 0", "POST /b 5", "POST /c 8", "GET /d 0"] {
            assert!(text.contains(want), "{want} missing in {text}");
        }
        assert_eq!(seen, 4);
    }
}

#[tokio::test(start_paused = true)]
async fn bad_heads_get_400_and_close_and_never_reach_the_service() {
    for bad in [
        "POST /s HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
        "GET /s HTTP/1.1\nhost: x\n\n",
        "GET /s HTTP/1.1\r\nhost: x\r\nx-a: 1\r\n x\r\n\r\n",
    ] {
        let split: Vec<&[u8]> = bad.as_bytes().chunks(5).collect();
        for chunks in [vec![bad.as_bytes()], split] {
            let (text, seen) = exchange(&chunks).await;
            assert_eq!(statuses(&text), ["400"], "{bad:?}: {text}");
            assert_eq!(seen, 0, "{bad:?} reached the service");
        }
    }
    // After a good request in the same pipeline: its answer comes first.
    let input = b"GET /ok HTTP/1.1\r\nhost: x\r\n\r\nGET /s HTTP/1.1\nhost: x\n\nGET /never HTTP/1.1\r\n\r\n";
    let (text, seen) = exchange(&[input]).await;
    assert_eq!(statuses(&text), ["200", "400"], "{text}");
    assert_eq!(seen, 1);
}

#[tokio::test(start_paused = true)]
async fn a_malformed_chunked_body_fails_the_request() {
    let input =
        b"POST /c HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n";
    let (text, _) = exchange(&[input]).await;
    assert!(
        !text.contains("POST /c 5"),
        "the body was read whole: {text}"
    );
}

#[tokio::test(start_paused = true)]
async fn an_upgraded_connection_is_not_inspected() {
    let head = b"GET /ws HTTP/1.1\r\nhost: x\r\nupgrade: echo\r\nconnection: upgrade\r\n\r\n";
    // Bytes of the new protocol, bare LFs and all, sent right after.
    let raw = b"not\nhttp\n\n";
    let (text, seen) = exchange(&[head, raw]).await;
    assert_eq!(statuses(&text), ["101"], "{text}");
    assert!(text.ends_with("not\nhttp\n\n"), "not echoed: {text:?}");
    assert_eq!(seen, 1);

    // The same upgrade request on a path that does not switch: the
    // next head is still checked.
    let head = b"GET /no HTTP/1.1\r\nhost: x\r\nupgrade: echo\r\nconnection: upgrade\r\n\r\n";
    let (text, seen) = exchange(&[head, b"GET /s HTTP/1.1\nhost: x\n\n"]).await;
    assert_eq!(statuses(&text), ["200", "400"], "{text}");
    assert_eq!(seen, 1);
}

/// Reads until the server closes (Some(time it took)) or 60 s pass.
async fn closed_after(client: &mut DuplexStream) -> Option<Duration> {
    let start = tokio::time::Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(60), client.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(start.elapsed()),
            Ok(Ok(_)) => continue,
            Err(_) => return None,
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_head_slower_than_the_timeout_is_cut() {
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let seen = Arc::new(AtomicUsize::new(0));
    tokio::spawn(serve(server, seen.clone()));
    // A byte every 2 s: the head would take 30 s.
    let head = b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n";
    let start = tokio::time::Instant::now();
    for b in head {
        if client.write_all(&[*b]).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let took = start.elapsed() + closed_after(&mut client).await.unwrap_or(Duration::MAX / 2);
    assert!(took < Duration::from_secs(31), "not cut: {took:?}");
    assert_eq!(
        seen.load(Ordering::SeqCst),
        0,
        "the slow request was served"
    );
}

#[tokio::test(start_paused = true)]
async fn a_connection_sending_nothing_is_cut_after_the_timeout() {
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    tokio::spawn(serve(server, Arc::new(AtomicUsize::new(0))));
    let took = closed_after(&mut client).await;
    assert_eq!(took, Some(HEAD_TIMEOUT), "closed after {took:?}");
}

#[tokio::test(start_paused = true)]
async fn an_idle_keep_alive_connection_outlives_the_head_timeout() {
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let seen = Arc::new(AtomicUsize::new(0));
    tokio::spawn(serve(server, seen.clone()));
    let mut buf = [0u8; 4096];
    for path in ["/a", "/b"] {
        let req = format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n");
        client.write_all(req.as_bytes()).await.expect("write");
        let n = client.read(&mut buf).await.expect("read");
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(text.starts_with("HTTP/1.1 200"), "{path}: {text}");
        assert!(text.contains(&format!("GET {path} 0")), "{text}");
        // Idle for six head timeouts between the two requests.
        tokio::time::sleep(HEAD_TIMEOUT * 6).await;
    }
    assert_eq!(seen.load(Ordering::SeqCst), 2);
}
