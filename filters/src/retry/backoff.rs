//! Exponential backoff with full jitter: before retry n (counting from 1)
//! the wait is drawn uniformly from `[0, min(max, base × 2^(n-1))]`, so
//! clients that failed together do not come back together (the "full
//! jitter" of the AWS architecture blog). Settings are checked when built.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    base: Duration,
    max: Duration,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InvalidBackoff {
    #[error("backoff base must be more than zero")]
    ZeroBase,
    #[error("backoff base {base:?} is more than max {max:?}")]
    BaseOverMax { base: Duration, max: Duration },
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Result<Self, InvalidBackoff> {
        if base.is_zero() {
            return Err(InvalidBackoff::ZeroBase);
        }
        if base > max {
            return Err(InvalidBackoff::BaseOverMax { base, max });
        }
        Ok(Backoff { base, max })
    }

    pub fn max(&self) -> Duration {
        self.max
    }

    /// The upper bound of the wait before retry `n` (1 = the first retry).
    pub fn ceiling(&self, n: u32) -> Duration {
        let doublings = n.saturating_sub(1).min(31);
        self.base
            .checked_mul(1u32 << doublings)
            .map_or(self.max, |d| d.min(self.max))
    }

    /// The wait before retry `n` for a uniform draw `unit` in `[0, 1]`.
    pub fn delay(&self, n: u32, unit: f64) -> Duration {
        self.ceiling(n).mul_f64(unit.clamp(0.0, 1.0))
    }

    /// The wait before retry `n`, jittered.
    pub fn jittered(&self, n: u32) -> Duration {
        self.delay(n, rand::random::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn validates() {
        assert_eq!(Backoff::new(MS(0), MS(1)), Err(InvalidBackoff::ZeroBase));
        assert!(matches!(
            Backoff::new(MS(10), MS(1)),
            Err(InvalidBackoff::BaseOverMax { .. })
        ));
    }

    #[test]
    fn ceiling_doubles_up_to_max() {
        let b = Backoff::new(MS(25), MS(250)).unwrap();
        let c: Vec<_> = (1..=6).map(|n| b.ceiling(n)).collect();
        assert_eq!(c, [MS(25), MS(50), MS(100), MS(200), MS(250), MS(250)]);
        assert_eq!(b.ceiling(1000), MS(250));
    }

    #[test]
    fn full_jitter_spans_zero_to_ceiling() {
        let b = Backoff::new(MS(25), MS(250)).unwrap();
        assert_eq!(b.delay(3, 0.0), MS(0));
        assert_eq!(b.delay(3, 1.0), MS(100));
        assert_eq!(b.delay(3, 0.5), MS(50));
        for _ in 0..100 {
            assert!(b.jittered(2) <= MS(50));
        }
    }
}
