//! The buckets: governor's keyed GCRA limiter over a key store that
//! `max_keys` bounds.
//!
//! Memory policy (as governor's docs advise for keyed limiters): a key whose
//! bucket is full again is indistinguishable from a fresh key, so a sweep
//! (`retain_recent` + `shrink_to_fit`) drops it. Sweeps run inline, on one
//! request at a time (a `try_lock`, never waited for):
//! - every `max_keys` checks (at least every 4096), so idle keys go away and
//!   the cost is about one entry visited per request;
//! - at once when the count of stored keys reaches `max_keys`.
//!
//! When a sweep still leaves more than 7/8 of `max_keys` live (that many
//! clients are really active), the store is *full*: a key not yet stored is
//! not added but shares one overflow bucket (same rate and burst) until a
//! later periodic sweep frees room. Known keys keep their own buckets, so a
//! flood of new keys (a million random `x-api-key` values) costs the
//! flooders, not the clients already being served, and memory stays bounded
//! by `max_keys` (plus the few keys racing in while a sweep runs). The 1/8
//! headroom keeps growth-triggered sweeps at least `max_keys / 8` new keys
//! apart, so a flood cannot make every request pay for a sweep.

use std::hash::BuildHasher;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, MonotonicClock};
use governor::middleware::StateInformationMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::{DashMapStateStore, ShrinkableKeyedStateStore};
use governor::state::StateStore;
use governor::{Quota, RateLimiter};
use kaname_config::types::Rate;

/// Key values longer than this are stored as a 64-bit keyed hash, so a
/// 64 KiB header value costs a bucket no more memory than a short one.
const MAX_KEY_BYTES: usize = 64;

/// Periodic sweeps run at least this often (in checks).
const MIN_SWEEP_EVERY: u64 = 4096;

/// What a bucket is kept for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    /// The one bucket of a `global` limit.
    Global,
    /// Requests that carry no key (no such header, no such claim).
    Anonymous,
    /// New keys while the store is full.
    Overflow,
    Ip(IpAddr),
    /// A header value or claim of at most `MAX_KEY_BYTES`.
    Text(Box<[u8]>),
    /// A longer value, hashed with this process's random SipHash key.
    Digest(u64),
}

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow {
        /// Tokens left after this request.
        remaining: u32,
        /// Until the bucket is full again.
        reset: Duration,
    },
    Deny {
        /// Until the next token.
        wait: Duration,
        /// Until the bucket is full again.
        reset: Duration,
    },
}

/// All the buckets of one `rate_limit` filter. Generic over the clock
/// because governor's clock ignores tokio's paused time (trap 11): tests
/// use `governor::clock::FakeRelativeClock`.
pub struct Buckets<C: Clock = MonotonicClock> {
    limiter: RateLimiter<Key, BoundedStore, C, StateInformationMiddleware>,
    bound: Arc<Bound>,
    burst: u32,
    /// Time to earn one token.
    per_token: Duration,
    hasher: std::hash::RandomState,
    checks: AtomicU64,
    sweep_every: u64,
    sweeping: Mutex<()>,
}

#[derive(Debug, thiserror::Error)]
pub enum QuotaError {
    #[error("rate {count}/{per:?} is too fast: under one token per nanosecond")]
    TooFast { count: u32, per: Duration },
    #[error("rate and burst must be at least 1")]
    Zero,
}

// === impl Key ===

impl Key {
    /// The key for a header value or claim.
    pub fn text(value: &[u8], hasher: &impl BuildHasher) -> Key {
        if value.len() <= MAX_KEY_BYTES {
            Key::Text(value.into())
        } else {
            Key::Digest(hasher.hash_one(value))
        }
    }
}

// === impl Buckets ===

impl Buckets<MonotonicClock> {
    pub fn new(rate: Rate, burst: u32, max_keys: usize) -> Result<Self, QuotaError> {
        Self::with_clock(rate, burst, max_keys, MonotonicClock)
    }
}

impl<C: Clock> Buckets<C> {
    pub fn with_clock(
        rate: Rate,
        burst: u32,
        max_keys: usize,
        clock: C,
    ) -> Result<Self, QuotaError> {
        let (Some(count), Some(burst_nz)) = (NonZeroU32::new(rate.count), NonZeroU32::new(burst))
        else {
            return Err(QuotaError::Zero);
        };
        let per_token = rate.per / count.get();
        let quota = Quota::with_period(per_token).ok_or(QuotaError::TooFast {
            count: rate.count,
            per: rate.per,
        })?;
        let bound = Arc::new(Bound {
            max_keys: max_keys.max(1),
            stored: AtomicUsize::new(0),
            full: AtomicBool::new(false),
        });
        let store = BoundedStore {
            map: DashMapStateStore::default(),
            bound: bound.clone(),
        };
        let limiter = RateLimiter::<_, _, _, StateInformationMiddleware>::new(
            quota.allow_burst(burst_nz),
            store,
            clock,
        );
        Ok(Buckets {
            limiter,
            bound,
            burst,
            per_token,
            hasher: std::hash::RandomState::new(),
            checks: AtomicU64::new(0),
            sweep_every: (max_keys as u64).max(MIN_SWEEP_EVERY),
            sweeping: Mutex::new(()),
        })
    }

    /// The bucket size, sent as `RateLimit-Limit`.
    pub fn limit(&self) -> u32 {
        self.burst
    }

    pub fn hasher(&self) -> &std::hash::RandomState {
        &self.hasher
    }

    /// Takes a token from `key`'s bucket, or says how long until one.
    pub fn check(&self, key: &Key) -> Decision {
        let n = self.checks.fetch_add(1, Ordering::Relaxed) + 1;
        if n.checked_rem(self.sweep_every) == Some(0) || self.bound.needs_sweep() {
            self.sweep();
        }
        match self.limiter.check_key(key) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity().min(self.burst);
                Decision::Allow {
                    remaining,
                    reset: self.per_token * (self.burst - remaining),
                }
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.limiter.clock().now());
                Decision::Deny {
                    wait,
                    reset: wait + self.per_token * self.burst.saturating_sub(1),
                }
            }
        }
    }

    /// Drops the keys whose bucket is full again, and decides whether new
    /// keys may be stored. One sweep at a time; a busy sweeper is skipped.
    pub fn sweep(&self) {
        let Ok(_one) = self.sweeping.try_lock() else {
            return;
        };
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
        let live = self.limiter.len();
        self.bound.stored.store(live, Ordering::Relaxed);
        let high_water = self.bound.max_keys - self.bound.max_keys / 8;
        let full = live > high_water;
        if full && !self.bound.full.load(Ordering::Relaxed) {
            tracing::warn!(
                keys = live,
                max_keys = self.bound.max_keys,
                "rate_limit key store full: new keys share the overflow bucket"
            );
        }
        self.bound.full.store(full, Ordering::Relaxed);
    }

    /// Keys stored now.
    pub fn len(&self) -> usize {
        self.limiter.len()
    }

    pub fn is_empty(&self) -> bool {
        self.limiter.is_empty()
    }
}

/// What the store and the sweeper share.
struct Bound {
    max_keys: usize,
    /// Keys stored: counted at each sweep, then incremented per new key.
    stored: AtomicUsize,
    /// New keys go to the overflow bucket.
    full: AtomicBool,
}

impl Bound {
    fn needs_sweep(&self) -> bool {
        !self.full.load(Ordering::Relaxed) && self.stored.load(Ordering::Relaxed) >= self.max_keys
    }
}

/// governor's DashMap store, with new keys redirected to `Key::Overflow`
/// while full.
struct BoundedStore {
    map: DashMapStateStore<Key>,
    bound: Arc<Bound>,
}

impl StateStore for BoundedStore {
    type Key = Key;

    fn measure_and_replace<T, F, E>(&self, key: &Key, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        if !self.map.contains_key(key) {
            if self.bound.full.load(Ordering::Relaxed) {
                return self.map.measure_and_replace(&Key::Overflow, f);
            }
            self.bound.stored.fetch_add(1, Ordering::Relaxed);
        }
        self.map.measure_and_replace(key, f)
    }
}

impl ShrinkableKeyedStateStore<Key> for BoundedStore {
    fn retain_recent(&self, drop_below: Nanos) {
        self.map.retain_recent(drop_below);
    }

    fn shrink_to_fit(&self) {
        ShrinkableKeyedStateStore::shrink_to_fit(&self.map);
    }

    fn len(&self) -> usize {
        ShrinkableKeyedStateStore::len(&self.map)
    }

    fn is_empty(&self) -> bool {
        ShrinkableKeyedStateStore::is_empty(&self.map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn rate(count: u32, per_secs: u64) -> Rate {
        Rate {
            count,
            per: Duration::from_secs(per_secs),
        }
    }

    fn buckets(
        count: u32,
        burst: u32,
        max_keys: usize,
    ) -> (Buckets<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        let b = Buckets::with_clock(rate(count, 1), burst, max_keys, clock.clone()).expect("quota");
        (b, clock)
    }

    fn text(s: &str) -> Key {
        Key::Text(s.as_bytes().into())
    }

    #[test]
    fn exactly_burst_then_deny() {
        let (b, _clock) = buckets(10, 5, 100);
        for i in 0..5u32 {
            let d = b.check(&Key::Global);
            assert_eq!(
                d,
                Decision::Allow {
                    remaining: 4 - i,
                    reset: Duration::from_millis(100) * (i + 1)
                },
                "request {i}"
            );
        }
        match b.check(&Key::Global) {
            Decision::Deny { wait, reset } => {
                assert_eq!(wait, Duration::from_millis(100));
                assert_eq!(reset, Duration::from_millis(500));
            }
            d => panic!("sixth request: {d:?}"),
        }
    }

    #[test]
    fn refills_one_token_per_period() {
        let (b, clock) = buckets(10, 3, 100);
        for _ in 0..3 {
            assert!(matches!(b.check(&Key::Global), Decision::Allow { .. }));
        }
        assert!(matches!(b.check(&Key::Global), Decision::Deny { .. }));
        clock.advance(Duration::from_millis(99));
        assert!(matches!(b.check(&Key::Global), Decision::Deny { .. }));
        clock.advance(Duration::from_millis(1));
        assert!(matches!(
            b.check(&Key::Global),
            Decision::Allow { remaining: 0, .. }
        ));
        assert!(matches!(b.check(&Key::Global), Decision::Deny { .. }));
        // A full second refills 10 tokens, but the bucket holds only 3.
        clock.advance(Duration::from_secs(1));
        for _ in 0..3 {
            assert!(matches!(b.check(&Key::Global), Decision::Allow { .. }));
        }
        assert!(matches!(b.check(&Key::Global), Decision::Deny { .. }));
    }

    #[test]
    fn keys_are_isolated() {
        let (b, _clock) = buckets(1, 2, 100);
        for _ in 0..2 {
            assert!(matches!(b.check(&text("alice")), Decision::Allow { .. }));
        }
        assert!(matches!(b.check(&text("alice")), Decision::Deny { .. }));
        assert!(matches!(
            b.check(&text("bob")),
            Decision::Allow { remaining: 1, .. }
        ));
        assert!(matches!(b.check(&Key::Anonymous), Decision::Allow { .. }));
    }

    #[test]
    fn long_values_are_hashed_stably() {
        let (b, _clock) = buckets(1, 1, 100);
        let long = vec![b'k'; 1000];
        let k1 = Key::text(&long, b.hasher());
        assert!(matches!(k1, Key::Digest(_)));
        assert_eq!(k1, Key::text(&long, b.hasher()));
        assert!(matches!(Key::text(b"short", b.hasher()), Key::Text(_)));
        assert!(matches!(b.check(&k1), Decision::Allow { .. }));
        assert!(matches!(b.check(&k1), Decision::Deny { .. }));
    }

    #[test]
    fn idle_keys_are_swept_and_store_stays_bounded() {
        let (b, clock) = buckets(10, 2, 1000);
        // Keys spent but not refilled: all live.
        for i in 0..10_000 {
            b.check(&text(&format!("k{i}")));
            assert!(b.len() <= 1000 + 1, "store grew to {} at {i}", b.len());
        }
        assert!(b.bound.full.load(Ordering::Relaxed));
        // A brand-new key now shares the overflow bucket.
        let before = b.len();
        b.check(&text("newcomer"));
        assert_eq!(b.len(), before);
        // Once buckets refill, a sweep frees everything and new keys are
        // stored again.
        clock.advance(Duration::from_secs(1));
        b.sweep();
        assert!(b.len() <= 1, "left {} keys", b.len());
        assert!(!b.bound.full.load(Ordering::Relaxed));
        b.check(&text("later"));
        assert!(!b.is_empty());
    }

    #[test]
    fn overflow_bucket_throttles_new_keys_while_full() {
        let (b, _clock) = buckets(1, 3, 8);
        for i in 0..8 {
            b.check(&text(&format!("k{i}")));
        }
        b.sweep();
        assert!(b.bound.full.load(Ordering::Relaxed));
        // Known keys keep their own buckets...
        assert!(matches!(b.check(&text("k0")), Decision::Allow { .. }));
        // ...new keys share one bucket of `burst` tokens.
        let allowed = (0..10)
            .filter(|i| matches!(b.check(&text(&format!("new{i}"))), Decision::Allow { .. }))
            .count();
        assert_eq!(allowed, 3);
    }

    #[test]
    fn rejects_impossible_quotas() {
        let c = FakeRelativeClock::default();
        assert!(matches!(
            Buckets::with_clock(rate(0, 1), 1, 1, c.clone()),
            Err(QuotaError::Zero)
        ));
        assert!(matches!(
            Buckets::with_clock(rate(10, 1), 0, 1, c.clone()),
            Err(QuotaError::Zero)
        ));
        let too_fast = Rate {
            count: 2_000_000_000,
            per: Duration::from_secs(1),
        };
        assert!(matches!(
            Buckets::with_clock(too_fast, 1, 1, c),
            Err(QuotaError::TooFast { .. })
        ));
    }
}
