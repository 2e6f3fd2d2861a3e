//! End to end: one queue on a real Redis shared by several kaname
//! processes (stores.md, async.md): any sidecar accepts, delivers and
//! answers status; a sidecar SIGKILLed mid-delivery has its jobs taken
//! over after `visibility_timeout`.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;

use http::Request;
use support::jobs::{accepted, post, status, wait_status, JobUpstream};
use support::redis::RedisServer;
use support::{full, metric, wait_metric, HttpClient, Kaname};

fn shared_config(
    data_dir: &std::path::Path,
    redis: &RedisServer,
    up: SocketAddr,
    delivery: &str,
) -> String {
    format!(
        "data_dir: {}
stores:
  shared:
    redis:
      url: {}
      timeout: 200ms
queues:
  reports:
    store: shared
{delivery}
listeners:
  main:
    listen: 127.0.0.1:0
    routes:
      - match: {{ path_prefix: /reports/ }}
        upstream: app
        queue: reports
upstreams:
  app:
    endpoints: [{up}]
",
        data_dir.display(),
        redis.url()
    )
}

async fn start_sidecar(yaml: &str) -> Kaname {
    let k = Kaname::start(yaml).await;
    wait_metric(&k, r#"kaname_store_up{store="shared"}"#, 1.0).await;
    k
}

async fn delivered_by(k: &Kaname) -> f64 {
    metric(
        k,
        r#"kaname_job_deliveries_total{queue="reports",outcome="success"}"#,
    )
    .await
}

#[tokio::test]
async fn two_sidecars_share_one_queue_each_job_delivered_once() {
    let redis = RedisServer::start();
    let up = JobUpstream::start(|_| (200, "done")).await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = shared_config(
        dir.path(),
        &redis,
        up.addr,
        "    delivery: { concurrency: 4, per_try_timeout: 5s }\n    visibility_timeout: 10s",
    );
    let sidecars = [start_sidecar(&yaml).await, start_sidecar(&yaml).await];
    let client = HttpClient::http1();
    let mut ids = Vec::new();
    for i in 0..100 {
        let k = &sidecars[i % 2];
        ids.push(accepted(
            &client.send(post(k, &format!("/reports/{i}"), "job")).await,
        ));
    }
    let seen = up.wait_deliveries(100).await;
    // Each job done, read from the sidecar that did not accept it too.
    for (i, id) in ids.iter().enumerate() {
        let v = wait_status(&sidecars[(i + 1) % 2], id, "done").await;
        assert_eq!(v["attempts"], 1, "{v}");
        assert_eq!(v["result"]["body"], "done");
        assert_eq!(status(&sidecars[i % 2], id).await["status"], "done");
    }
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for d in &seen {
        *counts.entry(d.job.as_str()).or_default() += 1;
    }
    for id in &ids {
        assert_eq!(
            counts.get(id.as_str()),
            Some(&1),
            "job {id} delivered {:?} times",
            counts.get(id.as_str())
        );
    }
    assert_eq!(up.seen().len(), 100, "no delivery but the 100");
    let (a, b) = (
        delivered_by(&sidecars[0]).await,
        delivered_by(&sidecars[1]).await,
    );
    // Which sidecar delivers a job is whichever looked first.
    assert_eq!(a + b, 100.0, "{a} + {b} deliveries");
    // Nothing of the queue is on local disk.
    assert!(!dir.path().join("jobs").exists());

    // One Idempotency-Key across sidecars: one job; another body is 422.
    let keyed = |k: &Kaname, body: &'static str| {
        Request::post(k.url("main", "/reports/keyed"))
            .header("idempotency-key", "order-7")
            .body(full(body))
            .unwrap()
    };
    let first = accepted(&client.send(keyed(&sidecars[0], "same")).await);
    let again = accepted(&client.send(keyed(&sidecars[1], "same")).await);
    assert_eq!(first, again);
    client
        .send(keyed(&sidecars[1], "other"))
        .await
        .assert_kaname_error(422, "idempotency_mismatch");
    wait_status(&sidecars[1], &first, "done").await;
    assert_eq!(up.seen().iter().filter(|d| d.job == first).count(), 1);
}

#[tokio::test]
async fn a_sidecar_killed_while_delivering_has_its_jobs_taken_over() {
    let redis = RedisServer::start();
    // Held: the first sidecar's deliveries hang until it is killed.
    let up = JobUpstream::start_held(|_| (200, "done"), 0).await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = shared_config(
        dir.path(),
        &redis,
        up.addr,
        "    delivery: { concurrency: 4, per_try_timeout: 2s }\n    visibility_timeout: 2s",
    );
    let mut first = start_sidecar(&yaml).await;
    let client = HttpClient::http1();
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(accepted(
            &client
                .send(post(&first, &format!("/reports/{i}"), "job"))
                .await,
        ));
    }
    let cut: Vec<String> = up
        .wait_deliveries(4)
        .await
        .into_iter()
        .map(|d| d.job)
        .collect();
    first.kill9().await;
    up.hold.add_permits(10_000);

    let second = start_sidecar(&yaml).await;
    for id in &ids {
        wait_status(&second, id, "done").await;
    }
    let seen = up.seen();
    for id in &cut {
        // Cut by the kill (attempt 1), delivered again by the second (2).
        let attempts: Vec<u32> = seen
            .iter()
            .filter(|d| &d.job == id)
            .map(|d| d.attempt)
            .collect();
        assert_eq!(attempts, vec![1, 2], "job {id}");
        assert_eq!(status(&second, id).await["attempts"], 2);
    }
    for id in ids.iter().filter(|id| !cut.contains(id)) {
        assert_eq!(seen.iter().filter(|d| &d.job == id).count(), 1, "job {id}");
    }
    // Queue empty everywhere: the depth Redis keeps says so.
    let waiting = redis.cli(&["HMGET", "kaname:q:reports:depth", "w0", "w1", "w2"]);
    assert!(
        waiting.lines().all(|l| l.is_empty() || l == "0"),
        "{waiting}"
    );
}
