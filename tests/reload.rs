//! Zero-downtime reload: under load, across 20 reloads and an invalid file,
//! no request fails; listeners move; a rename of the file reloads; filter
//! state survives where its config did not change.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{config_file, metric_value, metrics, poll_metric, HttpClient, Kaname, TestUpstream};

/// Replaces the config file the way editors and Kubernetes do: write a
/// sibling, then rename it over the original.
fn replace_config(k: &Kaname, body: &str) {
    let tmp = k.config_path.with_extension("yaml.tmp");
    std::fs::write(&tmp, config_file(body)).expect("write new config");
    std::fs::rename(&tmp, &k.config_path).expect("rename config into place");
}

async fn post_reload(k: &Kaname) -> (u16, String) {
    let client = HttpClient::http1();
    let req = http::Request::post(k.admin_url("/reload"))
        .body(support::empty())
        .expect("build POST");
    let resp = client.send(req).await;
    (resp.status.as_u16(), resp.text())
}

/// Two configs that differ in routes (which upstream /svc goes to, an extra
/// route) and in a route's settings (timeout).
fn version(a: &TestUpstream, b: &TestUpstream, which: u32) -> String {
    let (target, timeout, extra) = if which.is_multiple_of(2) {
        ("a", "2s", "")
    } else {
        (
            "b",
            "3s",
            "      - name: extra\n        match: { path: /extra }\n        upstream: b\n",
        )
    };
    format!(
        "listeners:
  main:
    listen: 127.0.0.1:0
    routes:
      - name: svc
        match: {{ path_prefix: /svc }}
        upstream: {target}
        timeout: {timeout}
{extra}upstreams:
  a:
    endpoints: [{}]
  b:
    endpoints: [{}]
",
        a.addr, b.addr
    )
}

/// Polls until `/svc` is answered by `want`, within 5 s.
async fn wait_for_upstream(client: &HttpClient, port: u16, want: &str) {
    let start = Instant::now();
    loop {
        let resp = client.get(&format!("http://127.0.0.1:{port}/svc")).await;
        if resp.header("x-upstream") == Some(want) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "/svc still not served by {want} 5 s after reload (got {:?})",
            resp.header("x-upstream")
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_reloads_under_load_lose_nothing() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    let k = Kaname::start(&version(&a, &b, 0)).await;
    let port = k.port("main");

    // Load: HTTP/1.1 keep-alive and HTTP/2 clients, bounded by a stop flag
    // (set after the reloads) and a hard cap of 60 s and 200k requests each.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut load = Vec::new();
    for i in 0..4 {
        let client = if i % 2 == 0 {
            HttpClient::http1()
        } else {
            HttpClient::http2()
        };
        let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
        load.push(tokio::spawn(async move {
            let started = Instant::now();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed)
                && started.elapsed() < Duration::from_secs(60)
                && n < 200_000
            {
                n += 1;
                match client
                    .try_get(
                        &format!("http://127.0.0.1:{port}/svc"),
                        Duration::from_secs(10),
                    )
                    .await
                {
                    Ok(r) if r.status == 200 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => {
                        failures
                            .lock()
                            .unwrap()
                            .push(format!("status {}: {}", r.status, r.text()))
                    }
                    Err(e) => failures.lock().unwrap().push(e),
                }
            }
        }));
    }

    let probe = HttpClient::http1();
    for i in 1..=20u32 {
        replace_config(&k, &version(&a, &b, i));
        let (status, text) = post_reload(&k).await;
        assert_eq!(status, 200, "reload {i}: {text}");
        let want = if i % 2 == 0 { "a" } else { "b" };
        wait_for_upstream(&probe, port, want).await;
        let extra = probe.get(&format!("http://127.0.0.1:{port}/extra")).await;
        assert_eq!(
            extra.status,
            if i % 2 == 0 { 404 } else { 200 },
            "reload {i}: /extra"
        );

        if i == 10 {
            // An invalid file in the middle: refused, old behaviour kept.
            let before = metric_value(
                &metrics(&k).await,
                "kaname_config_reloads_total{result=\"failure\"}",
            )
            .unwrap_or(0.0);
            replace_config(
                &k,
                "listeners:\n  main:\n    listen: nowhere\n    routes: []\n",
            );
            let (status, text) = post_reload(&k).await;
            assert_eq!(status, 400, "invalid file must be refused: {text}");
            assert!(
                text.contains("kaname.yaml:"),
                "errors name the file: {text}"
            );
            wait_for_upstream(&probe, port, "a").await;
            let after = metric_value(
                &metrics(&k).await,
                "kaname_config_reloads_total{result=\"failure\"}",
            )
            .expect("failure counter present");
            assert!(
                after >= before + 1.0,
                "failure counted: {before} -> {after}"
            );
            // Put a valid file back (the same as reload 10) before going on.
            replace_config(&k, &version(&a, &b, i));
            assert_eq!(post_reload(&k).await.0, 200);
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.expect("load task");
    }
    let failures = failures.lock().unwrap().clone();
    let served = ok.load(Ordering::Relaxed);
    println!(
        "reloads under load: {served} requests ok, {} failed",
        failures.len()
    );
    assert!(served > 100, "the load ran ({served} requests)");
    assert!(
        failures.is_empty(),
        "{} failed requests, first: {:?}",
        failures.len(),
        failures.first()
    );
    let m = metrics(&k).await;
    let successes =
        metric_value(&m, "kaname_config_reloads_total{result=\"success\"}").unwrap_or(0.0);
    assert!(
        successes >= 21.0,
        "21 successful reloads counted, got {successes}"
    );
}

#[tokio::test]
async fn listener_moves_to_a_new_port() {
    let a = TestUpstream::start("a").await;
    let body = |listen: &str| {
        format!(
            "listeners:\n  main:\n    listen: {listen}\n    routes:\n      - match: {{ path_prefix: / }}\n        upstream: a\nupstreams:\n  a:\n    endpoints: [{}]\n",
            a.addr
        )
    };
    let k = Kaname::start(&body("127.0.0.1:0")).await;
    let p1 = k.port("main");
    let client = HttpClient::http1_no_pool();
    assert_eq!(
        client.get(&format!("http://127.0.0.1:{p1}/x")).await.status,
        200
    );
    let mut kept = keep_alive_connection(p1, "").await;

    // The new address is another loopback address on a port the kernel
    // picks: `listen:` changes, so kaname binds anew, and no port is picked
    // in advance (one picked and released could be taken by another test
    // before kaname binds it; kaname must bind it itself, so it cannot be
    // held for it either).
    replace_config(&k, &body("127.0.0.2:0"));
    let (status, text) = post_reload(&k).await;
    assert_eq!(status, 200, "{text}");
    // The ready file is rewritten before POST /reload answers.
    let moved = k.reload_addrs().listeners["main"];
    // A keep-alive connection to the old port is closed, not left serving
    // the old routes.
    assert_closed(&mut kept, "keep-alive connection on the moved listener").await;
    assert_eq!(client.get(&format!("http://{moved}/x")).await.status, 200);
    // The old port is closed: new connections are refused.
    let start = Instant::now();
    loop {
        match tokio::net::TcpStream::connect(("127.0.0.1", p1)).await {
            Err(_) => break,
            Ok(_) => {
                assert!(
                    start.elapsed() < Duration::from_secs(5),
                    "old port {p1} still accepting"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// A connection that has had one request answered (200) and is kept open.
async fn keep_alive_connection(port: u16, extra_header: &str) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let req = format!("GET /kept HTTP/1.1\r\nHost: k\r\n{extra_header}\r\n");
    conn.write_all(req.as_bytes()).await.expect("write");
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = Vec::new();
    // The echo upstream's answer is small: read until its body's end.
    while !got.windows(4).any(|w| w == b"\r\n\r\n") || !got.ends_with(b"}") {
        let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf))
            .await
            .expect("answer within 5s")
            .expect("read");
        assert!(
            n > 0,
            "closed before answering: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    conn
}

/// The server closes `conn` (EOF) within 5 s.
async fn assert_closed(conn: &mut tokio::net::TcpStream, what: &str) {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 1024];
    match tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => {}
        Ok(Ok(n)) => panic!("{what}: unexpected {n} bytes"),
        Err(_) => panic!("{what}: still open 5 s after the reload"),
    }
}

/// A reload that changes how a listener serves connections (here
/// `max_header_bytes`) applies to new connections at once, and retires the
/// open ones (they close once idle), as Envoy drains a replaced listener.
#[tokio::test]
async fn changed_listener_settings_apply_and_retire_open_connections() {
    let a = TestUpstream::start("a").await;
    let body = |limit: u32| {
        format!(
            "listeners:\n  main:\n    listen: 127.0.0.1:0\n    max_header_bytes: {limit}\n    routes:\n      - match: {{ path_prefix: / }}\n        upstream: a\nupstreams:\n  a:\n    endpoints: [{}]\n",
            a.addr
        )
    };
    let big = format!("x-big: {}\r\n", "b".repeat(20 * 1024));
    let k = Kaname::start(&body(65536)).await;
    let port = k.port("main");
    let mut old = keep_alive_connection(port, &big).await;

    replace_config(&k, &body(8192));
    let (status, text) = post_reload(&k).await;
    assert_eq!(status, 200, "{text}");
    assert_closed(&mut old, "idle connection of the old settings").await;

    // A new connection gets the new limit: the 20 KiB header is now too big.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    conn.write_all(format!("GET /big HTTP/1.1\r\nHost: k\r\n{big}\r\n").as_bytes())
        .await
        .expect("write");
    let mut head = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(5), conn.read_exact(&mut head))
        .await
        .expect("answer within 5s")
        .expect("read");
    assert_eq!(
        &head, b"HTTP/1.1 431",
        "new limit applies to new connections"
    );
    // Small heads still pass on new connections.
    keep_alive_connection(port, "").await;
}

/// `admin.listen` and `log.level` follow a reload too.
#[tokio::test]
async fn admin_port_and_log_level_follow_a_reload() {
    let a = TestUpstream::start("a").await;
    let routes = format!(
        "listeners:\n  main:\n    listen: 127.0.0.1:0\n    routes:\n      - upstream: a\nupstreams:\n  a:\n    endpoints: [{}]\n",
        a.addr
    );
    let k = Kaname::start(&routes).await;
    let port = k.port("main");
    let client = HttpClient::http1_no_pool();
    let write = |admin: &str, level: &str| {
        let tmp = k.config_path.with_extension("yaml.tmp");
        let yaml =
            format!("admin:\n  listen: {admin}\nlog:\n  level: {level}\n  format: text\n{routes}");
        std::fs::write(&tmp, yaml).expect("write config");
        std::fs::rename(&tmp, &k.config_path).expect("rename config");
    };
    let reload_at = |admin: std::net::SocketAddr| {
        let client = client.clone();
        async move {
            let req = http::Request::post(format!("http://{admin}/reload"))
                .body(support::empty())
                .expect("POST");
            let resp = client.send(req).await;
            assert_eq!(resp.status, 200, "{}", resp.text());
        }
    };
    let reloaded_lines = || k.stderr().matches("config reloaded").count();
    assert_eq!(reloaded_lines(), 0);

    // Another loopback address, the kernel picking the port (see
    // `listener_moves_to_a_new_port`).
    let moved_to = "127.0.0.2:0";
    write(moved_to, "warn");
    let old_admin = k.admin();
    reload_at(old_admin).await;
    // The ready file is rewritten before POST /reload answers.
    let new_admin = k.reload_addrs().admin;
    let ready = client.get(&format!("http://{new_admin}/ready")).await;
    assert_eq!(ready.status, 200, "admin answers on its new port");
    let old_port = old_admin.port();
    let start = Instant::now();
    while tokio::net::TcpStream::connect(("127.0.0.1", old_port))
        .await
        .is_ok()
    {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "old admin port still open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        reloaded_lines(),
        0,
        "level warn hides the info line of that reload"
    );

    write(moved_to, "info");
    reload_at(new_admin).await;
    assert_eq!(reloaded_lines(), 1, "level info again: {}", k.stderr());
    assert_eq!(
        client
            .get(&format!("http://127.0.0.1:{port}/x"))
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn renaming_a_new_file_into_place_reloads() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    let k = Kaname::start(&version(&a, &b, 0)).await;
    let port = k.port("main");
    let client = HttpClient::http1();
    wait_for_upstream(&client, port, "a").await;
    // No POST /reload, no signal: the file watcher must see the rename.
    replace_config(&k, &version(&a, &b, 1));
    wait_for_upstream(&client, port, "b").await;
    let m = metrics(&k).await;
    assert!(
        metric_value(&m, "kaname_config_reloads_total{result=\"success\"}").unwrap_or(0.0) >= 1.0,
        "the watcher's reload is counted"
    );
}

#[tokio::test]
async fn sighup_reloads_and_a_bad_file_keeps_the_old_config() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    let k = Kaname::start(&version(&a, &b, 0)).await;
    let port = k.port("main");
    let client = HttpClient::http1();
    // A broken file: the watcher and SIGHUP both refuse it.
    replace_config(
        &k,
        "listeners:\n  main:\n    listen: 127.0.0.1:1\n    routez: []\n",
    );
    support::send_signal(k.pid, "HUP");
    let failures = "kaname_config_reloads_total{result=\"failure\"}";
    let (counted, _) = poll_metric(&k, failures, Duration::from_secs(5), |v| {
        v.unwrap_or(0.0) >= 1.0
    })
    .await;
    assert!(counted, "failed reload not counted");
    wait_for_upstream(&client, port, "a").await;
    assert!(
        k.stderr().contains("unknown key \"routez\""),
        "the error is logged with its position"
    );
    replace_config(&k, &version(&a, &b, 1));
    support::send_signal(k.pid, "HUP");
    wait_for_upstream(&client, port, "b").await;
}

/// Route `limited` through rate_limit `rl` (1/m, burst `burst`) and route
/// `other` without filters, at `other_path` with `other_timeout`.
fn limited_config(a: &TestUpstream, burst: u32, other_path: &str, other_timeout: &str) -> String {
    format!(
        "listeners:
  main:
    listen: 127.0.0.1:0
    routes:
      - name: limited
        match: {{ path_prefix: /limited }}
        upstream: a
        filters: [rl]
      - name: other
        match: {{ path_prefix: {other_path} }}
        upstream: a
        timeout: {other_timeout}
upstreams:
  a:
    endpoints: [{}]
filters:
  rl:
    rate_limit:
      key: global
      rate: 1/m
      burst: {burst}
",
        a.addr
    )
}

#[tokio::test]
async fn emptied_bucket_stays_empty_across_a_reload_of_another_route() {
    let a = TestUpstream::start("a").await;
    let k = Kaname::start(&limited_config(&a, 3, "/other", "2s")).await;
    let port = k.port("main");
    let client = HttpClient::http1();
    let limited = format!("http://127.0.0.1:{port}/limited");
    for i in 1..=3 {
        assert_eq!(client.get(&limited).await.status, 200, "token {i} of 3");
    }
    client
        .get(&limited)
        .await
        .assert_kaname_error(429, "rate_limited");

    // Only route `other` changes: the filter's config is equal, its bucket kept.
    replace_config(&k, &limited_config(&a, 3, "/elsewhere", "3s"));
    let (status, text) = post_reload(&k).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        client
            .get(&format!("http://127.0.0.1:{port}/elsewhere"))
            .await
            .status,
        200,
        "the reload took effect"
    );
    client
        .get(&limited)
        .await
        .assert_kaname_error(429, "rate_limited");

    // A change to the rate_limit settings builds a new filter: a fresh bucket.
    replace_config(&k, &limited_config(&a, 5, "/elsewhere", "3s"));
    let (status, text) = post_reload(&k).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        client.get(&limited).await.status,
        200,
        "a changed rate_limit starts with a full bucket"
    );
}

/// Gauges of what a reload removed (an endpoint, a breaker) go away rather
/// than keep their last value: a removed endpoint stuck at healthy 1 would
/// hide the no-healthy-endpoint alert.
#[tokio::test]
async fn reload_drops_gauges_of_removed_endpoints_and_breakers() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    let body = |eps: String, filters: &str| {
        format!(
            "listeners:\n  main:\n    listen: 127.0.0.1:0\n    routes:\n      - upstream: up\n        filters: [{filters}]\nupstreams:\n  up:\n    endpoints: {eps}\nfilters:\n  breaker:\n    circuit_breaker: {{ consecutive_failures: 5 }}\n"
        )
    };
    let k = Kaname::start(&body(format!("[{}, {}]", a.addr, b.addr), "breaker")).await;
    let port = k.port("main");
    let healthy = |addr: std::net::SocketAddr| {
        format!(r#"kaname_upstream_endpoint_healthy{{upstream="up",endpoint="{addr}"}}"#)
    };
    let closed = r#"kaname_circuit_breaker_state{filter="breaker",upstream="up",state="closed"}"#;
    let text = metrics(&k).await;
    assert_eq!(metric_value(&text, &healthy(a.addr)), Some(1.0), "{text}");
    assert_eq!(metric_value(&text, &healthy(b.addr)), Some(1.0));
    assert_eq!(metric_value(&text, closed), Some(1.0));

    replace_config(&k, &body(format!("[{}]", a.addr), ""));
    let (status, text) = post_reload(&k).await;
    assert_eq!(status, 200, "{text}");
    let text = metrics(&k).await;
    assert_eq!(metric_value(&text, &healthy(a.addr)), Some(1.0), "{text}");
    assert_eq!(
        metric_value(&text, &healthy(b.addr)),
        None,
        "removed endpoint: {text}"
    );
    assert_eq!(
        metric_value(&text, closed),
        None,
        "breaker no longer used: {text}"
    );
    let client = HttpClient::http1_no_pool();
    assert_eq!(
        client
            .get(&format!("http://127.0.0.1:{port}/x"))
            .await
            .status,
        200
    );
}

/// A Kubernetes ConfigMap volume: `kaname.yaml -> ..data/kaname.yaml` and
/// `..data -> ..<timestamp>`; an update writes a new timestamped directory
/// and swaps the `..data` symlink by rename. The file watcher reloads on it.
#[tokio::test]
async fn configmap_symlink_swap_reloads() {
    use std::os::unix::fs::symlink;
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    let k = Kaname::start(&version(&a, &b, 0)).await;
    let port = k.port("main");
    let client = HttpClient::http1();
    wait_for_upstream(&client, port, "a").await;
    let dir = k.config_path.parent().expect("config dir").to_path_buf();
    let publish = |stamp: &str, which: u32| {
        let data = dir.join(stamp);
        std::fs::create_dir(&data).expect("timestamped dir");
        std::fs::write(
            data.join("kaname.yaml"),
            config_file(&version(&a, &b, which)),
        )
        .expect("write config");
        let tmp = dir.join("..data_tmp");
        symlink(stamp, &tmp).expect("symlink ..data_tmp");
        std::fs::rename(&tmp, dir.join("..data")).expect("swap ..data");
    };

    // First the file becomes the ConfigMap's symlink (a rename over it).
    publish("..2026_11_28_v1", 1);
    let tmp = dir.join("kaname.yaml.tmp");
    symlink("..data/kaname.yaml", &tmp).expect("symlink kaname.yaml");
    std::fs::rename(&tmp, &k.config_path).expect("rename symlink into place");
    wait_for_upstream(&client, port, "b").await;

    // Then an update only swaps `..data`; kaname.yaml itself is untouched.
    publish("..2026_11_28_v2", 2);
    wait_for_upstream(&client, port, "a").await;
    let text = metrics(&k).await;
    let failures = metric_value(&text, r#"kaname_config_reloads_total{result="failure"}"#);
    assert_eq!(failures.unwrap_or(0.0), 0.0, "{text}");
}

/// State of a filter a reload does not change is kept: an open circuit
/// stays open (a reload must not reset a breaker protecting a sick
/// upstream), and a request in flight across the reload finishes.
#[tokio::test]
async fn open_breaker_and_request_in_flight_survive_a_reload() {
    let sick = TestUpstream::start("sick").await;
    let slow = TestUpstream::slow("slow", Duration::from_millis(800)).await;
    let body = |extra: &str| {
        format!(
            "listeners:
  main:
    listen: 127.0.0.1:0
    routes:
      - match: {{ path_prefix: /slow }}
        upstream: slow
{extra}      - match: {{ path_prefix: / }}
        upstream: sick
        filters: [breaker]
upstreams:
  sick:
    endpoints: [{}]
  slow:
    endpoints: [{}]
filters:
  breaker:
    circuit_breaker: {{ consecutive_failures: 2, open_for: 60s }}
",
            sick.addr, slow.addr
        )
    };
    let k = Kaname::start(&body("")).await;
    let port = k.port("main");
    let client = HttpClient::http1();
    for _ in 0..2 {
        let r = client
            .get(&format!("http://127.0.0.1:{port}/x?status=500"))
            .await;
        assert_eq!(r.status, 500);
    }
    client
        .get(&format!("http://127.0.0.1:{port}/x"))
        .await
        .assert_kaname_error(503, "circuit_open");

    let in_flight = {
        let client = client.clone();
        tokio::spawn(async move { client.get(&format!("http://127.0.0.1:{port}/slow/x")).await })
    };
    // The slow request has reached its upstream before the reload.
    let start = Instant::now();
    while slow.recorded().is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "slow request not sent"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    replace_config(
        &k,
        &body("      - name: added\n        match: { path: /added }\n        upstream: slow\n"),
    );
    let (status, text) = post_reload(&k).await;
    assert_eq!(status, 200, "{text}");
    let finished = in_flight.await.expect("join");
    assert_eq!(finished.status, 200, "request in flight across the reload");
    client
        .get(&format!("http://127.0.0.1:{port}/x"))
        .await
        .assert_kaname_error(503, "circuit_open");
    assert_eq!(
        client
            .get(&format!("http://127.0.0.1:{port}/added"))
            .await
            .status,
        200,
        "the new route serves"
    );
    // /config shows what now runs.
    let config = client.get(&k.admin_url("/config")).await.text();
    assert!(config.contains("/added"), "{config}");
}

/// The valid file for the limit tests: `/svc` to upstream a.
fn serving(a: &TestUpstream) -> String {
    format!(
        "listeners:\n  main:\n    listen: 127.0.0.1:0\n    routes:\n      - match: {{ path_prefix: /svc }}\n        upstream: a\nupstreams:\n  a:\n    endpoints: [{}]\n",
        a.addr
    )
}

/// Reloads a running sidecar with `bad` (its body after the valid routes):
/// 400 naming `kaname.yaml:LINE:COL` and `limit`, the old config serves on,
/// the process is alive, and its peak RSS stays below 200 MB.
async fn reload_is_refused_within_bounds(bad: &str, limit: &str) {
    let a = TestUpstream::start("a").await;
    let k = Kaname::start(&serving(&a)).await;
    let port = k.port("main");
    let client = HttpClient::http1();
    wait_for_upstream(&client, port, "a").await;
    let rss_before = k.rss_kib();

    replace_config(&k, &format!("{}{bad}", serving(&a)));
    let (status, text) = post_reload(&k).await;
    assert_eq!(status, 400, "refused: {text}");
    let first = text.lines().next().unwrap_or("");
    let mut parts = first.splitn(4, ':');
    let (file, line, column) = (parts.next(), parts.next(), parts.next());
    assert!(
        file.is_some_and(|f| f.ends_with("kaname.yaml"))
            && line.is_some_and(|l| l.parse::<usize>().is_ok_and(|n| n > 0))
            && column.is_some_and(|c| c.parse::<usize>().is_ok_and(|n| n > 0)),
        "file:line:col first: {text}"
    );
    assert!(text.contains(&format!("({limit}")), "names {limit}: {text}");

    // Still alive, still on the old config.
    wait_for_upstream(&client, port, "a").await;
    for _ in 0..20 {
        let r = client.get(&format!("http://127.0.0.1:{port}/svc/x")).await;
        assert_eq!(r.status, 200, "old config serves");
    }
    let ready = client.get(&k.admin_url("/ready")).await;
    assert_eq!(ready.status, 200);
    let config = client.get(&k.admin_url("/config")).await;
    assert_eq!(config.status, 200);
    let shown = config.text();
    assert!(
        !shown.contains("x-deep") && !shown.contains(&"a".repeat(64)),
        "the old config is shown: {shown}"
    );
    let peak = k.peak_rss_kib();
    println!("{limit}: RSS before {rss_before} KiB, peak {peak} KiB");
    assert!(
        peak < 200 * 1024,
        "{limit}: peak RSS {peak} KiB (before the reload {rss_before} KiB)"
    );
    let m = metrics(&k).await;
    assert!(
        metric_value(&m, "kaname_config_reloads_total{result=\"failure\"}").unwrap_or(0.0) >= 1.0,
        "failure counted"
    );
    assert_eq!(
        metric_value(&m, &format!("kaname_limits_hit_total{{limit=\"{limit}\"}}")),
        Some(1.0),
        "{limit} counted"
    );
}

/// `config_depth`: an `x-` key nesting 5,000 block sequences once aborted
/// the process on the first reload (a stack overflow on a tokio thread).
#[tokio::test]
async fn reload_with_5000_levels_of_nesting_is_refused() {
    let bad = format!("x-deep:\n{}x\n", "- ".repeat(5000));
    reload_is_refused_within_bounds(&bad, "config_depth").await;
}

/// `config_expansion`: one 100 KiB string aliased 20,000 times once took a
/// running sidecar from 10 MB to 4.2 GB.
#[tokio::test]
async fn reload_with_an_alias_bomb_is_refused() {
    let bad = format!(
        "x-s: &s \"{}\"\nx-b: [{}]\n",
        "a".repeat(100 * 1024),
        vec!["*s"; 20_000].join(", ")
    );
    reload_is_refused_within_bounds(&bad, "config_expansion").await;
}
