//! End to end: state shared across sidecars on a real Redis (stores.md).
//! Rate limits on a store: one bound across three kaname processes, keys
//! apart, and each `on_store_error` while Redis is killed and after it
//! comes back; `kaname check` on stores; `/config` hiding the password.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Request;
use support::redis::RedisServer;
use support::*;

/// A sidecar whose route `/` is limited per `x-user` on the store.
fn limited_config(
    upstream: &TestUpstream,
    url: &str,
    rate: &str,
    burst: u32,
    on_error: &str,
) -> String {
    format!(
        "stores:
  shared:
    redis:
      url: {url}
      timeout: 100ms
listeners:
  main:
    listen: 127.0.0.1:0
    routes:
      - match: {{ path_prefix: / }}
        upstream: echo
        filters: [per-user]
upstreams:
  echo:
    endpoints: [{}]
filters:
  per-user:
    rate_limit:
      key: header:x-user
      rate: {rate}
      burst: {burst}
      store: shared
      on_store_error: {on_error}
",
        upstream.addr
    )
}

async fn get_as(client: &HttpClient, url: &str, user: &str) -> u16 {
    let req = Request::get(url)
        .header("x-user", user)
        .body(empty())
        .expect("request");
    client.send(req).await.status.as_u16()
}

/// Waits until the sidecar's store is up (its probe has connected).
async fn store_up(k: &Kaname) {
    wait_metric(k, r#"kaname_store_up{store="shared"}"#, 1.0).await;
}

#[tokio::test]
async fn three_sidecars_share_one_bound_per_key() {
    let redis = RedisServer::start_with_password(Some("s3cret-redis-pw"));
    let upstream = TestUpstream::start("echo").await;
    let url =
        "redis://:${REDIS_PASSWORD}@127.0.0.1:PORT/0".replace("PORT", &redis.port.to_string());
    let config = limited_config(&upstream, &url, "20/s", 20, "deny");
    let env = [("REDIS_PASSWORD", "s3cret-redis-pw")];
    let mut sidecars = Vec::new();
    for _ in 0..3 {
        let k = Kaname::start_with_env(&config, &env).await;
        store_up(&k).await;
        sidecars.push(k);
    }

    // Three clients per sidecar, as fast as they can, for 3 s (and at most
    // 20,000 requests in all), one user.
    let admitted = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let run_for = Duration::from_secs(3);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for k in &sidecars {
        for _ in 0..3 {
            let url = k.url("main", "/work");
            let (admitted, sent) = (admitted.clone(), sent.clone());
            tasks.push(tokio::spawn(async move {
                let client = HttpClient::http1();
                while started.elapsed() < run_for && sent.fetch_add(1, Ordering::Relaxed) < 20_000 {
                    match get_as(&client, &url, "alice").await {
                        200 => {
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                        429 => {}
                        other => panic!("status {other}"),
                    }
                }
            }));
        }
    }
    for t in tasks {
        t.await.expect("client task");
    }
    let elapsed = started.elapsed().as_secs_f64();
    let admitted = admitted.load(Ordering::Relaxed) as f64;
    let sent = sent.load(Ordering::Relaxed).min(20_000) as f64;
    // The contract's bound over the run: rate × time + burst.
    let bound = 20.0 * elapsed + 20.0;
    assert!(
        sent > 3.0 * bound,
        "the load ({sent} requests) must exceed even three local limits ({})",
        3.0 * bound
    );
    assert!(
        (admitted - bound).abs() <= 0.1 * bound,
        "admitted {admitted} across three sidecars in {elapsed:.2}s; the shared bound is {bound:.0} (three local limits would admit {:.0})",
        3.0 * bound
    );

    // Alice's bucket is empty on every sidecar (one token refills every
    // 50 ms: of two requests in a row, one is refused); bob's is his own.
    let client = HttpClient::http1();
    let alice = [
        get_as(&client, &sidecars[1].url("main", "/"), "alice").await,
        get_as(&client, &sidecars[1].url("main", "/"), "alice").await,
    ];
    assert!(alice.contains(&429), "{alice:?}");
    assert_eq!(
        get_as(&client, &sidecars[2].url("main", "/"), "bob").await,
        200
    );
    let keys = redis.cli(&["--scan", "--pattern", "kaname:rl:per-user:*"]);
    let mut keys: Vec<&str> = keys.lines().collect();
    keys.sort();
    assert_eq!(
        keys,
        ["kaname:rl:per-user:v:alice", "kaname:rl:per-user:v:bob"]
    );

    // The password works (Redis requires it) and never shows in /config.
    let shown = HttpClient::http1_no_pool()
        .get(&sidecars[0].admin_url("/config"))
        .await
        .text();
    assert!(!shown.contains("s3cret-redis-pw"), "{shown}");
    assert!(shown.contains("store: shared"), "{shown}");
}

/// Redis killed under a sidecar, then started again on its port.
async fn redis_away_and_back(on_error: &str, while_down: [u16; 8]) {
    let mut redis = RedisServer::start();
    let upstream = TestUpstream::start("echo").await;
    let k = Kaname::start(&limited_config(&upstream, &redis.url(), "1/m", 4, on_error)).await;
    store_up(&k).await;
    let client = HttpClient::http1();
    let url = k.url("main", "/");
    for _ in 0..4 {
        assert_eq!(get_as(&client, &url, "carol").await, 200);
    }
    assert_eq!(
        get_as(&client, &url, "carol").await,
        429,
        "shared bucket spent"
    );

    redis.kill();
    let mut got = Vec::new();
    for _ in 0..8 {
        got.push(get_as(&client, &url, "dave").await);
    }
    assert_eq!(got, while_down, "on_store_error: {on_error}, Redis down");
    let text = metrics(&k).await;
    assert_eq!(
        metric_value(&text, r#"kaname_store_up{store="shared"}"#),
        Some(0.0)
    );
    assert!(
        metric_value(
            &text,
            r#"kaname_store_errors_total{store="shared",kind="connection"}"#
        )
        .unwrap_or(0.0)
            + metric_value(
                &text,
                r#"kaname_store_errors_total{store="shared",kind="timeout"}"#
            )
            .unwrap_or(0.0)
            >= 1.0,
        "{text}"
    );
    assert_eq!(
        metric_value(
            &text,
            r#"kaname_rate_limit_store_fallbacks_total{filter="per-user"}"#
        ),
        Some(8.0)
    );

    // Back (empty: no persistence): shared again within 5 s, Redis holding
    // the bucket.
    redis.restart();
    let back = Instant::now();
    let (up, _) = poll_metric(
        &k,
        r#"kaname_store_up{store="shared"}"#,
        Duration::from_secs(5),
        |v| v == Some(1.0),
    )
    .await;
    assert!(
        up,
        "store not up within 5 s of Redis' return ({:?})",
        back.elapsed()
    );
    for _ in 0..4 {
        assert_eq!(get_as(&client, &url, "erin").await, 200);
    }
    assert_eq!(get_as(&client, &url, "erin").await, 429);
    assert_eq!(redis.cli(&["exists", "kaname:rl:per-user:v:erin"]), "1");
}

#[tokio::test]
async fn redis_down_then_back_with_on_store_error_local() {
    // The process's own bucket, burst 4: four, then 429.
    redis_away_and_back("local", [200, 200, 200, 200, 429, 429, 429, 429]).await;
}

#[tokio::test]
async fn redis_down_then_back_with_on_store_error_allow() {
    redis_away_and_back("allow", [200; 8]).await;
}

#[tokio::test]
async fn redis_down_then_back_with_on_store_error_deny() {
    redis_away_and_back("deny", [429; 8]).await;
}

#[test]
fn check_names_unknown_stores_and_bad_urls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("kaname.yaml");
    let config = "stores:
  shared:
    redis: { url: \"redis://:pw@cache:99999/0\" }
listeners:
  main:
    listen: 127.0.0.1:0
    routes: [{ upstream: u, filters: [per-user] }]
upstreams: { u: { endpoints: [127.0.0.1:1] } }
filters:
  per-user: { rate_limit: { key: client_ip, rate: 5/s, store: sharde } }
";
    std::fs::write(&path, config).expect("write");
    let out = std::process::Command::new(KANAME)
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .expect("run kaname check");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let file = path.display();
    assert!(
        stderr.contains(&format!("{file}:3:19: redis url \"redis://<redacted>@cache:99999/0\": port \"99999\" is not a port number")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{file}:10:63: unknown store \"sharde\", neither local nor a name under stores; did you mean \"shared\"?")),
        "{stderr}"
    );
    assert!(!stderr.contains(":pw@"), "{stderr}");

    // A TLS store's CA file is read by check, as by run and reload.
    let config = "stores:
  secure:
    redis: { url: \"rediss://cache:6380\", ca_file: /nonexistent/ca.pem }
listeners:
  main:
    listen: 127.0.0.1:0
    routes: [{ upstream: u }]
upstreams: { u: { endpoints: [127.0.0.1:1] } }
";
    std::fs::write(&path, config).expect("write");
    let out = std::process::Command::new(KANAME)
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .expect("run kaname check");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("{file}:3:42: store \"secure\" redis.ca_file: /nonexistent/ca.pem: cannot read the file")),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_tls_store_with_its_own_ca() {
    let ca = support::tls::TestCa::new("redis test CA");
    let leaf = ca.issue(&support::tls::LeafSpec {
        dns: &["127.0.0.1"],
        ..Default::default()
    });
    let redis = RedisServer::start_tls(&leaf.cert_pem, &leaf.key_pem, &ca.cert_pem);
    let upstream = TestUpstream::start("echo").await;
    let url = format!("rediss://127.0.0.1:{}/0", redis.port);
    let config = limited_config(&upstream, &url, "1/m", 2, "allow").replace(
        "      timeout: 100ms\n",
        &format!(
            "      timeout: 100ms\n      ca_file: {}\n",
            redis.ca_path().display()
        ),
    );
    let k = Kaname::start(&config).await;
    store_up(&k).await;
    let client = HttpClient::http1();
    let url = k.url("main", "/");
    assert_eq!(get_as(&client, &url, "tls-user").await, 200);
    assert_eq!(get_as(&client, &url, "tls-user").await, 200);
    assert_eq!(
        get_as(&client, &url, "tls-user").await,
        429,
        "decided over TLS, in Redis"
    );
    assert_eq!(
        redis.cli_tls(&["exists", "kaname:rl:per-user:v:tls-user"]),
        "1"
    );

    // A CA that did not sign Redis' certificate: the store never comes up
    // and on_store_error (allow) decides.
    let other = support::tls::TestCa::new("another CA");
    let dir = tempfile::tempdir().expect("tempdir");
    let wrong = dir.path().join("wrong-ca.crt");
    std::fs::write(&wrong, &other.cert_pem).expect("write");
    let config = limited_config(
        &upstream,
        &format!("rediss://127.0.0.1:{}/0", redis.port),
        "1/m",
        2,
        "allow",
    )
    .replace(
        "      timeout: 100ms\n",
        &format!("      timeout: 100ms\n      ca_file: {}\n", wrong.display()),
    );
    let k = Kaname::start(&config).await;
    for _ in 0..4 {
        assert_eq!(get_as(&client, &k.url("main", "/"), "tls-user").await, 200);
    }
    let text = metrics(&k).await;
    assert_eq!(
        metric_value(&text, r#"kaname_store_up{store="shared"}"#),
        Some(0.0),
        "{text}"
    );
}
