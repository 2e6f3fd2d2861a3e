//! The embedded job store: one fjall database (a log-structured merge
//! tree with a write-ahead journal, pure Rust) in `data_dir/jobs`; the
//! measurements that chose it are in bench/store-compare/.
//!
//! Every write goes through one committer thread that applies all the
//! operations waiting for it in one write transaction and commits once
//! with an fsync of the journal (group commit: one fsync for many 202s),
//! then answers each. Reads of one job take a snapshot of their own.
//! Waiting jobs live on disk only; memory holds their counts, and the
//! journal and memtables are bounded.
//!
//! Indexes, keyed so that the work of each operation is one range read
//! (keys in [`keys`]):
//! - `ids` id → the job's place (the seq it was accepted with);
//! - `jobs` place → the record (postcard), `bodies` place → the body:
//!   keyed by acceptance order, both grow at their end like a log, so
//!   compaction moves whole files instead of merging random ids (its
//!   writes are what every commit's fsync waits behind);
//! - `ready` (queue, priority, seq) → id: due jobs, in serving order;
//! - `delayed` (queue, due_ms, seq) → id: jobs waiting out a backoff;
//! - `pending` (queue, seq) → id: every waiting job, oldest first;
//! - `delivering` (queue, seq) → id: taken, put back in `ready` on open;
//! - `idempotency` (queue, key) → id; `expiry` (expire_ms, id): finished
//!   jobs, removed with their keys when their time is up.

mod import;
mod keys;

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use fjall::{
    KeyspaceCreateOptions, KvSeparationOptions, PersistMode, Readable, SingleWriterTxDatabase,
    SingleWriterTxKeyspace as Table, Slice,
};
use tokio::sync::{mpsc, oneshot};

use self::keys::{Heads, Index};
use super::job::{Job, JobId, JobStatus, HIGH, LOW, NORMAL};
use super::store::{
    priority_index, Accepted, Cancel, Depth, JobStore, NewJob, Outcome, StoreError, StoreFuture,
    Taken,
};

type WriteTx<'a> = fjall::SingleWriterWriteTx<'a>;

/// The block cache of the store's files.
const CACHE_BYTES: u64 = 32 << 20;
/// The journal's bound (fjall's minimum): what a restart replays at most.
const JOURNAL_BYTES: u64 = 64 << 20;
/// Each index's memtable: what it holds in memory before a flush.
const MEMTABLE_BYTES: u64 = 8 << 20;
/// Bodies from this size on are kept apart from the tree (in blob files).
const BLOB_BYTES: u32 = 512;

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

/// What the committer learns at each commit and readers ask without a
/// read of the disk.
#[derive(Default, Clone)]
struct Counts {
    depth: HashMap<String, Depth>,
    /// The first due time among each queue's jobs in backoff.
    next_due: HashMap<String, u64>,
}

#[derive(Clone)]
struct Tables {
    ids: Table,
    jobs: Table,
    bodies: Table,
    ready: Table,
    delayed: Table,
    pending: Table,
    delivering: Table,
    idempotency: Table,
    expiry: Table,
    meta: Table,
}

pub struct LocalStore {
    ops: Option<mpsc::Sender<Op>>,
    committer: Option<std::thread::JoinHandle<()>>,
    tables: Tables,
    counts: Arc<Mutex<Counts>>,
    path: String,
    /// Held while open: a second sidecar on the same `data_dir` is refused
    /// instead of writing the same journal.
    _lock: File,
}

impl LocalStore {
    /// Opens (or creates) `data_dir/jobs`; jobs cut mid-delivery by a
    /// crash are waiting again.
    pub fn open(data_dir: &Path) -> Result<LocalStore, StoreError> {
        let path = data_dir.join("jobs");
        let shown = path.display().to_string();
        let io = |e: &dyn std::fmt::Display| StoreError::Io {
            path: shown.clone(),
            message: e.to_string(),
        };
        std::fs::create_dir_all(data_dir).map_err(|e| io(&e))?;
        let lock = File::create(data_dir.join("jobs.lock")).map_err(|e| io(&e))?;
        lock.try_lock()
            .map_err(|e| io(&format!("in use by another process ({e})")))?;
        let db = SingleWriterTxDatabase::builder(&path)
            .cache_size(CACHE_BYTES)
            .max_journaling_size(JOURNAL_BYTES)
            // Flushes and compactions: one thread beside the requests'.
            .worker_threads(1)
            .open()
            .map_err(|e| io(&e))?;
        let table = |name: &str| {
            db.keyspace(name, || {
                KeyspaceCreateOptions::default().max_memtable_size(MEMTABLE_BYTES)
            })
            .map_err(|e| io(&e))
        };
        let tables = Tables {
            ids: table("ids")?,
            jobs: table("jobs")?,
            // Bodies go to blob files when flushed: compaction moves their
            // keys, never the bodies again, and its writes (which every
            // commit's fsync waits behind) stay small.
            bodies: db
                .keyspace("bodies", || {
                    KeyspaceCreateOptions::default()
                        .max_memtable_size(MEMTABLE_BYTES)
                        .with_kv_separation(Some(
                            KvSeparationOptions::default().separation_threshold(BLOB_BYTES),
                        ))
                })
                .map_err(|e| io(&e))?,
            ready: table("ready")?,
            delayed: table("delayed")?,
            pending: table("pending")?,
            delivering: table("delivering")?,
            idempotency: table("idempotency")?,
            expiry: table("expiry")?,
            meta: table("meta")?,
        };
        import::import_redb(data_dir, &db, &tables).map_err(|e| io(&e))?;
        let mut heads = Heads::default();
        let counts = recover(&db, &tables, &mut heads).map_err(|e| io(&e))?;
        let counts = Arc::new(Mutex::new(counts));
        let (tx, rx) = mpsc::channel(4 * MAX_BATCH);
        let committer = Committer {
            db,
            t: tables.clone(),
            heads,
            counts: counts.clone(),
            path: path.clone(),
        };
        let committer = std::thread::Builder::new()
            .name("kaname-jobs".into())
            .spawn(move || committer.run(rx))
            .map_err(|e| io(&e))?;
        Ok(LocalStore {
            ops: Some(tx),
            committer: Some(committer),
            tables,
            counts,
            path: shown,
            _lock: lock,
        })
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

/// Writes already sent are committed, then the journal is synced and the
/// lock released: what a clean stop does.
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
        let due = self
            .counts
            .lock()
            .ok()
            .and_then(|c| c.next_due.get(queue).copied());
        Box::pin(async move { Ok(due) })
    }

    fn finish(&self, id: JobId, outcome: Outcome, now_ms: u64) -> StoreFuture<'_, ()> {
        self.send(move |r| Op::Finish(id, outcome, now_ms, r))
    }

    fn get(&self, id: JobId) -> StoreFuture<'_, Option<Job>> {
        let (ids, jobs) = (self.tables.ids.clone(), self.tables.jobs.clone());
        Box::pin(async move {
            let read = move || -> Result<Option<Job>, fjall::Error> {
                let Some(at) = ids.get(id.0)? else {
                    return Ok(None);
                };
                Ok(jobs.get(at)?.and_then(|v| decode(&v)))
            };
            tokio::task::spawn_blocking(read)
                .await
                .map_err(|_| StoreError::Closed)?
                .map_err(|e| StoreError::Io {
                    path: self.path.clone(),
                    message: e.to_string(),
                })
        })
    }

    fn cancel(&self, id: JobId, expire_ms: u64, now_ms: u64) -> StoreFuture<'_, Cancel> {
        self.send(move |r| Op::Cancel(id, expire_ms, now_ms, r))
    }

    fn depth(&self, queue: &str) -> Depth {
        self.counts
            .lock()
            .ok()
            .and_then(|c| c.depth.get(queue).copied())
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

/// Where a job's record and body are kept.
type Place = [u8; 8];

fn place_of(tx: &WriteTx, t: &Tables, id: &[u8; 16]) -> Result<Option<Place>, fjall::Error> {
    Ok(tx.get(&t.ids, id)?.and_then(|v| v.as_ref().try_into().ok()))
}

fn read_job(tx: &WriteTx, t: &Tables, id: &[u8; 16]) -> Result<Option<(Job, Place)>, fjall::Error> {
    let Some(at) = place_of(tx, t, id)? else {
        return Ok(None);
    };
    Ok(tx
        .get(&t.jobs, at)?
        .and_then(|v| decode(&v))
        .map(|j| (j, at)))
}

/// The leading live entries of `prefix` (from its [`Heads`] bound on)
/// while `keep` holds, `limit` at most; the bound moved to the first.
/// A caller that removes them all says so with `Heads::removed_first`.
fn scan_head(
    tx: &WriteTx,
    table: &Table,
    heads: &mut Heads,
    index: Index,
    prefix: &[u8],
    limit: usize,
    keep: impl Fn(&[u8]) -> bool,
) -> Result<Vec<(Slice, Slice)>, fjall::Error> {
    let mut out = Vec::new();
    let mut first_live: Option<Vec<u8>> = None;
    for entry in tx.range(table, heads.start(index, prefix)..) {
        let (k, v) = entry.into_inner()?;
        if first_live.is_none() {
            first_live = Some(k.to_vec());
        }
        if !k.starts_with(prefix) || !keep(&k) || out.len() >= limit {
            break;
        }
        out.push((k, v));
    }
    match first_live {
        Some(k) => heads.found(index, prefix, &k),
        // Nothing after the bound at all: any insert lands before this.
        None => heads.found(index, prefix, &[prefix, &[0xff; 17][..]].concat()),
    }
    Ok(out)
}

/// Puts jobs that were being delivered back in line, and counts what
/// waits, from the index keys (no job is read but those in backoff), so a
/// restart with a million jobs waiting stays quick and small.
fn recover(
    db: &SingleWriterTxDatabase,
    t: &Tables,
    heads: &mut Heads,
) -> Result<Counts, fjall::Error> {
    let mut tx = db.write_tx().durability(Some(PersistMode::SyncAll));
    let cut: Vec<(Slice, Slice)> = tx
        .iter(&t.delivering)
        .map(|e| e.into_inner())
        .collect::<Result<_, _>>()?;
    for (k, v) in cut {
        tx.remove(&t.delivering, k.clone());
        let Some(id) = keys::id_of(&v) else { continue };
        let Some((mut job, at)) = read_job(&tx, t, &id)? else {
            continue;
        };
        // The cut delivery counted as an attempt (async.md).
        job.status = JobStatus::Queued;
        tx.insert(&t.jobs, at.as_slice(), encode(&job));
        tx.insert(
            &t.ready,
            keys::ready(&job.queue, job.priority, job.seq),
            id.as_slice(),
        );
        tx.insert(&t.pending, keys::by_seq(&job.queue, job.seq), id.as_slice());
    }
    let mut counts = Counts::default();
    for entry in tx.iter(&t.ready) {
        let k = entry.key()?;
        if let Some((queue, rest)) = keys::split_queue(&k) {
            let priority = rest.first().copied().unwrap_or(NORMAL);
            counts.depth.entry(queue).or_default().waiting[priority_index(priority)] += 1;
        }
    }
    let delayed: Vec<(Slice, Slice)> = tx
        .iter(&t.delayed)
        .map(|e| e.into_inner())
        .collect::<Result<_, _>>()?;
    for (k, v) in delayed {
        let Some((queue, _)) = keys::split_queue(&k) else {
            continue;
        };
        let priority = match keys::id_of(&v) {
            Some(id) => read_job(&tx, t, &id)?.map_or(NORMAL, |(j, _)| j.priority),
            None => NORMAL,
        };
        counts.depth.entry(queue).or_default().waiting[priority_index(priority)] += 1;
    }
    let queues: Vec<String> = counts.depth.keys().cloned().collect();
    for queue in queues {
        let oldest = oldest(&tx, t, heads, &queue)?;
        counts.depth.entry(queue.clone()).or_default().oldest_ms = oldest;
        if let Some(due) = next_due(&tx, t, heads, &queue)? {
            counts.next_due.insert(queue, due);
        }
    }
    tx.commit()?;
    Ok(counts)
}

struct Committer {
    db: SingleWriterTxDatabase,
    t: Tables,
    heads: Heads,
    counts: Arc<Mutex<Counts>>,
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
    fn run(mut self, mut rx: mpsc::Receiver<Op>) {
        let mut seq = self.next_seq().unwrap_or(1);
        while let Some(first) = rx.blocking_recv() {
            let mut ops = vec![first];
            while ops.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(op) => ops.push(op),
                    Err(_) => break,
                }
            }
            let mut counts = self.counts.lock().map(|c| c.clone()).unwrap_or_default();
            let mut answers: Vec<Deferred> = Vec::with_capacity(ops.len());
            match self.batch(ops, &mut seq, &mut counts, &mut answers) {
                Ok(()) => {
                    if let Ok(mut c) = self.counts.lock() {
                        *c = counts;
                    }
                    answers.into_iter().for_each(|a| a(Ok(())));
                }
                Err(e) => {
                    tracing::error!(path = %self.path.display(), error = %e, "job store write failed");
                    // The batch's removals did not happen.
                    self.heads.clear();
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
        // A clean stop: what was committed is on disk before the lock goes.
        if let Err(e) = self.db.persist(PersistMode::SyncAll) {
            tracing::error!(path = %self.path.display(), error = %e, "job store sync at close failed");
        }
    }

    fn next_seq(&self) -> Result<u64, fjall::Error> {
        Ok(self
            .t
            .meta
            .get("seq")?
            .and_then(|v| keys::u64_at(&v, 0))
            .unwrap_or(1))
    }

    fn batch(
        &mut self,
        ops: Vec<Op>,
        seq: &mut u64,
        counts: &mut Counts,
        answers: &mut Vec<Deferred>,
    ) -> Result<(), fjall::Error> {
        let t = &self.t;
        let heads = &mut self.heads;
        let depth = &mut counts.depth;
        let mut tx = self.db.write_tx().durability(Some(PersistMode::SyncAll));
        let mut touched: Vec<String> = Vec::new();
        for op in ops {
            match op {
                Op::Accept(new, reply) => {
                    touched.push(new.job.queue.clone());
                    let r = accept(&mut tx, t, heads, *new, seq, depth)?;
                    answers.push(answer(reply, Ok(r)));
                }
                Op::Take(queue, now, max, reply) => {
                    let mut taken = Vec::new();
                    while taken.len() < max.min(MAX_BATCH) {
                        match take(&mut tx, t, heads, &queue, now, depth)? {
                            Some(j) => taken.push(j),
                            None => break,
                        }
                    }
                    touched.push(queue);
                    answers.push(answer(reply, Ok(taken)));
                }
                Op::Finish(id, outcome, now, reply) => {
                    if let Some(q) = finish(&mut tx, t, heads, id, outcome, now, seq, depth)? {
                        touched.push(q);
                    }
                    answers.push(answer(reply, Ok(())));
                }
                Op::Cancel(id, expire, now, reply) => {
                    let r = cancel(&mut tx, t, heads, id, expire, now, depth)?;
                    if let Cancel::Cancelled(job) = &r {
                        touched.push(job.queue.clone());
                    }
                    answers.push(answer(reply, Ok(r)));
                }
                Op::Expire(now, reply) => {
                    let n = expire(&mut tx, t, heads, now)?;
                    answers.push(answer(reply, Ok(n)));
                }
            }
        }
        tx.insert(&t.meta, "seq", seq.to_be_bytes());
        touched.sort();
        touched.dedup();
        for q in touched {
            let oldest = oldest(&tx, t, heads, &q)?;
            match next_due(&tx, t, heads, &q)? {
                Some(due) => counts.next_due.insert(q.clone(), due),
                None => counts.next_due.remove(&q),
            };
            counts.depth.entry(q).or_default().oldest_ms = oldest;
        }
        tx.commit()
    }
}

/// Created time of `queue`'s oldest waiting job.
fn oldest(
    tx: &WriteTx,
    t: &Tables,
    heads: &mut Heads,
    queue: &str,
) -> Result<Option<u64>, fjall::Error> {
    let prefix = keys::queue_prefix(queue);
    let first = scan_head(tx, &t.pending, heads, Index::Pending, &prefix, 1, |_| true)?;
    let Some(id) = first.first().and_then(|(_, v)| keys::id_of(v)) else {
        return Ok(None);
    };
    Ok(read_job(tx, t, &id)?.map(|(j, _)| j.created_ms))
}

/// The first due time among `queue`'s jobs in backoff.
fn next_due(
    tx: &WriteTx,
    t: &Tables,
    heads: &mut Heads,
    queue: &str,
) -> Result<Option<u64>, fjall::Error> {
    let prefix = keys::queue_prefix(queue);
    let first = scan_head(tx, &t.delayed, heads, Index::Delayed, &prefix, 1, |_| true)?;
    Ok(first
        .first()
        .and_then(|(k, _)| keys::u64_at(k, prefix.len())))
}

fn accept(
    tx: &mut WriteTx,
    t: &Tables,
    heads: &mut Heads,
    new: NewJob,
    seq: &mut u64,
    depth: &mut HashMap<String, Depth>,
) -> Result<Accepted, fjall::Error> {
    let NewJob {
        id,
        mut job,
        body,
        max_depth,
    } = new;
    let queue = job.queue.clone();
    if let Some((key, digest)) = &job.idempotency {
        let taken = tx.get(&t.idempotency, keys::idempotency(&queue, key))?;
        if let Some(first) = taken.and_then(|v| keys::id_of(&v)) {
            if let Some((old, _)) = read_job(tx, t, &first)? {
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
    let at: Place = job.seq.to_be_bytes();
    tx.insert(&t.ids, id.0.as_slice(), at.as_slice());
    tx.insert(&t.jobs, at.as_slice(), encode(&job));
    tx.insert(&t.bodies, at.as_slice(), body.as_ref());
    insert_ready(tx, t, heads, &queue, job.priority, job.seq, &id.0);
    insert_pending(tx, t, heads, &queue, job.seq, &id.0);
    if let Some((key, _)) = &job.idempotency {
        tx.insert(
            &t.idempotency,
            keys::idempotency(&queue, key),
            id.0.as_slice(),
        );
    }
    d.waiting[priority_index(job.priority)] += 1;
    Ok(Accepted::New { seq: job.seq })
}

fn insert_ready(
    tx: &mut WriteTx,
    t: &Tables,
    heads: &mut Heads,
    queue: &str,
    priority: u8,
    seq: u64,
    id: &[u8; 16],
) {
    let key = keys::ready(queue, priority, seq);
    heads.inserted(Index::Ready, &keys::ready_prefix(queue, priority), &key);
    tx.insert(&t.ready, key, id.as_slice());
}

fn insert_pending(
    tx: &mut WriteTx,
    t: &Tables,
    heads: &mut Heads,
    queue: &str,
    seq: u64,
    id: &[u8; 16],
) {
    let key = keys::by_seq(queue, seq);
    heads.inserted(Index::Pending, &keys::queue_prefix(queue), &key);
    tx.insert(&t.pending, key, id.as_slice());
}

fn take(
    tx: &mut WriteTx,
    t: &Tables,
    heads: &mut Heads,
    queue: &str,
    now: u64,
    depth: &mut HashMap<String, Depth>,
) -> Result<Option<Taken>, fjall::Error> {
    // Jobs whose backoff is over join the line first.
    let prefix = keys::queue_prefix(queue);
    let at = prefix.len();
    let due = scan_head(
        tx,
        &t.delayed,
        heads,
        Index::Delayed,
        &prefix,
        MAX_BATCH,
        |k| keys::u64_at(k, at).is_some_and(|due| due <= now),
    )?;
    if let Some((last, _)) = due.last() {
        heads.removed_first(Index::Delayed, &prefix, last);
    }
    for (k, v) in due {
        tx.remove(&t.delayed, k.clone());
        let (Some(seq), Some(id)) = (keys::u64_at(&k, at + 8), keys::id_of(&v)) else {
            continue;
        };
        let priority = read_job(tx, t, &id)?.map_or(NORMAL, |(j, _)| j.priority);
        insert_ready(tx, t, heads, queue, priority, seq, &id);
    }
    let mut first = None;
    for priority in HIGH..=LOW {
        let prefix = keys::ready_prefix(queue, priority);
        let head = scan_head(tx, &t.ready, heads, Index::Ready, &prefix, 1, |_| true)?;
        if let Some((k, v)) = head.into_iter().next() {
            heads.removed_first(Index::Ready, &prefix, &k);
            first = Some((k, v));
            break;
        }
    }
    let Some((key, value)) = first else {
        return Ok(None);
    };
    tx.remove(&t.ready, key.clone());
    let (Some(seq), Some(id)) = (keys::u64_at(&key, at + 1), keys::id_of(&value)) else {
        return Ok(None);
    };
    tx.remove(&t.pending, keys::by_seq(queue, seq));
    tx.insert(&t.delivering, keys::by_seq(queue, seq), id.as_slice());
    let Some((mut job, at)) = read_job(tx, t, &id)? else {
        return Ok(None);
    };
    job.status = JobStatus::Delivering;
    job.attempts += 1;
    job.updated_ms = now;
    tx.insert(&t.jobs, at.as_slice(), encode(&job));
    let body = tx
        .get(&t.bodies, at)?
        .map(|b| Bytes::copy_from_slice(&b))
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

#[allow(clippy::too_many_arguments)]
fn finish(
    tx: &mut WriteTx,
    t: &Tables,
    heads: &mut Heads,
    id: JobId,
    outcome: Outcome,
    now: u64,
    seq: &mut u64,
    depth: &mut HashMap<String, Depth>,
) -> Result<Option<String>, fjall::Error> {
    let Some((mut job, at)) = read_job(tx, t, &id.0)? else {
        return Ok(None);
    };
    if job.status != JobStatus::Delivering {
        return Ok(None);
    }
    let queue = job.queue.clone();
    tx.remove(&t.delivering, keys::by_seq(&queue, job.seq));
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
            tx.remove(&t.bodies, at.as_slice());
            insert_expiry(tx, t, heads, expire_ms, &id.0);
        }
        Outcome::RetryAt { due_ms, error } => {
            job.status = JobStatus::Queued;
            job.error = Some(error);
            // A new seq keeps `pending` ordered by when the job waits again;
            // its age is still its created time.
            job.seq = *seq;
            *seq += 1;
            job.due_ms = due_ms;
            let key = keys::delayed(&queue, due_ms, job.seq);
            heads.inserted(Index::Delayed, &keys::queue_prefix(&queue), &key);
            tx.insert(&t.delayed, key, id.0.as_slice());
            insert_pending(tx, t, heads, &queue, job.seq, &id.0);
            d.waiting[priority_index(job.priority)] += 1;
        }
        Outcome::Requeue => {
            job.status = JobStatus::Queued;
            // The attempt did not happen: not counted.
            job.attempts = job.attempts.saturating_sub(1);
            insert_ready(tx, t, heads, &queue, job.priority, job.seq, &id.0);
            insert_pending(tx, t, heads, &queue, job.seq, &id.0);
            d.waiting[priority_index(job.priority)] += 1;
        }
    }
    tx.insert(&t.jobs, at.as_slice(), encode(&job));
    Ok(Some(queue))
}

fn insert_expiry(tx: &mut WriteTx, t: &Tables, heads: &mut Heads, at_ms: u64, id: &[u8; 16]) {
    let key = keys::expiry(at_ms, id);
    heads.inserted(Index::Expiry, &[], &key);
    tx.insert(&t.expiry, key.as_slice(), &[] as &[u8]);
}

fn cancel(
    tx: &mut WriteTx,
    t: &Tables,
    heads: &mut Heads,
    id: JobId,
    expire_ms: u64,
    now: u64,
    depth: &mut HashMap<String, Depth>,
) -> Result<Cancel, fjall::Error> {
    let Some((mut job, at)) = read_job(tx, t, &id.0)? else {
        return Ok(Cancel::NotFound);
    };
    if job.status != JobStatus::Queued {
        return Ok(Cancel::Conflict);
    }
    let q = job.queue.as_str();
    // Waiting either in line or out a backoff.
    let removed = tx
        .take(&t.ready, keys::ready(q, job.priority, job.seq))?
        .is_some();
    if !removed {
        tx.remove(&t.delayed, keys::delayed(q, job.due_ms, job.seq));
    }
    tx.remove(&t.pending, keys::by_seq(q, job.seq));
    tx.remove(&t.bodies, at.as_slice());
    insert_expiry(tx, t, heads, expire_ms, &id.0);
    let d = depth.entry(job.queue.clone()).or_default();
    let i = priority_index(job.priority);
    d.waiting[i] = d.waiting[i].saturating_sub(1);
    job.status = JobStatus::Cancelled;
    job.updated_ms = now;
    tx.insert(&t.jobs, at.as_slice(), encode(&job));
    Ok(Cancel::Cancelled(Box::new(job)))
}

fn expire(tx: &mut WriteTx, t: &Tables, heads: &mut Heads, now: u64) -> Result<u64, fjall::Error> {
    let gone = scan_head(tx, &t.expiry, heads, Index::Expiry, &[], MAX_BATCH, |k| {
        keys::u64_at(k, 0).is_some_and(|at| at <= now)
    })?;
    if let Some((last, _)) = gone.last() {
        heads.removed_first(Index::Expiry, &[], last);
    }
    for (k, _) in &gone {
        tx.remove(&t.expiry, k.clone());
        let Some(id) = k.get(8..).and_then(keys::id_of) else {
            continue;
        };
        let Some(at) = place_of(tx, t, &id)? else {
            continue;
        };
        tx.remove(&t.ids, id.as_slice());
        tx.remove(&t.bodies, at.as_slice());
        if let Some(job) = tx.take(&t.jobs, at.as_slice())?.and_then(|v| decode(&v)) {
            if let Some((key, _)) = &job.idempotency {
                tx.remove(&t.idempotency, keys::idempotency(&job.queue, key));
            }
        }
    }
    Ok(gone.len() as u64)
}

#[cfg(test)]
mod tests;
