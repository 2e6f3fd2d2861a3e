//! The `retry` and `circuit_breaker` filters and the conditions they share.

use std::time::Duration;

use crate::error::Errors;
use crate::node::{Mark, Node};
use crate::read::{self, Map};
use crate::suggest::did_you_mean;
use crate::types::{CircuitBreaker, Condition, FailureRate, Retry, RetryMethods};

/// gRPC status names, lower case, by code.
pub const GRPC_CODES: &[&str] = &[
    "ok",
    "cancelled",
    "unknown",
    "invalid_argument",
    "deadline_exceeded",
    "not_found",
    "already_exists",
    "permission_denied",
    "resource_exhausted",
    "failed_precondition",
    "aborted",
    "out_of_range",
    "unimplemented",
    "internal",
    "unavailable",
    "data_loss",
    "unauthenticated",
];

const NAMED: &[&str] = &["connect_failure", "reset", "timeout", "5xx"];

fn condition(node: &Node, errs: &mut Errors) -> Option<Condition> {
    let text = read::string(node, errs)?;
    let found = match text.as_str() {
        "connect_failure" => Some(Condition::ConnectFailure),
        "reset" => Some(Condition::Reset),
        "timeout" => Some(Condition::Timeout),
        "5xx" => Some(Condition::Status5xx),
        t => match t.parse::<u16>() {
            Ok(code) if (100..=599).contains(&code) => Some(Condition::Status(code)),
            Ok(_) => None,
            Err(_) => GRPC_CODES
                .iter()
                .position(|c| *c == t)
                .and_then(|i| u32::try_from(i).ok())
                .map(Condition::Grpc),
        },
    };
    if found.is_none() {
        let hint = did_you_mean(&text, NAMED.iter().chain(GRPC_CODES).copied());
        errs.at(
            node.mark,
            format!("expected a condition: connect_failure, reset, timeout, 5xx, an HTTP status or a gRPC status name, found {text:?}{hint}"),
        );
    }
    found
}

fn conditions(node: &Node, errs: &mut Errors) -> Option<Vec<Condition>> {
    let items = read::list(node, errs)?;
    Some(items.iter().filter_map(|n| condition(n, errs)).collect())
}

const RETRY_KEYS: &[&str] = &[
    "attempts",
    "retry_on",
    "on",
    "methods",
    "per_try_timeout",
    "backoff",
    "budget",
    "max_body_bytes",
    "max_buffered_bytes",
];

pub fn retry(name: &str, node: &Node, errs: &mut Errors) -> Option<Retry> {
    let place = format!("in retry filter {name:?}");
    let m = Map::new(node, &place, RETRY_KEYS, errs)?;
    let attempts = m.opt("attempts", errs, |n, e| {
        let a = read::u32_(n, e)?;
        if a == 0 {
            e.at(
                n.mark,
                "attempts must be at least 1 (it counts the first try)",
            );
            return None;
        }
        Some(a)
    });
    if let (Some(_), Some(mark)) = (m.key_mark("retry_on"), m.key_mark("on")) {
        errs.at(mark, "retry_on and its alias on are both set; use one");
    }
    let retry_on = m
        .opt("retry_on", errs, conditions)
        .or_else(|| m.opt("on", errs, conditions))
        .unwrap_or_else(|| {
            vec![
                Condition::ConnectFailure,
                Condition::Reset,
                Condition::Timeout,
                Condition::Status(502),
                Condition::Status(503),
                Condition::Status(504),
            ]
        });
    let methods = m
        .opt("methods", errs, |n, e| match n.scalar() {
            Some(_) => read::choice(n, &["idempotent"], e).map(|_| RetryMethods::Idempotent),
            None => read::methods(n, e).map(RetryMethods::List),
        })
        .unwrap_or(RetryMethods::Idempotent);
    let per_try_timeout = m.opt("per_try_timeout", errs, read::positive_duration);
    let (mut base, mut max) = (Duration::from_millis(25), Duration::from_millis(250));
    if let Some(b) = m.get("backoff") {
        if let Some(bm) = Map::new(
            b,
            &format!("in backoff of retry filter {name:?}"),
            &["base", "max"],
            errs,
        ) {
            base = bm
                .opt("base", errs, read::positive_duration)
                .unwrap_or(base);
            max = bm.opt("max", errs, read::positive_duration).unwrap_or(max);
            if base > max {
                errs.at(
                    bm.mark,
                    format!("backoff base {base:?} is more than max {max:?}"),
                );
            }
        }
    }
    let (mut ratio, mut min_per_second) = (0.2, 10);
    if let Some(b) = m.get("budget") {
        let place = format!("in budget of retry filter {name:?}");
        if let Some(bm) = Map::new(b, &place, &["ratio", "min_per_second"], errs) {
            if let Some(r) = bm.opt("ratio", errs, read::number) {
                if r < 0.0 {
                    errs.at(
                        bm.key_mark("ratio").unwrap_or(bm.mark),
                        format!("ratio must not be negative, found {r}"),
                    );
                }
                ratio = r;
            }
            min_per_second = bm
                .opt("min_per_second", errs, read::u32_)
                .unwrap_or(min_per_second);
        }
    }
    let max_body_bytes = m
        .opt("max_body_bytes", errs, read::size)
        .unwrap_or(64 * 1024);
    let max_buffered_bytes = m
        .opt("max_buffered_bytes", errs, read::size)
        .unwrap_or(64 * 1024 * 1024);
    Some(Retry {
        attempts: attempts.unwrap_or(3),
        retry_on,
        methods,
        per_try_timeout,
        backoff_base: base,
        backoff_max: max,
        budget_ratio: ratio,
        budget_min_per_second: min_per_second,
        max_body_bytes,
        max_buffered_bytes,
    })
}

const BREAKER_KEYS: &[&str] = &[
    "consecutive_failures",
    "failure_rate",
    "open_for",
    "max_open_for",
    "half_open_requests",
    "failure_on",
];

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
    let m = Map::new(node, &place, &["threshold", "min_requests", "window"], errs)?;
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

    fn run_retry(yaml: &str) -> (Option<Retry>, String) {
        let node = load(yaml).unwrap();
        let mut errs = Errors::new("f");
        let out = retry("retries", &node, &mut errs);
        (out, errs.finish().to_string())
    }

    fn run_breaker(yaml: &str) -> (Option<CircuitBreaker>, String) {
        let node = load(yaml).unwrap();
        let mut errs = Errors::new("f");
        let out = breaker("b", Mark::new(1, 1), &node, &mut errs);
        (out, errs.finish().to_string())
    }

    #[test]
    fn retry_defaults_and_alias() {
        let (r, e) =
            run_retry("on: [5xx, unavailable, 429, resource_exhausted]\nmethods: [get, post]\n");
        assert_eq!(e, "");
        let r = r.unwrap();
        assert_eq!(
            r.retry_on,
            [
                Condition::Status5xx,
                Condition::Grpc(14),
                Condition::Status(429),
                Condition::Grpc(8)
            ]
        );
        assert_eq!(
            r.methods,
            RetryMethods::List(vec!["GET".into(), "POST".into()])
        );
        assert_eq!((r.attempts, r.max_body_bytes), (3, 65536));
        assert_eq!(r.max_buffered_bytes, 64 << 20);
        let (r, e) = run_retry("max_body_bytes: 8MiB\nmax_buffered_bytes: 16MiB\n");
        assert_eq!(e, "");
        let r = r.unwrap();
        assert_eq!(
            (r.max_body_bytes, r.max_buffered_bytes),
            (8 << 20, 16 << 20)
        );
        assert_eq!(
            (r.backoff_base, r.backoff_max),
            (Duration::from_millis(25), Duration::from_millis(250))
        );
        assert_eq!((r.budget_ratio, r.budget_min_per_second), (0.2, 10));
        let (r, _) = run_retry("{}");
        assert_eq!(r.unwrap().retry_on.len(), 6);
    }

    #[test]
    fn retry_errors() {
        assert_eq!(
            run_retry("atempts: 3\n").1,
            "f:1:1: unknown key \"atempts\" in retry filter \"retries\"; did you mean \"attempts\"?"
        );
        assert_eq!(
            run_retry("attempts: 0\nretry_on: [unavailabel]\non: []\nbackoff: {base: 1s, max: 10ms}\n").1,
            "f:1:11: attempts must be at least 1 (it counts the first try)\n\
             f:2:12: expected a condition: connect_failure, reset, timeout, 5xx, an HTTP status or a gRPC status name, found \"unavailabel\"; did you mean \"unavailable\"?\n\
             f:3:1: retry_on and its alias on are both set; use one\n\
             f:4:10: backoff base 1s is more than max 10ms"
        );
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
