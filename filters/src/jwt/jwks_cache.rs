//! The key set of one jwt filter, kept fresh by a background task.
//!
//! - The task fetches at start, then every `refresh`. A failed fetch keeps
//!   the last good keys serving and is retried with exponential backoff
//!   (1 s doubling, at most 30 s and at most `refresh`), so the sidecar
//!   starts, and keeps passing requests, while the issuer is down.
//! - A token with an unknown `kid` may ask for one fetch now, at most once
//!   per [`REFETCH_MIN_INTERVAL`] (10 s): a flood of random kids costs the
//!   issuer one request per 10 s, not one per token.
//! - A secret (HS*) filter has a fixed key set and no task.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use jsonwebtoken::Algorithm;
use prometheus::IntCounter;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use super::keys::KeySet;
use crate::registry::JwksFetcher;

/// Kid-triggered fetches are at most one per this interval.
pub const REFETCH_MIN_INTERVAL: Duration = Duration::from_secs(10);
/// How long a request waits for the fetch it (or the start) triggered.
pub const FETCH_WAIT: Duration = Duration::from_secs(5);
/// One fetch may take this long before it counts as failed.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// The current keys and their generation (bumped whenever the document
/// changes, so the verified-token cache can drop what older keys vouched for).
pub struct Current {
    pub keys: KeySet,
    pub generation: u64,
}

pub struct JwksCache {
    current: ArcSwap<Current>,
    /// Fetches finished (successful or not); a request waits on it.
    attempts: watch::Sender<u64>,
    wake: Notify,
    fetching: AtomicBool,
    last_refetch: Mutex<Option<Instant>>,
    /// Has a fetcher (and a task): false for a secret.
    refreshes: bool,
    generations: AtomicU64,
    last_doc: Mutex<Option<bytes::Bytes>>,
}

/// What the refresh task needs besides the cache.
pub struct Refresher {
    pub filter: String,
    pub fetcher: Arc<dyn JwksFetcher>,
    pub refresh: Duration,
    pub allowed: Vec<Algorithm>,
    pub success: IntCounter,
    pub failure: IntCounter,
}

/// Aborts the refresh task when the filter is dropped (config reloaded).
pub struct TaskGuard(Option<tokio::task::AbortHandle>);

impl TaskGuard {
    /// For a filter without a task (a secret).
    pub fn none() -> TaskGuard {
        TaskGuard(None)
    }
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        if let Some(h) = &self.0 {
            h.abort();
        }
    }
}

impl JwksCache {
    /// Keys that never change (an HS* secret).
    pub fn fixed(keys: KeySet) -> Arc<JwksCache> {
        let cache = Self::new(false);
        cache.current.store(Arc::new(Current {
            keys,
            generation: 1,
        }));
        cache.attempts.send_replace(1);
        Arc::new(cache)
    }

    /// Starts the refresh task (when there is a tokio runtime; `kaname
    /// check` builds without one and never serves).
    pub fn spawn(refresher: Refresher) -> (Arc<JwksCache>, TaskGuard) {
        let cache = Arc::new(Self::new(true));
        let handle = tokio::runtime::Handle::try_current()
            .ok()
            .map(|rt| rt.spawn(run(cache.clone(), refresher)).abort_handle());
        (cache, TaskGuard(handle))
    }

    fn new(refreshes: bool) -> JwksCache {
        JwksCache {
            current: ArcSwap::from_pointee(Current {
                keys: KeySet::default(),
                generation: 0,
            }),
            attempts: watch::channel(0).0,
            wake: Notify::new(),
            fetching: AtomicBool::new(false),
            last_refetch: Mutex::new(None),
            refreshes,
            generations: AtomicU64::new(0),
            last_doc: Mutex::new(None),
        }
    }

    pub fn current(&self) -> Arc<Current> {
        self.current.load_full()
    }

    /// Before the first fetch has finished, waits for it (at most
    /// `FETCH_WAIT`), so requests arriving right at start are not refused
    /// only because the file or URL has not been read yet.
    pub async fn wait_first_fetch(&self) {
        let mut rx = self.attempts.subscribe();
        if *rx.borrow_and_update() > 0 {
            return;
        }
        let _ = tokio::time::timeout(FETCH_WAIT, rx.wait_for(|n| *n > 0)).await;
    }

    /// Asks for a fetch now because a token named a kid we do not know (or
    /// no keys are loaded). Rate-limited to one per `REFETCH_MIN_INTERVAL`;
    /// returns true when a fetch ran and finished, so the caller may look
    /// again.
    pub async fn refetch(&self) -> bool {
        if !self.refreshes {
            return false;
        }
        {
            let Ok(mut last) = self.last_refetch.lock() else {
                return false;
            };
            if last.is_some_and(|t| t.elapsed() < REFETCH_MIN_INTERVAL) {
                return false;
            }
            *last = Some(Instant::now());
        }
        let mut rx = self.attempts.subscribe();
        let seen = *rx.borrow_and_update();
        // A fetch already running may have started before the new key was
        // published: wait for the one after it.
        let want = seen
            + if self.fetching.load(Ordering::Acquire) {
                2
            } else {
                1
            };
        self.wake.notify_one();
        let waited = tokio::time::timeout(FETCH_WAIT, rx.wait_for(|n| *n >= want)).await;
        matches!(waited, Ok(Ok(_)))
    }

    /// Keeps a newly fetched key set. The same document again keeps the
    /// generation, so verified tokens stay cached across refreshes.
    fn store(&self, doc: bytes::Bytes, keys: KeySet) {
        if let Ok(mut last) = self.last_doc.lock() {
            if last.as_ref() == Some(&doc) {
                return;
            }
            *last = Some(doc);
        }
        let generation = self.generations.fetch_add(1, Ordering::AcqRel) + 1;
        self.current.store(Arc::new(Current { keys, generation }));
    }
}

async fn run(cache: Arc<JwksCache>, r: Refresher) {
    let mut backoff = BACKOFF_FIRST;
    loop {
        cache.fetching.store(true, Ordering::Release);
        let ok = fetch_once(&cache, &r).await;
        cache.fetching.store(false, Ordering::Release);
        if ok {
            r.success.inc();
        } else {
            r.failure.inc();
        }
        cache.attempts.send_modify(|n| *n += 1);
        let wait = if ok {
            backoff = BACKOFF_FIRST;
            r.refresh
        } else {
            let wait = backoff.min(r.refresh);
            backoff = (backoff * 2).min(BACKOFF_MAX);
            wait
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = cache.wake.notified() => {}
        }
    }
}

async fn fetch_once(cache: &JwksCache, r: &Refresher) -> bool {
    let doc = match tokio::time::timeout(FETCH_TIMEOUT, r.fetcher.fetch()).await {
        Ok(Ok(doc)) => doc,
        Ok(Err(e)) => {
            tracing::warn!(filter = %r.filter, error = %e, "JWKS fetch failed; keeping the last good keys");
            return false;
        }
        Err(_) => {
            tracing::warn!(filter = %r.filter, "JWKS fetch timed out after {FETCH_TIMEOUT:?}; keeping the last good keys");
            return false;
        }
    };
    match KeySet::from_jwks(&doc, &r.allowed) {
        Ok((keys, _)) if keys.is_empty() => {
            tracing::warn!(filter = %r.filter, "JWKS has no key usable with the filter's algorithms; keeping the last good keys");
            false
        }
        Ok((keys, skipped)) => {
            if skipped > 0 {
                tracing::info!(filter = %r.filter, skipped, "JWKS keys skipped (malformed, for encryption, or of another algorithm)");
            }
            tracing::debug!(filter = %r.filter, keys = keys.len(), "JWKS fetched");
            cache.store(doc, keys);
            true
        }
        Err(e) => {
            tracing::warn!(filter = %r.filter, error = %e, "JWKS unusable; keeping the last good keys");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::collections::VecDeque;
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::atomic::AtomicUsize;

    const JWKS_A: &str = r#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"a","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;
    const JWKS_B: &str = r#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"b","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;

    /// Answers from a script; the last answer repeats.
    struct Scripted {
        answers: Mutex<VecDeque<Result<&'static str, &'static str>>>,
        calls: AtomicUsize,
    }

    impl JwksFetcher for Scripted {
        fn fetch(&self) -> Pin<Box<dyn Future<Output = Result<Bytes, String>> + Send + '_>> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let mut q = self.answers.lock().unwrap();
            let a = if q.len() > 1 {
                q.pop_front().unwrap()
            } else {
                *q.front().unwrap()
            };
            Box::pin(async move {
                a.map(|s| Bytes::from_static(s.as_bytes()))
                    .map_err(str::to_string)
            })
        }
    }

    fn start(
        answers: Vec<Result<&'static str, &'static str>>,
        refresh: Duration,
    ) -> (
        Arc<JwksCache>,
        Arc<Scripted>,
        IntCounter,
        IntCounter,
        TaskGuard,
    ) {
        let fetcher = Arc::new(Scripted {
            answers: Mutex::new(answers.into()),
            calls: AtomicUsize::new(0),
        });
        let success = IntCounter::new("s", "s").unwrap();
        let failure = IntCounter::new("f", "f").unwrap();
        let (cache, guard) = JwksCache::spawn(Refresher {
            filter: "auth".into(),
            fetcher: fetcher.clone(),
            refresh,
            allowed: vec![Algorithm::EdDSA],
            success: success.clone(),
            failure: failure.clone(),
        });
        (cache, fetcher, success, failure, guard)
    }

    fn kid(cache: &JwksCache) -> Option<String> {
        let cur = cache.current();
        match cur.keys.lookup(None, Algorithm::EdDSA) {
            super::super::keys::Lookup::Found(k) => k[0].kid.clone(),
            _ => None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn first_fetch_fails_then_backoff_recovers() {
        let (cache, fetcher, ok, fail, _g) = start(
            vec![Err("down"), Err("down"), Err("down"), Ok(JWKS_A)],
            Duration::from_secs(300),
        );
        cache.wait_first_fetch().await;
        assert_eq!(kid(&cache), None);
        assert_eq!(fail.get(), 1);
        // Backoff 1 s, 2 s, then the third retry (at 7 s) succeeds.
        tokio::time::sleep(Duration::from_millis(6_900)).await;
        assert_eq!(kid(&cache), None);
        assert_eq!(fetcher.calls.load(Ordering::SeqCst), 3);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(kid(&cache).as_deref(), Some("a"));
        assert_eq!((ok.get(), fail.get()), (1, 3));
    }

    #[tokio::test(start_paused = true)]
    async fn failure_keeps_last_good_keys_and_refresh_rotates() {
        let (cache, _f, _, fail, _g) = start(
            vec![Ok(JWKS_A), Err("down"), Ok(JWKS_B)],
            Duration::from_secs(60),
        );
        cache.wait_first_fetch().await;
        let gen_a = cache.current().generation;
        tokio::time::sleep(Duration::from_secs(61)).await;
        assert_eq!(fail.get(), 1);
        assert_eq!(kid(&cache).as_deref(), Some("a"), "last good keys serve");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(kid(&cache).as_deref(), Some("b"));
        assert!(cache.current().generation > gen_a);
    }

    #[tokio::test(start_paused = true)]
    async fn same_document_keeps_generation() {
        let (cache, fetcher, _, _, _g) = start(vec![Ok(JWKS_A)], Duration::from_secs(60));
        cache.wait_first_fetch().await;
        let g = cache.current().generation;
        tokio::time::sleep(Duration::from_secs(125)).await;
        assert_eq!(fetcher.calls.load(Ordering::SeqCst), 3);
        assert_eq!(cache.current().generation, g);
    }

    #[tokio::test(start_paused = true)]
    async fn kid_refetch_is_rate_limited() {
        let (cache, fetcher, _, _, _g) =
            start(vec![Ok(JWKS_A), Ok(JWKS_B)], Duration::from_secs(300));
        cache.wait_first_fetch().await;
        assert!(cache.refetch().await, "first refetch runs");
        assert_eq!(kid(&cache).as_deref(), Some("b"));
        // A flood within 10 s triggers nothing more.
        for _ in 0..100 {
            assert!(!cache.refetch().await);
        }
        assert_eq!(fetcher.calls.load(Ordering::SeqCst), 2);
        tokio::time::sleep(REFETCH_MIN_INTERVAL).await;
        assert!(cache.refetch().await);
        assert_eq!(fetcher.calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn fixed_keys_never_refetch() {
        let cache = JwksCache::fixed(KeySet::from_secret(b"k", &[Algorithm::HS256]));
        cache.wait_first_fetch().await;
        assert!(!cache.refetch().await);
        assert_eq!(cache.current().generation, 1);
    }
}
