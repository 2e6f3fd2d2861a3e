//! Hostile HTTP/2 clients, with raw frames over TCP: rapid reset
//! (CVE-2023-44487), SETTINGS and PING floods, a CONTINUATION flood. Each
//! time kaname must survive, keep serving other clients, cut the attacker
//! off (or hold it by backpressure), and keep its memory bounded.

mod support;

use std::time::{Duration, Instant};

use support::h2_frames::{frame, PREFACE};
use support::{
    limit_hits, metric_value, one_route_config, poll_metric, wait_metric, HttpClient, Kaname,
    TestUpstream, METRIC_DEADLINE,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const DATA_END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
/// How much kaname's RSS may grow during one attack: generous on purpose
/// (allocator slack, metrics), far below what an unbounded queue would take.
const RSS_GROWTH_KIB: u64 = 100 * 1024;

/// `GET /` over http with `:authority` 127.0.0.1.
fn get_block() -> Vec<u8> {
    support::h2_frames::get_block("/")
}

/// Connects and sends the preface and an empty SETTINGS frame.
async fn h2_connect(port: u16) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    s.write_all(PREFACE).await.expect("preface");
    s.write_all(&frame(SETTINGS, 0, 0, &[]))
        .await
        .expect("settings");
    s
}

/// Reads frames until the peer closes or `deadline`; returns whether it
/// closed and the GOAWAY error code, if one came.
async fn read_until_goaway_or_close(s: &mut TcpStream, deadline: Duration) -> (bool, Option<u32>) {
    let start = Instant::now();
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut goaway = None;
    loop {
        let left = deadline.saturating_sub(start.elapsed());
        if left.is_zero() {
            return (false, goaway);
        }
        match tokio::time::timeout(left, s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (true, goaway),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => return (false, goaway),
        }
        // Walk whole frames; keep a partial one for the next read.
        let mut at = 0;
        while buf.len() >= at + 9 {
            let len = u32::from_be_bytes([0, buf[at], buf[at + 1], buf[at + 2]]) as usize;
            if buf.len() < at + 9 + len {
                break;
            }
            if buf[at + 3] == GOAWAY && len >= 8 {
                let p = &buf[at + 9..];
                goaway = Some(u32::from_be_bytes([p[4], p[5], p[6], p[7]]));
            }
            at += 9 + len;
        }
        buf.drain(..at);
    }
}

/// Sends `frames` again and again for at most `deadline` or `max_bytes`;
/// stops early when kaname stops reading (a write blocked 2 s: backpressure)
/// or closes. Returns how much was sent.
async fn flood(s: &mut TcpStream, batch: &[u8], deadline: Duration, max_bytes: usize) -> usize {
    let start = Instant::now();
    let mut sent = 0;
    while start.elapsed() < deadline && sent < max_bytes {
        match tokio::time::timeout(Duration::from_secs(2), s.write_all(batch)).await {
            Ok(Ok(())) => sent += batch.len(),
            Ok(Err(_)) | Err(_) => break,
        }
    }
    sent
}

/// A normal HTTP/2 client and an HTTP/1 client are both served.
async fn others_are_served(port: u16) {
    for client in [HttpClient::http2(), HttpClient::http1()] {
        let r = client
            .try_get(
                &format!("http://127.0.0.1:{port}/normal"),
                Duration::from_secs(10),
            )
            .await
            .unwrap_or_else(|e| panic!("a normal client was not served: {e}"));
        assert_eq!(r.status, 200);
    }
}

async fn in_flight_settles(k: &Kaname) {
    let in_flight = "kaname_requests_in_flight{listener=\"main\"}";
    let (settled, text) = poll_metric(k, in_flight, METRIC_DEADLINE, |v| v == Some(0.0)).await;
    let last = metric_value(&text, in_flight);
    assert!(
        settled,
        "requests in flight did not return to 0 (last {last:?})"
    );
}

#[tokio::test]
async fn rapid_reset_is_cut_off_and_others_are_served() {
    // A slow upstream: every accepted stream would cost kaname work.
    let up = TestUpstream::slow("up", Duration::from_millis(200)).await;
    let k = Kaname::start(&one_route_config(up.addr, "", "")).await;
    let port = k.port("main");
    let rss_before = k.rss_kib();

    let mut s = h2_connect(port).await;
    let block = get_block();
    let mut batch = Vec::new();
    let mut stream = 1u32;
    let started = Instant::now();
    let mut sent_streams = 0u32;
    // Up to 100,000 streams, each opened and reset at once, in batches.
    'attack: while sent_streams < 100_000 && started.elapsed() < Duration::from_secs(20) {
        batch.clear();
        for _ in 0..100 {
            batch.extend(frame(
                HEADERS,
                DATA_END_STREAM | END_HEADERS,
                stream,
                &block,
            ));
            batch.extend(frame(RST_STREAM, 0, stream, &8u32.to_be_bytes()));
            stream += 2;
            sent_streams += 1;
        }
        match tokio::time::timeout(Duration::from_secs(2), s.write_all(&batch)).await {
            Ok(Ok(())) => {}
            _ => break 'attack,
        }
    }
    let (closed, goaway) = read_until_goaway_or_close(&mut s, Duration::from_secs(10)).await;
    println!(
        "rapid reset: {sent_streams} streams sent in {:?}; closed={closed} goaway={goaway:?}; upstream saw {}",
        started.elapsed(),
        up.hits()
    );
    assert!(
        closed || goaway.is_some(),
        "kaname kept serving a client resetting every stream"
    );
    assert!(
        (up.hits() as u32) < sent_streams / 10,
        "most reset streams still reached the upstream ({} of {sent_streams})",
        up.hits()
    );
    others_are_served(port).await;
    in_flight_settles(&k).await;
    let grown = k.rss_kib().saturating_sub(rss_before);
    assert!(grown < RSS_GROWTH_KIB, "RSS grew by {grown} KiB");
}

#[tokio::test]
async fn settings_and_ping_floods_stay_bounded() {
    let up = TestUpstream::start("up").await;
    let k = Kaname::start(&one_route_config(up.addr, "", "")).await;
    let port = k.port("main");
    let rss_before = k.rss_kib();

    // SETTINGS frames (each asks for an ACK) and PINGs (each asks for a
    // PONG), never reading the answers: kaname must stop reading (TCP
    // backpressure) or close, not queue answers without bound.
    let mut settings = Vec::new();
    for _ in 0..1000 {
        // SETTINGS_MAX_CONCURRENT_STREAMS = 100
        settings.extend(frame(SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100]));
    }
    let mut pings = Vec::new();
    for i in 0u64..1000 {
        pings.extend(frame(PING, 0, 0, &i.to_be_bytes()));
    }
    for (name, batch) in [("SETTINGS", settings), ("PING", pings)] {
        let mut s = h2_connect(port).await;
        let sent = flood(&mut s, &batch, Duration::from_secs(10), 200 << 20).await;
        println!("{name} flood: {} MiB sent", sent >> 20);
        // Meanwhile and after, others are served.
        others_are_served(port).await;
        let grown = k.rss_kib().saturating_sub(rss_before);
        assert!(
            grown < RSS_GROWTH_KIB,
            "{name} flood: RSS grew by {grown} KiB"
        );
        drop(s);
    }
    in_flight_settles(&k).await;
}

#[tokio::test]
async fn continuation_flood_is_cut_off() {
    let up = TestUpstream::start("up").await;
    let k = Kaname::start(&one_route_config(up.addr, "", "")).await;
    let port = k.port("main");
    let rss_before = k.rss_kib();

    let mut s = h2_connect(port).await;
    // HEADERS without END_HEADERS, then CONTINUATION frames that never end,
    // each full of literal headers.
    let first = frame(HEADERS, DATA_END_STREAM, 1, &get_block());
    s.write_all(&first).await.expect("headers");
    let mut block = Vec::new();
    while block.len() < 16_000 {
        // Literal without indexing, new name "x-flood", a 100-byte value.
        block.extend_from_slice(&[0x00, 7]);
        block.extend_from_slice(b"x-flood");
        block.push(100);
        block.extend_from_slice(&[b'a'; 100]);
    }
    let cont = frame(CONTINUATION, 0, 1, &block);
    let sent = flood(&mut s, &cont, Duration::from_secs(10), 500 << 20).await;
    let (closed, goaway) = read_until_goaway_or_close(&mut s, Duration::from_secs(10)).await;
    println!(
        "CONTINUATION flood: {} KiB sent; closed={closed} goaway={goaway:?}",
        sent >> 10
    );
    assert!(
        closed || goaway.is_some(),
        "an endless header block was not cut off"
    );
    assert!(
        sent < 100 << 20,
        "kaname read {} MiB of one header block",
        sent >> 20
    );
    assert_eq!(up.hits(), 0, "the endless request reached the upstream");
    others_are_served(port).await;
    let grown = k.rss_kib().saturating_sub(rss_before);
    assert!(grown < RSS_GROWTH_KIB, "RSS grew by {grown} KiB");
}

const WINDOW_UPDATE: u8 = 0x8;
const PRIORITY: u8 = 0x2;
const ENHANCE_YOUR_CALM: u32 = 0xb;

#[tokio::test]
async fn paused_rapid_reset_gets_goaway_and_a_bounded_upstream_load() {
    // Each stream is accepted before it is reset (a pause between HEADERS
    // and RST_STREAM), which h2's own pending-reset limit never sees.
    let up = TestUpstream::slow("up", Duration::from_millis(200)).await;
    let k = Kaname::start(&one_route_config(up.addr, "", "")).await;
    let port = k.port("main");
    let mut s = h2_connect(port).await;
    let block = get_block();
    let started = Instant::now();
    let mut stream = 1u32;
    let mut sent = 0u32;
    'attack: while sent < 5_000 && started.elapsed() < Duration::from_secs(15) {
        let mut heads = Vec::new();
        let mut resets = Vec::new();
        for _ in 0..50 {
            heads.extend(frame(
                HEADERS,
                DATA_END_STREAM | END_HEADERS,
                stream,
                &block,
            ));
            resets.extend(frame(RST_STREAM, 0, stream, &8u32.to_be_bytes()));
            stream += 2;
        }
        for batch in [heads, resets] {
            match tokio::time::timeout(Duration::from_secs(2), s.write_all(&batch)).await {
                Ok(Ok(())) => {}
                _ => break 'attack,
            }
            // Long enough for kaname to accept the streams first.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        sent += 50;
    }
    let (closed, goaway) = read_until_goaway_or_close(&mut s, Duration::from_secs(10)).await;
    println!(
        "paused rapid reset: {sent} streams in {:?}; closed={closed} goaway={goaway:?}; upstream saw {}",
        started.elapsed(),
        up.hits()
    );
    assert_eq!(goaway, Some(ENHANCE_YOUR_CALM), "closed={closed}");
    assert!(
        up.hits() <= 300,
        "{} reset streams reached the upstream before the GOAWAY",
        up.hits()
    );
    assert!(limit_hits(&k, "h2_resets").await >= 1.0);
    others_are_served(port).await;
    in_flight_settles(&k).await;
}

#[tokio::test]
async fn window_update_and_priority_floods_get_goaway() {
    let up = TestUpstream::start("up").await;
    let k = Kaname::start(&one_route_config(up.addr, "", "")).await;
    let port = k.port("main");
    let mut wu = Vec::new();
    for _ in 0..500 {
        wu.extend(frame(WINDOW_UPDATE, 0, 0, &1u32.to_be_bytes()));
    }
    let mut prio = Vec::new();
    for i in 0..500u32 {
        prio.extend(frame(PRIORITY, 0, 1 + 2 * i, &[0, 0, 0, 0, 16]));
    }
    for (name, batch) in [("WINDOW_UPDATE", wu), ("PRIORITY", prio)] {
        let mut s = h2_connect(port).await;
        let sent = flood(&mut s, &batch, Duration::from_secs(5), 50 << 20).await;
        let (closed, goaway) = read_until_goaway_or_close(&mut s, Duration::from_secs(10)).await;
        println!(
            "{name} flood: {} KiB sent; closed={closed} goaway={goaway:?}",
            sent >> 10
        );
        assert_eq!(goaway, Some(ENHANCE_YOUR_CALM), "{name}: closed={closed}");
        // What was sent includes what the kernel's socket buffers took
        // after kaname stopped reading (several MiB on loopback).
        assert!(
            sent < 32 << 20,
            "{name}: the flood was never cut off ({} KiB sent)",
            sent >> 10
        );
        others_are_served(port).await;
    }
    assert!(limit_hits(&k, "h2_control_frames").await >= 2.0);
}

#[tokio::test]
async fn streams_past_max_concurrent_streams_are_refused() {
    // Streams held open (no END_STREAM on a POST) past the listener's cap
    // get REFUSED_STREAM; the upstream sees at most the cap.
    let up = TestUpstream::slow("up", Duration::from_secs(5)).await;
    let yaml = one_route_config(up.addr, "", "").replacen(
        "    routes:",
        "    http2: { max_concurrent_streams: 10 }\n    routes:",
        1,
    );
    let k = Kaname::start(&yaml).await;
    let port = k.port("main");
    let mut s = h2_connect(port).await;
    let mut batch = Vec::new();
    for i in 0..30u32 {
        batch.extend(frame(HEADERS, END_HEADERS, 1 + 2 * i, &get_block()));
    }
    s.write_all(&batch).await.expect("headers");
    // RST_STREAM REFUSED_STREAM (7) for the streams beyond the cap.
    let start = Instant::now();
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    let mut refused = 0;
    while refused < 20 && start.elapsed() < Duration::from_secs(5) {
        match tokio::time::timeout(Duration::from_secs(1), s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => continue,
        }
        let mut at = 0;
        refused = 0;
        while buf.len() >= at + 9 {
            let len = u32::from_be_bytes([0, buf[at], buf[at + 1], buf[at + 2]]) as usize;
            if buf.len() < at + 9 + len {
                break;
            }
            if buf[at + 3] == RST_STREAM && len == 4 && buf[at + 9..at + 13] == 7u32.to_be_bytes() {
                refused += 1;
            }
            at += 9 + len;
        }
    }
    assert_eq!(refused, 20, "streams beyond 10 refused");
    // Counted just after the refusals are written: a client can read them
    // first, so the count is waited for (a preempted server thread once
    // made a single read see 0).
    wait_metric(
        &k,
        r#"kaname_limits_hit_total{limit="h2_max_concurrent_streams"}"#,
        20.0,
    )
    .await;
    drop(s);
    in_flight_settles(&k).await;
}

/// A client that opens a POST, never sends its body, and keeps the
/// connection busy with PINGs (well under the control-frame limit): PINGs
/// move no request, so `stream_idle_timeout` still resets the connection,
/// not before the timeout and not long after, and the stalled try is the
/// client's doing: counted `cancelled`, never a failure of the upstream,
/// which goes on serving.
#[tokio::test]
async fn a_stalled_stream_kept_company_by_pings_is_reset_as_the_clients_doing() {
    let up = TestUpstream::start("up").await;
    let k = Kaname::start(&one_route_config(
        up.addr,
        "    stream_idle_timeout: 1s\n    idle_timeout: 1m\n",
        "",
    ))
    .await;
    let port = k.port("main");

    let mut s = h2_connect(port).await;
    // POST (static entry 3) without END_STREAM: a body is promised and
    // never comes.
    let mut block = vec![0x83];
    block.extend_from_slice(&get_block()[1..]);
    s.write_all(&frame(HEADERS, END_HEADERS, 1, &block))
        .await
        .expect("headers");
    let sent = Instant::now();
    let (mut rd, mut wr) = s.into_split();
    let pings = tokio::spawn(async move {
        for i in 0u64..40 {
            tokio::time::sleep(Duration::from_millis(250)).await;
            if wr
                .write_all(&frame(PING, 0, 0, &i.to_be_bytes()))
                .await
                .is_err()
            {
                return i;
            }
        }
        40
    });
    let mut buf = vec![0u8; 16 * 1024];
    let closed_after = loop {
        match tokio::time::timeout(Duration::from_secs(10), rd.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break sent.elapsed(),
            Ok(Ok(_)) => {}
            Err(_) => panic!("the stalled connection was still open 10 s later"),
        }
    };
    let pinged = pings.await.expect("pinger");
    println!("stalled stream: closed after {closed_after:?}, {pinged} PINGs sent");
    assert!(pinged >= 3, "PINGs kept coming while the stream stalled");
    // Never early (the timer's looks only ever make it later), and at most
    // an eighth late plus scheduling slack.
    assert!(
        closed_after >= Duration::from_millis(950),
        "reset after {closed_after:?}, before stream_idle_timeout"
    );
    assert!(
        closed_after <= Duration::from_secs(4),
        "reset only after {closed_after:?}"
    );
    assert!(limit_hits(&k, "stream_idle_timeout").await >= 1.0);
    assert!(
        limit_hits(&k, "h2_control_frames").await == 0.0,
        "the PINGs were within the limit"
    );
    let (ok, text) = poll_metric(
        &k,
        "kaname_upstream_attempts_total{upstream=\"up\",outcome=\"cancelled\"}",
        METRIC_DEADLINE,
        |v| v.is_some_and(|v| v >= 1.0),
    )
    .await;
    assert!(ok, "the stalled try was not counted cancelled:\n{text}");
    for outcome in ["timeout", "reset", "connect_failure"] {
        let v = metric_value(
            &text,
            &format!("kaname_upstream_attempts_total{{upstream=\"up\",outcome=\"{outcome}\"}}"),
        )
        .unwrap_or(0.0);
        assert_eq!(
            v, 0.0,
            "the client's stall counted as the upstream's {outcome}"
        );
    }
    others_are_served(port).await;
}
