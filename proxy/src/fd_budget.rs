//! `file_descriptors` (limits.md): client connections may take at most 95%
//! of the process's open-file limit (less what kaname holds for itself), so
//! the admin port and upstream connections always find a descriptor and a
//! flood of clients cannot turn into "accept failed: Too many open files"
//! for everyone. A connection beyond the budget is closed at accept, and
//! counted.
//!
//! The budget is process-wide, as the descriptor table is.

use std::sync::atomic::{AtomicUsize, Ordering};

static CAP: AtomicUsize = AtomicUsize::new(usize::MAX);
static OPEN: AtomicUsize = AtomicUsize::new(0);

/// Descriptors kaname opens for itself after start (listeners, the
/// runtime's epoll and timers, the file watcher, log files).
const OWN_HEADROOM: usize = 32;

/// Sets the budget from the soft open-file limit (after raising it): 95% of
/// it, less what the process holds already and its own headroom.
pub fn set_limit(nofile: u64) {
    let open = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count());
    CAP.store(budget(nofile, open), Ordering::Relaxed);
}

fn budget(nofile: u64, open: usize) -> usize {
    let nofile = usize::try_from(nofile).unwrap_or(usize::MAX);
    (nofile / 100 * 95 + nofile % 100 * 95 / 100).saturating_sub(open + OWN_HEADROOM)
}

/// One client connection's share of the budget, given back on drop.
pub struct ClientSlot(());

impl Drop for ClientSlot {
    fn drop(&mut self) {
        OPEN.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A slot for a new client connection, or None when the budget is spent.
pub fn client_slot() -> Option<ClientSlot> {
    let before = OPEN.fetch_add(1, Ordering::Relaxed);
    if before >= CAP.load(Ordering::Relaxed) {
        OPEN.fetch_sub(1, Ordering::Relaxed);
        return None;
    }
    Some(ClientSlot(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_is_95_percent_less_what_is_held_and_given_back() {
        assert_eq!(budget(1000, 8), 950 - 40);
        assert_eq!(budget(10, 8), 0);
        CAP.store(budget(80, 0), Ordering::Relaxed);
        let slots: Vec<_> = std::iter::from_fn(client_slot).take(100).collect();
        assert_eq!(slots.len(), 44);
        assert!(client_slot().is_none());
        drop(slots);
        assert!(client_slot().is_some());
        CAP.store(usize::MAX, Ordering::Relaxed);
    }
}
