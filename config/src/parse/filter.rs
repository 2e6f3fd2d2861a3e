//! `filters:`: each filter is a name and exactly one kind; the kind's
//! settings are read by its own function.

use std::time::Duration;

use super::{authorize, circuit_breaker, jwt, retry};
use crate::error::Errors;
use crate::node::{Mark, Node};
use crate::read::{self, Map};
use crate::suggest::did_you_mean;
use crate::types::{
    ConcurrencyLimit, Filter, FilterKind, FilterKindName, PrioritySource, RateLimit, RateLimitKey,
};
use crate::SUPPORTED_FILTER_KINDS;

/// Every kind the config language knows (the proxy may support fewer).
const KINDS: &[&str] = FilterKindName::NAMES;

pub(crate) const CONCURRENCY_KEYS: &[&str] =
    &["max_in_flight", "max_queue", "queue_timeout", "priority"];

pub fn filter(name: &str, name_mark: Mark, node: &Node, errs: &mut Errors) -> Option<Filter> {
    filter_of(name, name_mark, node, SUPPORTED_FILTER_KINDS, errs)
}

/// [`filter`] with the list of kinds the proxy supports given.
fn filter_of(
    name: &str,
    name_mark: Mark,
    node: &Node,
    supported: &[&str],
    errs: &mut Errors,
) -> Option<Filter> {
    let m = Map::any(node, &format!("in filter {name:?}"), errs)?;
    let mut kinds = Vec::new();
    for (key, mark, body) in m.entries() {
        if let Some(kind) = FilterKindName::from_name(key) {
            kinds.push((kind, mark, body));
        } else {
            let hint = did_you_mean(key, KINDS.iter().copied());
            errs.at(
                mark,
                format!("unknown filter kind {key:?} in filter {name:?}{hint}"),
            );
        }
    }
    let (kind, mark, body) = match kinds.as_slice() {
        [one] => *one,
        [] => {
            if m.entries().next().is_none() {
                errs.at(
                    name_mark,
                    format!(
                        "filter {name:?} has no kind; expected one of {}",
                        KINDS.join(", ")
                    ),
                );
            }
            return None;
        }
        [(first, _, _), (second, mark, _), ..] => {
            let (first, second) = (first.name(), second.name());
            errs.at(
                *mark,
                format!("filter {name:?} has two kinds, {first:?} and {second:?}; a filter has exactly one"),
            );
            return None;
        }
    };
    if !supported.contains(&kind.name()) {
        errs.at(
            mark,
            format!("filter kind {:?} is not supported yet", kind.name()),
        );
        return None;
    }
    // No catch-all arm: a new kind must be given its parser here.
    let kind = match kind {
        FilterKindName::Jwt => FilterKind::Jwt(jwt::jwt(name, mark, body, errs)?),
        FilterKindName::RateLimit => FilterKind::RateLimit(rate_limit(name, body, errs)?),
        FilterKindName::Retry => FilterKind::Retry(retry::retry(name, body, errs)?),
        FilterKindName::CircuitBreaker => {
            FilterKind::CircuitBreaker(circuit_breaker::breaker(name, mark, body, errs)?)
        }
        FilterKindName::ConcurrencyLimit => {
            FilterKind::ConcurrencyLimit(concurrency(name, body, errs)?)
        }
        FilterKindName::Authorize => FilterKind::Authorize(authorize::authorize(name, body, errs)?),
    };
    Some(Filter {
        name: name.to_string(),
        kind,
    })
}

pub(crate) const RATE_LIMIT_KEYS: &[&str] = &[
    "key",
    "rate",
    "burst",
    "max_keys",
    "store",
    "on_store_error",
];

fn rate_limit(name: &str, node: &Node, errs: &mut Errors) -> Option<RateLimit> {
    let place = format!("in rate_limit filter {name:?}");
    let m = Map::new(node, &place, RATE_LIMIT_KEYS, errs)?;
    let key = m.req("key", errs, rate_limit_key);
    let rate = m.req("rate", errs, read::rate);
    let burst = m.opt("burst", errs, read::at_least(1));
    let max_keys = m.opt("max_keys", errs, read::at_least(1));
    let store = m.opt("store", errs, super::store::store_name).flatten();
    let on_store_error = m
        .opt("on_store_error", errs, super::store::on_store_error)
        .unwrap_or_default();
    let rate = rate?;
    Some(RateLimit {
        key: key?,
        rate,
        burst: burst.map_or(rate.count, |b| u32::try_from(b).unwrap_or(u32::MAX)),
        max_keys: max_keys.map_or(100_000, |n| usize::try_from(n).unwrap_or(usize::MAX)),
        store,
        on_store_error,
    })
}

fn rate_limit_key(node: &Node, errs: &mut Errors) -> Option<RateLimitKey> {
    let text = read::string(node, errs)?;
    let key = match text.split_once(':') {
        None if text == "global" => Some(RateLimitKey::Global),
        None if text == "client_ip" => Some(RateLimitKey::ClientIp),
        Some(("header", h)) => {
            let h = h.trim().to_ascii_lowercase();
            let valid = !h.is_empty()
                && h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c));
            valid.then_some(RateLimitKey::Header(h))
        }
        Some(("jwt", claim)) if !claim.trim().is_empty() => {
            Some(RateLimitKey::JwtClaim(claim.trim().to_string()))
        }
        _ => None,
    };
    if key.is_none() {
        errs.at(
            node.mark,
            format!("expected a rate limit key: global, client_ip, header:NAME or jwt:CLAIM, found {text:?}"),
        );
    }
    key
}

fn concurrency(name: &str, node: &Node, errs: &mut Errors) -> Option<ConcurrencyLimit> {
    let place = format!("in concurrency_limit filter {name:?}");
    let m = Map::new(node, &place, CONCURRENCY_KEYS, errs)?;
    let max_in_flight = m.req("max_in_flight", errs, read::at_least(1));
    let max_queue = m.opt("max_queue", errs, read::usize_).unwrap_or(0);
    let queue_timeout = m
        .opt("queue_timeout", errs, read::duration)
        .unwrap_or(Duration::from_millis(100));
    let priority = m.opt("priority", errs, priority_source);
    Some(ConcurrencyLimit {
        max_in_flight: usize::try_from(max_in_flight?).unwrap_or(usize::MAX),
        max_queue,
        queue_timeout,
        priority,
    })
}

/// `{ header: NAME }` or `{ claim: NAME }`.
pub(crate) fn priority_source(node: &Node, errs: &mut Errors) -> Option<PrioritySource> {
    if let crate::node::Value::Map(entries) = &node.value {
        if let [(key, value)] = entries.as_slice() {
            match key.scalar().map(|s| s.text.as_str()) {
                Some("header") => {
                    return read::header_name(value, errs).map(PrioritySource::Header)
                }
                Some("claim") => return read::nonempty(value, errs).map(PrioritySource::Claim),
                _ => {}
            }
        }
    }
    errs.at(
        node.mark,
        format!(
            "expected priority as {{ header: NAME }} or {{ claim: NAME }}, found {}",
            node.describe()
        ),
    );
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::load;

    fn run(yaml: &str) -> (Option<Filter>, String) {
        let node = load(yaml).unwrap();
        let mut errs = Errors::new("f");
        let out = filter("x", Mark::new(1, 1), &node, &mut errs);
        (out, errs.finish().to_string())
    }

    #[test]
    fn kinds() {
        assert_eq!(run("rate_limt: {}").1, "f:1:1: unknown filter kind \"rate_limt\" in filter \"x\"; did you mean \"rate_limit\"?");
        assert_eq!(run("{}").1, "f:1:1: filter \"x\" has no kind; expected one of jwt, rate_limit, retry, circuit_breaker, concurrency_limit, authorize");
        assert_eq!(
            run("retry: {}\njwt: {}\n").1,
            "f:2:1: filter \"x\" has two kinds, \"retry\" and \"jwt\"; a filter has exactly one"
        );
    }

    /// A minimal valid body of each kind (a new kind must add one).
    fn minimal(kind: FilterKindName) -> &'static str {
        match kind {
            FilterKindName::Jwt => "{algorithms: [RS256], jwks: {url: \"https://a/jwks\"}}",
            FilterKindName::RateLimit => "{key: global, rate: 10/s}",
            FilterKindName::Retry => "{}",
            FilterKindName::CircuitBreaker => "{}",
            FilterKindName::ConcurrencyLimit => "{max_in_flight: 1}",
            FilterKindName::Authorize => "{rules: [{allow: {methods: [GET]}}]}",
        }
    }

    #[test]
    fn every_kind_name_round_trips() {
        assert_eq!(
            SUPPORTED_FILTER_KINDS, KINDS,
            "the proxy supports every kind"
        );
        for (i, &name) in KINDS.iter().enumerate() {
            assert!(!KINDS[..i].contains(&name), "{name} listed twice");
            let kind = FilterKindName::from_name(name).unwrap();
            assert_eq!((kind, kind.name()), (FilterKindName::ALL[i], name));
            let (f, e) = run(&format!("{name}: {}", minimal(kind)));
            assert_eq!(e, "", "{name}");
            let f = f.unwrap();
            assert_eq!((f.kind.kind_name(), f.kind.kind()), (name, kind));
        }
    }

    #[test]
    fn unsupported_kinds() {
        let node = load("x: 1\njwt: {}").unwrap();
        let mut errs = Errors::new("f");
        assert!(filter_of("a", Mark::new(1, 1), &node, &["retry"], &mut errs).is_none());
        assert_eq!(
            errs.finish().to_string(),
            "f:1:1: unknown filter kind \"x\" in filter \"a\"\n\
             f:2:1: filter kind \"jwt\" is not supported yet"
        );
    }

    #[test]
    fn rate_limit_settings() {
        let (f, e) = run("rate_limit: {key: \"header:X-Key\", rate: 10/m}");
        assert_eq!(e, "");
        let FilterKind::RateLimit(r) = f.unwrap().kind else {
            panic!()
        };
        assert_eq!(r.key, RateLimitKey::Header("x-key".into()));
        assert_eq!((r.burst, r.max_keys), (10, 100_000));
        assert_eq!(
            run("rate_limit: {key: user, rate: 10}").1,
            "f:1:19: expected a rate limit key: global, client_ip, header:NAME or jwt:CLAIM, found \"user\"\n\
             f:1:31: expected a rate like \"100/s\", \"10/m\" or \"5/h\", found \"10\""
        );
    }

    #[test]
    fn concurrency_settings() {
        let (f, e) = run("concurrency_limit: {max_in_flight: 4, priority: {header: X-Priority}}");
        assert_eq!(e, "");
        let FilterKind::ConcurrencyLimit(c) = f.unwrap().kind else {
            panic!()
        };
        assert_eq!((c.max_in_flight, c.max_queue), (4, 0));
        assert_eq!(c.queue_timeout, Duration::from_millis(100));
        assert_eq!(
            c.priority,
            Some(PrioritySource::Header("x-priority".into()))
        );
        assert_eq!(
            run("concurrency_limit: {max_in_flight: 0, priority: x-priority}").1,
            "f:1:36: expected at least 1, found 0\n\
             f:1:49: expected priority as { header: NAME } or { claim: NAME }, found \"x-priority\""
        );
    }

    #[test]
    fn concurrency_priority_from_a_claim() {
        let (f, e) = run("concurrency_limit: {max_in_flight: 4, priority: {claim: tier}}");
        assert_eq!(e, "");
        let FilterKind::ConcurrencyLimit(c) = f.unwrap().kind else {
            panic!()
        };
        assert_eq!(c.priority, Some(PrioritySource::Claim("tier".into())));
        assert_eq!(
            run("concurrency_limit: {max_in_flight: 4, priority: {claim: \"\"}}").1,
            "f:1:57: expected a non-empty string"
        );
        assert_eq!(
            run("concurrency_limit: {max_in_flight: 4, priority: {header: a, claim: b}}").1,
            "f:1:49: expected priority as { header: NAME } or { claim: NAME }, found a mapping"
        );
        assert_eq!(
            run("concurrency_limit: {max_in_flight: 4, priority: {route: high}}").1,
            "f:1:49: expected priority as { header: NAME } or { claim: NAME }, found a mapping"
        );
    }
}
