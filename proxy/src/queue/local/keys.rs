//! Keys of the store's indexes, and where each index's first live key is.
//!
//! Every index key starts with its queue (length, then name) so that one
//! queue's keys form one contiguous range no other queue's fall into; the
//! numbers after it are big-endian so that byte order is number order.

use std::collections::HashMap;

/// The key prefix of `queue`'s entries in an index.
pub(super) fn queue_prefix(queue: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(4 + queue.len() + 17);
    k.extend_from_slice(&(queue.len() as u32).to_be_bytes());
    k.extend_from_slice(queue.as_bytes());
    k
}

/// `ready`'s prefix of one priority class: (queue, priority).
pub(super) fn ready_prefix(queue: &str, priority: u8) -> Vec<u8> {
    let mut k = queue_prefix(queue);
    k.push(priority);
    k
}

/// `ready`: (queue, priority, seq).
pub(super) fn ready(queue: &str, priority: u8, seq: u64) -> Vec<u8> {
    let mut k = ready_prefix(queue, priority);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// `delayed`: (queue, due_ms, seq).
pub(super) fn delayed(queue: &str, due_ms: u64, seq: u64) -> Vec<u8> {
    let mut k = queue_prefix(queue);
    k.extend_from_slice(&due_ms.to_be_bytes());
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// `pending` and `delivering`: (queue, seq).
pub(super) fn by_seq(queue: &str, seq: u64) -> Vec<u8> {
    let mut k = queue_prefix(queue);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// `idempotency`: (queue, key).
pub(super) fn idempotency(queue: &str, key: &str) -> Vec<u8> {
    let mut k = queue_prefix(queue);
    k.extend_from_slice(key.as_bytes());
    k
}

/// `expiry`: (expire_ms, id).
pub(super) fn expiry(at_ms: u64, id: &[u8; 16]) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..8].copy_from_slice(&at_ms.to_be_bytes());
    k[8..].copy_from_slice(id);
    k
}

/// The big-endian u64 at `at` in `key`.
pub(super) fn u64_at(key: &[u8], at: usize) -> Option<u64> {
    let bytes: [u8; 8] = key.get(at..at + 8)?.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

/// The queue a key starts with, and the rest of the key.
pub(super) fn split_queue(key: &[u8]) -> Option<(String, &[u8])> {
    let len: [u8; 4] = key.get(..4)?.try_into().ok()?;
    let end = 4 + u32::from_be_bytes(len) as usize;
    let name = std::str::from_utf8(key.get(4..end)?).ok()?;
    Some((name.to_string(), key.get(end..)?))
}

/// A job id stored as a value.
pub(super) fn id_of(value: &[u8]) -> Option<[u8; 16]> {
    value.try_into().ok()
}

/// Which index a [`Heads`] bound belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Index {
    Ready,
    Delayed,
    Pending,
    Expiry,
}

/// For each (index, prefix), a key no live key of that prefix sorts
/// before.
///
/// Jobs leave an index from its head, and a removal in an LSM tree is a
/// tombstone that stays until compaction reaches it: a scan from the
/// prefix's start would walk every job ever taken, on every take. The one
/// writer sees every insert and removal, so it can keep the bound exact.
/// A failed commit clears every bound (its removals did not happen).
#[derive(Default)]
pub(super) struct Heads(HashMap<(Index, Vec<u8>), Vec<u8>>);

impl Heads {
    /// Where a scan of `prefix` starts.
    pub(super) fn start(&self, index: Index, prefix: &[u8]) -> Vec<u8> {
        match self.0.get(&(index, prefix.to_vec())) {
            Some(bound) => bound.clone(),
            None => prefix.to_vec(),
        }
    }

    /// A scan found `key` as the first live key of `prefix`.
    pub(super) fn found(&mut self, index: Index, prefix: &[u8], key: &[u8]) {
        self.0.insert((index, prefix.to_vec()), key.to_vec());
    }

    /// The first live key `key` was removed: the next one sorts after it.
    pub(super) fn removed_first(&mut self, index: Index, prefix: &[u8], key: &[u8]) {
        let mut next = key.to_vec();
        next.push(0);
        self.0.insert((index, prefix.to_vec()), next);
    }

    /// `key` was inserted under `prefix`.
    pub(super) fn inserted(&mut self, index: Index, prefix: &[u8], key: &[u8]) {
        if let Some(bound) = self.0.get_mut(&(index, prefix.to_vec())) {
            if key < bound.as_slice() {
                *bound = key.to_vec();
            }
        }
    }

    pub(super) fn clear(&mut self) {
        self.0.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_queue_never_falls_in_anothers_range() {
        // "a" + 'b'... would share a prefix with "ab" without the length.
        let a = ready("a", 1, 7);
        let ab = ready("ab", 0, 0);
        assert!(!ab.starts_with(&queue_prefix("a")));
        assert!(!a.starts_with(&queue_prefix("ab")));
        assert!(ready("q", 0, u64::MAX) < ready("q", 1, 0));
        assert!(delayed("q", 5, 9) < delayed("q", 6, 0));
        assert_eq!(u64_at(&by_seq("q", 42), queue_prefix("q").len()), Some(42));
        let key = ready("orders", 2, 5);
        let (q, rest) = split_queue(&key).unwrap();
        assert_eq!((q.as_str(), rest[0]), ("orders", 2));
        assert_eq!(split_queue(&[0, 0, 0, 9, b'a']), None);
    }

    #[test]
    fn a_bound_moves_past_removals_and_back_for_an_insert_before_it() {
        let mut h = Heads::default();
        let p = ready_prefix("q", 1);
        assert_eq!(h.start(Index::Ready, &p), p);
        h.removed_first(Index::Ready, &p, &ready("q", 1, 3));
        assert!(h.start(Index::Ready, &p) > ready("q", 1, 3));
        assert!(h.start(Index::Ready, &p) < ready("q", 1, 4));
        h.inserted(Index::Ready, &p, &ready("q", 1, 9));
        assert!(h.start(Index::Ready, &p) < ready("q", 1, 4));
        h.inserted(Index::Ready, &p, &ready("q", 1, 2));
        assert_eq!(h.start(Index::Ready, &p), ready("q", 1, 2));
        h.clear();
        assert_eq!(h.start(Index::Ready, &p), p);
    }
}
