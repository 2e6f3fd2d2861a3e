//! Queues of the asynchronous hand-off (async.md): a route with `queue:`
//! answers 202 once the request is stored, and the queue delivers it to
//! the route's upstream later.

use std::time::Duration;

use crate::types::{Condition, PrioritySource};

#[derive(Debug, Clone, PartialEq)]
pub struct Queue {
    pub name: String,
    /// `local` (the default): embedded, crash-safe, in `data_dir`.
    pub store: QueueStore,
    /// Jobs waiting (retry backoff included); beyond it 503 overloaded.
    /// Default 100,000.
    pub max_depth: u64,
    /// Larger requests get 413. Default 1 MiB.
    pub max_body_bytes: u64,
    /// Where a job's class comes from; None: every job is normal.
    pub priority: Option<PrioritySource>,
    pub delivery: Delivery,
    /// How long a finished job's status and result stay readable (and its
    /// idempotency key taken). Default 24h.
    pub keep_finished: Duration,
    /// Response body kept in the result; more is cut and marked truncated.
    /// Default 64 KiB.
    pub max_result_bytes: u64,
    pub callback: Option<Callback>,
    /// On a shared store: a job taken by a sidecar that then died is taken
    /// over by another after this. Default 2 × `delivery.per_try_timeout`.
    pub visibility_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueStore {
    Local,
    /// A `stores:` entry (stores.md).
    Shared(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// Deliveries in flight at once. Default 8.
    pub concurrency: u32,
    /// Tries in all. Default 10.
    pub attempts: u32,
    /// Default 30s.
    pub per_try_timeout: Duration,
    /// Exponential with full jitter. Defaults 1s and 5m.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Default [connect_failure, reset, timeout, 5xx, 429].
    pub retry_on: Vec<Condition>,
}

impl Default for Delivery {
    fn default() -> Self {
        Delivery {
            concurrency: 8,
            attempts: 10,
            per_try_timeout: Duration::from_secs(30),
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            retry_on: vec![
                Condition::ConnectFailure,
                Condition::Reset,
                Condition::Timeout,
                Condition::Status5xx,
                Condition::Status(429),
            ],
        }
    }
}

/// POSTs the finished job to a URL the caller names.
#[derive(Clone, PartialEq)]
pub struct Callback {
    /// The request header naming the URL, lower case. Default
    /// `x-callback-url`.
    pub header: String,
    /// Host names or IP literals (port ignored), `*.` prefix wildcards;
    /// lower case. Any other host is refused at acceptance.
    pub allowed_hosts: Vec<String>,
    /// The HMAC-SHA256 key of `kaname-signature`.
    pub secret: String,
    /// Default 5.
    pub attempts: u32,
}

/// The secret is never printed.
impl std::fmt::Debug for Callback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Callback")
            .field("header", &self.header)
            .field("allowed_hosts", &self.allowed_hosts)
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}

impl Callback {
    /// Whether `host` (no port, any case) may be called back.
    pub fn allows(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.allowed_hosts
            .iter()
            .any(|a| match a.strip_prefix("*.") {
                Some(suffix) => {
                    host.len() > suffix.len() + 1
                        && host.ends_with(suffix)
                        && host[..host.len() - suffix.len()].ends_with('.')
                }
                None => *a == host,
            })
    }
}
