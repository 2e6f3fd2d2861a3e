//! The scripts against a real `redis-server` (Debian's package, as the
//! end-to-end tests use): priorities, backoff, cancel, idempotency, depth
//! and the take-over of an entry idle past the visibility timeout.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::*;
use crate::metrics::Metrics;
use crate::queue::job::{now_ms, JobResult, HIGH, LOW, NORMAL};

struct Server(Child, u16);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// redis-server on a random free port, answering PING (within 10 s).
fn redis_server() -> Server {
    for _ in 0..20 {
        let port = 20_000 + rand::random::<u16>() % 40_000;
        let Ok(child) = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        else {
            panic!("redis-server is not installed (apt-get install redis-server)");
        };
        let mut server = Server(child, port);
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = server.0.try_wait() {
                break; // port taken: another one
            }
            let pong = Command::new("redis-cli")
                .args(["-p", &port.to_string(), "PING"])
                .output()
                .is_ok_and(|o| o.stdout.starts_with(b"PONG"));
            if pong {
                return server;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = server.0.kill();
    }
    panic!("no redis-server in 20 tries");
}

/// A queue on the server, its store up.
async fn queue_on(server: &Server, visibility: &str) -> (StreamStore, Queue) {
    let yaml = format!(
        "stores:
  s:
    redis: {{ url: redis://127.0.0.1:{}/0, timeout: 500ms }}
queues:
  q:
    store: s
    delivery: {{ per_try_timeout: 10ms }}
    visibility_timeout: {visibility}
listeners:
  l:
    listen: 127.0.0.1:0
    routes:
      - match: {{ path_prefix: / }}
        upstream: u
        queue: q
upstreams:
  u:
    endpoints: [127.0.0.1:1]
",
        server.1
    );
    let cfg = kaname_config::parse("<test>", &yaml).expect("config");
    let metrics = Metrics::new();
    let store = RedisStore::new(&cfg.stores[0], &metrics).expect("store");
    let deadline = Instant::now() + Duration::from_secs(10);
    while store
        .run(|mut c| async move { redis::cmd("PING").query_async::<()>(&mut c).await })
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "store not up within 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let q = cfg.queues[0].clone();
    (StreamStore::new(store, &q), q)
}

fn new_job(priority: u8, key: Option<&str>, digest: u8) -> NewJob {
    let now = now_ms();
    NewJob {
        id: JobId::random(),
        job: Job {
            queue: "q".into(),
            upstream: "u".into(),
            method: "POST".into(),
            target: "/x".into(),
            headers: vec![],
            priority,
            seq: 0,
            due_ms: 0,
            created_ms: now,
            updated_ms: now,
            status: JobStatus::Queued,
            attempts: 0,
            result: None,
            error: None,
            callback: None,
            idempotency: key.map(|k| (k.to_string(), [digest; 32])),
        },
        body: Bytes::from_static(b"body"),
        max_depth: 10,
    }
}

async fn accept(s: &StreamStore, job: NewJob) -> JobId {
    let id = job.id;
    assert!(matches!(s.accept(job).await, Ok(Accepted::New { .. })));
    id
}

#[tokio::test]
async fn jobs_go_highest_priority_first_back_after_backoff_and_cancel_once() {
    let server = redis_server();
    let (s, _) = queue_on(&server, "1m").await;
    let low = accept(&s, new_job(LOW, None, 0)).await;
    let normal = accept(&s, new_job(NORMAL, None, 0)).await;
    let high = accept(&s, new_job(HIGH, None, 0)).await;
    let waiting = accept(&s, new_job(LOW, None, 0)).await;

    let taken = s.take_many("q", now_ms(), 3).await.expect("take");
    let order: Vec<JobId> = taken.iter().map(|t| t.id).collect();
    assert_eq!(order, vec![high, normal, low]);
    assert_eq!(&taken[0].body[..], b"body");
    assert_eq!(taken[0].job.attempts, 1);
    // Seen after the take: one low job waits.
    assert_eq!(s.depth("q").waiting, [0, 0, 1]);
    assert!(s.depth("q").oldest_ms.is_some());

    // Back in line once its backoff is over, the attempt counted.
    let due = now_ms() + 50;
    let retry = Outcome::RetryAt {
        due_ms: due,
        error: "upstream answered 503".into(),
    };
    s.finish(high, retry, now_ms()).await.expect("finish");
    let job = s.get(high).await.expect("get").expect("kept");
    assert_eq!((job.status, job.due_ms), (JobStatus::Queued, due));
    let again = s.take_many("q", due, 1).await.expect("take");
    assert_eq!(
        again[0].id, high,
        "a due high job before the waiting low one"
    );
    assert_eq!(again[0].job.attempts, 2);
    let result = JobResult {
        status: 201,
        headers: vec![],
        body: b"ok".to_vec(),
        truncated: false,
    };
    let done = Outcome::Finished {
        status: JobStatus::Done,
        result: Some(result.clone()),
        error: None,
        expire_ms: now_ms() + 60_000,
    };
    s.finish(high, done, now_ms()).await.expect("finish");
    let job = s.get(high).await.expect("get").expect("kept");
    assert_eq!(
        (job.status, job.attempts, job.error),
        (JobStatus::Done, 2, None)
    );
    assert_eq!(job.result, Some(result));
    let ttl = Command::new("redis-cli")
        .args([
            "-p",
            &server.1.to_string(),
            "PTTL",
            &format!("kaname:job:{high}"),
        ])
        .output()
        .expect("redis-cli");
    let ttl: i64 = String::from_utf8_lossy(&ttl.stdout)
        .trim()
        .parse()
        .expect("a TTL");
    assert!(
        ttl > 0 && ttl <= 60_000,
        "expires with keep_finished: {ttl}"
    );

    // A waiting job is cancelled once; one being delivered is not.
    assert!(
        matches!(s.cancel(waiting, now_ms() + 1000, now_ms()).await, Ok(Cancel::Cancelled(j)) if j.status == JobStatus::Cancelled)
    );
    assert!(matches!(
        s.cancel(waiting, now_ms() + 1000, now_ms()).await,
        Ok(Cancel::Conflict)
    ));
    assert!(matches!(
        s.cancel(low, now_ms() + 1000, now_ms()).await,
        Ok(Cancel::Conflict)
    ));
    assert!(matches!(
        s.cancel(JobId::random(), 0, 0).await,
        Ok(Cancel::NotFound)
    ));
    assert!(s
        .take_many("q", now_ms(), 8)
        .await
        .expect("take")
        .is_empty());
    assert_eq!(s.depth("q").waiting, [0, 0, 0]);
}

#[tokio::test]
async fn keys_depth_and_take_over() {
    let server = redis_server();
    let (s, _) = queue_on(&server, "50ms").await;
    let first = accept(&s, new_job(NORMAL, Some("k/../{x}"), 1)).await;
    assert!(matches!(
        s.accept(new_job(NORMAL, Some("k/../{x}"), 1)).await,
        Ok(Accepted::Duplicate { id, status: JobStatus::Queued }) if id == first
    ));
    assert!(matches!(
        s.accept(new_job(NORMAL, Some("k/../{x}"), 2)).await,
        Ok(Accepted::Mismatch)
    ));
    // max_depth counts the queue in Redis.
    let mut full = new_job(NORMAL, None, 0);
    full.max_depth = 1;
    assert!(matches!(s.accept(full).await, Ok(Accepted::Full)));

    // Taken and never finished (its sidecar died): taken again once idle
    // past the visibility timeout, the cut attempt counted.
    // One taken: the low class is never looked at (nor its stream made).
    let taken = s.take_many("q", now_ms(), 1).await.expect("take");
    assert_eq!(taken.len(), 1);
    assert!(s
        .take_many("q", now_ms(), 8)
        .await
        .expect("take")
        .is_empty());
    let deadline = Instant::now() + Duration::from_secs(5);
    let again = loop {
        let t = s.take_many("q", now_ms(), 8).await.expect("take");
        if !t.is_empty() {
            break t;
        }
        assert!(Instant::now() < deadline, "not taken over within 5 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!((again[0].id, again[0].job.attempts), (first, 2));
}
