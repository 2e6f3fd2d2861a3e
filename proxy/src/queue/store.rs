//! The one interface a queue keeps its jobs behind: the embedded store
//! ([`super::local`]) or a shared one on Redis ([`super::streams`],
//! stores.md).
//!
//! Every write is durable when its future resolves (fsync'd, or
//! acknowledged by the shared store): a 202 is answered only after
//! `accept` returns.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;

use super::job::{Job, JobId, JobResult, JobStatus, Priority};

pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("job store {path}: {message}")]
    Io { path: String, message: String },
    #[error("job store is closed")]
    Closed,
    #[error("store {store:?}: {message}")]
    Shared { store: String, message: String },
}

/// A job to accept.
pub struct NewJob {
    pub id: JobId,
    pub job: Job,
    pub body: Bytes,
    /// Refuse when this many jobs of the queue are waiting.
    pub max_depth: u64,
}

pub enum Accepted {
    /// Stored: `job.seq` was given.
    New { seq: u64 },
    /// The idempotency key is taken by this job (same request).
    Duplicate { id: JobId, status: JobStatus },
    /// The key is taken by a job of another request.
    Mismatch,
    /// `max_depth` jobs waiting.
    Full,
}

/// A job taken for delivery (its status now `delivering`, its attempts
/// counted).
pub struct Taken {
    pub id: JobId,
    pub job: Job,
    pub body: Bytes,
}

pub enum Cancel {
    Cancelled(Box<Job>),
    NotFound,
    /// Being delivered, finished or already cancelled.
    Conflict,
}

/// How a delivery ended.
pub enum Outcome {
    /// Finished: done or failed, kept until `expire_ms`.
    Finished {
        status: JobStatus,
        result: Option<JobResult>,
        error: Option<String>,
        expire_ms: u64,
    },
    /// Back to waiting until `due_ms`.
    RetryAt { due_ms: u64, error: String },
    /// Back to waiting at once (shutdown cut the delivery).
    Requeue,
}

/// Jobs of one queue waiting now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Depth {
    /// By priority (high, normal, low), retry backoff included.
    pub waiting: [u64; 3],
    pub delivering: u64,
    /// Created time of the oldest waiting job.
    pub oldest_ms: Option<u64>,
}

impl Depth {
    pub fn total_waiting(&self) -> u64 {
        self.waiting.iter().sum()
    }
}

pub trait JobStore: Send + Sync + 'static {
    fn accept(&self, job: NewJob) -> StoreFuture<'_, Accepted>;
    /// Up to `max` jobs due, highest priority first, oldest first within
    /// a priority, each marked delivering (one write for them all).
    fn take_many(&self, queue: &str, now_ms: u64, max: usize) -> StoreFuture<'_, Vec<Taken>>;
    /// The first job due.
    fn take(&self, queue: &str, now_ms: u64) -> StoreFuture<'_, Option<Taken>> {
        let many = self.take_many(queue, now_ms, 1);
        Box::pin(async move { Ok(many.await?.pop()) })
    }
    /// When the dispatcher should look again: the next job in backoff of
    /// `queue` is due (or, on a shared store, jobs other sidecars accepted
    /// may be waiting).
    fn next_due(&self, queue: &str) -> StoreFuture<'_, Option<u64>>;
    fn finish(&self, id: JobId, outcome: Outcome, now_ms: u64) -> StoreFuture<'_, ()>;
    fn get(&self, id: JobId) -> StoreFuture<'_, Option<Job>>;
    fn cancel(&self, id: JobId, expire_ms: u64, now_ms: u64) -> StoreFuture<'_, Cancel>;
    /// As last known (a shared store learns it at each take).
    fn depth(&self, queue: &str) -> Depth;
    /// Removes finished jobs whose time is up; how many.
    fn expire(&self, now_ms: u64) -> StoreFuture<'_, u64>;
}

pub fn priority_index(p: Priority) -> usize {
    usize::from(p.min(2))
}
