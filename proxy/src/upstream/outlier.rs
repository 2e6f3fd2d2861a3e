//! Passive outlier detection, as Envoy's consecutive-failure detector:
//! an endpoint whose tries fail `consecutive_failures` times in a row
//! (connect failure, reset, timeout, a 5xx, gRPC UNAVAILABLE) is ejected
//! for `eject_for`, so the balancer sends it nothing; never more than
//! `max_ejected_percent` of the endpoints are out at once. Every ejection
//! lasts `eject_for` (Envoy's growth with repeated ejections is not done).

use std::sync::{Arc, Mutex};

use kaname_config::OutlierDetection as OutlierConfig;
use prometheus::IntCounter;

use super::endpoint::Endpoint;

pub struct OutlierDetector {
    upstream: Arc<str>,
    config: OutlierConfig,
    ejections: IntCounter,
    /// Serialises ejection decisions so the cap holds under races.
    deciding: Mutex<()>,
}

impl OutlierDetector {
    pub fn new(upstream: Arc<str>, config: OutlierConfig, ejections: IntCounter) -> Self {
        OutlierDetector {
            upstream,
            config,
            ejections,
            deciding: Mutex::new(()),
        }
    }

    /// Counts one try's outcome on `endpoint`, one of `all`.
    pub fn report(&self, endpoint: &Arc<Endpoint>, all: &[Arc<Endpoint>], failed: bool) {
        use std::sync::atomic::Ordering::Relaxed;
        if !failed {
            endpoint.consecutive_failures.store(0, Relaxed);
            return;
        }
        let n = endpoint.consecutive_failures.fetch_add(1, Relaxed) + 1;
        if n < self.config.consecutive_failures.max(1) || endpoint.is_ejected() {
            return;
        }
        let Ok(_deciding) = self.deciding.lock() else {
            return;
        };
        if endpoint.is_ejected() {
            return;
        }
        let out = all.iter().filter(|e| e.is_ejected()).count() + 1;
        let allowed = all.len() as u64 * u64::from(self.config.max_ejected_percent);
        if out as u64 * 100 > allowed {
            tracing::debug!(upstream = %self.upstream, endpoint = %endpoint.addr, "not ejected: max_ejected_percent reached");
            return;
        }
        endpoint.consecutive_failures.store(0, Relaxed);
        endpoint.set_ejected(true);
        self.ejections.inc();
        let eject_for = self.config.eject_for;
        tracing::warn!(upstream = %self.upstream, endpoint = %endpoint.addr, failures = n, ?eject_for, "endpoint ejected");
        let weak = Arc::downgrade(endpoint);
        let upstream = self.upstream.clone();
        tokio::spawn(async move {
            tokio::time::sleep(eject_for).await;
            if let Some(ep) = weak.upgrade() {
                ep.set_ejected(false);
                tracing::info!(%upstream, endpoint = %ep.addr, "endpoint back from ejection");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn eps(n: u16) -> Vec<Arc<Endpoint>> {
        (0..n)
            .map(|i| Arc::new(Endpoint::new(([127, 0, 0, 1], 2000 + i).into())))
            .collect()
    }

    fn detector(pct: u32) -> (OutlierDetector, IntCounter) {
        let c = IntCounter::new("e", "e").unwrap();
        let cfg = OutlierConfig {
            consecutive_failures: 3,
            eject_for: Duration::from_secs(30),
            max_ejected_percent: pct,
        };
        (OutlierDetector::new("u".into(), cfg, c.clone()), c)
    }

    #[tokio::test(start_paused = true)]
    async fn ejects_after_consecutive_failures_for_eject_for() {
        let (d, count) = detector(50);
        let e = eps(2);
        d.report(&e[0], &e, true);
        d.report(&e[0], &e, true);
        d.report(&e[0], &e, false); // a success resets the run
        d.report(&e[0], &e, true);
        d.report(&e[0], &e, true);
        assert!(e[0].is_healthy());
        d.report(&e[0], &e, true);
        assert!(!e[0].is_healthy() && e[0].is_ejected());
        assert_eq!(count.get(), 1);
        tokio::time::sleep(Duration::from_secs(29)).await;
        assert!(e[0].is_ejected());
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(e[0].is_healthy());
    }

    #[tokio::test(start_paused = true)]
    async fn never_more_than_max_ejected_percent() {
        let (d, count) = detector(50);
        let e = eps(3);
        for ep in &e {
            for _ in 0..3 {
                d.report(ep, &e, true);
            }
        }
        assert_eq!(e.iter().filter(|x| x.is_ejected()).count(), 1);
        assert_eq!(count.get(), 1);
    }
}
