//! The `retry` filter: how many tries, on which conditions and methods,
//! with what backoff, budget and body buffer.

use std::time::Duration;

use super::condition::conditions;
use crate::error::Errors;
use crate::node::Node;
use crate::read::{self, Map};
use crate::types::{Condition, Retry, RetryMethods};

pub(crate) const RETRY_KEYS: &[&str] = &[
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

pub(crate) const BUDGET_KEYS: &[&str] = &["ratio", "min_per_second"];
pub(crate) const BACKOFF_KEYS: &[&str] = &["base", "max"];

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
            Some(s) if s.text == "idempotent" => Some(RetryMethods::Idempotent),
            Some(s) => {
                e.at(
                    n.mark,
                    format!(
                        "methods is `idempotent` or a list of methods like [{}], found {:?}",
                        s.text.to_ascii_uppercase(),
                        s.text
                    ),
                );
                None
            }
            None => read::methods(n, e).map(RetryMethods::List),
        })
        .unwrap_or(RetryMethods::Idempotent);
    let per_try_timeout = m.opt("per_try_timeout", errs, read::positive_duration);
    let (base, max) = match m.get("backoff") {
        Some(b) => backoff(
            b,
            &format!("in backoff of retry filter {name:?}"),
            (Duration::from_millis(25), Duration::from_millis(250)),
            errs,
        ),
        None => (Duration::from_millis(25), Duration::from_millis(250)),
    };
    let (mut ratio, mut min_per_second) = (0.2, 10);
    if let Some(b) = m.get("budget") {
        let place = format!("in budget of retry filter {name:?}");
        if let Some(bm) = Map::new(b, &place, BUDGET_KEYS, errs) {
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

/// `backoff: { base, max }`, each defaulting to `defaults`.
pub fn backoff(
    node: &Node,
    place: &str,
    defaults: (Duration, Duration),
    errs: &mut Errors,
) -> (Duration, Duration) {
    let (mut base, mut max) = defaults;
    if let Some(bm) = Map::new(node, place, BACKOFF_KEYS, errs) {
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
    (base, max)
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
    fn a_single_method_suggests_the_list_form() {
        let (_, e) = run_retry("methods: get\n");
        assert_eq!(
            e,
            "f:1:10: methods is `idempotent` or a list of methods like [GET], found \"get\""
        );
    }
}
