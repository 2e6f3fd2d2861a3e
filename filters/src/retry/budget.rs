//! A retry budget, as linkerd's and Finagle's: every request deposits
//! `ratio` of a retry, valid for a sliding window of ten seconds, and a
//! reserve refilled at `min_per_second` (holding at most one second's worth)
//! lets a quiet service retry at all. A retry is sent only when it can be
//! paid for, so over any run of T seconds shorter than the window the
//! retries are at most `ratio × requests + min_per_second × (T + 1)`:
//! a failing upstream never sees much more than (1 + ratio) × its load.
//!
//! Why not tower's `TpsBudget` (same idea, same clock): its reserve is
//! `min_per_second × ttl` and never refills beyond that, so a quiet
//! upstream can be sent ten seconds' worth of retries at once (100 for
//! `min_per_second: 10`, against this budget's 10), and its ratio is an
//! integer number of deposits per retry, so `ratio: 0.3` behaves as 0.333
//! (the test `tower_tps_budget_bursts_ten_times_more` measures both).

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Seconds of requests that fund retries.
const WINDOW_SECS: u64 = 10;

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    /// The second (since `epoch`) this slot counts.
    second: u64,
    requests: u64,
    /// Retries paid for by the ratio in this second.
    withdrawn: u64,
}

#[derive(Debug)]
struct State {
    epoch: Instant,
    slots: [Slot; WINDOW_SECS as usize],
    reserve: f64,
    refilled: Instant,
}

#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    min_per_second: f64,
    state: Mutex<State>,
}

impl State {
    /// Moves to the current second, clearing its slot if it held an older one.
    fn rotate(&mut self, now: Instant) -> (u64, usize) {
        let second = now.saturating_duration_since(self.epoch).as_secs();
        let i = (second % WINDOW_SECS) as usize;
        if self.slots[i].second != second {
            self.slots[i] = Slot {
                second,
                ..Slot::default()
            };
        }
        (second, i)
    }

    fn window(&self, second: u64) -> (u64, u64) {
        self.slots
            .iter()
            .filter(|s| s.second + WINDOW_SECS > second && s.second <= second)
            .fold((0, 0), |(r, w), s| (r + s.requests, w + s.withdrawn))
    }
}

impl RetryBudget {
    pub fn new(ratio: f64, min_per_second: u32) -> Self {
        let now = Instant::now();
        let min_per_second = f64::from(min_per_second);
        RetryBudget {
            ratio: ratio.max(0.0),
            min_per_second,
            state: Mutex::new(State {
                epoch: now,
                slots: [Slot::default(); WINDOW_SECS as usize],
                reserve: min_per_second,
                refilled: now,
            }),
        }
    }

    /// Counts a request (the first try of every request through the filter).
    pub fn deposit(&self) {
        let Ok(mut s) = self.state.lock() else { return };
        let (_, i) = s.rotate(Instant::now());
        s.slots[i].requests += 1;
    }

    /// Pays for one retry; false when the budget is spent.
    pub fn withdraw(&self) -> bool {
        let Ok(mut s) = self.state.lock() else {
            return false;
        };
        let now = Instant::now();
        let (second, i) = s.rotate(now);
        let (requests, withdrawn) = s.window(second);
        if requests as f64 * self.ratio - withdrawn as f64 >= 1.0 {
            s.slots[i].withdrawn += 1;
            return true;
        }
        let elapsed = now.saturating_duration_since(s.refilled);
        s.refilled = now;
        s.reserve =
            (s.reserve + elapsed.as_secs_f64() * self.min_per_second).min(self.min_per_second);
        if s.reserve >= 1.0 {
            s.reserve -= 1.0;
            return true;
        }
        false
    }

    /// The window over which deposits fund retries.
    pub fn window() -> Duration {
        Duration::from_secs(WINDOW_SECS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(b: &RetryBudget) -> usize {
        (0..10_000).take_while(|_| b.withdraw()).count()
    }

    #[tokio::test(start_paused = true)]
    async fn reserve_allows_min_per_second() {
        let b = RetryBudget::new(0.0, 10);
        assert_eq!(drain(&b), 10);
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(drain(&b), 5);
        // The reserve holds one second's worth at most.
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(drain(&b), 10);
    }

    #[tokio::test(start_paused = true)]
    async fn ratio_of_recent_requests() {
        let b = RetryBudget::new(0.2, 0);
        for _ in 0..100 {
            b.deposit();
        }
        assert_eq!(drain(&b), 20);
        tokio::time::advance(Duration::from_secs(3)).await;
        for _ in 0..50 {
            b.deposit();
        }
        // 150 requests in the window fund 30 retries; 20 are spent.
        assert_eq!(drain(&b), 10);
        // The first 100 requests leave the window after ten seconds.
        tokio::time::advance(Duration::from_secs(8)).await;
        assert_eq!(drain(&b), 0);
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(drain(&b), 0, "everything left the window");
        assert_eq!(RetryBudget::window(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn tower_tps_budget_bursts_ten_times_more() {
        use tower::retry::budget::{Budget, TpsBudget};
        let tower = TpsBudget::new(Duration::from_secs(10), 10, 0.2);
        let tower_burst = (0..10_000).take_while(|_| tower.withdraw()).count();
        let ours = RetryBudget::new(0.2, 10);
        assert_eq!((tower_burst, drain(&ours)), (100, 10));
        // `ratio: 0.3`: tower pays a retry with 3 deposits (0.333).
        let (tower, ours) = (
            TpsBudget::new(Duration::from_secs(10), 0, 0.3),
            RetryBudget::new(0.3, 0),
        );
        for _ in 0..300 {
            tower.deposit();
            ours.deposit();
        }
        let tower_retries = (0..10_000).take_while(|_| tower.withdraw()).count();
        assert_eq!((tower_retries, drain(&ours)), (100, 90));
    }

    #[tokio::test(start_paused = true)]
    async fn bound_holds_over_a_steady_run() {
        // 1000 requests a second for 5 s, every one wanting 2 retries.
        let b = RetryBudget::new(0.2, 10);
        let mut retries = 0;
        for _ in 0..50 {
            for _ in 0..100 {
                b.deposit();
                retries += usize::from(b.withdraw()) + usize::from(b.withdraw());
            }
            tokio::time::advance(Duration::from_millis(100)).await;
        }
        let bound = 0.2 * 5000.0 + 10.0 * (5.0 + 1.0);
        assert!(retries as f64 <= bound, "{retries} > {bound}");
        assert!(retries >= 1000, "the ratio is usable: {retries}");
    }
}
