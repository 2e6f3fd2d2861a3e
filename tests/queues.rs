//! The asynchronous hand-off end to end (async.md): the real binary with
//! its embedded store in a temporary data_dir, a real upstream that records
//! every delivery and can be scripted or held, real JWTs, SIGTERM and
//! SIGKILL.

mod support;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::Value;
use support::jobs::{accepted, post, status, wait_status, JobUpstream};
use support::metrics::{metric, wait_metric};
use support::net::{accept_each, bind_loopback};
use support::{full, HttpClient, Kaname};

fn config(data_dir: &std::path::Path, up: SocketAddr, queue: &str, extra: &str) -> String {
    format!(
        "data_dir: {}
queues:
  reports:
{queue}
listeners:
  main:
    listen: 127.0.0.1:0
    routes:
      - match: {{ path_prefix: /reports/ }}
        upstream: app
        queue: reports
{extra}      - match: {{ path_prefix: / }}
        upstream: app
upstreams:
  app:
    endpoints: [{up}]
",
        data_dir.display()
    )
}

#[tokio::test]
async fn a_job_is_accepted_delivered_and_its_result_read() {
    let dir = tempfile::tempdir().unwrap();
    let up = JobUpstream::start(|_| (201, "report ready")).await;
    let k = Kaname::start(&config(
        dir.path(),
        up.addr,
        "    delivery: { concurrency: 2 }",
        "",
    ))
    .await;
    let mut req = post(&k, "/reports/q1?year=2026", "make it");
    req.headers_mut()
        .insert("x-custom", "kept".parse().unwrap());
    let res = HttpClient::http1().send(req).await;
    let id = accepted(&res);
    assert_eq!(res.json()["status"], "queued");

    let d = up.wait_deliveries(1).await.remove(0);
    assert_eq!(d.job, id);
    assert_eq!(d.attempt, 1);
    assert_eq!(d.path, "/reports/q1?year=2026");
    assert_eq!(&d.body[..], b"make it");
    assert_eq!(d.headers.get("x-custom").unwrap(), "kept");
    assert!(
        d.headers.get("x-forwarded-for").is_some(),
        "headers as forwarded"
    );
    let v = wait_status(&k, &id, "done").await;
    assert_eq!(v["attempts"], 1);
    assert_eq!(v["result"]["status"], 201);
    assert_eq!(v["result"]["body"], "report ready");
    assert_eq!(v["result"]["body_encoding"], "utf8");
    assert_eq!(v["result"]["truncated"], false);
    assert!(v["created"].as_str().unwrap().ends_with('Z'));
    // Other paths are forwarded as usual; unknown ids are not found.
    let res = HttpClient::http1().get(&k.url("main", "/other")).await;
    assert_eq!(res.status, 201, "forwarded at once");
    for bad in ["AAAAAAAAAAAAAAAAAAAAAA", "nope", "AAAAAAAAAAAAAAAAAAAAAA/x"] {
        let res = HttpClient::http1()
            .get(&k.url("main", &format!("/.kaname/jobs/{bad}")))
            .await;
        res.assert_kaname_error(404, "no_job");
    }
    wait_metric(
        &k,
        "kaname_jobs_total{queue=\"reports\",result=\"done\"}",
        1.0,
    )
    .await;
    assert_eq!(
        metric(
            &k,
            "kaname_jobs_total{queue=\"reports\",result=\"accepted\"}"
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn retries_to_success_to_failure_and_a_final_4xx() {
    let dir = tempfile::tempdir().unwrap();
    // Fails twice, then answers.
    let up = JobUpstream::start(|i| match i {
        0 | 1 => (503, "busy"),
        _ => (200, "finally"),
    })
    .await;
    let k = Kaname::start(&config(
        dir.path(),
        up.addr,
        "    delivery: { concurrency: 1, attempts: 3, backoff: { base: 10ms, max: 50ms } }",
        "",
    ))
    .await;
    let id = accepted(
        &HttpClient::http1()
            .send(post(&k, "/reports/flaky", "x"))
            .await,
    );
    let v = wait_status(&k, &id, "done").await;
    assert_eq!(v["attempts"], 3);
    assert_eq!(v["result"]["status"], 200);
    let seen = up.seen();
    assert_eq!(
        seen.iter().map(|d| d.attempt).collect::<Vec<_>>(),
        [1, 2, 3],
        "kaname-delivery-attempt counts"
    );
    drop(k);

    // Always failing: failed once the attempts are spent, the last answer kept.
    let dir = tempfile::tempdir().unwrap();
    let up = JobUpstream::start(|_| (503, "down")).await;
    let k = Kaname::start(&config(
        dir.path(),
        up.addr,
        "    delivery: { attempts: 2, backoff: { base: 10ms, max: 20ms } }",
        "",
    ))
    .await;
    let id = accepted(
        &HttpClient::http1()
            .send(post(&k, "/reports/down", "x"))
            .await,
    );
    let v = wait_status(&k, &id, "failed").await;
    assert_eq!(v["attempts"], 2);
    assert_eq!(v["result"]["status"], 503);
    assert!(
        v["error"].as_str().unwrap().contains("attempts spent"),
        "{v}"
    );
    drop(k);

    let dir = tempfile::tempdir().unwrap();
    let up = JobUpstream::start(|_| (404, "no such report")).await;
    let k = Kaname::start(&config(dir.path(), up.addr, "    max_depth: 10", "")).await;
    let id = accepted(
        &HttpClient::http1()
            .send(post(&k, "/reports/gone", "x"))
            .await,
    );
    let v = wait_status(&k, &id, "done").await;
    assert_eq!(v["attempts"], 1, "a 4xx not in retry_on is final");
    assert_eq!(v["result"]["status"], 404);
    assert_eq!(up.seen().len(), 1);
}

#[tokio::test]
async fn a_body_that_never_ends_is_a_timed_out_try_not_a_held_consumer() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    // Answers its head and a part of the body it announced, then holds.
    let listener = bind_loopback("dribbling upstream").await;
    let up = listener.local_addr().unwrap();
    let tries = Arc::new(AtomicUsize::new(0));
    let seen = tries.clone();
    let _server = accept_each(listener, move |mut sock| {
        seen.fetch_add(1, Ordering::SeqCst);
        async move {
            let mut buf = [0u8; 4096];
            let _ = sock.read(&mut buf).await;
            let head = "HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\nthe first part";
            let _ = sock.write_all(head.as_bytes()).await;
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
    });
    let k = Kaname::start(&config(
        dir.path(),
        up,
        "    delivery: { concurrency: 1, attempts: 2, per_try_timeout: 300ms, backoff: { base: 10ms, max: 20ms } }",
        "",
    ))
    .await;
    let id = accepted(
        &HttpClient::http1()
            .send(post(&k, "/reports/slow-body", "x"))
            .await,
    );
    let v = wait_status(&k, &id, "failed").await;
    assert_eq!(v["attempts"], 2, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("body not complete within per_try_timeout"),
        "{v}"
    );
    assert_eq!(
        tries.load(Ordering::SeqCst),
        2,
        "each try on a connection of its own"
    );
    let timeouts = metric(
        &k,
        r#"kaname_job_deliveries_total{queue="reports",outcome="timeout"}"#,
    )
    .await;
    assert_eq!(timeouts, 2.0);
}

#[tokio::test]
async fn an_idempotency_key_stores_one_job() {
    let dir = tempfile::tempdir().unwrap();
    let up = JobUpstream::start(|_| (200, "ok")).await;
    let k = Kaname::start(&config(dir.path(), up.addr, "    max_depth: 10", "")).await;
    let keyed = |body: &'static str| {
        let mut r = post(&k, "/reports/k", body);
        r.headers_mut()
            .insert("idempotency-key", "order-77".parse().unwrap());
        r
    };
    let first = accepted(&HttpClient::http1().send(keyed("same")).await);
    let again = accepted(&HttpClient::http1().send(keyed("same")).await);
    assert_eq!(first, again, "the first job's id");
    let res = HttpClient::http1().send(keyed("other body")).await;
    res.assert_kaname_error(422, "idempotency_mismatch");
    wait_status(&k, &first, "done").await;
    let again = accepted(&HttpClient::http1().send(keyed("same")).await);
    assert_eq!(first, again, "still the first job while it is kept");
    assert_eq!(up.seen().len(), 1, "delivered once");
    assert!(
        up.seen()[0].headers.get("idempotency-key").is_none(),
        "consumed"
    );
    assert_eq!(
        metric(
            &k,
            "kaname_jobs_total{queue=\"reports\",result=\"duplicate\"}"
        )
        .await,
        2.0
    );
}

#[tokio::test]
async fn priorities_are_served_strictly_and_limits_refuse_before_storage() {
    let dir = tempfile::tempdir().unwrap();
    // Deliveries are held until released: the first one occupies the only
    // consumer while the others queue up.
    let up = JobUpstream::start_held(|_| (200, "ok"), 0).await;
    let k = Kaname::start(&config(
        dir.path(),
        up.addr,
        "    max_depth: 4\n    max_body_bytes: 16\n    priority: { header: x-priority }\n    delivery: { concurrency: 1 }",
        "",
    ))
    .await;
    let client = HttpClient::http1();
    let send = |prio: &'static str, body: &'static str| {
        let mut r = post(&k, "/reports/p", body);
        r.headers_mut().insert("x-priority", prio.parse().unwrap());
        r
    };
    let first = accepted(&client.send(send("low", "first")).await);
    up.wait_deliveries(1).await;
    let low = accepted(&client.send(send("low", "low")).await);
    let normal = accepted(&client.send(send("whatever", "normal")).await);
    let high = accepted(&client.send(send("HIGH", "high")).await);
    let normal2 = accepted(&client.send(send("normal", "normal2")).await);
    // Four waiting: the fifth is refused, and so is a body over 16 bytes.
    let res = client.send(send("high", "over")).await;
    res.assert_kaname_error(503, "overloaded");
    assert_eq!(res.header("retry-after"), Some("1"));
    let res = client
        .send(post(&k, "/reports/big", "seventeen bytes!!"))
        .await;
    res.assert_kaname_error(413, "payload_too_large");
    wait_metric(
        &k,
        "kaname_jobs_waiting{priority=\"normal\",queue=\"reports\"}",
        2.0,
    )
    .await;
    assert_eq!(
        metric(&k, "kaname_jobs_delivering{queue=\"reports\"}").await,
        1.0
    );
    assert_eq!(
        metric(
            &k,
            "kaname_jobs_total{queue=\"reports\",result=\"rejected_full\"}"
        )
        .await,
        1.0
    );
    up.hold.add_permits(1000);
    let seen = up.wait_deliveries(5).await;
    let order: Vec<&str> = seen.iter().map(|d| d.job.as_str()).collect();
    assert_eq!(order, [first.as_str(), &high, &normal, &normal2, &low]);
    assert!(seen[1].headers.get("x-priority").is_none(), "consumed");
}

#[tokio::test]
async fn a_queued_job_can_be_cancelled_once() {
    let dir = tempfile::tempdir().unwrap();
    let up = JobUpstream::start_held(|_| (200, "ok"), 0).await;
    let k = Kaname::start(&config(
        dir.path(),
        up.addr,
        "    delivery: { concurrency: 1 }",
        "",
    ))
    .await;
    let client = HttpClient::http1();
    let busy = accepted(&client.send(post(&k, "/reports/1", "a")).await);
    up.wait_deliveries(1).await;
    let waiting = accepted(&client.send(post(&k, "/reports/2", "b")).await);
    let delete = |id: &str| {
        Request::delete(k.url("main", &format!("/.kaname/jobs/{id}")))
            .body(support::empty())
            .unwrap()
    };
    assert_eq!(client.send(delete(&waiting)).await.status, 204);
    assert_eq!(status(&k, &waiting).await["status"], "cancelled");
    client
        .send(delete(&waiting))
        .await
        .assert_kaname_error(409, "job_conflict");
    client
        .send(delete(&busy))
        .await
        .assert_kaname_error(409, "job_conflict");
    client
        .send(delete("AAAAAAAAAAAAAAAAAAAAAA"))
        .await
        .assert_kaname_error(404, "no_job");
    up.hold.add_permits(1000);
    wait_status(&k, &busy, "done").await;
    assert_eq!(up.seen().len(), 1, "the cancelled job is never delivered");
}

#[tokio::test]
async fn filters_refuse_before_anything_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let up = JobUpstream::start(|_| (200, "ok")).await;
    let secret = "queue-test-secret-0123456789abcdefgh";
    let text = format!(
        "{}filters:\n  auth:\n    jwt: {{ algorithms: [HS256], secret: {secret}, forward_claims: {{ sub: x-user }} }}\n",
        config(dir.path(), up.addr, "    max_depth: 10", "        filters: [auth]\n")
    );
    let k = Kaname::start(&text).await;
    let client = HttpClient::http1();
    let res = client.send(post(&k, "/reports/x", "no token")).await;
    res.assert_kaname_error(401, "unauthenticated");
    let token = support::jwt::hs256_with_secret(
        "k",
        &serde_json::json!({"sub": "ana", "exp": support::jwt::now() + 600}),
        secret.as_bytes(),
    );
    let mut req = post(&k, "/reports/x", "with token");
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let id = accepted(&client.send(req).await);
    let d = up.wait_deliveries(1).await.remove(0);
    assert_eq!(d.job, id, "only the verified request became a job");
    assert_eq!(
        d.headers.get("x-user").unwrap(),
        "ana",
        "claim headers are stored"
    );
    assert!(d.headers.get("authorization").is_none(), "the token is not");
    assert_eq!(
        metric(
            &k,
            "kaname_jobs_total{queue=\"reports\",result=\"accepted\"}"
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn a_callback_to_a_host_not_allowed_is_refused_at_acceptance() {
    let dir = tempfile::tempdir().unwrap();
    let up = JobUpstream::start(|_| (200, "ok")).await;
    let k = Kaname::start(&config(
        dir.path(),
        up.addr,
        "    callback: { allowed_hosts: [hooks.internal], secret: callback-secret-0123456789 }",
        "",
    ))
    .await;
    for url in [
        "http://169.254.169.254/latest/meta-data/",
        "http://hooks.internal.evil.com/",
        "ftp://hooks.internal/",
    ] {
        let mut req = post(&k, "/reports/cb", "x");
        req.headers_mut()
            .insert("x-callback-url", url.parse().unwrap());
        HttpClient::http1()
            .send(req)
            .await
            .assert_kaname_error(400, "callback_not_allowed");
    }
    assert_eq!(up.seen().len(), 0);
}

#[tokio::test]
async fn sigterm_leaves_waiting_jobs_stored_and_a_restart_delivers_them() {
    let dir = tempfile::tempdir().unwrap();
    let up = JobUpstream::start_held(|_| (200, "ok"), 0).await;
    let yaml = config(dir.path(), up.addr, "    delivery: { concurrency: 1 }", "");
    let mut k = Kaname::start(&format!("shutdown_grace: 5s\n{yaml}")).await;
    let client = HttpClient::http1();
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(accepted(&client.send(post(&k, "/reports/s", "x")).await));
    }
    up.wait_deliveries(1).await;
    k.sigterm();
    // The delivery in flight finishes within the grace; no new one starts.
    up.hold.add_permits(1);
    let exit = k.wait_exit(Duration::from_secs(10)).await;
    assert!(exit.success(), "{exit:?}");
    assert_eq!(up.seen().len(), 1);
    up.hold.add_permits(1000);
    let k = Kaname::start(&yaml).await;
    let seen = up.wait_deliveries(4).await;
    let delivered: HashSet<&str> = seen.iter().map(|d| d.job.as_str()).collect();
    assert_eq!(delivered.len(), 4, "{seen:#?}");
    for id in &ids {
        wait_status(&k, id, "done").await;
    }
}

#[tokio::test]
async fn no_accepted_job_is_lost_across_twenty_kills() {
    let dir = tempfile::tempdir().unwrap();
    let up = JobUpstream::start(|_| (200, "ok")).await;
    let yaml = config(
        dir.path(),
        up.addr,
        "    max_depth: 100000\n    delivery: { concurrency: 4 }",
        "",
    );
    let mut accepted_ids: HashSet<String> = HashSet::new();
    for round in 0..20u64 {
        let mut k = Kaname::start(&yaml).await;
        let port = k.port("main");
        // Clients keep sending while the process is killed under them.
        let sender = tokio::spawn(async move {
            let client = HttpClient::http1();
            let mut ids = Vec::new();
            for i in 0..1000 {
                let req = Request::post(format!("http://127.0.0.1:{port}/reports/{i}"))
                    .body(full("job"))
                    .unwrap();
                match client.try_send(req, Duration::from_secs(2)).await {
                    Ok(res) if res.status == 202 => {
                        ids.push(res.json()["job"].as_str().unwrap().to_string())
                    }
                    _ => break,
                }
            }
            ids
        });
        // Kill at a different moment each round: during acceptance and
        // during delivery.
        tokio::time::sleep(Duration::from_millis(20 + (round * 37) % 200)).await;
        k.kill9().await;
        accepted_ids.extend(sender.await.unwrap());
    }
    assert!(
        accepted_ids.len() > 100,
        "only {} accepted in all",
        accepted_ids.len()
    );
    let _k = Kaname::start(&yaml).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let delivered: HashSet<String> = up.seen().into_iter().map(|d| d.job).collect();
        let missing: Vec<&String> = accepted_ids.difference(&delivered).collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {} accepted jobs never delivered, e.g. {:?}",
            missing.len(),
            accepted_ids.len(),
            &missing[..missing.len().min(3)]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let counts: HashMap<String, usize> = up.seen().into_iter().fold(HashMap::new(), |mut m, d| {
        *m.entry(d.job).or_default() += 1;
        m
    });
    assert!(counts.values().all(|n| *n >= 1));
}

/// A callback receiver: answers 500 to its first `fail` posts, then 200;
/// keeps each post's headers and body.
async fn callback_receiver(fail: usize) -> (SocketAddr, Arc<Mutex<Vec<(http::HeaderMap, Bytes)>>>) {
    let listener = bind_loopback("callback receiver").await;
    let addr = listener.local_addr().unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let n = Arc::new(AtomicUsize::new(0));
    let g = got.clone();
    accept_each(listener, move |stream| {
        let (got, n) = (g.clone(), n.clone());
        async move {
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let (got, n) = (got.clone(), n.clone());
                async move {
                    let (parts, body) = req.into_parts();
                    let body = body
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    got.lock().unwrap().push((parts.headers, body));
                    let status = if n.fetch_add(1, Ordering::SeqCst) < fail {
                        500
                    } else {
                        200
                    };
                    let mut res = Response::new(Full::new(Bytes::new()));
                    *res.status_mut() = StatusCode::from_u16(status).unwrap();
                    Ok::<_, std::convert::Infallible>(res)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
        }
    });
    (addr, got)
}

#[tokio::test]
async fn a_finished_job_is_called_back_signed_and_retried() {
    let dir = tempfile::tempdir().unwrap();
    let up = JobUpstream::start(|_| (200, "the result")).await;
    let (hooks, got) = callback_receiver(1).await;
    let secret = "callback-secret-0123456789abcdef";
    let k = Kaname::start(&config(
        dir.path(),
        up.addr,
        &format!("    callback: {{ allowed_hosts: [127.0.0.1], secret: {secret}, attempts: 3 }}"),
        "",
    ))
    .await;
    let mut req = post(&k, "/reports/cb", "x");
    req.headers_mut().insert(
        "x-callback-url",
        format!("http://{hooks}/done?token=t").parse().unwrap(),
    );
    let id = accepted(&HttpClient::http1().send(req).await);
    assert!(
        up.wait_deliveries(1).await[0]
            .headers
            .get("x-callback-url")
            .is_none(),
        "consumed"
    );
    wait_metric(
        &k,
        "kaname_job_callbacks_total{queue=\"reports\",result=\"success\"}",
        1.0,
    )
    .await;
    let got = got.lock().unwrap().clone();
    assert_eq!(
        got.len(),
        2,
        "the first post failed (500) and was sent again"
    );
    let (headers, body) = &got[1];
    let v: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(v["job"], id);
    assert_eq!(v["status"], "done");
    assert_eq!(v["result"]["body"], "the result");
    // The receiver's check: HMAC-SHA256 of "<timestamp>.<body>".
    let ts = headers["kaname-timestamp"].to_str().unwrap();
    let now = support::jwt::now();
    let sent: u64 = ts.parse().unwrap();
    assert!(
        sent <= now && now - sent < 60,
        "a fresh timestamp: {sent} vs {now}"
    );
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret.as_bytes());
    let mut signed = ts.as_bytes().to_vec();
    signed.push(b'.');
    signed.extend_from_slice(body);
    let tag = aws_lc_rs::hmac::sign(&key, &signed);
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        headers["kaname-signature"],
        format!("sha256={hex}").as_str()
    );
    let forged = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, b"another secret");
    let other: String = aws_lc_rs::hmac::sign(&forged, &signed)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_ne!(
        headers["kaname-signature"],
        format!("sha256={other}").as_str()
    );
}

#[tokio::test]
async fn a_reload_changes_the_number_of_consumers() {
    let dir = tempfile::tempdir().unwrap();
    let up = JobUpstream::start_held(|_| (200, "ok"), 0).await;
    let yaml = |c: u32| {
        config(
            dir.path(),
            up.addr,
            &format!("    delivery: {{ concurrency: {c} }}"),
            "",
        )
    };
    let k = Kaname::start(&yaml(1)).await;
    let client = HttpClient::http1();
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(accepted(&client.send(post(&k, "/reports/r", "x")).await));
    }
    up.wait_deliveries(1).await;
    // A job's worth of time for a second consumer to show itself, were there one.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(up.seen().len(), 1, "one consumer");
    std::fs::write(&k.config_path, support::config_file(&yaml(3))).unwrap();
    let reload = client
        .send(
            Request::post(k.admin_url("/reload"))
                .body(support::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(reload.status, 200, "{}", reload.text());
    // The delivery in flight counts against the new three.
    up.wait_deliveries(3).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(up.seen().len(), 3, "three consumers, the held one included");
    assert_eq!(
        metric(&k, "kaname_jobs_delivering{queue=\"reports\"}").await,
        3.0
    );
    up.hold.add_permits(1000);
    for id in &ids {
        wait_status(&k, id, "done").await;
    }
}

#[tokio::test]
async fn a_removed_queue_keeps_its_jobs_and_resumes_when_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let up = JobUpstream::start_held(|_| (200, "ok"), 0).await;
    let with_queue = config(dir.path(), up.addr, "    delivery: { concurrency: 1 }", "");
    let k = Kaname::start(&with_queue).await;
    let client = HttpClient::http1();
    let first = accepted(&client.send(post(&k, "/reports/a", "a")).await);
    up.wait_deliveries(1).await;
    let waiting = accepted(&client.send(post(&k, "/reports/b", "b")).await);
    let reload = |yaml: String| {
        std::fs::write(&k.config_path, support::config_file(&yaml)).unwrap();
        client.send(
            Request::post(k.admin_url("/reload"))
                .body(support::empty())
                .unwrap(),
        )
    };
    // The queue and its route go; /reports/ is forwarded now.
    let without = format!(
        "data_dir: {}\nlisteners:\n  main:\n    listen: 127.0.0.1:0\n    routes:\n      - match: {{ path_prefix: / }}\n        upstream: app\nupstreams:\n  app:\n    endpoints: [{}]\n",
        dir.path().display(),
        up.addr
    );
    let res = reload(without).await;
    assert_eq!(res.status, 200, "{}", res.text());
    up.hold.add_permits(1);
    // Without its queue, the waiting job is not delivered (a forwarded
    // request is the next thing the upstream sees).
    let forwarded = client.send(post(&k, "/reports/direct", "d"));
    up.hold.add_permits(1);
    assert_eq!(forwarded.await.status, 200);
    let seen = up.seen();
    assert_eq!(seen.len(), 2, "{seen:#?}");
    assert_eq!(
        seen[1].job, "",
        "the second request was forwarded, not a job"
    );
    // The queue returns: its stored job is delivered.
    up.hold.add_permits(1000);
    let res = reload(with_queue).await;
    assert_eq!(res.status, 200, "{}", res.text());
    wait_status(&k, &waiting, "done").await;
    let v = status(&k, &first).await;
    assert!(
        ["done", "delivering", "queued"].contains(&v["status"].as_str().unwrap()),
        "{v}"
    );
}
