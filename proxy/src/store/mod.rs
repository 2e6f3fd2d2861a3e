//! Shared stores (stores.md): one Redis client per `stores:` entry, with
//! redis-rs's connection manager (it reconnects on its own), each command
//! bounded by the store's `timeout` and measured.
//!
//! While the store fails, requests do not wait on it: the first failure
//! marks it down, and from then on commands fail at once (the callers
//! decide without it, e.g. by `on_store_error`) while a probe PINGs it
//! every [`PROBE_EVERY`]; the first answer marks it up again.

mod rate_limit;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kaname_config::store::Store;
use kaname_config::Config;
use prometheus::{Histogram, IntCounter, IntGauge};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

pub use rate_limit::SharedRateLimit;

use crate::metrics::Metrics;

/// How often a down store is asked whether it is back: within 5 s of its
/// return (stores.md), requests share its state again.
const PROBE_EVERY: Duration = Duration::from_millis(500);
/// Warnings about a failing store, at most this often.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// Why a command got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("slower than the store's timeout")]
    Timeout,
    #[error("no connection")]
    Connection,
    #[error("an unexpected answer")]
    Response,
}

impl StoreError {
    fn kind(self) -> &'static str {
        match self {
            StoreError::Timeout => "timeout",
            StoreError::Connection => "connection",
            StoreError::Response => "response",
        }
    }
}

/// Every store of a config, by name.
#[derive(Default)]
pub struct StoreSet {
    stores: HashMap<String, Arc<RedisStore>>,
}

impl StoreSet {
    /// The stores of `config`, reusing those of `previous` whose settings
    /// did not change (their connections and state survive a reload).
    pub fn build(
        config: &Config,
        previous: Option<&StoreSet>,
        metrics: &Metrics,
    ) -> Result<StoreSet, String> {
        let mut stores = HashMap::new();
        for s in &config.stores {
            let kept = previous
                .and_then(|p| p.stores.get(&s.name))
                .filter(|old| old.config == *s)
                .cloned();
            let store = match kept {
                Some(k) => k,
                None => RedisStore::new(s, metrics)?,
            };
            stores.insert(s.name.clone(), store);
        }
        // Series of removed stores go: a stale `up` would hide an alert.
        kaname_filters::metrics::retain_series(&metrics.store_up, |l| {
            l.get("store").is_some_and(|n| stores.contains_key(*n))
        });
        Ok(StoreSet { stores })
    }

    pub fn get(&self, name: &str) -> Option<&Arc<RedisStore>> {
        self.stores.get(name)
    }
}

/// One `stores:` entry on Redis.
pub struct RedisStore {
    config: Store,
    conn: ConnectionManager,
    up: AtomicBool,
    metrics: StoreMetrics,
    last_warning: Mutex<Option<Instant>>,
}

struct StoreMetrics {
    up: IntGauge,
    timeout: IntCounter,
    connection: IntCounter,
    response: IntCounter,
    duration: Histogram,
}

impl RedisStore {
    pub(crate) fn new(config: &Store, metrics: &Metrics) -> Result<Arc<RedisStore>, String> {
        let r = &config.redis;
        let fail = |e: &dyn std::fmt::Display| {
            format!("store {:?}: {}: {e}", config.name, r.display_url())
        };
        let client = match &r.ca_file {
            None => redis::Client::open(r.url.as_str()).map_err(|e| fail(&e))?,
            // A private CA instead of the system's (checked at load, like
            // every TLS file).
            Some(ca) => {
                let pem = std::fs::read(ca).map_err(|e| fail(&format!("ca_file {ca}: {e}")))?;
                redis::Client::build_with_tls(
                    r.url.as_str(),
                    redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(pem),
                    },
                )
                .map_err(|e| fail(&e))?
            }
        };
        // Lazy: a store that is down at start is a store that is down, not
        // a sidecar that cannot start. Few, quick reconnection tries: the
        // probe below asks again every PROBE_EVERY anyway.
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(r.timeout.max(Duration::from_secs(1))))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(200));
        let conn = ConnectionManager::new_lazy_with_config(client, manager_config)
            .map_err(|e| format!("store {:?}: {e}", config.name))?;
        let name = config.name.as_str();
        let errors = |kind: &str| metrics.store_errors_total.with_label_values(&[name, kind]);
        let store = Arc::new(RedisStore {
            config: config.clone(),
            conn,
            // Down until the first answer: the probe connects.
            up: AtomicBool::new(false),
            metrics: StoreMetrics {
                up: metrics.store_up.with_label_values(&[name]),
                timeout: errors("timeout"),
                connection: errors("connection"),
                response: errors("response"),
                duration: metrics
                    .store_command_duration_seconds
                    .with_label_values(&[name]),
            },
            last_warning: Mutex::new(None),
        });
        store.metrics.up.set(0);
        tokio::spawn(probe(Arc::downgrade(&store)));
        Ok(store)
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    pub fn key_prefix(&self) -> &str {
        &self.config.redis.key_prefix
    }

    /// Runs one command (or script) on the store, at most `timeout`; fails
    /// at once while the store is down.
    pub async fn run<T, F, Fut>(&self, command: F) -> Result<T, StoreError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        self.run_within(self.config.redis.timeout, command).await
    }

    /// As [`run`](Self::run), bounded by `limit` instead of the store's
    /// `timeout`: for the commands that move whole job bodies, which the
    /// contract does not bound by the one-command `timeout` (stores.md).
    pub async fn run_within<T, F, Fut>(&self, limit: Duration, command: F) -> Result<T, StoreError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        if !self.up.load(Ordering::Relaxed) {
            return Err(StoreError::Connection);
        }
        self.timed(limit, command).await
    }

    pub fn timeout(&self) -> Duration {
        self.config.redis.timeout
    }

    async fn timed<T, F, Fut>(&self, limit: Duration, command: F) -> Result<T, StoreError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let started = Instant::now();
        let result = tokio::time::timeout(limit, command(self.conn.clone())).await;
        let outcome = match result {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e))
                if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() =>
            {
                Err((StoreError::Connection, e.to_string()))
            }
            Ok(Err(e)) if e.is_timeout() => Err((StoreError::Timeout, e.to_string())),
            Ok(Err(e)) => Err((StoreError::Response, e.to_string())),
            Err(_) => Err((StoreError::Timeout, format!("no answer within {limit:?}"))),
        };
        self.metrics
            .duration
            .observe(started.elapsed().as_secs_f64());
        match outcome {
            Ok(v) => {
                self.mark_up();
                Ok(v)
            }
            Err((kind, detail)) => {
                self.failed(kind, &detail);
                Err(kind)
            }
        }
    }

    fn mark_up(&self) {
        if !self.up.swap(true, Ordering::Relaxed) {
            self.metrics.up.set(1);
            tracing::info!(store = %self.config.name, "store answers");
        }
    }

    fn failed(&self, kind: StoreError, detail: &str) {
        match kind {
            StoreError::Timeout => self.metrics.timeout.inc(),
            StoreError::Connection => self.metrics.connection.inc(),
            StoreError::Response => self.metrics.response.inc(),
        }
        // A wrong answer is one command's problem; no answer is the store's.
        if kind != StoreError::Response {
            self.up.store(false, Ordering::Relaxed);
            self.metrics.up.set(0);
        }
        let Ok(mut last) = self.last_warning.lock() else {
            return;
        };
        if last.is_some_and(|t| t.elapsed() < WARN_EVERY) {
            return;
        }
        *last = Some(Instant::now());
        tracing::warn!(
            store = %self.config.name,
            url = %self.config.redis.display_url(),
            error = kind.kind(),
            detail,
            "store failing: decisions follow on_store_error until it answers (said at most once a minute)"
        );
    }
}

/// While the store is down, PINGs it every PROBE_EVERY; ends with the store.
async fn probe(store: std::sync::Weak<RedisStore>) {
    loop {
        let Some(s) = store.upgrade() else {
            return;
        };
        if !s.up.load(Ordering::Relaxed) {
            let _ = s
                .timed(s.config.redis.timeout, |mut c| async move {
                    redis::cmd("PING").query_async::<()>(&mut c).await
                })
                .await;
        }
        drop(s);
        tokio::time::sleep(PROBE_EVERY).await;
    }
}
