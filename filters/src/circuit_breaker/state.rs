//! The breaker's state machine, free of I/O and locks so it can be tested
//! with a paused clock. Closed: requests pass and results are counted;
//! `consecutive_failures` in a row, or a failed fraction of at least
//! `threshold` over the last `window` (once `min_requests` were seen),
//! opens it. Open: everything is refused for `open_for`. Half-open: up to
//! `half_open_requests` probes pass; a success closes the breaker, a
//! failure opens it again for twice as long, up to `max_open_for`.

use std::time::Duration;

use kaname_config::types::{CircuitBreaker as BreakerConfig, FailureRate};
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Closed,
    Open,
    HalfOpen,
}

impl Phase {
    pub const ALL: [Phase; 3] = [Phase::Closed, Phase::Open, Phase::HalfOpen];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Closed => "closed",
            Phase::Open => "open",
            Phase::HalfOpen => "half_open",
        }
    }
}

/// What a request let through is: counted normally, or a probe of the
/// half-open period `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Normal,
    Probe { period: u64 },
}

const SLOTS: u32 = 10;

/// Successes and failures over a sliding window, in ten slots.
#[derive(Debug)]
struct Window {
    rate: FailureRate,
    slot: Duration,
    epoch: Instant,
    /// (slot number, successes, failures)
    slots: [(u64, u32, u32); SLOTS as usize],
}

impl Window {
    fn new(rate: FailureRate, now: Instant) -> Self {
        let slot = (rate.window / SLOTS).max(Duration::from_millis(1));
        Window {
            rate,
            slot,
            epoch: now,
            slots: [(0, 0, 0); SLOTS as usize],
        }
    }

    fn number(&self, now: Instant) -> u64 {
        (now.saturating_duration_since(self.epoch).as_nanos() / self.slot.as_nanos()) as u64
    }

    /// Records a result; true when the failure rate says open.
    fn record(&mut self, failed: bool, now: Instant) -> bool {
        let n = self.number(now);
        let i = (n % u64::from(SLOTS)) as usize;
        if self.slots[i].0 != n {
            self.slots[i] = (n, 0, 0);
        }
        if failed {
            self.slots[i].2 += 1;
        } else {
            self.slots[i].1 += 1;
        }
        let (ok, bad) = self
            .slots
            .iter()
            .filter(|s| s.0 + u64::from(SLOTS) > n && s.0 <= n)
            .fold((0u64, 0u64), |(o, b), s| {
                (o + u64::from(s.1), b + u64::from(s.2))
            });
        let total = ok + bad;
        total >= u64::from(self.rate.min_requests.max(1))
            && bad as f64 / total as f64 >= self.rate.threshold
    }

    fn clear(&mut self) {
        // Zero counts, whatever slot numbers they carry, count for nothing.
        self.slots = [(0, 0, 0); SLOTS as usize];
    }
}

#[derive(Debug)]
pub struct CircuitState {
    consecutive_limit: Option<u32>,
    base_open_for: Duration,
    max_open_for: Duration,
    half_open_requests: u32,
    phase: Phase,
    consecutive: u32,
    window: Option<Window>,
    /// How long the current (or next) open period lasts.
    open_for: Duration,
    open_until: Instant,
    /// Probes let through in this half-open period.
    probes: u32,
    period: u64,
}

impl CircuitState {
    pub fn new(cfg: &BreakerConfig, now: Instant) -> Self {
        CircuitState {
            consecutive_limit: cfg.consecutive_failures,
            base_open_for: cfg.open_for,
            max_open_for: cfg.max_open_for.max(cfg.open_for),
            half_open_requests: cfg.half_open_requests.max(1),
            phase: Phase::Closed,
            consecutive: 0,
            window: cfg.failure_rate.clone().map(|r| Window::new(r, now)),
            open_for: cfg.open_for,
            open_until: now,
            probes: 0,
            period: 0,
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Lets a request through or refuses it with how long to wait. The
    /// phase it moved to, if any, comes back with the admission.
    pub fn admit(&mut self, now: Instant) -> Result<(Admit, Option<Phase>), Duration> {
        let mut moved = None;
        match self.phase {
            Phase::Closed => return Ok((Admit::Normal, None)),
            Phase::Open if now < self.open_until => return Err(self.open_until - now),
            Phase::Open => {
                self.phase = Phase::HalfOpen;
                self.probes = 0;
                self.period += 1;
                moved = Some(Phase::HalfOpen);
            }
            Phase::HalfOpen => {}
        }
        if self.probes < self.half_open_requests {
            self.probes += 1;
            return Ok((
                Admit::Probe {
                    period: self.period,
                },
                moved,
            ));
        }
        // Probes are out; their verdict is due soon.
        Err(Duration::from_secs(1))
    }

    /// Counts a result; the phase it moved to, if any.
    pub fn record(&mut self, admit: Admit, failed: bool, now: Instant) -> Option<Phase> {
        match (admit, self.phase) {
            (Admit::Normal, Phase::Closed) => {
                self.consecutive = if failed { self.consecutive + 1 } else { 0 };
                let by_count = self
                    .consecutive_limit
                    .is_some_and(|n| self.consecutive >= n);
                let by_rate = self.window.as_mut().is_some_and(|w| w.record(failed, now));
                (by_count || by_rate).then(|| self.open(self.base_open_for, now))
            }
            (Admit::Probe { period }, Phase::HalfOpen) if period == self.period => {
                if failed {
                    let longer = (self.open_for * 2).min(self.max_open_for);
                    Some(self.open(longer, now))
                } else {
                    self.phase = Phase::Closed;
                    self.consecutive = 0;
                    self.open_for = self.base_open_for;
                    if let Some(w) = self.window.as_mut() {
                        w.clear();
                    }
                    Some(Phase::Closed)
                }
            }
            // Results of requests let through before the phase changed.
            _ => None,
        }
    }

    /// A probe that ended without a verdict (its client went away) frees
    /// its place.
    pub fn release(&mut self, admit: Admit) {
        if let (Admit::Probe { period }, Phase::HalfOpen) = (admit, self.phase) {
            if period == self.period {
                self.probes = self.probes.saturating_sub(1);
            }
        }
    }

    fn open(&mut self, open_for: Duration, now: Instant) -> Phase {
        self.phase = Phase::Open;
        self.open_for = open_for;
        self.open_until = now + open_for;
        self.consecutive = 0;
        Phase::Open
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kaname_config::types::Condition;

    fn cfg(consecutive: Option<u32>, rate: Option<FailureRate>) -> BreakerConfig {
        BreakerConfig {
            consecutive_failures: consecutive,
            failure_rate: rate,
            open_for: Duration::from_secs(10),
            max_open_for: Duration::from_secs(35),
            half_open_requests: 1,
            failure_on: vec![Condition::Status5xx],
        }
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_consecutive_failures_and_probes_after_open_for() {
        let mut s = CircuitState::new(&cfg(Some(3), None), Instant::now());
        let now = Instant::now;
        for _ in 0..2 {
            let (a, _) = s.admit(now()).unwrap();
            assert_eq!(s.record(a, true, now()), None);
        }
        // A success resets the count.
        let (a, _) = s.admit(now()).unwrap();
        s.record(a, false, now());
        for _ in 0..2 {
            let (a, _) = s.admit(now()).unwrap();
            s.record(a, true, now());
        }
        let (a, _) = s.admit(now()).unwrap();
        assert_eq!(s.record(a, true, now()), Some(Phase::Open));
        assert_eq!(s.admit(now()), Err(Duration::from_secs(10)));
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(s.admit(now()), Err(Duration::from_secs(6)));
        tokio::time::advance(Duration::from_secs(6)).await;
        let (probe, moved) = s.admit(now()).unwrap();
        assert_eq!(moved, Some(Phase::HalfOpen));
        assert!(s.admit(now()).is_err(), "one probe at a time");
        // A failed probe doubles open_for: 20s, then 35s (the max).
        assert_eq!(s.record(probe, true, now()), Some(Phase::Open));
        assert_eq!(s.admit(now()), Err(Duration::from_secs(20)));
        tokio::time::advance(Duration::from_secs(20)).await;
        let (probe, _) = s.admit(now()).unwrap();
        s.record(probe, true, now());
        assert_eq!(s.admit(now()), Err(Duration::from_secs(35)));
        tokio::time::advance(Duration::from_secs(35)).await;
        let (probe, _) = s.admit(now()).unwrap();
        assert_eq!(s.record(probe, false, now()), Some(Phase::Closed));
        assert_eq!(s.phase(), Phase::Closed);
        // Closing resets open_for to its base.
        for _ in 0..3 {
            let (a, _) = s.admit(now()).unwrap();
            s.record(a, true, now());
        }
        assert_eq!(s.admit(now()), Err(Duration::from_secs(10)));
    }

    #[tokio::test(start_paused = true)]
    async fn failure_rate_over_a_sliding_window() {
        let rate = FailureRate {
            threshold: 0.5,
            min_requests: 10,
            window: Duration::from_secs(10),
        };
        let mut s = CircuitState::new(&cfg(None, Some(rate)), Instant::now());
        let now = Instant::now;
        // 4 failures of 8: under min_requests.
        for i in 0..8 {
            let (a, _) = s.admit(now()).unwrap();
            assert_eq!(s.record(a, i % 2 == 0, now()), None);
        }
        // Old results leave the window.
        tokio::time::advance(Duration::from_secs(11)).await;
        for _ in 0..6 {
            let (a, _) = s.admit(now()).unwrap();
            assert_eq!(s.record(a, false, now()), None);
        }
        for i in 0..6 {
            let (a, _) = s.admit(now()).unwrap();
            let moved = s.record(a, true, now());
            // 6 ok then the 6th failure makes 6 of 12.
            assert_eq!(moved, (i == 5).then_some(Phase::Open));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn stale_results_and_released_probes() {
        let mut s = CircuitState::new(&cfg(Some(1), None), Instant::now());
        let now = Instant::now;
        let (early, _) = s.admit(now()).unwrap();
        let (a, _) = s.admit(now()).unwrap();
        s.record(a, true, now());
        assert_eq!(s.phase(), Phase::Open);
        // A request let in before it opened does not move it.
        assert_eq!(s.record(early, false, now()), None);
        tokio::time::advance(Duration::from_secs(10)).await;
        let (probe, _) = s.admit(now()).unwrap();
        s.release(probe);
        let (probe2, _) = s.admit(now()).unwrap();
        assert_eq!(s.record(probe2, false, now()), Some(Phase::Closed));
    }
}
