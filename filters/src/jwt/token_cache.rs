//! A bounded cache of tokens already verified, so a repeated token costs a
//! SHA-256 and a lookup instead of a signature check.
//!
//! Keyed by the SHA-256 of the whole token (a collision would be needed to
//! borrow another token's entry). An entry is good until the token's `exp`
//! (plus leeway) and only for the key-set generation that verified it: new
//! keys (rotation, a removed key) drop what the old ones vouched for.
//! Sharded so concurrent requests rarely wait on one lock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value};

const SHARDS: usize = 16;

struct Entry {
    claims: Arc<Map<String, Value>>,
    /// Unix seconds after which the token is expired.
    good_until: u64,
    generation: u64,
}

type Key = [u8; 32];

pub struct TokenCache {
    shards: Vec<Mutex<HashMap<Key, Entry>>>,
    per_shard: usize,
}

impl TokenCache {
    /// Holds at most about `capacity` tokens; 0 disables the cache.
    pub fn new(capacity: usize) -> TokenCache {
        TokenCache {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard: capacity.div_ceil(SHARDS),
        }
    }

    pub fn key(token: &str) -> Key {
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
        let mut k = [0u8; 32];
        k.copy_from_slice(d.as_ref());
        k
    }

    fn shard(&self, key: &Key) -> &Mutex<HashMap<Key, Entry>> {
        &self.shards[key[0] as usize % SHARDS]
    }

    pub fn get(&self, key: &Key, generation: u64, now: u64) -> Option<Arc<Map<String, Value>>> {
        if self.per_shard == 0 {
            return None;
        }
        let shard = self.shard(key).lock().ok()?;
        let e = shard.get(key)?;
        (e.generation == generation && now <= e.good_until).then(|| e.claims.clone())
    }

    pub fn insert(
        &self,
        key: Key,
        generation: u64,
        good_until: u64,
        claims: Arc<Map<String, Value>>,
        now: u64,
    ) {
        if self.per_shard == 0 {
            return;
        }
        let Ok(mut shard) = self.shard(&key).lock() else {
            return;
        };
        if shard.len() >= self.per_shard && !shard.contains_key(&key) {
            shard.retain(|_, e| e.generation == generation && now <= e.good_until);
            if shard.len() >= self.per_shard {
                // Still full of live tokens: make room for one.
                if let Some(victim) = shard.keys().next().copied() {
                    shard.remove(&victim);
                }
            }
        }
        shard.insert(
            key,
            Entry {
                claims,
                good_until,
                generation,
            },
        );
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap().len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> Arc<Map<String, Value>> {
        Arc::new(Map::new())
    }

    #[test]
    fn hit_until_expiry_and_for_its_generation_only() {
        let c = TokenCache::new(100);
        let k = TokenCache::key("a.b.c");
        c.insert(k, 1, 1_000, claims(), 900);
        assert!(c.get(&k, 1, 1_000).is_some());
        assert!(c.get(&k, 1, 1_001).is_none(), "expired");
        assert!(c.get(&k, 2, 950).is_none(), "keys changed");
        assert!(c.get(&TokenCache::key("a.b.d"), 1, 950).is_none());
    }

    #[test]
    fn bounded() {
        let c = TokenCache::new(32);
        for i in 0..1_000 {
            c.insert(TokenCache::key(&format!("t{i}")), 1, 10_000, claims(), 0);
        }
        assert!(c.len() <= 32, "{} entries", c.len());
    }

    #[test]
    fn disabled() {
        let c = TokenCache::new(0);
        let k = TokenCache::key("x");
        c.insert(k, 1, 10, claims(), 0);
        assert!(c.get(&k, 1, 0).is_none());
    }
}
