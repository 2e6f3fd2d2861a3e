//! The `queues` section (async.md) and `data_dir`.

use std::time::Duration;

use super::condition::conditions;
use super::filter::priority_source;
use super::retry::backoff;
use crate::error::Errors;
use crate::node::{Mark, Node};
use crate::queue::{Callback, Delivery, Queue, QueueStore};
use crate::read::{self, Map};

pub(crate) const QUEUE_KEYS: &[&str] = &[
    "store",
    "max_depth",
    "max_body_bytes",
    "priority",
    "delivery",
    "keep_finished",
    "max_result_bytes",
    "callback",
    "visibility_timeout",
];

pub(crate) const DELIVERY_KEYS: &[&str] = &[
    "concurrency",
    "attempts",
    "per_try_timeout",
    "backoff",
    "retry_on",
];

pub(crate) const CALLBACK_KEYS: &[&str] = &["header", "allowed_hosts", "secret", "attempts"];

/// Deliveries in flight are tasks and connections: a bound on the bound.
pub(crate) const MAX_CONCURRENCY: u64 = 10_000;

pub fn queue(name: &str, name_mark: Mark, node: &Node, errs: &mut Errors) -> Option<Queue> {
    if name.is_empty() || name.starts_with('.') || name.contains('/') {
        errs.at(
            name_mark,
            format!(
                "queue name {name:?}: expected a name without '/' that does not start with '.'"
            ),
        );
    }
    let place = format!("in queue {name:?}");
    let m = Map::new(node, &place, QUEUE_KEYS, errs)?;
    let store = m
        .opt("store", errs, super::store::store_name)
        .map_or(QueueStore::Local, |s| {
            s.map_or(QueueStore::Local, QueueStore::Shared)
        });
    let max_depth = m
        .opt("max_depth", errs, read::at_least(1))
        .unwrap_or(100_000);
    let max_body_bytes = m.opt("max_body_bytes", errs, read::size).unwrap_or(1 << 20);
    let priority = m.opt("priority", errs, priority_source);
    let delivery = m
        .opt("delivery", errs, |n, e| delivery(name, n, e))
        .unwrap_or_default();
    let keep_finished = m
        .opt("keep_finished", errs, read::positive_duration)
        .unwrap_or(Duration::from_secs(24 * 3600));
    let max_result_bytes = m
        .opt("max_result_bytes", errs, read::size)
        .unwrap_or(64 << 10);
    let callback = m.opt("callback", errs, |n, e| callback(name, n, e));
    let visibility_timeout = m.opt("visibility_timeout", errs, read::positive_duration);
    if let (Some(v), Some(mark)) = (visibility_timeout, m.key_mark("visibility_timeout")) {
        if store == QueueStore::Local {
            errs.at(
                mark,
                "visibility_timeout is for a queue on a shared store (store: NAME); a local queue's jobs are taken over at restart",
            );
        } else if v < delivery.per_try_timeout {
            errs.at(
                mark,
                format!(
                    "visibility_timeout {} is shorter than delivery.per_try_timeout {}: another sidecar would take over jobs still being delivered",
                    crate::redact::duration(v),
                    crate::redact::duration(delivery.per_try_timeout)
                ),
            );
        }
    }
    let visibility_timeout = visibility_timeout.unwrap_or(delivery.per_try_timeout * 2);
    Some(Queue {
        name: name.to_string(),
        store,
        max_depth,
        max_body_bytes,
        priority,
        delivery,
        keep_finished,
        max_result_bytes,
        callback,
        visibility_timeout,
    })
}

fn delivery(queue: &str, node: &Node, errs: &mut Errors) -> Option<Delivery> {
    let place = format!("in delivery of queue {queue:?}");
    let m = Map::new(node, &place, DELIVERY_KEYS, errs)?;
    let d = Delivery::default();
    let concurrency = m
        .opt("concurrency", errs, |n, e| {
            let c = read::at_least(1)(n, e)?;
            if c > MAX_CONCURRENCY {
                e.at(
                    n.mark,
                    format!("concurrency is at most {MAX_CONCURRENCY}, found {c}"),
                );
                return None;
            }
            Some(c as u32)
        })
        .unwrap_or(d.concurrency);
    let attempts = m
        .opt("attempts", errs, |n, e| {
            read::at_least(1)(n, e).map(|a| a.min(u64::from(u32::MAX)) as u32)
        })
        .unwrap_or(d.attempts);
    let per_try_timeout = m
        .opt("per_try_timeout", errs, read::positive_duration)
        .unwrap_or(d.per_try_timeout);
    let (backoff_base, backoff_max) = match m.get("backoff") {
        Some(b) => backoff(
            b,
            &format!("in backoff of queue {queue:?}"),
            (d.backoff_base, d.backoff_max),
            errs,
        ),
        None => (d.backoff_base, d.backoff_max),
    };
    let retry_on = m.opt("retry_on", errs, conditions).unwrap_or(d.retry_on);
    Some(Delivery {
        concurrency,
        attempts,
        per_try_timeout,
        backoff_base,
        backoff_max,
        retry_on,
    })
}

fn callback(queue: &str, node: &Node, errs: &mut Errors) -> Option<Callback> {
    let place = format!("in callback of queue {queue:?}");
    let m = Map::new(node, &place, CALLBACK_KEYS, errs)?;
    let header = m
        .opt("header", errs, read::header_name)
        .unwrap_or_else(|| "x-callback-url".into());
    let allowed_hosts: Vec<String> = m
        .req("allowed_hosts", errs, read::list)
        .map(|items| items.iter().filter_map(|n| allowed_host(n, errs)).collect())
        .unwrap_or_default();
    if allowed_hosts.is_empty() && m.get("allowed_hosts").is_some() {
        errs.at(
            m.key_mark("allowed_hosts").unwrap_or(m.mark),
            "allowed_hosts is empty: no callback could be sent; list the hosts callbacks may go to",
        );
    }
    // Unsigned callbacks could be forged by anyone who can reach the
    // receiver: the secret is required.
    let secret = m.req("secret", errs, |n, e| {
        let s = read::string(n, e)?;
        if s.len() < 16 {
            e.at(
                n.mark,
                "callback secret is shorter than 16 bytes; use a random value of at least 32",
            );
            return None;
        }
        Some(s)
    });
    let attempts = m
        .opt("attempts", errs, |n, e| {
            read::at_least(1)(n, e).map(|a| a.min(100) as u32)
        })
        .unwrap_or(5);
    Some(Callback {
        header,
        allowed_hosts,
        secret: secret?,
        attempts,
    })
}

/// A host name or IP literal, or `*.` and a domain; lower case, no port.
fn allowed_host(node: &Node, errs: &mut Errors) -> Option<String> {
    let text = read::nonempty(node, errs)?.to_ascii_lowercase();
    let name = text.strip_prefix("*.").unwrap_or(&text);
    let ip = name.trim_start_matches('[').trim_end_matches(']');
    let ok = ip.parse::<std::net::IpAddr>().is_ok()
        || (name.len() <= 253
            && name.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            }));
    if !ok || name.contains('*') {
        errs.at(
            node.mark,
            format!("allowed_hosts: expected a host name, an IP address or \"*.domain\" (no port, no scheme), found {text:?}"),
        );
        return None;
    }
    Some(match text.starts_with("*.") {
        true => format!("*.{ip}"),
        false => ip.to_string(),
    })
}

/// `data_dir`: where embedded stores keep their files.
pub fn data_dir(node: &Node, errs: &mut Errors) -> Option<String> {
    read::nonempty(node, errs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::load;

    fn run(yaml: &str) -> (Option<Queue>, String) {
        let node = load(yaml).expect("yaml");
        let mut errs = Errors::new("f");
        let q = queue("reports", Mark::new(1, 1), &node, &mut errs);
        (q, errs.finish().to_string())
    }

    #[test]
    fn defaults() {
        let (q, e) = run("{}");
        assert_eq!(e, "");
        let q = q.unwrap();
        assert_eq!(q.store, QueueStore::Local);
        assert_eq!(q.max_depth, 100_000);
        assert_eq!(q.max_body_bytes, 1 << 20);
        assert_eq!(q.delivery, Delivery::default());
        assert_eq!(q.keep_finished, Duration::from_secs(86_400));
        assert_eq!(q.max_result_bytes, 65_536);
        assert!(q.callback.is_none());
        assert_eq!(q.visibility_timeout, Duration::from_secs(60));
        let (q, e) = run("{ store: shared }");
        assert_eq!(e, "");
        assert_eq!(q.unwrap().store, QueueStore::Shared("shared".into()));
    }

    #[test]
    fn the_contracts_example() {
        let (q, e) = run(
            "store: local
max_depth: 5
max_body_bytes: 1KiB
priority: { header: x-priority }
delivery: { concurrency: 2, attempts: 3, per_try_timeout: 1s, backoff: { base: 10ms, max: 1s }, retry_on: [5xx, 429] }
keep_finished: 1h
max_result_bytes: 10
callback: { allowed_hosts: [hooks.shop.svc, \"*.Internal\", 127.0.0.1], secret: 0123456789abcdef0123, attempts: 2 }
",
        );
        assert_eq!(e, "");
        let q = q.unwrap();
        assert_eq!(q.delivery.concurrency, 2);
        assert_eq!(q.delivery.retry_on.len(), 2);
        let cb = q.callback.unwrap();
        assert_eq!(cb.header, "x-callback-url");
        assert_eq!(
            cb.allowed_hosts,
            ["hooks.shop.svc", "*.internal", "127.0.0.1"]
        );
        assert!(cb.allows("HOOKS.shop.svc"));
        assert!(cb.allows("a.b.internal"));
        assert!(!cb.allows("internal"), "a wildcard needs a label before it");
        assert!(!cb.allows("evilinternal"));
        assert!(!cb.allows("hooks.shop.svc.evil.com"));
        assert!(cb.allows("127.0.0.1"));
        assert!(!format!("{cb:?}").contains("0123456789"));
    }

    #[test]
    fn mistakes() {
        for (yaml, says) in [
            ("{ delivery: { concurrency: 0 } }", "at least 1"),
            (
                "{ delivery: { concurency: 2 } }",
                "did you mean \"concurrency\"",
            ),
            (
                "{ callback: { allowed_hosts: [a], secret: short } }",
                "shorter than 16",
            ),
            (
                "{ callback: { allowed_hosts: [a] } }",
                "missing key \"secret\"",
            ),
            (
                "{ callback: { allowed_hosts: [\"http://a\"], secret: 0123456789abcdef0 } }",
                "no port, no scheme",
            ),
            (
                "{ callback: { allowed_hosts: [], secret: 0123456789abcdef0 } }",
                "allowed_hosts is empty",
            ),
            (
                "{ delivery: { backoff: { base: 2s, max: 1s } } }",
                "more than max",
            ),
            ("{ max_depth: 0 }", "at least 1"),
            (
                "{ visibility_timeout: 1m }",
                "for a queue on a shared store",
            ),
            (
                "{ store: shared, visibility_timeout: 1s, delivery: { per_try_timeout: 5s } }",
                "shorter than delivery.per_try_timeout 5s",
            ),
        ] {
            let (_, e) = run(yaml);
            assert!(e.contains(says), "{yaml}: {e}");
        }
    }
}
