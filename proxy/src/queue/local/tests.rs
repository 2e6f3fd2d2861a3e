use super::*;
use crate::queue::job::{JobResult, HIGH, LOW, NORMAL};

fn job(queue: &str, priority: u8, key: Option<(&str, u8)>) -> Job {
    Job {
        queue: queue.into(),
        upstream: "u".into(),
        method: "POST".into(),
        target: "/r".into(),
        headers: vec![("x-a".into(), b"1".to_vec())],
        priority,
        seq: 0,
        due_ms: 0,
        created_ms: 1_000,
        updated_ms: 1_000,
        status: JobStatus::Queued,
        attempts: 0,
        result: None,
        error: None,
        callback: None,
        idempotency: key.map(|(k, d)| (k.to_string(), [d; 32])),
    }
}

async fn put(s: &LocalStore, j: Job, max_depth: u64) -> (JobId, Accepted) {
    let id = JobId::random();
    let r = s
        .accept(NewJob {
            id,
            job: j,
            body: Bytes::from_static(b"payload"),
            max_depth,
        })
        .await
        .unwrap();
    (id, r)
}

#[tokio::test]
async fn priority_then_age_and_depth_counted() {
    let dir = tempfile::tempdir().unwrap();
    let s = LocalStore::open(dir.path()).unwrap();
    let (low, _) = put(&s, job("q", LOW, None), 10).await;
    let (n1, _) = put(&s, job("q", NORMAL, None), 10).await;
    let (n2, _) = put(&s, job("q", NORMAL, None), 10).await;
    let (high, _) = put(&s, job("q", HIGH, None), 10).await;
    put(&s, job("other", HIGH, None), 10).await;
    assert_eq!(s.depth("q").waiting, [1, 2, 1]);
    let mut order = vec![];
    while let Some(t) = s.take("q", 5_000).await.unwrap() {
        assert_eq!(t.job.status, JobStatus::Delivering);
        assert_eq!(t.job.attempts, 1);
        assert_eq!(&t.body[..], b"payload");
        order.push(t.id);
    }
    assert_eq!(order, [high, n1, n2, low]);
    assert_eq!(s.depth("q").waiting, [0, 0, 0]);
    assert_eq!(s.depth("q").delivering, 4);
    assert_eq!(s.depth("other").waiting, [1, 0, 0]);
}

#[tokio::test]
async fn full_duplicate_and_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    let s = LocalStore::open(dir.path()).unwrap();
    let (first, r) = put(&s, job("q", NORMAL, Some(("k", 1))), 2).await;
    assert!(matches!(r, Accepted::New { .. }));
    let (_, r) = put(&s, job("q", NORMAL, Some(("k", 1))), 2).await;
    assert!(matches!(r, Accepted::Duplicate { id, status: JobStatus::Queued } if id == first));
    let (_, r) = put(&s, job("q", NORMAL, Some(("k", 2))), 2).await;
    assert!(matches!(r, Accepted::Mismatch));
    // The same key on another queue is another key.
    let (_, r) = put(&s, job("p", NORMAL, Some(("k", 2))), 2).await;
    assert!(matches!(r, Accepted::New { .. }));
    put(&s, job("q", NORMAL, None), 2).await;
    let (_, r) = put(&s, job("q", NORMAL, None), 2).await;
    assert!(matches!(r, Accepted::Full));
    assert_eq!(s.depth("q").total_waiting(), 2);
}

#[tokio::test]
async fn retries_wait_their_turn_and_cancel_works_in_backoff() {
    let dir = tempfile::tempdir().unwrap();
    let s = LocalStore::open(dir.path()).unwrap();
    let (a, _) = put(&s, job("q", NORMAL, None), 10).await;
    let t = s.take("q", 1_000).await.unwrap().unwrap();
    s.finish(
        t.id,
        Outcome::RetryAt {
            due_ms: 9_000,
            error: "503".into(),
        },
        1_000,
    )
    .await
    .unwrap();
    assert_eq!(s.depth("q").total_waiting(), 1, "backoff counts as waiting");
    assert!(s.take("q", 8_999).await.unwrap().is_none(), "not due yet");
    assert_eq!(s.next_due("q").await.unwrap(), Some(9_000));
    let again = s.take("q", 9_000).await.unwrap().unwrap();
    assert_eq!((again.id, again.job.attempts), (a, 2));
    s.finish(
        a,
        Outcome::RetryAt {
            due_ms: 20_000,
            error: "503".into(),
        },
        9_000,
    )
    .await
    .unwrap();
    match s.cancel(a, 99_000, 10_000).await.unwrap() {
        Cancel::Cancelled(j) => assert_eq!(j.status, JobStatus::Cancelled),
        _ => panic!("cancelled in backoff"),
    }
    assert_eq!(s.depth("q").total_waiting(), 0);
    assert!(s.take("q", 30_000).await.unwrap().is_none());
    assert!(matches!(s.cancel(a, 0, 0).await.unwrap(), Cancel::Conflict));
    assert!(matches!(
        s.cancel(JobId::random(), 0, 0).await.unwrap(),
        Cancel::NotFound
    ));
}

#[tokio::test]
async fn a_reopen_puts_cut_deliveries_back_and_finished_jobs_expire() {
    let dir = tempfile::tempdir().unwrap();
    let (done, cut, waiting);
    {
        let s = LocalStore::open(dir.path()).unwrap();
        done = put(&s, job("q", NORMAL, Some(("k", 1))), 10).await.0;
        cut = put(&s, job("q", NORMAL, None), 10).await.0;
        waiting = put(&s, job("q", LOW, None), 10).await.0;
        let t = s.take("q", 2_000).await.unwrap().unwrap();
        assert_eq!(t.id, done);
        s.finish(
            done,
            Outcome::Finished {
                status: JobStatus::Done,
                result: Some(JobResult {
                    status: 200,
                    headers: vec![],
                    body: b"ok".to_vec(),
                    truncated: false,
                }),
                error: None,
                expire_ms: 50_000,
            },
            2_000,
        )
        .await
        .unwrap();
        assert_eq!(s.take("q", 2_000).await.unwrap().unwrap().id, cut);
        // Dropped here with `cut` being delivered: a crash, as far as the
        // file knows.
    }
    let s = LocalStore::open(dir.path()).unwrap();
    assert_eq!(s.depth("q").waiting, [0, 1, 1]);
    let again = s.take("q", 3_000).await.unwrap().unwrap();
    assert_eq!(again.id, cut, "the cut delivery is first in line again");
    assert_eq!(again.job.attempts, 2, "and its cut attempt counted");
    assert_eq!(s.take("q", 3_000).await.unwrap().unwrap().id, waiting);
    let kept = s.get(done).await.unwrap().unwrap();
    assert_eq!(kept.status, JobStatus::Done);
    assert_eq!(kept.result.unwrap().body, b"ok");
    assert_eq!(s.expire(49_999).await.unwrap(), 0);
    assert_eq!(s.expire(50_000).await.unwrap(), 1);
    assert!(s.get(done).await.unwrap().is_none());
    // Its idempotency key is free again.
    let (_, r) = put(&s, job("q", NORMAL, Some(("k", 9))), 10).await;
    assert!(matches!(r, Accepted::New { .. }));
}

#[tokio::test]
async fn a_second_open_of_the_same_dir_is_refused_while_the_first_holds_it() {
    let dir = tempfile::tempdir().unwrap();
    let first = LocalStore::open(dir.path()).unwrap();
    let Err(e) = LocalStore::open(dir.path()) else {
        panic!("two stores on one data_dir");
    };
    assert!(e.to_string().contains("in use by another process"), "{e}");
    drop(first);
    LocalStore::open(dir.path()).unwrap();
}

#[tokio::test]
async fn draining_many_jobs_serves_every_one_in_order_after_restarts() {
    // Take from the head again and again (tombstones pile up there), with
    // retries going to backoff and back, across reopenings.
    let dir = tempfile::tempdir().unwrap();
    let mut ids = Vec::new();
    {
        let s = LocalStore::open(dir.path()).unwrap();
        for _ in 0..600 {
            ids.push(put(&s, job("q", NORMAL, None), 10_000).await.0);
        }
        for (i, want) in ids.iter().take(300).enumerate() {
            let t = s.take("q", 2_000).await.unwrap().unwrap();
            assert_eq!(&t.id, want, "job {i}");
            let outcome = match i % 3 {
                0 => Outcome::RetryAt {
                    due_ms: 5_000 + i as u64,
                    error: "503".into(),
                },
                _ => Outcome::Finished {
                    status: JobStatus::Done,
                    result: None,
                    error: None,
                    expire_ms: 10_000,
                },
            };
            s.finish(t.id, outcome, 2_000).await.unwrap();
        }
        assert_eq!(s.depth("q").total_waiting(), 400);
        assert_eq!(s.next_due("q").await.unwrap(), Some(5_000));
    }
    let s = LocalStore::open(dir.path()).unwrap();
    assert_eq!(s.depth("q").total_waiting(), 400);
    assert_eq!(s.next_due("q").await.unwrap(), Some(5_000));
    // Before the backoffs end: the rest, in order.
    for want in &ids[300..] {
        assert_eq!(&s.take("q", 3_000).await.unwrap().unwrap().id, want);
    }
    assert!(s.take("q", 3_000).await.unwrap().is_none());
    // After: the retried ones, in the order they went to backoff.
    let retried: Vec<JobId> = ids.iter().take(300).step_by(3).copied().collect();
    let got = s.take_many("q", 6_000, 1_000).await.unwrap();
    assert_eq!(got.iter().map(|t| t.id).collect::<Vec<_>>(), retried);
    assert_eq!(s.next_due("q").await.unwrap(), None);
    assert_eq!(s.expire(10_000).await.unwrap(), 200);
    assert_eq!(s.expire(10_000).await.unwrap(), 0);
}

#[tokio::test]
async fn the_jobs_of_an_earlier_redb_store_are_brought_over_once() {
    use super::import::{BODIES, JOBS, META, PENDING, READY};
    use redb::Database;
    let dir = tempfile::tempdir().unwrap();
    let id = JobId::random();
    let mut old = job("orders", HIGH, None);
    old.seq = 7;
    {
        let db = Database::create(dir.path().join("jobs.redb")).unwrap();
        let w = db.begin_write().unwrap();
        w.open_table(JOBS)
            .unwrap()
            .insert(&id.0, encode(&old).as_slice())
            .unwrap();
        w.open_table(BODIES)
            .unwrap()
            .insert(&id.0, b"old body".as_slice())
            .unwrap();
        w.open_table(READY)
            .unwrap()
            .insert(("orders", HIGH, 7u64), &id.0)
            .unwrap();
        w.open_table(PENDING)
            .unwrap()
            .insert(("orders", 7u64), &id.0)
            .unwrap();
        w.open_table(META).unwrap().insert("seq", 8u64).unwrap();
        w.commit().unwrap();
    }
    {
        let s = LocalStore::open(dir.path()).unwrap();
        assert_eq!(s.depth("orders").waiting, [1, 0, 0]);
        assert!(!dir.path().join("jobs.redb").exists());
        assert!(dir.path().join("jobs.redb.imported").exists());
        let (_, r) = put(&s, job("orders", LOW, None), 10).await;
        assert!(
            matches!(r, Accepted::New { seq: 8 }),
            "seqs go on from the old store's"
        );
    }
    let s = LocalStore::open(dir.path()).unwrap();
    let t = s.take("orders", 2_000).await.unwrap().unwrap();
    assert_eq!(t.id, id);
    assert_eq!(&t.body[..], b"old body");
    assert_eq!(s.depth("orders").waiting, [0, 0, 1]);
}
