//! Faults around kaname, with real processes and sockets on 127.0.0.1: an
//! upstream that dies mid-response, closes idle pooled connections, answers
//! garbage or an endless head; clients that go away mid-request; ten
//! thousand idle client connections.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{
    accept_each, bind_loopback, one_route_config, wait_metric, HttpClient, Kaname, TestUpstream,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A hand-written HTTP/1.1 upstream whose answer depends on the path:
/// `/truncate` and `/truncate-chunked` die after part of the body,
/// `/garbage` is not HTTP, `/bighead` sends a head of 1 MiB, `/hang` never
/// answers (and counts how many of its connections were closed by kaname),
/// anything else is `200 ok`. Idle keep-alive connections are closed after
/// `keep_alive` (a server with a shorter keep-alive than kaname's pool).
struct RawUpstream {
    addr: SocketAddr,
    hung: Arc<AtomicUsize>,
    hang_closed: Arc<AtomicUsize>,
    served: Arc<AtomicUsize>,
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawUpstream {
    async fn start(keep_alive: Duration) -> RawUpstream {
        let listener = bind_loopback("raw upstream").await;
        let addr = listener.local_addr().expect("addr");
        let hung = Arc::new(AtomicUsize::new(0));
        let hang_closed = Arc::new(AtomicUsize::new(0));
        let served = Arc::new(AtomicUsize::new(0));
        let connections = Arc::new(AtomicUsize::new(0));
        let (h, c, s, n) = (
            hung.clone(),
            hang_closed.clone(),
            served.clone(),
            connections.clone(),
        );
        let task = accept_each(listener, move |sock| {
            n.fetch_add(1, Ordering::SeqCst);
            serve_raw(sock, keep_alive, h.clone(), c.clone(), s.clone())
        });
        RawUpstream {
            addr,
            hung,
            hang_closed,
            served,
            connections,
            task,
        }
    }
}

async fn serve_raw(
    mut sock: TcpStream,
    keep_alive: Duration,
    hung: Arc<AtomicUsize>,
    hang_closed: Arc<AtomicUsize>,
    served: Arc<AtomicUsize>,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        // Read one request head (these requests have no body).
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match tokio::time::timeout(keep_alive, sock.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                // Idle for `keep_alive`, or closed: close.
                _ => return,
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        buf.drain(..head_end);
        let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
        match path.as_str() {
            "/truncate" => {
                let mut out = b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n".to_vec();
                out.extend_from_slice(&[b'x'; 1000]);
                let _ = sock.write_all(&out).await;
                return;
            }
            "/truncate-chunked" => {
                let _ = sock
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n",
                    )
                    .await;
                return;
            }
            "/garbage" => {
                let _ = sock
                    .write_all(b"SSH-2.0-OpenSSH_9.6\r\n\r\n\x00\x01\x02")
                    .await;
                return;
            }
            "/bighead" => {
                let mut out = b"HTTP/1.1 200 OK\r\nx-big: ".to_vec();
                out.extend(std::iter::repeat_n(b'a', 1 << 20));
                out.extend_from_slice(b"\r\ncontent-length: 0\r\n\r\n");
                let _ = sock.write_all(&out).await;
                return;
            }
            "/hang" => {
                hung.fetch_add(1, Ordering::SeqCst);
                // Wait (at most a minute) for kaname to close this one.
                let closed = tokio::time::timeout(Duration::from_secs(60), async {
                    loop {
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => break,
                            Ok(_) => {}
                        }
                    }
                })
                .await;
                if closed.is_ok() {
                    hang_closed.fetch_add(1, Ordering::SeqCst);
                }
                return;
            }
            _ => {
                served.fetch_add(1, Ordering::SeqCst);
                if sock
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    }
}

async fn ok_is_served(port: u16) {
    let r = HttpClient::http1_no_pool()
        .get(&format!("http://127.0.0.1:{port}/ok"))
        .await;
    assert_eq!(r.status, 200, "kaname stopped serving: {}", r.text());
}

#[tokio::test]
async fn upstream_dying_mid_response_is_a_clean_failure() {
    let up = RawUpstream::start(Duration::from_secs(30)).await;
    let k = Kaname::start(&one_route_config(up.addr, "", "")).await;
    let port = k.port("main");

    for path in ["/truncate", "/truncate-chunked"] {
        let url = format!("http://127.0.0.1:{port}{path}");
        // HTTP/1.1: the head came through, then the body fails.
        for client in [HttpClient::http1(), HttpClient::http2()] {
            let res = client.try_get(&url, Duration::from_secs(10)).await;
            match res {
                // Over HTTP/2 the stream may be reset before its head was
                // sent (hyper had not flushed it when the upstream's body
                // broke): an RST_STREAM, as clean a failure as a reset.
                Err(e) => assert!(
                    e.contains("reading body")
                        || e.contains("closed")
                        || e.contains("reset")
                        || e.contains("stream error received"),
                    "{path}: unexpected failure {e}"
                ),
                Ok(r) => panic!(
                    "{path}: a truncated answer looked whole: {} with {} bytes",
                    r.status,
                    r.body.len()
                ),
            }
        }
        // On the wire (HTTP/1.1): the connection closes before the
        // declared length or the last chunk.
        let mut s = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
            .await
            .expect("write");
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        let read = tokio::time::timeout(Duration::from_secs(10), async {
            // Until end of file or a reset.
            while let Ok(n @ 1..) = s.read(&mut chunk).await {
                got.extend_from_slice(&chunk[..n]);
            }
        })
        .await;
        assert!(read.is_ok(), "{path}: kaname neither finished nor closed");
        let text = String::from_utf8_lossy(&got);
        // Either no answer at all (hyper drops a response whose body failed
        // before its head went out) or a 200 cut short.
        assert!(
            text.is_empty() || text.starts_with("HTTP/1.1 200"),
            "{path}: {text:.80}"
        );
        if path == "/truncate" {
            let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
            assert!(body.len() < 100_000, "{path}: the whole declared body came");
        } else {
            assert!(
                !text.ends_with("0\r\n\r\n"),
                "{path}: a last chunk was made up"
            );
        }
        ok_is_served(port).await;
    }
}

#[tokio::test]
async fn garbage_or_endless_head_from_upstream_is_502() {
    let up = RawUpstream::start(Duration::from_secs(30)).await;
    let k = Kaname::start(&one_route_config(up.addr, "", "")).await;
    let port = k.port("main");
    let client = HttpClient::http1();
    for path in ["/garbage", "/bighead"] {
        let r = client.get(&format!("http://127.0.0.1:{port}{path}")).await;
        assert_eq!(r.status, 502, "{path}: {}", r.text());
        assert!(
            r.header("kaname-error").is_some(),
            "{path}: not kaname's answer"
        );
        ok_is_served(port).await;
    }
    let rss = k.rss_kib();
    assert!(rss < 200 * 1024, "RSS {rss} KiB after a 1 MiB head");
}

#[tokio::test]
async fn stale_pooled_connections_are_retried_transparently() {
    // The upstream closes connections idle for 100 ms; kaname's pool keeps
    // them 90 s. Requests spaced around 100 ms apart meet connections the
    // upstream is closing or has just closed.
    let keep_alive = Duration::from_millis(100);
    let up = RawUpstream::start(keep_alive).await;
    // Debug logs of the forwarder: a failure shows what the try met.
    let k = Kaname::start_with_env(
        &one_route_config(up.addr, "", ""),
        &[("RUST_LOG", "info,kaname::forward=debug,hyper_util=debug")],
    )
    .await;
    let port = k.port("main");
    let client = HttpClient::http1();
    let url = format!("http://127.0.0.1:{port}/ok");
    let mut errors = Vec::new();
    let n = 150;
    for i in 0..n {
        match client.try_get(&url, Duration::from_secs(10)).await {
            Ok(r) if r.status == 200 => {}
            Ok(r) => errors.push(format!("{i}: {} {}", r.status, r.text())),
            Err(e) => errors.push(format!("{i}: {e}")),
        }
        // 80..=120 ms, walking across the upstream's keep-alive.
        tokio::time::sleep(Duration::from_millis(80 + (i * 7 % 41) as u64)).await;
    }
    println!(
        "{n} requests, {} upstream connections, {} errors",
        up.connections.load(Ordering::SeqCst),
        errors.len()
    );
    assert!(
        up.connections.load(Ordering::SeqCst) > 10,
        "the upstream did not close idle connections: the test proved nothing"
    );
    if !errors.is_empty() {
        // The lines that are not a plain 200, for a log too long to read.
        let logs = k.stderr();
        let unusual: Vec<&str> = logs.lines().filter(|l| !l.contains("status=200")).collect();
        panic!(
            "client errors: {errors:#?}\nkaname's other lines:\n{}",
            unusual.join("\n")
        );
    }
    assert_eq!(up.served.load(Ordering::SeqCst), n);
}

#[tokio::test]
async fn client_gone_mid_request_cancels_the_upstream_request() {
    let up = RawUpstream::start(Duration::from_secs(30)).await;
    let k = Kaname::start(&one_route_config(up.addr, "", "")).await;
    let port = k.port("main");

    // HTTP/1.1 clients that send a request and go away before the answer
    // (once the upstream has it).
    let mut h1 = Vec::new();
    for _ in 0..5 {
        let mut s = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        s.write_all(b"GET /hang HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .expect("write");
        h1.push(s);
    }
    // And HTTP/2 streams dropped mid-request.
    let h2 = HttpClient::http2();
    let mut pending = Vec::new();
    for _ in 0..5 {
        let h2 = h2.clone();
        let url = format!("http://127.0.0.1:{port}/hang");
        pending.push(tokio::spawn(async move {
            let _ = h2.try_get(&url, Duration::from_secs(60)).await;
        }));
    }
    let start = Instant::now();
    while up.hung.load(Ordering::SeqCst) < 10 && start.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        up.hung.load(Ordering::SeqCst),
        10,
        "not all requests reached the upstream"
    );
    drop(h1);
    for p in pending {
        p.abort();
    }
    drop(h2);
    // Every upstream request was cancelled: kaname closed its connection.
    let start = Instant::now();
    while up.hang_closed.load(Ordering::SeqCst) < 10 && start.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        up.hang_closed.load(Ordering::SeqCst),
        10,
        "upstream requests kept running after their clients left"
    );
    wait_metric(&k, "kaname_requests_in_flight{listener=\"main\"}", 0.0).await;
    wait_metric(&k, "kaname_connections_open{listener=\"main\"}", 0.0).await;
}

/// 10,000 client connections, each after one request, held open at once;
/// a request on a new connection is still served. Prints kaname's memory
/// per idle connection (docs/reliability.md records it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_idle_connections() {
    const N: usize = 10_000;
    // This process holds N sockets; kaname raises its own limit.
    let limit = rlimit::increase_nofile_limit(u64::MAX).expect("raise the open file limit");
    assert!(
        limit >= N as u64 + 500,
        "open file limit {limit} is below {N}"
    );
    let up = TestUpstream::start("up").await;
    // Idle connections must outlive the test: no header read timeout on
    // keep-alive, no idle timeout.
    let k = Kaname::start(&one_route_config(
        up.addr,
        "    header_read_timeout: 10m\n    idle_timeout: 10m\n",
        "",
    ))
    .await;
    let port = k.port("main");
    let rss_before = k.rss_kib();
    let started = Instant::now();
    let mut conns = Vec::with_capacity(N);
    let mut batch = Vec::new();
    for i in 0..N {
        batch.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
            s.write_all(b"GET /c HTTP/1.1\r\nhost: x\r\n\r\n").await?;
            // Read the whole answer (the echo body is small).
            let mut buf = vec![0u8; 4096];
            let mut got = 0;
            loop {
                let n = s.read(&mut buf[got..]).await?;
                if n == 0 {
                    return Err(std::io::Error::other("closed"));
                }
                got += n;
                let text = &buf[..got];
                if let Some(h) = text.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&text[..h]).to_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    if got >= h + 4 + len {
                        return Ok::<_, std::io::Error>(s);
                    }
                }
            }
        }));
        if batch.len() == 200 || i == N - 1 {
            for t in batch.drain(..) {
                conns.push(t.await.expect("task").expect("connection"));
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "too slow to open"
        );
    }
    println!("{N} connections opened in {:?}", started.elapsed());
    wait_metric(&k, "kaname_connections_open{listener=\"main\"}", N as f64).await;
    let rss_held = k.rss_kib();

    // A new client is served while they are all held.
    let r = HttpClient::http1_no_pool()
        .try_get(
            &format!("http://127.0.0.1:{port}/new"),
            Duration::from_secs(10),
        )
        .await
        .expect("a new connection was served");
    assert_eq!(r.status, 200);

    let per_conn = (rss_held.saturating_sub(rss_before) * 1024) / N as u64;
    println!(
        "RSS before {rss_before} KiB, with {N} idle connections {rss_held} KiB: {per_conn} bytes per idle connection"
    );
    assert!(per_conn < 64 * 1024, "{per_conn} bytes per idle connection");
    drop(conns);
    wait_metric(&k, "kaname_connections_open{listener=\"main\"}", 0.0).await;
}
