//! A rate_limit filter's buckets on a store: GCRA (the algorithm governor
//! runs locally) as one Lua script, so each decision is one atomic round
//! trip whatever the number of sidecars. The script is sent once and then
//! called by its SHA1 (EVALSHA; redis-rs loads it again on NOSCRIPT, after a
//! Redis restart). Time is Redis's own clock (TIME), so sidecars' clocks
//! never disagree about a bucket.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use kaname_config::types::RateLimit;
use kaname_filters::rate_limit::{Decision, SharedBuckets, SharedDecision, StoreUnavailable};

use super::RedisStore;

/// KEYS[1] the bucket, holding its theoretical arrival time (TAT) in µs;
/// ARGV[1] µs per token, ARGV[2] the burst. Returns {allowed, µs until the
/// next token when refused, µs until the bucket is full again}. The key
/// expires once the bucket would be full: idle buckets cost nothing.
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local capacity = interval * tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local ahead = tat + interval - now
if ahead > capacity then
  return {0, ahead - capacity, tat - now}
end
redis.call('SET', KEYS[1], tat + interval, 'PX', math.ceil(ahead / 1000) + 1)
return {1, 0, ahead}
";

static SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(GCRA));

/// The shared buckets of one rate_limit filter.
pub struct SharedRateLimit {
    store: Arc<RedisStore>,
    /// `<key_prefix>rl:<filter>:`; the bucket key follows.
    key_base: Vec<u8>,
    interval_us: u64,
    burst: u32,
}

impl SharedRateLimit {
    pub fn new(store: Arc<RedisStore>, filter: &str, cfg: &RateLimit) -> SharedRateLimit {
        let per_token = cfg.rate.per.as_micros() / u128::from(cfg.rate.count.max(1));
        let mut key_base = store.key_prefix().as_bytes().to_vec();
        key_base.extend_from_slice(format!("rl:{filter}:").as_bytes());
        SharedRateLimit {
            store,
            key_base,
            interval_us: u64::try_from(per_token).unwrap_or(u64::MAX).max(1),
            burst: cfg.burst,
        }
    }
}

impl SharedBuckets for SharedRateLimit {
    fn take(&self, key: Vec<u8>) -> SharedDecision {
        let store = self.store.clone();
        let mut full = self.key_base.clone();
        full.extend_from_slice(&key);
        let (interval, burst) = (self.interval_us, self.burst);
        Box::pin(async move {
            let answer: Vec<i64> = store
                .run(|mut c| async move {
                    SCRIPT
                        .key(full)
                        .arg(interval)
                        .arg(burst)
                        .invoke_async(&mut c)
                        .await
                })
                .await
                .map_err(|_| StoreUnavailable)?;
            decision(&answer, interval, burst).ok_or(StoreUnavailable)
        })
    }
}

/// The script's answer as the filter's decision; None when it is not one.
fn decision(answer: &[i64], interval_us: u64, burst: u32) -> Option<Decision> {
    let us = |v: i64| Duration::from_micros(u64::try_from(v).unwrap_or(0));
    match *answer {
        [1, _, ahead] => {
            let capacity = interval_us.saturating_mul(u64::from(burst));
            let left = capacity.saturating_sub(u64::try_from(ahead).unwrap_or(0)) / interval_us;
            Some(Decision::Allow {
                remaining: u32::try_from(left).unwrap_or(burst).min(burst),
                reset: us(ahead),
            })
        }
        [0, wait, reset] => Some(Decision::Deny {
            wait: us(wait),
            reset: us(reset),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_become_decisions() {
        // 10/s, burst 5: a fresh bucket after one token is 0.1 s ahead.
        assert!(matches!(
            decision(&[1, 0, 100_000], 100_000, 5),
            Some(Decision::Allow { remaining: 4, reset }) if reset == Duration::from_millis(100)
        ));
        assert!(matches!(
            decision(&[0, 30_000, 470_000], 100_000, 5),
            Some(Decision::Deny { wait, .. }) if wait == Duration::from_millis(30)
        ));
        assert!(decision(&[2], 1, 1).is_none());
    }
}
