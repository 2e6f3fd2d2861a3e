//! Resource exhaustion (limits.md): HTTP/2 streams held at a zero window,
//! the upstream connection cap, `stream_idle_timeout`, and the file
//! descriptor budget. Every attack is bounded in time and count and runs on
//! 127.0.0.1; each asserts the limit and that others are still served.

mod support;

use std::time::{Duration, Instant};

use support::h2_frames::{frame, get_block, PREFACE};
use support::{eventually, limit_hits, one_route_config, HttpClient, Kaname, TestUpstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const HEADERS: u8 = 0x1;
const SETTINGS: u8 = 0x4;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// An HTTP/2 client that opens `streams` GETs for 1 MiB each with a zero
/// initial window, so no response byte can ever be sent, and never reads.
async fn zero_window_client(port: u16, streams: u32) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let mut out = PREFACE.to_vec();
    // SETTINGS_INITIAL_WINDOW_SIZE = 0
    out.extend(frame(SETTINGS, 0, 0, &[0, 4, 0, 0, 0, 0]));
    for i in 0..streams {
        out.extend(frame(
            HEADERS,
            END_STREAM | END_HEADERS,
            1 + 2 * i,
            &get_block("/big?size=1048576"),
        ));
    }
    s.write_all(&out).await.expect("attack");
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_window_streams_hold_bounded_resources_and_are_reset() {
    let big = TestUpstream::start("big").await;
    let other = TestUpstream::start("other").await;
    let k = Kaname::start(&format!(
        "listeners:
  main:
    listen: 127.0.0.1:0
    stream_idle_timeout: 3s
    routes:
      - match: {{ path_prefix: /big }}
        upstream: big
      - match: {{ path_prefix: / }}
        upstream: other
upstreams:
  big:
    endpoints: [{}]
    pool: {{ max_connections_per_endpoint: 150 }}
  other:
    endpoints: [{}]
",
        big.addr, other.addr
    ))
    .await;
    let port = k.port("main");
    let fds_before = open_fds(k.pid);
    let rss_before = k.rss_kib();

    // 4 connections × 200 streams: 100 each pass the stream cap, 150 of
    // those get an upstream connection, the rest wait and get 503. The
    // issue's figure (22 × 1,000) by hand: KANAME_ZW_CONNS=22 KANAME_ZW_STREAMS=1000.
    let env = |k: &str, d: u32| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let (conns, streams) = (env("KANAME_ZW_CONNS", 4), env("KANAME_ZW_STREAMS", 200));
    let mut attackers = Vec::new();
    for _ in 0..conns {
        attackers.push(zero_window_client(port, streams).await);
    }
    let held = eventually(Duration::from_secs(10), async || big.hits() >= 150).await;
    assert!(held, "the attack reached {} upstream requests", big.hits());
    let fds_during = open_fds(k.pid);
    println!(
        "zero-window attack: fds {fds_before} → {fds_during}, upstream saw {}",
        big.hits()
    );
    // The client connections, at most 150 upstream ones, and slack.
    assert!(
        fds_during <= fds_before + conns as usize + 150 + 40,
        "{fds_during} descriptors open during the attack (before: {fds_before})"
    );
    assert!(
        big.hits() <= 100 * conns as usize,
        "{} requests passed max_concurrent_streams",
        big.hits()
    );

    // Others are served meanwhile.
    let r = HttpClient::http1()
        .try_get(
            &format!("http://127.0.0.1:{port}/normal"),
            Duration::from_secs(5),
        )
        .await
        .expect("a normal request during the attack");
    assert_eq!(r.status, 200);

    // Nothing moves: stream_idle_timeout resets the attackers' connections
    // and their upstream tries; descriptors come back.
    let mut closed = 0;
    for s in &mut attackers {
        let mut buf = vec![0u8; 64 * 1024];
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(15) {
            match tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    closed += 1;
                    break;
                }
                _ => {}
            }
        }
    }
    assert_eq!(closed, conns, "connections reset by stream_idle_timeout");
    assert!(limit_hits(&k, "stream_idle_timeout").await >= f64::from(conns));
    assert!(limit_hits(&k, "upstream_connections").await >= 1.0);
    let back = eventually(Duration::from_secs(10), async || {
        open_fds(k.pid) <= fds_before + 20
    })
    .await;
    assert!(
        back,
        "descriptors did not come back: {} (before {fds_before})",
        open_fds(k.pid)
    );
    let grown = k.rss_kib().saturating_sub(rss_before);
    println!("zero-window attack: RSS grew by {grown} KiB");
    assert!(grown < 200 * 1024, "RSS grew by {grown} KiB");
    // The upstream serves again once the attack is gone.
    let r = HttpClient::http1()
        .get(&format!("http://127.0.0.1:{port}/big?size=10"))
        .await;
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connection_cap_answers_503_after_connect_timeout() {
    let slow = TestUpstream::slow("slow", Duration::from_secs(3)).await;
    let k = Kaname::start(&format!(
        "listeners:
  main:
    listen: 127.0.0.1:0
    routes:
      - match: {{ path_prefix: / }}
        upstream: slow
upstreams:
  slow:
    endpoints: [{}]
    connect_timeout: 300ms
    pool: {{ max_connections_per_endpoint: 2 }}
",
        slow.addr
    ))
    .await;
    let port = k.port("main");
    let url = format!("http://127.0.0.1:{port}/x");
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { HttpClient::http1_no_pool().get(&url).await })
        })
        .collect();
    let mut statuses = Vec::new();
    for t in tasks {
        let r = t.await.expect("task");
        if r.status == 503 {
            r.assert_kaname_error(503, "overloaded");
        }
        statuses.push(r.status);
    }
    statuses.sort();
    assert_eq!(statuses, vec![200, 200, 503, 503]);
    assert!(slow.hits() <= 2, "upstream saw {}", slow.hits());
    assert_eq!(limit_hits(&k, "upstream_connections").await, 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_connections_past_the_descriptor_budget_are_closed_at_accept() {
    let up = TestUpstream::start("up").await;
    let k = Kaname::start_with_nofile(&one_route_config(up.addr, "", ""), 256).await;
    let port = k.port("main");
    // One keep-alive client first, so it holds a slot.
    let client = HttpClient::http1();
    let url = format!("http://127.0.0.1:{port}/kept");
    assert_eq!(client.get(&url).await.status, 200);
    // More idle connections than the budget can take.
    let mut idle = Vec::new();
    for _ in 0..300 {
        match TcpStream::connect(("127.0.0.1", port)).await {
            Ok(s) => idle.push(s),
            Err(_) => break,
        }
    }
    // Those over the budget are closed at once: they read EOF.
    let mut closed = 0;
    for s in &mut idle {
        let mut b = [0u8; 1];
        if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_millis(20), s.read(&mut b)).await {
            closed += 1;
        }
    }
    println!(
        "fd budget: {} of {} connections closed at accept",
        closed,
        idle.len()
    );
    assert!(closed > 0, "no connection was refused under a limit of 256");
    assert!(
        closed < idle.len(),
        "every connection was refused: the budget is too small"
    );
    // kaname itself never ran out: the admin port and the kept client work,
    // and the upstream connection it needs was opened.
    assert!(limit_hits(&k, "file_descriptors").await >= closed as f64);
    assert_eq!(client.get(&url).await.status, 200);
    assert!(
        !k.stderr().contains("Too many open files"),
        "{}",
        k.stderr()
    );
    drop(idle);
}
