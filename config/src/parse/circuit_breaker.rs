//! The `circuit_breaker` filter: when to open (consecutive failures or a
//! failure rate), for how long, and what counts as a failure.

use std::time::Duration;

use super::condition::conditions;
use crate::error::Errors;
use crate::node::{Mark, Node};
use crate::read::{self, Map};
use crate::types::{CircuitBreaker, Condition, FailureRate};

pub(crate) const BREAKER_KEYS: &[&str] = &[
    "consecutive_failures",
    "failure_rate",
    "open_for",
    "max_open_for",
    "half_open_requests",
    "failure_on",
];

pub(crate) const FAILURE_RATE_KEYS: &[&str] = &["threshold", "min_requests", "window"];

pub fn breaker(
    name: &str,
    kind_mark: Mark,
    node: &Node,
    errs: &mut Errors,
) -> Option<CircuitBreaker> {
    let place = format!("in circuit_breaker filter {name:?}");
    let m = Map::new(node, &place, BREAKER_KEYS, errs)?;
    let consecutive = m.opt("consecutive_failures", errs, read::u32_).unwrap_or(5);
    let failure_rate = m.opt("failure_rate", errs, |n, e| failure_rate(name, n, e));
    if consecutive == 0 && m.get("failure_rate").is_none() {
        errs.at(
            kind_mark,
            format!("circuit_breaker filter {name:?} can never open: consecutive_failures is 0 and there is no failure_rate"),
        );
    }
    let open_for = m
        .opt("open_for", errs, read::positive_duration)
        .unwrap_or(Duration::from_secs(10));
    let max_open_for = m
        .opt("max_open_for", errs, read::positive_duration)
        .unwrap_or(Duration::from_secs(300));
    if open_for > max_open_for {
        let mark = m.key_mark("open_for").unwrap_or(m.mark);
        errs.at(
            mark,
            format!("open_for {open_for:?} is more than max_open_for {max_open_for:?}"),
        );
    }
    let half_open_requests = m
        .opt("half_open_requests", errs, read::at_least(1))
        .map_or(1, |n| u32::try_from(n).unwrap_or(u32::MAX));
    let failure_on = m.opt("failure_on", errs, conditions).unwrap_or_else(|| {
        vec![
            Condition::ConnectFailure,
            Condition::Timeout,
            Condition::Status5xx,
        ]
    });
    Some(CircuitBreaker {
        consecutive_failures: (consecutive > 0).then_some(consecutive),
        failure_rate,
        open_for,
        max_open_for,
        half_open_requests,
        failure_on,
    })
}

fn failure_rate(filter: &str, node: &Node, errs: &mut Errors) -> Option<FailureRate> {
    let place = format!("in failure_rate of circuit_breaker filter {filter:?}");
    let m = Map::new(node, &place, FAILURE_RATE_KEYS, errs)?;
    let threshold = m.req("threshold", errs, |n, e| {
        let t = read::number(n, e)?;
        if !(t > 0.0 && t <= 1.0) {
            e.at(
                n.mark,
                format!("threshold is a fraction greater than 0 and at most 1, found {t}"),
            );
            return None;
        }
        Some(t)
    });
    let min_requests = m.opt("min_requests", errs, read::u32_).unwrap_or(20);
    let window = m
        .opt("window", errs, read::positive_duration)
        .unwrap_or(Duration::from_secs(10));
    Some(FailureRate {
        threshold: threshold?,
        min_requests,
        window,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::load;

    fn run_breaker(yaml: &str) -> (Option<CircuitBreaker>, String) {
        let node = load(yaml).unwrap();
        let mut errs = Errors::new("f");
        let out = breaker("b", Mark::new(1, 1), &node, &mut errs);
        (out, errs.finish().to_string())
    }

    #[test]
    fn breaker_settings() {
        let (b, e) = run_breaker("failure_rate: {threshold: 0.5}\nconsecutive_failures: 0\n");
        assert_eq!(e, "");
        let b = b.unwrap();
        assert_eq!(b.consecutive_failures, None);
        assert_eq!(b.failure_rate.unwrap().min_requests, 20);
        assert_eq!(
            b.failure_on,
            [
                Condition::ConnectFailure,
                Condition::Timeout,
                Condition::Status5xx
            ]
        );
        assert_eq!(
            run_breaker("failure_rate: {threshold: 1.5}\n").1,
            "f:1:27: threshold is a fraction greater than 0 and at most 1, found 1.5"
        );
        assert_eq!(
            run_breaker("consecutive_failures: 0\n").1.lines().count(),
            1
        );
    }
}
