//! A queue on a shared store (stores.md): Redis Streams with a consumer
//! group, so every sidecar naming the same store and queue accepts,
//! delivers and answers status for the same jobs.
//!
//! Each step is one Lua script ([`scripts`]): accept (idempotency key,
//! `max_depth` across all sidecars, XADD), take (due backoffs back in line,
//! XAUTOCLAIM of entries idle past `visibility_timeout`, XREADGROUP, strict
//! priority), finish (XACK, then the record expires after
//! `keep_finished`), cancel. The reads do not block on Redis: a sidecar
//! polls every [`POLL`] when idle (jobs it accepts itself wake it at once),
//! so one multiplexed connection serves the queue and everything else.
//!
//! Delivery: once each under normal operation (a take is atomic, and only
//! an entry idle past `visibility_timeout` — longer than any delivery's
//! `per_try_timeout` — is taken over); at least once when a sidecar dies.

mod record;
mod scripts;

use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use aws_lc_rs::digest;
use bytes::Bytes;
use kaname_config::queue::Queue;

use super::job::{Job, JobId, JobStatus};
use super::store::{
    priority_index, Accepted, Cancel, Depth, JobStore, NewJob, Outcome, StoreError, StoreFuture,
    Taken,
};
use crate::store::RedisStore;
use scripts::{ACCEPT_SCRIPT, CANCEL_SCRIPT, FINISH_SCRIPT, TAKE_SCRIPT};

/// How often an idle sidecar looks for jobs other sidecars accepted.
const POLL: Duration = Duration::from_millis(200);

/// The scripts that move job bodies (accept, take) may take longer than
/// the one-command `timeout` of the store, which is set for rate limit
/// decisions; they get at least this.
const BODY_LIMIT: Duration = Duration::from_secs(2);

/// This process in the consumer group: unique, so a restarted sidecar
/// never mistakes a dead one's entries for its own.
static CONSUMER: LazyLock<String> = LazyLock::new(|| {
    format!(
        "kaname-{}-{:016x}",
        std::process::id(),
        rand::random::<u64>()
    )
});

/// One queue on one store.
pub struct StreamStore {
    store: Arc<RedisStore>,
    visibility_ms: u64,
    /// As of the last take: waiting jobs across all sidecars.
    depth: Mutex<Depth>,
}

impl StreamStore {
    pub fn new(store: Arc<RedisStore>, queue: &Queue) -> StreamStore {
        StreamStore {
            store,
            visibility_ms: queue.visibility_timeout.as_millis() as u64,
            depth: Mutex::new(Depth::default()),
        }
    }

    fn prefix(&self) -> &str {
        self.store.key_prefix()
    }

    fn error(&self, e: crate::store::StoreError) -> StoreError {
        StoreError::Shared {
            store: self.store.name().to_string(),
            message: e.to_string(),
        }
    }

    fn body_limit(&self) -> Duration {
        self.store.timeout().max(BODY_LIMIT)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A client's `Idempotency-Key` as it may appear in a key name.
fn key_digest(key: &str) -> String {
    hex(digest::digest(&digest::SHA256, key.as_bytes()).as_ref())
}

type TakeReply = (Vec<(String, Vec<u8>, Vec<u8>, u32)>, Vec<u64>);

impl JobStore for StreamStore {
    fn accept(&self, new: NewJob) -> StoreFuture<'_, Accepted> {
        Box::pin(async move {
            let NewJob {
                id,
                job,
                body,
                max_depth,
            } = new;
            let (idem, fingerprint) = match &job.idempotency {
                Some((key, d)) => (key_digest(key), hex(d)),
                None => (String::new(), String::new()),
            };
            let class = priority_index(job.priority);
            let record = record::encode(&job);
            let prefix = self.prefix().to_string();
            let answer: Vec<String> = self
                .store
                .run_within(self.body_limit(), |mut c| async move {
                    ACCEPT_SCRIPT
                        .arg(prefix)
                        .arg(&job.queue)
                        .arg(id.to_string())
                        .arg(class)
                        .arg(idem)
                        .arg(fingerprint)
                        .arg(record)
                        .arg(body.as_ref())
                        .arg(max_depth)
                        .arg(job.created_ms)
                        .invoke_async(&mut c)
                        .await
                })
                .await
                .map_err(|e| self.error(e))?;
            let shared = |m: &str| StoreError::Shared {
                store: self.store.name().to_string(),
                message: m.to_string(),
            };
            match answer.as_slice() {
                [w] if w == "new" => Ok(Accepted::New { seq: 0 }),
                [w] if w == "full" => Ok(Accepted::Full),
                [w] if w == "mismatch" => Ok(Accepted::Mismatch),
                [w, first, status] if w == "duplicate" => Ok(Accepted::Duplicate {
                    id: JobId::parse(first).ok_or_else(|| shared("a stored job id is not one"))?,
                    status: record::status_of(status.as_bytes())
                        .ok_or_else(|| shared("a stored status is not one"))?,
                }),
                _ => Err(shared("the accept script answered something else")),
            }
        })
    }

    fn take_many(&self, queue: &str, now_ms: u64, max: usize) -> StoreFuture<'_, Vec<Taken>> {
        let queue = queue.to_string();
        Box::pin(async move {
            let prefix = self.prefix().to_string();
            let visibility = self.visibility_ms;
            let (taken, depth): TakeReply = self
                .store
                .run_within(self.body_limit(), |mut c| async move {
                    TAKE_SCRIPT
                        .arg(prefix)
                        .arg(queue)
                        .arg(CONSUMER.as_str())
                        .arg(now_ms)
                        .arg(max.max(1))
                        .arg(visibility)
                        .invoke_async(&mut c)
                        .await
                })
                .await
                .map_err(|e| self.error(e))?;
            if let [w0, w1, w2, oldest] = depth[..] {
                if let Ok(mut d) = self.depth.lock() {
                    d.waiting = [w0, w1, w2];
                    d.oldest_ms = (oldest > 0).then_some(oldest);
                }
            }
            let mut out = Vec::with_capacity(taken.len());
            for (id, record, body, attempts) in taken {
                let parsed = JobId::parse(&id).zip(postcard::from_bytes::<Job>(&record).ok());
                let Some((id, mut job)) = parsed else {
                    // Not a job of kaname's: left delivering, nothing sent.
                    tracing::error!(store = %self.store.name(), "a queued job's record is unreadable; skipped");
                    continue;
                };
                job.status = JobStatus::Delivering;
                job.attempts = attempts;
                job.updated_ms = now_ms;
                out.push(Taken {
                    id,
                    job,
                    body: Bytes::from(body),
                });
            }
            Ok(out)
        })
    }

    /// Never later than [`POLL`] from now: jobs other sidecars accepted
    /// wake no one here.
    fn next_due(&self, _queue: &str) -> StoreFuture<'_, Option<u64>> {
        Box::pin(async move { Ok(Some(super::job::now_ms() + POLL.as_millis() as u64)) })
    }

    fn finish(&self, id: JobId, outcome: Outcome, now_ms: u64) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let (how, when, error, result) = match outcome {
                Outcome::Finished {
                    status,
                    result,
                    error,
                    expire_ms,
                } => (
                    status.as_str(),
                    expire_ms.saturating_sub(now_ms).max(1),
                    error.unwrap_or_default(),
                    result
                        .as_ref()
                        .map(record::encode_result)
                        .unwrap_or_default(),
                ),
                Outcome::RetryAt { due_ms, error } => ("retry", due_ms, error, Vec::new()),
                Outcome::Requeue => ("requeue", 0, String::new(), Vec::new()),
            };
            let prefix = self.prefix().to_string();
            let _: i64 = self
                .store
                .run_within(self.body_limit(), |mut c| async move {
                    FINISH_SCRIPT
                        .arg(prefix)
                        .arg(id.to_string())
                        .arg(how)
                        .arg(now_ms)
                        .arg(when)
                        .arg(error)
                        .arg(result)
                        .invoke_async(&mut c)
                        .await
                })
                .await
                .map_err(|e| self.error(e))?;
            Ok(())
        })
    }

    fn get(&self, id: JobId) -> StoreFuture<'_, Option<Job>> {
        Box::pin(async move {
            let key = format!("{}job:{id}", self.prefix());
            let values: Vec<Option<Vec<u8>>> = self
                .store
                .run_within(self.body_limit(), |mut c| async move {
                    redis::cmd("HMGET")
                        .arg(key)
                        .arg(&record::FIELDS[..])
                        .query_async(&mut c)
                        .await
                })
                .await
                .map_err(|e| self.error(e))?;
            Ok(record::job_of(&values))
        })
    }

    fn cancel(&self, id: JobId, expire_ms: u64, now_ms: u64) -> StoreFuture<'_, Cancel> {
        Box::pin(async move {
            let prefix = self.prefix().to_string();
            let keep = expire_ms.saturating_sub(now_ms).max(1);
            let answer: String = self
                .store
                .run_within(self.body_limit(), |mut c| async move {
                    CANCEL_SCRIPT
                        .arg(prefix)
                        .arg(id.to_string())
                        .arg(now_ms)
                        .arg(keep)
                        .invoke_async(&mut c)
                        .await
                })
                .await
                .map_err(|e| self.error(e))?;
            match answer.as_str() {
                "cancelled" => match self.get(id).await? {
                    Some(job) => Ok(Cancel::Cancelled(Box::new(job))),
                    None => Ok(Cancel::NotFound),
                },
                "conflict" => Ok(Cancel::Conflict),
                _ => Ok(Cancel::NotFound),
            }
        })
    }

    fn depth(&self, _queue: &str) -> Depth {
        self.depth.lock().map(|d| *d).unwrap_or_default()
    }

    /// Finished jobs expire in Redis on their own (PEXPIRE).
    fn expire(&self, _now_ms: u64) -> StoreFuture<'_, u64> {
        Box::pin(async { Ok(0) })
    }
}

#[cfg(test)]
mod tests;
