//! A bounded cache of tokens already verified, so a repeated token costs a
//! lookup instead of a signature check.
//!
//! Keyed by the whole token, compared byte for byte on a hit, so no token
//! can borrow another's entry. (It was keyed by the token's SHA-256: 6,300
//! instructions a request for a 250-byte token, where the map's SipHash
//! and the compare cost a tenth of that; an entry's claims are most of
//! its token already, so holding the token at most doubles an entry.)
//! An entry is good until the token's `exp`
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

pub struct TokenCache {
    shards: Vec<Mutex<HashMap<Box<str>, Entry>>>,
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

    fn shard(&self, token: &str) -> &Mutex<HashMap<Box<str>, Entry>> {
        &self.shards[shard_of(token)]
    }

    pub fn get(&self, token: &str, generation: u64, now: u64) -> Option<Arc<Map<String, Value>>> {
        if self.per_shard == 0 {
            return None;
        }
        let shard = self.shard(token).lock().ok()?;
        let e = shard.get(token)?;
        (e.generation == generation && now <= e.good_until).then(|| e.claims.clone())
    }

    pub fn insert(
        &self,
        token: &str,
        generation: u64,
        good_until: u64,
        claims: Arc<Map<String, Value>>,
        now: u64,
    ) {
        if self.per_shard == 0 {
            return;
        }
        let Ok(mut shard) = self.shard(token).lock() else {
            return;
        };
        if shard.len() >= self.per_shard && !shard.contains_key(token) {
            shard.retain(|_, e| e.generation == generation && now <= e.good_until);
            if shard.len() >= self.per_shard {
                // Still full of live tokens: make room for one.
                if let Some(victim) = shard.keys().next().cloned() {
                    shard.remove(&victim);
                }
            }
        }
        shard.insert(
            token.into(),
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

/// A token's shard, from the last 8 bytes of its signature, mixed
/// (only verified tokens are stored, and their signatures are not chosen by
/// a client). Not the last byte alone: the last base64url character of an
/// HS256 or RS256 signature carries 2 bits, which would leave 12 of the 16
/// shards empty and the cache a quarter of its size.
fn shard_of(token: &str) -> usize {
    let b = token.as_bytes();
    let n = b.len().min(8);
    let mut tail = [0u8; 8];
    tail[..n].copy_from_slice(&b[b.len() - n..]);
    let mixed = u64::from_le_bytes(tail).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (mixed >> 56) as usize % SHARDS
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
        c.insert("a.b.c", 1, 1_000, claims(), 900);
        assert!(c.get("a.b.c", 1, 1_000).is_some());
        assert!(c.get("a.b.c", 1, 1_001).is_none(), "expired");
        assert!(c.get("a.b.c", 2, 950).is_none(), "keys changed");
        assert!(c.get("a.b.d", 1, 950).is_none());
        // Same shard (same last byte), another token: no hit.
        assert!(c.get("x.b.c", 1, 950).is_none());
        assert!(c.get("a.b.", 1, 950).is_none());
    }

    #[test]
    fn real_signatures_spread_over_every_shard() {
        // HS256 signatures end in one of 4 characters; every shard must
        // still be used, or the cache holds a quarter of its capacity.
        let key = jsonwebtoken::EncodingKey::from_secret(b"0123456789abcdef0123456789abcdef");
        let mut used = [0u32; SHARDS];
        for i in 0..400 {
            let token = jsonwebtoken::encode(
                &jsonwebtoken::Header::default(),
                &serde_json::json!({ "sub": format!("user-{i}") }),
                &key,
            )
            .expect("HS256 signs");
            used[shard_of(&token)] += 1;
        }
        assert!(used.iter().all(|&n| n > 0), "shards used: {used:?}");
        let c = TokenCache::new(160);
        for i in 0..120 {
            let token = jsonwebtoken::encode(
                &jsonwebtoken::Header::default(),
                &serde_json::json!({ "n": i }),
                &key,
            )
            .expect("HS256 signs");
            c.insert(&token, 1, 10_000, claims(), 0);
        }
        // 120 tokens in a cache of 160: most stay (with 4 shards used, at
        // most 40 could).
        assert!(c.len() > 80, "{} of 120 kept", c.len());
    }

    #[test]
    fn bounded() {
        let c = TokenCache::new(32);
        for i in 0..1_000 {
            c.insert(&format!("t{i}"), 1, 10_000, claims(), 0);
        }
        assert!(c.len() <= 32, "{} entries", c.len());
    }

    #[test]
    fn disabled() {
        let c = TokenCache::new(0);
        c.insert("x", 1, 10, claims(), 0);
        assert!(c.get("x", 1, 0).is_none());
    }
}
