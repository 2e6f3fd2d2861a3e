//! The buckets: governor's keyed GCRA over a key store that `max_keys`
//! bounds, and that a flood of new keys cannot fill for anyone else.
//!
//! Memory policy. The store never holds more than `max_keys` keys: it is
//! cut in shards, each holds its share and makes room before it adds a key
//! (keys spread over shards by hash, so the fullest shard starts evicting a
//! few percent before the whole store holds `max_keys`).
//! A key whose bucket is full again (*idle*: governor's own decision
//! function, asked about its state, decides exactly as for a fresh key; no
//! clock is read for this) is indistinguishable from a fresh key, so
//! dropping it loses nothing: each shard sweeps its idle keys
//! away every `max(its share, 256)` checks, inline, under the lock the check
//! holds anyway (about one entry visited per request), so memory goes back
//! after a burst of keys.
//!
//! At the bound a new key still gets its own fresh bucket on its first
//! request. Room is made by evicting, in this order:
//! 1. an idle key among the two least recently used of either segment
//!    (below): lossless, not counted;
//! 2. else the least recently used key seen only once (the probation
//!    segment), else the least recently used key of all. That key still
//!    owed tokens, so this is counted in
//!    `kaname_limits_hit_total{limit="rate_limit_keys"}`.
//!
//! Why this protects real users best:
//! - Evicting a key can only make its owner's limit more lenient (its next
//!   request starts from a full bucket); it never refuses anyone. So the
//!   policy only decides whose debt is forgotten, never who is served. (The
//!   old policy, new keys sharing one overflow bucket at the bound, refused
//!   every new real client for as long as a flood lasted.)
//! - The keys worth remembering are the ones being limited and still
//!   sending: a key over its limit that keeps knocking is touched by every
//!   refused request too, so it is always recently used and never the
//!   victim; hammering cannot shed its debt.
//! - A flood of distinct keys is mostly one-shot keys. New keys enter a
//!   probation segment and a second request promotes a key to the
//!   protected segment (4/5 of the store): a segmented LRU. One-shot keys
//!   then only evict each other, and a flood however large never evicts a
//!   key used twice. A flooder that sends each key twice makes protected a
//!   plain LRU, where an active key survives if it comes back within
//!   (4/5 × max_keys) / (half the flood's rate) seconds.
//! - An attacker's keys therefore cost only their own buckets: each gets
//!   one full bucket (as any new client does) and they push out each other.
//!
//! Cost per request: the `global` and anonymous buckets are two atomics,
//! updated lock-free as governor's own state (one compare-exchange), never
//! evicted. Any other key is hashed once (SipHash with this process's
//! random key: keys are attacker-chosen) to one of up to 256 shards, whose
//! mutex is held for one lookup and a move to the back of its list. No
//! lock, and no counter, is shared by all requests.

use std::hash::BuildHasher;
use std::net::IpAddr;
use std::num::{NonZeroU32, NonZeroU64};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use governor::clock::{Clock, MonotonicClock};
use governor::middleware::StateInformationMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::ShrinkableKeyedStateStore;
use governor::state::StateStore;
use governor::{Quota, RateLimiter};
use hashlink::linked_hash_map::RawEntryMut;
use hashlink::LinkedHashMap;
use kaname_config::types::Rate;
use prometheus::IntCounter;

/// Key values longer than this are stored as a 64-bit keyed hash, so a
/// 64 KiB header value costs a bucket no more memory than a short one.
const MAX_KEY_BYTES: usize = 64;

/// Shards hold at least this many keys each (an LRU per shard is close to
/// one LRU over all only when shards are not tiny) ...
const MIN_KEYS_PER_SHARD: usize = 128;
/// ... and there are at most this many (a power of two).
const MAX_SHARDS: usize = 256;

/// A shard sweeps its idle keys at least this far apart (in its checks).
const MIN_SWEEP_EVERY: usize = 256;

/// Least recently used keys looked at for an idle one before a key that
/// still owes tokens is evicted.
const IDLE_SCAN: usize = 2;

/// What a bucket is kept for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    /// The one bucket of a `global` limit.
    Global,
    /// Requests that carry no key (no such header, no such claim).
    Anonymous,
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
    limiter: RateLimiter<Key, SharedStore, C, StateInformationMiddleware>,
    store: Arc<Store>,
    burst: u32,
    /// Time to earn one token.
    per_token: Duration,
    hasher: std::hash::RandomState,
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
        let store = Arc::new(Store::new(max_keys.max(1)));
        let limiter = RateLimiter::<_, _, _, StateInformationMiddleware>::new(
            quota.allow_burst(burst_nz),
            SharedStore(store.clone()),
            clock,
        );
        Ok(Buckets {
            limiter,
            store,
            burst,
            per_token,
            hasher: std::hash::RandomState::new(),
        })
    }

    /// Counts evictions of keys that still owed tokens in `counter` too
    /// (`kaname_limits_hit_total{limit="rate_limit_keys"}`). Once.
    pub fn count_evictions_in(&self, counter: IntCounter) {
        let _ = self.store.metric.set(counter);
    }

    /// Keys evicted at the bound while they still owed tokens.
    pub fn evictions(&self) -> u64 {
        self.store.evicted.load(Ordering::Relaxed)
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

    /// Drops every idle key now, by governor's `retain_recent` rule (shards
    /// also drop theirs as they are used).
    pub fn sweep(&self) {
        self.limiter.retain_recent();
    }

    /// Keys stored now, at most `max_keys` (the `global` and anonymous
    /// buckets are fixed cells, not counted).
    pub fn len(&self) -> usize {
        self.store.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn lock(shard: &Mutex<Shard>) -> std::sync::MutexGuard<'_, Shard> {
    // A check never panics while holding the lock; if something did, the
    // maps are still consistent (each step leaves them so).
    shard.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A stored key's bucket: governor's state (the theoretical arrival time)
/// and the key's hash, so that moving or evicting it never hashes again.
#[derive(Clone, Copy)]
struct Slot {
    tat: Nanos,
    hash: u64,
}

/// One segment of a shard, least recently used first.
type Segment = LinkedHashMap<Key, Slot, std::hash::RandomState>;

/// Up to `cap` keys in two segments (segmented LRU).
struct Shard {
    /// Keys seen once since they came in (or since they were demoted).
    probation: Segment,
    /// Keys seen again while stored.
    protected: Segment,
    /// Keys this shard may hold, both segments together.
    cap: usize,
    protected_cap: usize,
    sweep_every: usize,
    /// Checks since the last sweep.
    checks: usize,
}

/// The key store shared by governor's limiter and `Buckets`.
struct Store {
    shards: Box<[Mutex<Shard>]>,
    /// log2 of the shard count.
    shard_bits: u32,
    /// One SipHash key for picking the shard and for the shards' maps, so
    /// a key is hashed once per check.
    hasher: std::hash::RandomState,
    global: AtomicU64,
    anonymous: AtomicU64,
    max_keys: usize,
    evicted: AtomicU64,
    metric: OnceLock<IntCounter>,
}

/// The store as governor owns it.
struct SharedStore(Arc<Store>);

/// governor's decision function for one bucket: from its state (None for
/// a fresh bucket) to the outcome and the next state.
trait Decide<T, E>: Fn(Option<Nanos>) -> Result<(T, Nanos), E> {
    /// True when a bucket in state `tat` is full again: it would decide
    /// exactly as a fresh one (`fresh` is the next state of a fresh one),
    /// so dropping it loses nothing. Exact, in governor's own time, with
    /// no clock read.
    fn idle(&self, tat: Nanos, fresh: Nanos) -> bool {
        matches!(self(Some(tat)), Ok((_, next)) if next == fresh)
    }
}

impl<T, E, F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>> Decide<T, E> for F {}

impl Store {
    fn new(max_keys: usize) -> Self {
        let wanted = (max_keys / MIN_KEYS_PER_SHARD).clamp(1, MAX_SHARDS);
        // The largest power of two not above `wanted`.
        let shard_bits = usize::BITS - 1 - wanted.leading_zeros();
        let count = 1usize << shard_bits;
        let hasher = std::hash::RandomState::new();
        let shards = (0..count)
            .map(|i| {
                // Shares that add up to exactly max_keys.
                let cap = max_keys / count + usize::from(i < max_keys % count);
                Mutex::new(Shard {
                    probation: Segment::with_hasher(hasher.clone()),
                    protected: Segment::with_hasher(hasher.clone()),
                    cap,
                    protected_cap: cap - cap / 5,
                    sweep_every: cap.max(MIN_SWEEP_EVERY),
                    checks: 0,
                })
            })
            .collect();
        Store {
            shards,
            shard_bits,
            hasher,
            global: AtomicU64::new(0),
            anonymous: AtomicU64::new(0),
            max_keys,
            evicted: AtomicU64::new(0),
            metric: OnceLock::new(),
        }
    }

    fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }

    fn shard_of(&self, hash: u64) -> usize {
        if self.shard_bits == 0 {
            return 0;
        }
        // Not the top 7 bits: hashbrown keeps those as each slot's tag, and
        // keys sharing them in one shard would collide on tags.
        usize::try_from((hash << 7) >> (64 - self.shard_bits)).unwrap_or(0)
    }

    fn measure_keyed<T, E>(&self, key: &Key, f: impl Decide<T, E>) -> Result<T, E> {
        let hash = self.hasher.hash_one(key);
        let mut guard = lock(&self.shards[self.shard_of(hash)]);
        let s = &mut *guard;
        s.checks += 1;
        if s.checks >= s.sweep_every {
            s.checks = 0;
            if let Ok((_, fresh)) = f(None) {
                s.sweep(|tat| f.idle(tat, fresh));
            }
        }
        let is_key = |k: &Key| k == key;
        if let RawEntryMut::Occupied(mut e) = s.protected.raw_entry_mut().from_hash(hash, is_key) {
            // A refused request counts as use too: a limited key that keeps
            // knocking stays the most recently used.
            e.to_back();
            let (out, next) = f(Some(e.get().tat))?;
            e.get_mut().tat = next;
            return Ok(out);
        }
        let full = s.len() >= s.cap;
        match s.probation.raw_entry_mut().from_hash(hash, is_key) {
            RawEntryMut::Occupied(e) => {
                // Seen again: promoted, allowed or not.
                let (k, mut slot) = e.remove_entry();
                let result = f(Some(slot.tat));
                if let Ok((_, next)) = &result {
                    slot.tat = *next;
                }
                s.promote(k, slot);
                return result.map(|(out, _)| out);
            }
            RawEntryMut::Vacant(v) if !full => {
                let (out, tat) = f(None)?;
                v.insert_hashed_nocheck(hash, key.clone(), Slot { tat, hash });
                return Ok(out);
            }
            RawEntryMut::Vacant(_) => {}
        }
        // A new key at the bound: its own fresh bucket, room made first.
        let (out, tat) = f(None)?;
        let lost_state = s.evict(|t| f.idle(t, tat));
        if lost_state {
            self.evicted_with_state();
        }
        insert(&mut s.probation, key.clone(), Slot { tat, hash });
        Ok(out)
    }

    /// Counts an eviction of a key that still owed tokens.
    fn evicted_with_state(&self) {
        let n = self.evicted.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(metric) = self.metric.get() {
            metric.inc();
        }
        // The 1st, 2nd, 4th, 8th... eviction: a flood logs a few lines.
        if n.is_power_of_two() {
            tracing::warn!(
                evicted = n,
                max_keys = self.max_keys,
                "rate_limit key store full: least recently used keys evicted \
                 (their next requests start from a full bucket)"
            );
        }
    }
}

/// Inserts `key` (not in `segment`) as the most recently used, by the
/// hash in `slot`.
fn insert(segment: &mut Segment, key: Key, slot: Slot) {
    if let RawEntryMut::Vacant(v) = segment.raw_entry_mut().from_hash(slot.hash, |_| false) {
        v.insert_hashed_nocheck(slot.hash, key, slot);
    }
}

/// Removes the `n`th least recently used key of `segment` (n < len), by its
/// stored hash (the entry is found by address: no key compared or hashed).
fn remove_nth(segment: &mut Segment, n: usize) -> Option<(Key, Slot)> {
    let (k, slot) = segment.iter().nth(n)?;
    let (at, hash): (*const Key, u64) = (k, slot.hash);
    match segment
        .raw_entry_mut()
        .from_hash(hash, |k| std::ptr::eq(k, at))
    {
        RawEntryMut::Occupied(e) => Some(e.remove_entry()),
        RawEntryMut::Vacant(_) => None,
    }
}

/// governor's update of one bucket held in an atomic (as its own
/// `InMemoryState`: 0 is a fresh bucket).
fn measure_atomic<T, E>(cell: &AtomicU64, f: impl Decide<T, E>) -> Result<T, E> {
    let mut prev = cell.load(Ordering::Acquire);
    loop {
        let (out, next) = f(NonZeroU64::new(prev).map(|n| Nanos::from(n.get())))?;
        match cell.compare_exchange_weak(prev, next.as_u64(), Ordering::Release, Ordering::Acquire)
        {
            Ok(_) => return Ok(out),
            Err(actual) => prev = actual,
        }
    }
}

impl Shard {
    fn len(&self) -> usize {
        self.probation.len() + self.protected.len()
    }

    fn promote(&mut self, key: Key, slot: Slot) {
        insert(&mut self.protected, key, slot);
        if self.protected.len() > self.protected_cap {
            // The least recently used protected key goes back on probation,
            // as its most recently used.
            if let Some((k, slot)) = remove_nth(&mut self.protected, 0) {
                insert(&mut self.probation, k, slot);
            }
        }
    }

    /// Makes room for one key (the policy of the module doc); true when the
    /// key evicted still owed tokens.
    fn evict(&mut self, idle: impl Fn(Nanos) -> bool) -> bool {
        for segment in [&mut self.probation, &mut self.protected] {
            let found = segment
                .values()
                .take(IDLE_SCAN)
                .position(|slot| idle(slot.tat));
            if let Some(n) = found {
                remove_nth(segment, n);
                return false;
            }
        }
        if remove_nth(&mut self.probation, 0).is_none() {
            remove_nth(&mut self.protected, 0);
        }
        true
    }

    /// Drops the idle keys, and gives memory back once mostly empty.
    fn sweep(&mut self, idle: impl Fn(Nanos) -> bool) {
        for segment in [&mut self.probation, &mut self.protected] {
            segment.retain(|_, slot| !idle(slot.tat));
            if segment.capacity() > 64 && segment.len() < segment.capacity() / 4 {
                segment.shrink_to_fit();
            }
        }
    }
}

impl StateStore for SharedStore {
    type Key = Key;

    fn measure_and_replace<T, F, E>(&self, key: &Key, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        match key {
            Key::Global => measure_atomic(&self.0.global, f),
            Key::Anonymous => measure_atomic(&self.0.anonymous, f),
            _ => self.0.measure_keyed(key, f),
        }
    }
}

/// What `RateLimiter::retain_recent` (`Buckets::sweep`) needs.
impl ShrinkableKeyedStateStore<Key> for SharedStore {
    fn retain_recent(&self, drop_below: Nanos) {
        for shard in &self.0.shards {
            // governor's rule, as for its own stores.
            lock(shard).sweep(|tat| tat <= drop_below);
        }
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn is_empty(&self) -> bool {
        self.0.len() == 0
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

    /// Buckets that never refill during a test (1 token an hour).
    fn slow(burst: u32, max_keys: usize) -> Buckets<FakeRelativeClock> {
        Buckets::with_clock(rate(1, 3600), burst, max_keys, FakeRelativeClock::default())
            .expect("quota")
    }

    fn text(s: &str) -> Key {
        Key::Text(s.as_bytes().into())
    }

    fn allowed(d: Decision) -> bool {
        matches!(d, Decision::Allow { .. })
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
        for key in [Key::Global, text("k")] {
            for _ in 0..3 {
                assert!(allowed(b.check(&key)));
            }
            assert!(!allowed(b.check(&key)));
        }
        clock.advance(Duration::from_millis(99));
        assert!(!allowed(b.check(&Key::Global)));
        clock.advance(Duration::from_millis(1));
        for key in [Key::Global, text("k")] {
            assert!(matches!(
                b.check(&key),
                Decision::Allow { remaining: 0, .. }
            ));
            assert!(!allowed(b.check(&key)));
        }
        // A full second refills 10 tokens, but the bucket holds only 3.
        clock.advance(Duration::from_secs(1));
        for key in [Key::Global, text("k")] {
            for _ in 0..3 {
                assert!(allowed(b.check(&key)));
            }
            assert!(!allowed(b.check(&key)));
        }
    }

    #[test]
    fn keys_are_isolated() {
        let (b, _clock) = buckets(1, 2, 100);
        for _ in 0..2 {
            assert!(allowed(b.check(&text("alice"))));
        }
        assert!(!allowed(b.check(&text("alice"))));
        assert!(matches!(
            b.check(&text("bob")),
            Decision::Allow { remaining: 1, .. }
        ));
        assert!(allowed(b.check(&Key::Anonymous)));
        assert!(allowed(b.check(&Key::Global)));
    }

    #[test]
    fn long_values_are_hashed_stably() {
        let (b, _clock) = buckets(1, 1, 100);
        let long = vec![b'k'; 1000];
        let k1 = Key::text(&long, b.hasher());
        assert!(matches!(k1, Key::Digest(_)));
        assert_eq!(k1, Key::text(&long, b.hasher()));
        assert!(matches!(Key::text(b"short", b.hasher()), Key::Text(_)));
        assert!(allowed(b.check(&k1)));
        assert!(!allowed(b.check(&k1)));
    }

    /// Issue 18: at the bound every brand-new key used to share one
    /// overflow bucket (and got 429 once a flood had spent it).
    #[test]
    fn a_new_key_at_the_bound_gets_its_own_fresh_bucket_on_its_first_request() {
        let b = slow(3, 100);
        for i in 0..100 {
            assert!(allowed(b.check(&text(&format!("k{i}")))));
        }
        assert_eq!(b.len(), 100);
        for i in 0..1000 {
            let d = b.check(&text(&format!("new{i}")));
            assert!(
                matches!(d, Decision::Allow { remaining: 2, .. }),
                "new key {i} at the bound: {d:?}"
            );
            assert_eq!(b.len(), 100);
        }
        // Every new key pushed out one that still owed a token.
        assert_eq!(b.evictions(), 1000);
    }

    #[test]
    fn an_active_key_keeps_its_bucket_state_while_a_flood_of_new_keys_passes() {
        const MAX_KEYS: usize = 1000;
        let b = slow(3, MAX_KEYS);
        // alice spends her bucket and keeps knocking during the flood.
        for _ in 0..3 {
            assert!(allowed(b.check(&text("alice"))));
        }
        // bob was seen twice before the flood, and not at all during it.
        assert!(allowed(b.check(&text("bob"))));
        assert!(allowed(b.check(&text("bob"))));
        for i in 0..20 * MAX_KEYS {
            let d = b.check(&text(&format!("flood-{i}")));
            assert!(allowed(d), "flood key {i}: {d:?}");
            if i % 100 == 0 {
                assert!(!allowed(b.check(&text("alice"))), "alice reset at {i}");
            }
            assert!(b.len() <= MAX_KEYS);
        }
        assert!(b.evictions() >= (19 * MAX_KEYS) as u64);
        assert!(!allowed(b.check(&text("alice"))), "alice still limited");
        // One-shot keys only evicted each other: bob has his one token left.
        assert!(matches!(
            b.check(&text("bob")),
            Decision::Allow { remaining: 0, .. }
        ));
        assert!(!allowed(b.check(&text("bob"))));
        // And a brand-new key after the flood: a full bucket of its own.
        assert!(matches!(
            b.check(&text("carol")),
            Decision::Allow { remaining: 2, .. }
        ));
    }

    #[test]
    fn the_store_never_exceeds_max_keys() {
        for max_keys in [1, 2, 7, 129, 1000, 5000] {
            let b = slow(2, max_keys);
            for i in 0..10 * max_keys.max(100) {
                // Some keys come back (promoted, demoted), most do not.
                let key = if i % 3 == 0 { i / 7 } else { i };
                b.check(&text(&format!("{key}")));
                assert!(
                    b.len() <= max_keys,
                    "max_keys {max_keys}: {} keys after {i}",
                    b.len()
                );
            }
            assert_eq!(b.len(), max_keys, "the bound is used, not undershot");
        }
        // Two threads racing new keys into the same shards.
        let b = slow(1, 1000);
        std::thread::scope(|s| {
            for t in 0..2 {
                let b = &b;
                s.spawn(move || {
                    for i in 0..50_000 {
                        assert!(allowed(b.check(&text(&format!("{t}-{i}")))));
                        if i % 1000 == 0 {
                            assert!(b.len() <= 1000);
                        }
                    }
                });
            }
        });
        assert_eq!(b.len(), 1000);
    }

    #[test]
    fn idle_keys_are_evicted_first_and_not_counted() {
        let (b, clock) = buckets(10, 1, 10);
        for i in 0..10 {
            assert!(allowed(b.check(&text(&format!("old{i}")))));
        }
        // All refilled: making room for new keys loses nothing.
        clock.advance(Duration::from_secs(1));
        for i in 0..10 {
            assert!(allowed(b.check(&text(&format!("new{i}")))));
        }
        assert_eq!((b.len(), b.evictions()), (10, 0));
        // Now every stored key owes its token: the next one is counted.
        assert!(allowed(b.check(&text("one-more"))));
        assert_eq!((b.len(), b.evictions()), (10, 1));
        // The old keys were the ones dropped: they start full again.
        assert!(allowed(b.check(&text("old0"))));
    }

    #[test]
    fn an_idle_key_goes_before_one_that_owes_tokens() {
        // One token per 10 s, burst 3, room for 2 keys.
        let clock = FakeRelativeClock::default();
        let b = Buckets::with_clock(rate(1, 10), 3, 2, clock.clone()).expect("quota");
        // "idle" is seen twice (protected), then refills.
        assert!(allowed(b.check(&text("idle"))));
        assert!(allowed(b.check(&text("idle"))));
        clock.advance(Duration::from_secs(40));
        // "owes" is newer, on probation, and in debt.
        assert!(allowed(b.check(&text("owes"))));
        // Plain LRU of probation would evict "owes"; "idle" loses nothing.
        assert!(matches!(
            b.check(&text("new")),
            Decision::Allow { remaining: 2, .. }
        ));
        assert_eq!((b.len(), b.evictions()), (2, 0));
        assert!(
            matches!(b.check(&text("owes")), Decision::Allow { remaining: 1, .. }),
            "\"owes\" kept its state"
        );
    }

    #[test]
    fn global_and_anonymous_buckets_are_never_evicted() {
        let b = slow(2, 1);
        for key in [Key::Global, Key::Anonymous] {
            assert!(allowed(b.check(&key)));
            assert!(allowed(b.check(&key)));
            assert!(!allowed(b.check(&key)));
        }
        for i in 0..100 {
            assert!(allowed(b.check(&text(&format!("k{i}")))));
        }
        assert!(!allowed(b.check(&Key::Global)));
        assert!(!allowed(b.check(&Key::Anonymous)));
        assert_eq!(b.len(), 1);
    }

    #[test]
    fn idle_keys_are_swept() {
        // Half the bound: no shard is full (they fill unevenly).
        let (b, clock) = buckets(10, 2, 1000);
        for i in 0..500 {
            b.check(&text(&format!("k{i}")));
        }
        assert_eq!(b.len(), 500);
        b.sweep();
        assert_eq!(b.len(), 500, "none idle yet");
        clock.advance(Duration::from_secs(1));
        b.sweep();
        assert!(b.is_empty(), "left {} keys", b.len());
        // Shards also sweep on their own as they are used.
        for i in 0..500 {
            b.check(&text(&format!("again{i}")));
        }
        clock.advance(Duration::from_secs(1));
        for _ in 0..4096 {
            b.check(&text("steady"));
        }
        assert!(b.len() < 500, "{} keys after the shard swept", b.len());
        assert_eq!(b.evictions(), 0);
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

    /// A hand-run benchmark of `check` (not a test):
    /// `cargo test -p kaname-filters --release --lib rate_limit::buckets::tests::bench -- --ignored --nocapture`
    #[test]
    #[ignore = "benchmark, run by hand in release"]
    fn bench() {
        use std::time::Instant;
        fn per(n: usize, t: Duration) -> f64 {
            t.as_nanos() as f64 / n as f64
        }
        fn run(threads: usize, n: usize, b: &Buckets, keys: &[Vec<Key>]) -> f64 {
            let start = Instant::now();
            std::thread::scope(|s| {
                for t in 0..threads {
                    let keys = &keys[t];
                    s.spawn(move || {
                        for i in 0..n {
                            std::hint::black_box(b.check(&keys[i % keys.len()]));
                        }
                    });
                }
            });
            per(n * threads, start.elapsed()) * threads as f64
        }
        let fast = Rate {
            count: 1_000_000_000,
            per: Duration::from_secs(1),
        };
        let slow = rate(1, 3600);
        const N: usize = 2_000_000;
        for threads in [1, 2] {
            // One hot key (a `global` limit, or the anonymous bucket).
            let b = Buckets::new(fast, 1_000_000, 100_000).unwrap();
            let keys = vec![vec![Key::Global]; threads];
            println!(
                "bench {threads} thread(s) hot key:        {:6.1} ns/check (per thread)",
                run(threads, N, &b, &keys)
            );
            // 1000 known keys (32-byte values), well under max_keys.
            let b = Buckets::new(fast, 1_000_000, 100_000).unwrap();
            let keys: Vec<Vec<Key>> = (0..threads)
                .map(|t| (0..1000).map(|i| text(&format!("{t}-{i:030}"))).collect())
                .collect();
            println!(
                "bench {threads} thread(s) 1000 known keys: {:6.1} ns/check (per thread)",
                run(threads, N, &b, &keys)
            );
            // A flood of distinct live keys against max_keys 10k.
            let b = Buckets::new(slow, 1, 10_000).unwrap();
            let keys: Vec<Vec<Key>> = (0..threads)
                .map(|t| (0..N / 4).map(|i| text(&format!("{t}-{i:030}"))).collect())
                .collect();
            println!(
                "bench {threads} thread(s) flood of new keys: {:6.1} ns/check (per thread)",
                run(threads, N / 4, &b, &keys)
            );
        }
    }
}
