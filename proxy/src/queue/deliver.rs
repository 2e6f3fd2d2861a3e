//! A queue's dispatcher: up to `concurrency` deliveries at once, each job
//! taken from the store highest priority first, oldest first, sent through
//! its upstream's forwarder (balancer, health checks, outlier detection),
//! and finished, retried after a backoff, or failed by the queue's
//! `retry_on` and `attempts`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response};
use http_body_util::BodyExt;
use kaname_config::queue::Queue;
use kaname_filters::context::Deadline;
use kaname_filters::retry::classify::{matches, Observed};
use kaname_filters::retry::Backoff;
use kaname_filters::{Body, ErrorKind, ProxyError, UpstreamFailure};
use tokio::sync::{watch, Notify};

use super::job::{now_ms, priority_word, JobResult, JobStatus};
use super::store::{JobStore, Outcome, Taken};
use super::{DeliverySlot, InFlight, QueueCounters, QueueShared};
use crate::metrics::Metrics;

/// How long an idle dispatcher sleeps when nothing wakes it (a job in
/// backoff coming due is looked up; an accepted job wakes it at once).
const IDLE: Duration = Duration::from_secs(1);

pub struct Dispatcher {
    pub queue: Arc<Queue>,
    pub shared: Arc<QueueShared>,
    pub store: Arc<dyn JobStore>,
    pub wake: Arc<Notify>,
    pub counters: Arc<QueueCounters>,
    pub in_flight: Arc<InFlight>,
    pub metrics: Arc<Metrics>,
}

static JOB_ID: HeaderName = HeaderName::from_static("kaname-job-id");
static ATTEMPT: HeaderName = HeaderName::from_static("kaname-delivery-attempt");

pub async fn dispatch(d: Dispatcher, mut stopped: watch::Receiver<bool>) {
    let d = Arc::new(d);
    let q = &d.queue;
    let limit = q.delivery.concurrency as usize;
    loop {
        if *stopped.borrow() {
            break;
        }
        d.publish_depth();
        // A free delivery slot (deliveries of a replaced dispatcher count).
        let changed = d.in_flight.changed.notified();
        let woken = d.wake.notified();
        if d.in_flight.get() >= limit {
            // Woken by an accepted job too, so the gauges follow.
            tokio::select! {
                () = changed => {}
                () = woken => {}
                () = tokio::time::sleep(IDLE) => {}
                _ = stopped.changed() => break,
            }
            continue;
        }
        let free = limit.saturating_sub(d.in_flight.get()).max(1);
        match d.store.take_many(&q.name, now_ms(), free).await {
            Ok(taken) if !taken.is_empty() => {
                for job in taken {
                    d.in_flight.n.fetch_add(1, Ordering::AcqRel);
                    let slot = DeliverySlot(d.in_flight.clone());
                    let d = d.clone();
                    tokio::spawn(async move {
                        d.deliver(job).await;
                        drop(slot);
                    });
                }
            }
            Ok(_) => {
                let due = d.store.next_due(&q.name).await.ok().flatten();
                let sleep = due.map_or(IDLE, |at| {
                    Duration::from_millis(at.saturating_sub(now_ms())).min(IDLE)
                });
                tokio::select! {
                    () = woken => {}
                    () = tokio::time::sleep(sleep) => {}
                    _ = stopped.changed() => break,
                }
            }
            // A shared store that fails says so itself, once a minute.
            Err(e @ super::store::StoreError::Shared { .. }) => {
                tracing::debug!(queue = %q.name, error = %e, "taking a job failed");
                tokio::select! {
                    () = tokio::time::sleep(IDLE) => {}
                    _ = stopped.changed() => break,
                }
            }
            Err(e) => {
                tracing::error!(queue = %q.name, error = %e, "taking a job failed");
                tokio::select! {
                    () = tokio::time::sleep(IDLE) => {}
                    _ = stopped.changed() => break,
                }
            }
        }
    }
    d.publish_depth();
}

impl Dispatcher {
    fn call_back(&self, id: super::job::JobId, job: &super::job::Job) {
        super::call_back(&self.shared, &self.queue, &self.counters, id, job);
    }

    fn publish_depth(&self) {
        let q = &self.queue.name;
        let depth = self.store.depth(q);
        for (i, n) in depth.waiting.iter().enumerate() {
            self.metrics
                .jobs_waiting
                .with_label_values(&[q, priority_word(i as u8)])
                .set(*n as i64);
        }
        self.metrics
            .jobs_delivering
            .with_label_values(&[q])
            .set(self.in_flight.get() as i64);
        let age = depth
            .oldest_ms
            .filter(|_| depth.total_waiting() > 0)
            .map_or(0.0, |t| now_ms().saturating_sub(t) as f64 / 1000.0);
        self.metrics
            .jobs_oldest_age_seconds
            .with_label_values(&[q])
            .set(age);
    }

    async fn deliver(&self, taken: Taken) {
        let q = &self.queue;
        let Taken { id, job, body } = taken;
        let attempt = job.attempts;
        // The whole answer, its body included, within one per_try_timeout:
        // an upstream that sends its headers and then dribbles would hold a
        // consumer for ever.
        let deadline = tokio::time::Instant::now() + q.delivery.per_try_timeout;
        let answer = match self.send(&job, id, body).await {
            Ok(res) => {
                let observed = Observed::of(&res);
                let retry_after = retry_after(&res);
                let status = res.status();
                match tokio::time::timeout_at(deadline, self.result_of(res)).await {
                    Ok(Ok(result)) => Ok((observed, retry_after, status, result)),
                    Ok(Err(e)) => Err(ProxyError::upstream(
                        ErrorKind::UpstreamUnavailable,
                        UpstreamFailure::Reset,
                        format!("upstream answered {status}, then its body broke: {e}"),
                    )),
                    Err(_) => Err(ProxyError::upstream(
                        ErrorKind::UpstreamTimeout,
                        UpstreamFailure::Timeout,
                        format!(
                            "upstream answered {status}, its body not complete within per_try_timeout {:?}",
                            q.delivery.per_try_timeout
                        ),
                    )),
                }
            }
            Err(e) => Err(e),
        };
        let outcome = match answer {
            Ok((observed, retry_after, status, result)) => {
                self.count(if status.is_server_error() {
                    "http_error"
                } else {
                    "success"
                });
                if matches(&q.delivery.retry_on, &observed) {
                    self.again(
                        attempt,
                        retry_after,
                        format!("upstream answered {status}"),
                        Some(result),
                    )
                } else {
                    self.finished(JobStatus::Done, Some(result), None)
                }
            }
            Err(e) => {
                let observed = Observed::of_error(&e, false);
                self.count(match e.failure {
                    Some(UpstreamFailure::Connect) => "connect_failure",
                    Some(UpstreamFailure::Timeout) => "timeout",
                    Some(_) => "reset",
                    None => "http_error",
                });
                let message = e.message.clone();
                if matches(&q.delivery.retry_on, &observed) {
                    self.again(attempt, None, message, None)
                } else {
                    self.finished(JobStatus::Failed, None, Some(message))
                }
            }
        };
        let finished = matches!(outcome, Outcome::Finished { .. });
        match &outcome {
            Outcome::Finished {
                status: JobStatus::Done,
                ..
            } => self.counters.done.inc(),
            Outcome::Finished { .. } => self.counters.failed.inc(),
            _ => {}
        }
        match self.store.finish(id, outcome, now_ms()).await {
            Ok(()) if finished && q.callback.is_some() && job.callback.is_some() => {
                if let Ok(Some(done)) = self.store.get(id).await {
                    self.call_back(id, &done);
                }
            }
            Ok(()) => {}
            // Left "delivering" in the store: delivered again after a
            // restart (at least once).
            Err(e) => {
                tracing::error!(queue = %q.name, job = %id, error = %e, "recording a delivery failed")
            }
        }
        self.wake.notify_one();
    }

    /// One try, bounded by `per_try_timeout`.
    async fn send(
        &self,
        job: &super::job::Job,
        id: super::job::JobId,
        body: Bytes,
    ) -> Result<Response<Body>, ProxyError> {
        let q = &self.queue;
        let Some(forward) = self.shared.targets.load().get(&job.upstream).cloned() else {
            return Err(ProxyError::upstream(
                ErrorKind::UpstreamUnavailable,
                UpstreamFailure::Connect,
                format!("upstream {:?} is not in the running config", job.upstream),
            ));
        };
        let mut req = Request::new(kaname_filters::body::full(body));
        *req.method_mut() = http::Method::from_bytes(job.method.as_bytes())
            .map_err(|e| ProxyError::new(ErrorKind::BadRequest, e.to_string()))?;
        *req.uri_mut() = job.target.parse().map_err(|e: http::uri::InvalidUri| {
            ProxyError::new(ErrorKind::BadRequest, e.to_string())
        })?;
        let headers = req.headers_mut();
        for (name, value) in &job.headers {
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_bytes(value),
            ) {
                headers.append(n, v);
            }
        }
        headers.insert(
            JOB_ID.clone(),
            HeaderValue::from_str(&id.to_string()).unwrap_or(HeaderValue::from_static("")),
        );
        headers.insert(ATTEMPT.clone(), HeaderValue::from(job.attempts));
        let limit = q.delivery.per_try_timeout;
        Deadline::tighten(req.extensions_mut(), limit);
        let mut forward = forward;
        let call = tower::Service::call(&mut forward, req);
        match tokio::time::timeout(limit, call).await {
            Ok(r) => r,
            Err(_) => Err(ProxyError::upstream(
                ErrorKind::UpstreamTimeout,
                UpstreamFailure::Timeout,
                format!("no answer within per_try_timeout {limit:?}"),
            )),
        }
    }

    fn count(&self, outcome: &str) {
        self.metrics
            .job_deliveries_total
            .with_label_values(&[&self.queue.name, outcome])
            .inc();
    }

    /// The answer kept: status, headers, the body up to `max_result_bytes`
    /// (the rest is not read: the connection closes); an error when the
    /// body breaks before that.
    async fn result_of(&self, res: Response<Body>) -> Result<JobResult, String> {
        let max = self.queue.max_result_bytes as usize;
        let (parts, mut body) = res.into_parts();
        let mut kept = Vec::new();
        let mut truncated = false;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| e.to_string())?;
            if let Ok(data) = frame.into_data() {
                let room = max.saturating_sub(kept.len());
                if data.len() > room {
                    kept.extend_from_slice(&data[..room]);
                    truncated = true;
                    break;
                }
                kept.extend_from_slice(&data);
            }
        }
        Ok(JobResult {
            status: parts.status.as_u16(),
            headers: parts
                .headers
                .iter()
                .map(|(n, v)| (n.as_str().to_string(), v.as_bytes().to_vec()))
                .collect(),
            body: kept,
            truncated,
        })
    }

    /// Another try after the backoff (or the upstream's `Retry-After`,
    /// capped at the backoff's max), or failed when attempts are spent.
    fn again(
        &self,
        attempt: u32,
        retry_after: Option<Duration>,
        error: String,
        result: Option<JobResult>,
    ) -> Outcome {
        let d = &self.queue.delivery;
        if attempt >= d.attempts {
            return self.finished(
                JobStatus::Failed,
                result,
                Some(format!(
                    "{error} (attempts spent: {attempt} of {})",
                    d.attempts
                )),
            );
        }
        let wait = match retry_after {
            Some(after) => after.min(d.backoff_max),
            None => Backoff::new(d.backoff_base, d.backoff_max)
                .map_or(d.backoff_base, |b| b.jittered(attempt)),
        };
        Outcome::RetryAt {
            due_ms: now_ms() + wait.as_millis() as u64,
            error,
        }
    }

    fn finished(
        &self,
        status: JobStatus,
        result: Option<JobResult>,
        error: Option<String>,
    ) -> Outcome {
        Outcome::Finished {
            status,
            result,
            error,
            expire_ms: now_ms() + self.queue.keep_finished.as_millis() as u64,
        }
    }
}

/// `Retry-After` in delay-seconds (an HTTP date is ignored).
fn retry_after(res: &Response<Body>) -> Option<Duration> {
    res.headers()
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}
