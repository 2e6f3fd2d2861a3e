//! The embedded job store: one redb file in `data_dir` (crash-safe
//! copy-on-write B-trees, ordered keys, pure Rust; the measurements that
//! chose it are in bench/store-compare/).
//!
//! Every write goes through one committer thread that applies all the
//! operations waiting for it in one write transaction and commits once
//! (group commit: one fsync for many 202s), then answers each. Reads take a
//! read transaction of their own. Waiting jobs live on disk only; memory
//! holds their counts.
//!
//! Tables, keyed so that the work of each operation is one range read:
//! - `jobs` id → the record (postcard), `bodies` id → the body;
//! - `ready` (queue, priority, seq) → id: due jobs, in serving order;
//! - `delayed` (queue, due_ms, seq) → id: jobs waiting out a backoff;
//! - `pending` (queue, seq) → id: every waiting job, oldest first;
//! - `delivering` (queue, seq) → id: taken, put back in `ready` on open;
//! - `idempotency` (queue, key) → id; `expiry` (expire_ms, id): finished
//!   jobs, removed with their keys when their time is up.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use tokio::sync::{mpsc, oneshot};

use super::job::{Job, JobId, JobStatus};
use super::store::{
    priority_index, Accepted, Cancel, Depth, JobStore, NewJob, Outcome, StoreError, StoreFuture,
    Taken,
};

const JOBS: TableDefinition<&[u8; 16], &[u8]> = TableDefinition::new("jobs");
const BODIES: TableDefinition<&[u8; 16], &[u8]> = TableDefinition::new("bodies");
const READY: TableDefinition<(&str, u8, u64), &[u8; 16]> = TableDefinition::new("ready");
const DELAYED: TableDefinition<(&str, u64, u64), &[u8; 16]> = TableDefinition::new("delayed");
const PENDING: TableDefinition<(&str, u64), &[u8; 16]> = TableDefinition::new("pending");
const DELIVERING: TableDefinition<(&str, u64), &[u8; 16]> = TableDefinition::new("delivering");
const IDEMPOTENCY: TableDefinition<(&str, &str), &[u8; 16]> = TableDefinition::new("idempotency");
const EXPIRY: TableDefinition<(u64, &[u8; 16]), ()> = TableDefinition::new("expiry");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// The page cache of the store file.
const CACHE_BYTES: usize = 32 << 20;

/// Operations applied in one transaction at most.
const MAX_BATCH: usize = 1024;

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

enum Op {
    Accept(Box<NewJob>, Reply<Accepted>),
    Take(String, u64, usize, Reply<Vec<Taken>>),
    Finish(JobId, Outcome, u64, Reply<()>),
    Cancel(JobId, u64, u64, Reply<Cancel>),
    Expire(u64, Reply<u64>),
}

pub struct LocalStore {
    ops: Option<mpsc::Sender<Op>>,
    committer: Option<std::thread::JoinHandle<()>>,
    db: Arc<Database>,
    depth: Arc<Mutex<HashMap<String, Depth>>>,
    path: String,
}

impl LocalStore {
    /// Opens (or creates) `data_dir/jobs.redb`; jobs cut mid-delivery by a
    /// crash are waiting again.
    pub fn open(data_dir: &Path) -> Result<LocalStore, StoreError> {
        let path = data_dir.join("jobs.redb");
        let shown = path.display().to_string();
        let io = |e: &dyn std::fmt::Display| StoreError::Io {
            path: shown.clone(),
            message: e.to_string(),
        };
        std::fs::create_dir_all(data_dir).map_err(|e| io(&e))?;
        // redb caches pages up to 1 GiB by default: the waiting jobs would
        // end up in memory after all. A small cache keeps RSS independent
        // of the queue's length (the hot pages are the B-trees' edges).
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(&path)
            .map_err(|e| io(&e))?;
        let depth = recover(&db).map_err(|e| io(&e))?;
        let db = Arc::new(db);
        let depth = Arc::new(Mutex::new(depth));
        let (tx, rx) = mpsc::channel(4 * MAX_BATCH);
        let committer = Committer {
            db: db.clone(),
            depth: depth.clone(),
            path: path.clone(),
        };
        let committer = std::thread::Builder::new()
            .name("kaname-jobs".into())
            .spawn(move || committer.run(rx))
            .map_err(|e| io(&e))?;
        Ok(LocalStore {
            ops: Some(tx),
            committer: Some(committer),
            db,
            depth,
            path: shown,
        })
    }

    fn io(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Io {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }

    fn send<T: Send + 'static>(
        &self,
        make: impl FnOnce(Reply<T>) -> Op + Send + 'static,
    ) -> StoreFuture<'_, T> {
        Box::pin(async move {
            let (tx, rx) = oneshot::channel();
            let ops = self.ops.as_ref().ok_or(StoreError::Closed)?;
            ops.send(make(tx)).await.map_err(|_| StoreError::Closed)?;
            rx.await.map_err(|_| StoreError::Closed)?
        })
    }
}

/// Writes already sent are committed, then the file is closed (its lock
/// released): what a clean stop does.
impl Drop for LocalStore {
    fn drop(&mut self) {
        self.ops.take();
        if let Some(t) = self.committer.take() {
            let _ = t.join();
        }
    }
}

impl JobStore for LocalStore {
    fn accept(&self, job: NewJob) -> StoreFuture<'_, Accepted> {
        self.send(move |r| Op::Accept(Box::new(job), r))
    }

    fn take_many(&self, queue: &str, now_ms: u64, max: usize) -> StoreFuture<'_, Vec<Taken>> {
        let queue = queue.to_string();
        self.send(move |r| Op::Take(queue, now_ms, max, r))
    }

    fn next_due(&self, queue: &str) -> StoreFuture<'_, Option<u64>> {
        let queue = queue.to_string();
        let db = self.db.clone();
        Box::pin(async move {
            let read = move || -> Result<Option<u64>, redb::Error> {
                let txn = db.begin_read()?;
                let t = txn.open_table(DELAYED)?;
                let mut range =
                    t.range((queue.as_str(), 0u64, 0u64)..=(queue.as_str(), u64::MAX, u64::MAX))?;
                Ok(match range.next() {
                    Some(entry) => Some(entry?.0.value().1),
                    None => None,
                })
            };
            tokio::task::spawn_blocking(read)
                .await
                .map_err(|_| StoreError::Closed)?
                .map_err(|e| self.io(e))
        })
    }

    fn finish(&self, id: JobId, outcome: Outcome, now_ms: u64) -> StoreFuture<'_, ()> {
        self.send(move |r| Op::Finish(id, outcome, now_ms, r))
    }

    fn get(&self, id: JobId) -> StoreFuture<'_, Option<Job>> {
        let db = self.db.clone();
        Box::pin(async move {
            let read = move || -> Result<Option<Job>, redb::Error> {
                let txn = db.begin_read()?;
                let t = txn.open_table(JOBS)?;
                Ok(t.get(&id.0)?.and_then(|v| decode(v.value())))
            };
            tokio::task::spawn_blocking(read)
                .await
                .map_err(|_| StoreError::Closed)?
                .map_err(|e| self.io(e))
        })
    }

    fn cancel(&self, id: JobId, expire_ms: u64, now_ms: u64) -> StoreFuture<'_, Cancel> {
        self.send(move |r| Op::Cancel(id, expire_ms, now_ms, r))
    }

    fn depth(&self, queue: &str) -> Depth {
        self.depth
            .lock()
            .ok()
            .and_then(|d| d.get(queue).copied())
            .unwrap_or_default()
    }

    fn expire(&self, now_ms: u64) -> StoreFuture<'_, u64> {
        self.send(move |r| Op::Expire(now_ms, r))
    }
}

fn decode(bytes: &[u8]) -> Option<Job> {
    postcard::from_bytes(bytes).ok()
}

fn encode(job: &Job) -> Vec<u8> {
    postcard::to_allocvec(job).unwrap_or_default()
}

/// Opens every table, puts jobs that were being delivered back in line,
/// and counts what waits.
fn recover(db: &Database) -> Result<HashMap<String, Depth>, redb::Error> {
    let txn = db.begin_write()?;
    {
        // Tables exist from the first open on.
        txn.open_table(JOBS)?;
        txn.open_table(BODIES)?;
        txn.open_table(IDEMPOTENCY)?;
        txn.open_table(EXPIRY)?;
        txn.open_table(META)?;
        txn.open_table(DELAYED)?;
        let mut delivering = txn.open_table(DELIVERING)?;
        let mut jobs = txn.open_table(JOBS)?;
        let mut ready = txn.open_table(READY)?;
        let mut pending = txn.open_table(PENDING)?;
        let cut: Vec<(String, u64, [u8; 16])> = delivering
            .iter()?
            .filter_map(Result::ok)
            .map(|(k, v)| {
                let (q, seq) = k.value();
                (q.to_string(), seq, *v.value())
            })
            .collect();
        for (queue, seq, id) in cut {
            delivering.remove((queue.as_str(), seq))?;
            let Some(mut job) = jobs.get(&id)?.and_then(|v| decode(v.value())) else {
                continue;
            };
            // The cut delivery counted as an attempt (async.md).
            job.status = JobStatus::Queued;
            jobs.insert(&id, encode(&job).as_slice())?;
            ready.insert((queue.as_str(), job.priority, seq), &id)?;
            pending.insert((queue.as_str(), seq), &id)?;
        }
    }
    txn.commit()?;
    // Counted from the index keys (no job is read but those in backoff),
    // so a restart with a million jobs waiting stays quick and small.
    let txn = db.begin_read()?;
    let mut depth: HashMap<String, Depth> = HashMap::new();
    for entry in txn.open_table(READY)?.iter()? {
        let (k, _) = entry?;
        let (queue, priority, _) = k.value();
        depth.entry(queue.to_string()).or_default().waiting[priority_index(priority)] += 1;
    }
    let jobs = txn.open_table(JOBS)?;
    for entry in txn.open_table(DELAYED)?.iter()? {
        let (k, v) = entry?;
        let (queue, _, _) = k.value();
        let priority = jobs
            .get(v.value())?
            .and_then(|j| decode(j.value()))
            .map_or(super::job::NORMAL, |j| j.priority);
        depth.entry(queue.to_string()).or_default().waiting[priority_index(priority)] += 1;
    }
    let pending = txn.open_table(PENDING)?;
    for (queue, d) in depth.iter_mut() {
        let first = pending
            .range((queue.as_str(), 0u64)..=(queue.as_str(), u64::MAX))?
            .next()
            .transpose()?
            .map(|(_, id)| *id.value());
        if let Some(id) = first {
            d.oldest_ms = jobs
                .get(&id)?
                .and_then(|j| decode(j.value()))
                .map(|j| j.created_ms);
        }
    }
    Ok(depth)
}

struct Committer {
    db: Arc<Database>,
    depth: Arc<Mutex<HashMap<String, Depth>>>,
    path: PathBuf,
}

/// An answer to send once the batch is committed.
type Deferred = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

fn answer<T: Send + 'static>(reply: Reply<T>, value: Result<T, StoreError>) -> Deferred {
    Box::new(move |committed| {
        let _ = reply.send(committed.and(value));
    })
}

impl Committer {
    fn run(self, mut rx: mpsc::Receiver<Op>) {
        let mut seq = self.next_seq().unwrap_or(1);
        while let Some(first) = rx.blocking_recv() {
            let mut ops = vec![first];
            while ops.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(op) => ops.push(op),
                    Err(_) => break,
                }
            }
            let mut depth = self.depth.lock().map(|d| d.clone()).unwrap_or_default();
            let mut answers: Vec<Deferred> = Vec::with_capacity(ops.len());
            let result = self.batch(ops, &mut seq, &mut depth, &mut answers);
            match result {
                Ok(()) => {
                    if let Ok(mut d) = self.depth.lock() {
                        *d = depth;
                    }
                    answers.into_iter().for_each(|a| a(Ok(())));
                }
                Err(e) => {
                    tracing::error!(path = %self.path.display(), error = %e, "job store write failed");
                    let err = StoreError::Io {
                        path: self.path.display().to_string(),
                        message: e.to_string(),
                    };
                    answers.into_iter().for_each(|a| a(Err(err.clone())));
                    // The seq counter may have moved on in the lost batch:
                    // harmless, seqs only need to grow.
                }
            }
        }
    }

    fn next_seq(&self) -> Result<u64, redb::Error> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        Ok(meta.get("seq")?.map_or(1, |v| v.value()))
    }

    fn batch(
        &self,
        ops: Vec<Op>,
        seq: &mut u64,
        depth: &mut HashMap<String, Depth>,
        answers: &mut Vec<Deferred>,
    ) -> Result<(), redb::Error> {
        let txn = self.db.begin_write()?;
        let mut touched: Vec<String> = Vec::new();
        for op in ops {
            match op {
                Op::Accept(new, reply) => {
                    touched.push(new.job.queue.clone());
                    let r = accept(&txn, *new, seq, depth)?;
                    answers.push(answer(reply, Ok(r)));
                }
                Op::Take(queue, now, max, reply) => {
                    let mut taken = Vec::new();
                    while taken.len() < max.min(MAX_BATCH) {
                        match take(&txn, &queue, now, depth)? {
                            Some(t) => taken.push(t),
                            None => break,
                        }
                    }
                    touched.push(queue);
                    answers.push(answer(reply, Ok(taken)));
                }
                Op::Finish(id, outcome, now, reply) => {
                    if let Some(q) = finish(&txn, id, outcome, now, seq, depth)? {
                        touched.push(q);
                    }
                    answers.push(answer(reply, Ok(())));
                }
                Op::Cancel(id, expire, now, reply) => {
                    let r = cancel(&txn, id, expire, now, depth)?;
                    if let Cancel::Cancelled(job) = &r {
                        touched.push(job.queue.clone());
                    }
                    answers.push(answer(reply, Ok(r)));
                }
                Op::Expire(now, reply) => {
                    let n = expire(&txn, now)?;
                    answers.push(answer(reply, Ok(n)));
                }
            }
        }
        txn.open_table(META)?.insert("seq", *seq)?;
        touched.sort();
        touched.dedup();
        for q in touched {
            let oldest = oldest(&txn, &q)?;
            depth.entry(q).or_default().oldest_ms = oldest;
        }
        txn.commit()?;
        Ok(())
    }
}

fn oldest(txn: &WriteTransaction, queue: &str) -> Result<Option<u64>, redb::Error> {
    let pending = txn.open_table(PENDING)?;
    let jobs = txn.open_table(JOBS)?;
    let mut range = pending.range((queue, 0u64)..=(queue, u64::MAX))?;
    let Some(entry) = range.next() else {
        return Ok(None);
    };
    let (_, id) = entry?;
    let created = jobs
        .get(id.value())?
        .and_then(|j| decode(j.value()))
        .map(|j| j.created_ms);
    Ok(created)
}

fn accept(
    txn: &WriteTransaction,
    new: NewJob,
    seq: &mut u64,
    depth: &mut HashMap<String, Depth>,
) -> Result<Accepted, redb::Error> {
    let NewJob {
        id,
        mut job,
        body,
        max_depth,
    } = new;
    let queue = job.queue.clone();
    if let Some((key, digest)) = &job.idempotency {
        let idem = txn.open_table(IDEMPOTENCY)?;
        let taken = idem
            .get((queue.as_str(), key.as_str()))?
            .map(|v| *v.value());
        if let Some(first) = taken {
            let jobs = txn.open_table(JOBS)?;
            let old = jobs.get(&first)?.and_then(|v| decode(v.value()));
            if let Some(old) = old {
                let same = old.idempotency.as_ref().is_some_and(|(_, d)| d == digest);
                return Ok(match same {
                    true => Accepted::Duplicate {
                        id: JobId(first),
                        status: old.status,
                    },
                    false => Accepted::Mismatch,
                });
            }
        }
    }
    let d = depth.entry(queue.clone()).or_default();
    if d.total_waiting() >= max_depth {
        return Ok(Accepted::Full);
    }
    job.seq = *seq;
    *seq += 1;
    txn.open_table(JOBS)?
        .insert(&id.0, encode(&job).as_slice())?;
    txn.open_table(BODIES)?.insert(&id.0, body.as_ref())?;
    txn.open_table(READY)?
        .insert((queue.as_str(), job.priority, job.seq), &id.0)?;
    txn.open_table(PENDING)?
        .insert((queue.as_str(), job.seq), &id.0)?;
    if let Some((key, _)) = &job.idempotency {
        txn.open_table(IDEMPOTENCY)?
            .insert((queue.as_str(), key.as_str()), &id.0)?;
    }
    d.waiting[priority_index(job.priority)] += 1;
    Ok(Accepted::New { seq: job.seq })
}

fn take(
    txn: &WriteTransaction,
    queue: &str,
    now: u64,
    depth: &mut HashMap<String, Depth>,
) -> Result<Option<Taken>, redb::Error> {
    // Jobs whose backoff is over join the line first.
    {
        let mut delayed = txn.open_table(DELAYED)?;
        let mut ready = txn.open_table(READY)?;
        let jobs = txn.open_table(JOBS)?;
        let due: Vec<(u64, u64, [u8; 16])> = delayed
            .range((queue, 0u64, 0u64)..=(queue, now, u64::MAX))?
            .take(MAX_BATCH)
            .filter_map(Result::ok)
            .map(|(k, v)| {
                let (_, due, seq) = k.value();
                (due, seq, *v.value())
            })
            .collect();
        for (due, seq, id) in due {
            delayed.remove((queue, due, seq))?;
            let priority = jobs
                .get(&id)?
                .and_then(|j| decode(j.value()))
                .map_or(super::job::NORMAL, |j| j.priority);
            ready.insert((queue, priority, seq), &id)?;
        }
    }
    let mut ready = txn.open_table(READY)?;
    let first = ready
        .range((queue, 0u8, 0u64)..=(queue, u8::MAX, u64::MAX))?
        .next()
        .transpose()?
        .map(|(k, v)| (k.value().1, k.value().2, *v.value()));
    let Some((priority, seq, id)) = first else {
        return Ok(None);
    };
    ready.remove((queue, priority, seq))?;
    txn.open_table(PENDING)?.remove((queue, seq))?;
    txn.open_table(DELIVERING)?.insert((queue, seq), &id)?;
    let mut jobs = txn.open_table(JOBS)?;
    let Some(mut job) = jobs.get(&id)?.and_then(|v| decode(v.value())) else {
        return Ok(None);
    };
    job.status = JobStatus::Delivering;
    job.attempts += 1;
    job.updated_ms = now;
    jobs.insert(&id, encode(&job).as_slice())?;
    let body = txn
        .open_table(BODIES)?
        .get(&id)?
        .map(|b| Bytes::copy_from_slice(b.value()))
        .unwrap_or_default();
    let d = depth.entry(queue.to_string()).or_default();
    let i = priority_index(job.priority);
    d.waiting[i] = d.waiting[i].saturating_sub(1);
    d.delivering += 1;
    Ok(Some(Taken {
        id: JobId(id),
        job,
        body,
    }))
}

fn finish(
    txn: &WriteTransaction,
    id: JobId,
    outcome: Outcome,
    now: u64,
    seq: &mut u64,
    depth: &mut HashMap<String, Depth>,
) -> Result<Option<String>, redb::Error> {
    let mut jobs = txn.open_table(JOBS)?;
    let Some(mut job) = jobs.get(&id.0)?.and_then(|v| decode(v.value())) else {
        return Ok(None);
    };
    if job.status != JobStatus::Delivering {
        return Ok(None);
    }
    let queue = job.queue.clone();
    txn.open_table(DELIVERING)?
        .remove((queue.as_str(), job.seq))?;
    let d = depth.entry(queue.clone()).or_default();
    d.delivering = d.delivering.saturating_sub(1);
    job.updated_ms = now;
    match outcome {
        Outcome::Finished {
            status,
            result,
            error,
            expire_ms,
        } => {
            job.status = status;
            job.result = result;
            job.error = error;
            txn.open_table(BODIES)?.remove(&id.0)?;
            txn.open_table(EXPIRY)?.insert((expire_ms, &id.0), ())?;
        }
        Outcome::RetryAt { due_ms, error } => {
            job.status = JobStatus::Queued;
            job.error = Some(error);
            // A new seq keeps `pending` ordered by when the job waits again;
            // its age is still its created time.
            job.seq = *seq;
            *seq += 1;
            job.due_ms = due_ms;
            txn.open_table(DELAYED)?
                .insert((queue.as_str(), due_ms, job.seq), &id.0)?;
            txn.open_table(PENDING)?
                .insert((queue.as_str(), job.seq), &id.0)?;
            d.waiting[priority_index(job.priority)] += 1;
        }
        Outcome::Requeue => {
            job.status = JobStatus::Queued;
            // The attempt did not happen: not counted.
            job.attempts = job.attempts.saturating_sub(1);
            txn.open_table(READY)?
                .insert((queue.as_str(), job.priority, job.seq), &id.0)?;
            txn.open_table(PENDING)?
                .insert((queue.as_str(), job.seq), &id.0)?;
            d.waiting[priority_index(job.priority)] += 1;
        }
    }
    jobs.insert(&id.0, encode(&job).as_slice())?;
    Ok(Some(queue))
}

fn cancel(
    txn: &WriteTransaction,
    id: JobId,
    expire_ms: u64,
    now: u64,
    depth: &mut HashMap<String, Depth>,
) -> Result<Cancel, redb::Error> {
    let mut jobs = txn.open_table(JOBS)?;
    let Some(mut job) = jobs.get(&id.0)?.and_then(|v| decode(v.value())) else {
        return Ok(Cancel::NotFound);
    };
    if job.status != JobStatus::Queued {
        return Ok(Cancel::Conflict);
    }
    let q = job.queue.as_str();
    // Waiting either in line or out a backoff.
    let removed = txn
        .open_table(READY)?
        .remove((q, job.priority, job.seq))?
        .is_some();
    if !removed {
        txn.open_table(DELAYED)?.remove((q, job.due_ms, job.seq))?;
    }
    txn.open_table(PENDING)?.remove((q, job.seq))?;
    txn.open_table(BODIES)?.remove(&id.0)?;
    txn.open_table(EXPIRY)?.insert((expire_ms, &id.0), ())?;
    let d = depth.entry(job.queue.clone()).or_default();
    let i = priority_index(job.priority);
    d.waiting[i] = d.waiting[i].saturating_sub(1);
    job.status = JobStatus::Cancelled;
    job.updated_ms = now;
    jobs.insert(&id.0, encode(&job).as_slice())?;
    Ok(Cancel::Cancelled(Box::new(job)))
}

fn expire(txn: &WriteTransaction, now: u64) -> Result<u64, redb::Error> {
    let mut expiry = txn.open_table(EXPIRY)?;
    let gone: Vec<(u64, [u8; 16])> = expiry
        .range((0u64, &[0u8; 16])..=(now, &[0xffu8; 16]))?
        .take(MAX_BATCH)
        .filter_map(Result::ok)
        .map(|(k, _)| {
            let (at, id) = k.value();
            (at, *id)
        })
        .collect();
    let mut jobs = txn.open_table(JOBS)?;
    let mut idem = txn.open_table(IDEMPOTENCY)?;
    for (at, id) in &gone {
        expiry.remove((*at, id))?;
        if let Some(job) = jobs.remove(id)?.and_then(|v| decode(v.value())) {
            if let Some((key, _)) = &job.idempotency {
                idem.remove((job.queue.as_str(), key.as_str()))?;
            }
        }
    }
    Ok(gone.len() as u64)
}

#[cfg(test)]
mod tests;
