//! Picking an endpoint: round_robin, least_request, p2c_ewma.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use kaname_config::LoadBalancing;

use super::endpoint::Endpoint;

#[derive(Debug)]
pub struct Balancer {
    policy: LoadBalancing,
    next: AtomicUsize,
}

impl Balancer {
    pub fn new(policy: LoadBalancing) -> Self {
        Balancer {
            policy,
            next: AtomicUsize::new(0),
        }
    }

    /// Picks among healthy endpoints, avoiding `avoid` (the endpoint a
    /// previous try failed on) when another is available. With no healthy
    /// endpoint it falls back to all of them (a panic threshold of 100%, as
    /// Envoy does by default at 50%) so traffic never stops on stale checks.
    pub fn pick(
        &self,
        endpoints: &[Arc<Endpoint>],
        avoid: Option<SocketAddr>,
    ) -> Option<Arc<Endpoint>> {
        let usable = |e: &&Arc<Endpoint>| e.is_healthy() && avoid != Some(e.addr);
        let mut candidates: Vec<&Arc<Endpoint>> = endpoints.iter().filter(usable).collect();
        if candidates.is_empty() {
            candidates = endpoints.iter().filter(|e| e.is_healthy()).collect();
        }
        if candidates.is_empty() {
            candidates = endpoints.iter().collect();
        }
        let n = candidates.len();
        if n == 0 {
            return None;
        }
        if n == 1 {
            return Some(candidates[0].clone());
        }
        let chosen = match self.policy {
            LoadBalancing::RoundRobin => candidates[self.next.fetch_add(1, Ordering::Relaxed) % n],
            LoadBalancing::LeastRequest => {
                // Start at a rotating offset so ties spread evenly.
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                (0..n)
                    .map(|i| candidates[(start + i) % n])
                    .min_by_key(|e| e.in_flight())
                    .unwrap_or(candidates[0])
            }
            LoadBalancing::P2cEwma => {
                let a = rand::random_range(0..n);
                let mut b = rand::random_range(0..n - 1);
                if b >= a {
                    b += 1;
                }
                let (a, b) = (candidates[a], candidates[b]);
                if a.cost() <= b.cost() {
                    a
                } else {
                    b
                }
            }
        };
        Some(chosen.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eps(n: u16) -> Vec<Arc<Endpoint>> {
        (0..n)
            .map(|i| Arc::new(Endpoint::new(([127, 0, 0, 1], 1000 + i).into())))
            .collect()
    }

    #[test]
    fn round_robin_rotates() {
        let b = Balancer::new(LoadBalancing::RoundRobin);
        let e = eps(3);
        let ports: Vec<u16> = (0..6)
            .map(|_| b.pick(&e, None).unwrap().addr.port())
            .collect();
        assert_eq!(ports, [1000, 1001, 1002, 1000, 1001, 1002]);
    }

    #[test]
    fn least_request_avoids_busy() {
        let b = Balancer::new(LoadBalancing::LeastRequest);
        let e = eps(2);
        let _busy = e[0].start();
        for _ in 0..4 {
            assert_eq!(b.pick(&e, None).unwrap().addr.port(), 1001);
        }
    }

    #[test]
    fn p2c_tries_an_endpoint_that_has_not_answered_yet() {
        // Two endpoints answered quickly (under the default RTT); the third,
        // new, still gets picked whenever it is one of the pair.
        let b = Balancer::new(LoadBalancing::P2cEwma);
        let e = eps(3);
        for ep in &e[..2] {
            drop(ep.start());
        }
        let picked_new = (0..60).any(|_| b.pick(&e, None).is_some_and(|p| p.addr == e[2].addr));
        assert!(picked_new, "the endpoint that never answered was starved");
        // Once it has answered, its measured cost decides as for the others.
        drop(e[2].start());
        assert!(e[2].cost() > 0);
    }

    #[test]
    fn avoid_skips_failed_endpoint() {
        let b = Balancer::new(LoadBalancing::P2cEwma);
        let e = eps(2);
        for _ in 0..10 {
            assert_eq!(b.pick(&e, Some(e[0].addr)).unwrap().addr.port(), 1001);
        }
    }

    #[test]
    fn unhealthy_skipped_unless_all_are() {
        let b = Balancer::new(LoadBalancing::RoundRobin);
        let e = eps(2);
        e[1].set_healthy(false);
        for _ in 0..4 {
            assert_eq!(b.pick(&e, None).unwrap().addr.port(), 1000);
        }
        e[0].set_healthy(false);
        assert!(b.pick(&e, None).is_some());
    }
}
