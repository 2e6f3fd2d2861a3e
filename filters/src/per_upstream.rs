//! State a filter keeps per upstream (a breaker, a retry budget), made the
//! first time a route to that upstream is built and shared by every route
//! to it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub struct PerUpstream<T>(Mutex<HashMap<Arc<str>, Arc<T>>>);

impl<T> Default for PerUpstream<T> {
    fn default() -> Self {
        PerUpstream(Mutex::new(HashMap::new()))
    }
}

impl<T> PerUpstream<T> {
    /// The upstream's state, made by `new` if it has none yet.
    pub fn get(&self, upstream: &Arc<str>, new: impl FnOnce() -> T) -> Arc<T> {
        match self.0.lock() {
            Ok(mut map) => map
                .entry(upstream.clone())
                .or_insert_with(|| Arc::new(new()))
                .clone(),
            // A poisoned lock must not stop building: unshared state.
            Err(_) => Arc::new(new()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_state_per_upstream() {
        let per = PerUpstream::default();
        let a: Arc<str> = "a".into();
        let first = per.get(&a, || 1);
        let again = per.get(&a, || 2);
        assert!(Arc::ptr_eq(&first, &again));
        assert_eq!(*per.get(&"b".into(), || 3), 3);
    }
}
