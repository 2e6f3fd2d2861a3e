//! Checks that span sections: names that must resolve, addresses used
//! twice, filter order; and the non-fatal warnings.

use std::net::SocketAddr;

use crate::error::Errors;
use crate::parse::Marks;
use crate::suggest::did_you_mean;
use crate::types::{Config, EscapedSlashes, FilterKind, PathMatch, RateLimitKey, UpstreamProtocol};

pub fn cross_check(cfg: &Config, marks: &Marks, errs: &mut Errors) {
    addresses(cfg, marks, errs);
    // A map, not a scan: 100,000 routes must check in time (limits.md).
    let mut route_names: std::collections::HashMap<&str, &str> = std::collections::HashMap::new();
    for (listener, lm) in cfg.listeners.iter().zip(&marks.listeners) {
        for (route, rm) in listener.routes.iter().zip(&lm.routes) {
            if let Some(other) = route_names.get(route.name.as_str()) {
                errs.at(
                    rm.name,
                    format!(
                        "duplicate route name {:?} (also in listener {other:?})",
                        route.name
                    ),
                );
            }
            route_names.entry(&route.name).or_insert(&listener.name);
            if !route.upstream.is_empty() && !marks.upstream_names.contains(&route.upstream) {
                let hint = did_you_mean(
                    &route.upstream,
                    marks.upstream_names.iter().map(String::as_str),
                );
                errs.at(
                    rm.upstream,
                    format!(
                        "route {:?} names unknown upstream {:?}{hint}",
                        route.name, route.upstream
                    ),
                );
            }
            if let Some(q) = &route.queue {
                queue_route(cfg, marks, route, rm, q, errs);
            }
            let mut seen_jwt = false;
            for (name, mark) in route.filters.iter().zip(&rm.filters) {
                if !marks.filter_names.contains(name) {
                    let hint = did_you_mean(name, marks.filter_names.iter().map(String::as_str));
                    errs.at(
                        *mark,
                        format!("route {:?} names unknown filter {name:?}{hint}", route.name),
                    );
                    continue;
                }
                match cfg.filter(name).map(|f| &f.kind) {
                    Some(FilterKind::Jwt(_)) => seen_jwt = true,
                    Some(FilterKind::RateLimit(r)) => {
                        if let RateLimitKey::JwtClaim(claim) = &r.key {
                            if !seen_jwt {
                                errs.at(
                                    *mark,
                                    format!(
                                        "rate_limit filter {name:?} keys on jwt:{claim} but route {:?} has no jwt filter before it",
                                        route.name
                                    ),
                                );
                            }
                        }
                    }
                    Some(FilterKind::Authorize(a)) => {
                        let uses_claims = a.rules.iter().any(|r| !r.conditions.claims.is_empty());
                        if uses_claims && !seen_jwt {
                            errs.at(
                                *mark,
                                format!(
                                    "authorize filter {name:?} has rules on claims but route {:?} has no jwt filter before it",
                                    route.name
                                ),
                            );
                        }
                    }
                    Some(FilterKind::ConcurrencyLimit(c)) => {
                        // A route's own priority replaces the filter's source there.
                        if let Some(crate::types::PrioritySource::Claim(claim)) = &c.priority {
                            if !seen_jwt && route.priority.is_none() {
                                errs.at(
                                    *mark,
                                    format!(
                                        "concurrency_limit filter {name:?} takes priority from claim {claim:?} but route {:?} has no jwt filter before it",
                                        route.name
                                    ),
                                );
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

/// A queue route names a queue that exists, and leaves delivery policy
/// (retries, breaking) to it (async.md).
fn queue_route(
    cfg: &Config,
    marks: &Marks,
    route: &crate::types::Route,
    rm: &crate::parse::RouteMarks,
    queue: &str,
    errs: &mut Errors,
) {
    let at = rm.queue.unwrap_or(rm.name);
    if !marks.queue_names.iter().any(|q| q == queue) {
        let hint = did_you_mean(queue, marks.queue_names.iter().map(String::as_str));
        errs.at(
            at,
            format!("route {:?} names unknown queue {queue:?}{hint}", route.name),
        );
        return;
    }
    for (name, mark) in route.filters.iter().zip(&rm.filters) {
        let kind = match cfg.filter(name).map(|f| &f.kind) {
            Some(FilterKind::Retry(_)) => "retry",
            Some(FilterKind::CircuitBreaker(_)) => "circuit_breaker",
            _ => continue,
        };
        errs.at(
            *mark,
            format!(
                "route {:?} hands requests to queue {queue:?}: its {kind} filter {name:?} would never run (delivery retries are the queue's delivery settings); remove it from the route",
                route.name
            ),
        );
    }
}

/// Two sockets that cannot both be bound. Port 0 (any free port) never clashes.
fn clash(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port()
        && a.port() != 0
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

fn addresses(cfg: &Config, marks: &Marks, errs: &mut Errors) {
    let mut taken: Vec<(String, SocketAddr)> = vec![("admin".to_string(), cfg.admin.listen)];
    for (l, lm) in cfg.listeners.iter().zip(&marks.listeners) {
        let Some(mark) = lm.listen else { continue };
        if let Some((owner, _)) = taken.iter().find(|(_, a)| clash(*a, l.listen)) {
            errs.at(
                mark,
                format!(
                    "listener {:?} listens on {}, already used by {owner}",
                    l.name, l.listen
                ),
            );
        }
        taken.push((format!("listener {:?}", l.name), l.listen));
    }
}

/// Non-fatal remarks about a valid config, one line each.
pub fn warnings(cfg: &Config) -> Vec<String> {
    let mut out = Vec::new();
    if !cfg.admin.listen.ip().to_canonical().is_loopback() && cfg.admin.token.is_none() {
        out.push(format!(
            "admin.listen {} is not a loopback address and admin.token is not set: anyone who reaches it can read /config and /metrics and POST /reload; set admin.token: ${{ADMIN_TOKEN}}",
            cfg.admin.listen
        ));
    }
    for l in &cfg.listeners {
        let guarded = l
            .routes
            .iter()
            .any(|r| !r.filters.is_empty() && matches!(r.matcher.path, Some(PathMatch::Prefix(_))));
        if l.escaped_slashes == EscapedSlashes::Keep && guarded {
            out.push(format!(
                "listener {:?} keeps encoded slashes (escaped_slashes: keep): an upstream that decodes %2F can be reached past a path_prefix route's filters",
                l.name
            ));
        }
        for r in &l.routes {
            let path = match &r.matcher.path {
                Some(PathMatch::Exact(p) | PathMatch::Prefix(p)) => p,
                _ => continue,
            };
            if !is_normal(path, l.merge_slashes) {
                out.push(format!(
                    "route {:?} matches {path:?}, which is not a normalized path: requests are normalized before routing, so it never matches as written",
                    r.name
                ));
            }
        }
    }
    for route in cfg.listeners.iter().flat_map(|l| &l.routes) {
        let Some(PathMatch::Prefix(prefix)) = &route.matcher.path else {
            continue;
        };
        let http1 = cfg
            .upstream(&route.upstream)
            .is_some_and(|u| u.protocol == UpstreamProtocol::Http1);
        if http1 && looks_like_grpc_service(prefix) {
            out.push(format!(
                "route {:?} can receive gRPC but upstream {:?} is http1; gRPC needs protocol: http2",
                route.name, route.upstream
            ));
        }
    }
    client_priority_headers(cfg, &mut out);
    identities_without_client_ca(cfg, &mut out);
    breaker_outside_retry(cfg, &mut out);
    out
}

/// A route listing a `circuit_breaker` before (outside) a `retry`: the
/// breaker sees one outcome per request, whatever its tries met, so it opens
/// `attempts` times later than the upstream's failures say, and while it is
/// closed the retries go on hammering a failing upstream. Listed the other
/// way, each try counts and an open circuit stops the remaining tries.
fn breaker_outside_retry(cfg: &Config, out: &mut Vec<String>) {
    for r in cfg.listeners.iter().flat_map(|l| &l.routes) {
        let kinds: Vec<(&str, &FilterKind)> = r
            .filters
            .iter()
            .filter_map(|name| cfg.filter(name))
            .map(|f| (f.name.as_str(), &f.kind))
            .collect();
        let breaker = kinds
            .iter()
            .position(|(_, k)| matches!(k, FilterKind::CircuitBreaker(_)));
        let retry = kinds
            .iter()
            .rposition(|(_, k)| matches!(k, FilterKind::Retry(_)));
        if let (Some(b), Some(t)) = (breaker, retry) {
            if b < t {
                out.push(format!(
                    "route {:?} lists circuit_breaker {:?} before retry {:?}: the breaker then counts one outcome per request, not per try, and opens late while the retries go on; list the retry first (filters: [{}, {}])",
                    r.name, kinds[b].0, kinds[t].0, kinds[t].0, kinds[b].0
                ));
            }
        }
    }
}

/// No dot segment, no `//` (with merge_slashes), no escaped unreserved
/// character: what the request model leaves of a path.
fn is_normal(path: &str, merge_slashes: bool) -> bool {
    let dots = path
        .split('/')
        .any(|seg| seg == "." || seg == ".." || seg.to_ascii_lowercase().contains("%2e"));
    let unreserved_escape = path.as_bytes().windows(3).any(|w| {
        w[0] == b'%'
            && std::str::from_utf8(&w[1..])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .is_some_and(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
    });
    !dots && !unreserved_escape && (!merge_slashes || !path.contains("//"))
}

/// `/package.Service/...`: a first segment with a dot, then a slash.
fn looks_like_grpc_service(prefix: &str) -> bool {
    let Some((service, _)) = prefix.strip_prefix('/').and_then(|p| p.split_once('/')) else {
        return false;
    };
    service.contains('.')
        && !service.starts_with('.')
        && !service.ends_with('.')
        && service
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
}

/// An authorize rule on `identities` on a route whose listener verifies no
/// client certificate: no request there has an identity, so the rule never
/// matches.
fn identities_without_client_ca(cfg: &Config, out: &mut Vec<String>) {
    for l in &cfg.listeners {
        if l.tls.as_ref().is_some_and(|t| t.client_ca.is_some()) {
            continue;
        }
        let mut warned: Vec<&str> = Vec::new();
        for r in &l.routes {
            for f in r.filters.iter().filter_map(|name| cfg.filter(name)) {
                let FilterKind::Authorize(a) = &f.kind else {
                    continue;
                };
                let Some(rule) = a.rules.iter().find(|r| !r.conditions.identities.is_empty())
                else {
                    continue;
                };
                if warned.contains(&f.name.as_str()) {
                    continue;
                }
                warned.push(&f.name);
                out.push(format!(
                    "authorize filter {:?} rule {:?} matches identities, but listener {:?} has no tls.client_ca, so its requests have none",
                    f.name, rule.name, l.name
                ));
            }
        }
    }
}

/// A concurrency_limit filter reading its priority from a header, on a
/// route of a listener any client can reach: any client can say `high`.
/// Loopback-only listeners (a sidecar's local clients) and listeners that
/// verify client certificates (`tls.client_ca`) are trusted.
fn client_priority_headers(cfg: &Config, out: &mut Vec<String>) {
    for l in &cfg.listeners {
        let loopback = l.listen.ip().to_canonical().is_loopback();
        let mtls = l.tls.as_ref().is_some_and(|t| t.client_ca.is_some());
        if loopback || mtls {
            continue;
        }
        let mut warned: Vec<&str> = Vec::new();
        // Routes with their own priority never read the header.
        for r in l.routes.iter().filter(|r| r.priority.is_none()) {
            for f in r.filters.iter().filter_map(|name| cfg.filter(name)) {
                let FilterKind::ConcurrencyLimit(c) = &f.kind else {
                    continue;
                };
                let Some(crate::types::PrioritySource::Header(h)) = &c.priority else {
                    continue;
                };
                if warned.contains(&f.name.as_str()) {
                    continue;
                }
                warned.push(&f.name);
                out.push(format!(
                    "filter {:?} takes priority from client header {h:?} on listener {:?} ({}), which any client can set; use priority.claim or a route priority",
                    f.name, l.name, l.listen
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warns_on_kept_slashes_and_unnormal_route_paths() {
        let yaml = "listeners:
  main:
    listen: 127.0.0.1:8080
    escaped_slashes: keep
    routes:
      - { match: { path_prefix: /api/ }, upstream: u, filters: [auth] }
      - { match: { path_prefix: /a/../b }, upstream: u }
upstreams:
  u: { endpoints: [127.0.0.1:3000] }
filters:
  auth: { jwt: { algorithms: [HS256], secret: 0123456789abcdef0123456789abcdef } }
";
        let cfg = crate::parse("k.yaml", yaml).expect("valid");
        let w = warnings(&cfg).join("\n");
        assert!(w.contains("escaped_slashes: keep"), "{w}");
        assert!(
            w.contains("\"/a/../b\", which is not a normalized path"),
            "{w}"
        );
    }

    #[test]
    fn normal_route_paths() {
        assert!(is_normal("/api/", true));
        assert!(is_normal("//a", false));
        assert!(!is_normal("//a", true));
        assert!(!is_normal("/a/../b", true));
        assert!(!is_normal("/%61pi/", true));
        assert!(!is_normal("/a/%2E%2e/", true));
        assert!(is_normal("/a%2Fb", true));
    }

    #[test]
    fn grpc_prefixes() {
        assert!(looks_like_grpc_service("/shop.Orders/"));
        assert!(looks_like_grpc_service("/grpc.health.v1.Health/Check"));
        assert!(!looks_like_grpc_service("/api/"));
        assert!(!looks_like_grpc_service("/file.txt"));
        assert!(!looks_like_grpc_service("/.x/"));
    }

    #[test]
    fn clashes() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(clash(a("0.0.0.0:80"), a("127.0.0.1:80")));
        assert!(clash(a("127.0.0.1:80"), a("127.0.0.1:80")));
        assert!(!clash(a("127.0.0.1:80"), a("127.0.0.2:80")));
        assert!(!clash(a("127.0.0.1:0"), a("127.0.0.1:0")));
    }
}

#[cfg(test)]
mod priority_tests {
    use super::*;

    const FILTERS: &str = "upstreams:
  u: { endpoints: [127.0.0.1:3000] }
filters:
  auth: { jwt: { algorithms: [HS256], secret: 0123456789abcdef0123456789abcdef } }
  by-header: { concurrency_limit: { max_in_flight: 4, priority: { header: x-priority } } }
  by-claim: { concurrency_limit: { max_in_flight: 4, priority: { claim: tier } } }
";

    fn config(listen: &str, routes: &str) -> String {
        format!("listeners:\n  inbound:\n    listen: {listen}\n    routes:\n{routes}{FILTERS}")
    }

    fn warned(yaml: &str) -> Vec<String> {
        let cfg = crate::parse("k.yaml", yaml).expect("valid");
        warnings(&cfg)
            .into_iter()
            .filter(|w| w.contains("priority"))
            .collect()
    }

    #[test]
    fn a_priority_header_on_an_open_listener_is_a_warning() {
        let routes = "      - { name: a, upstream: u, filters: [by-header] }
      - { name: b, upstream: u, filters: [by-header] }
";
        assert_eq!(
            warned(&config("0.0.0.0:8080", routes)),
            ["filter \"by-header\" takes priority from client header \"x-priority\" on listener \"inbound\" (0.0.0.0:8080), which any client can set; use priority.claim or a route priority"]
        );
        assert_eq!(warned(&config("\"[::]:8080\"", routes)).len(), 1);
        // Loopback only: the sidecar's own clients.
        assert!(warned(&config("127.0.0.1:8080", routes)).is_empty());
        assert!(warned(&config("\"[::1]:8080\"", routes)).is_empty());
        // A route priority replaces the header on its route.
        let pinned = "      - { name: a, upstream: u, filters: [by-header], priority: normal }\n";
        assert!(warned(&config("0.0.0.0:8080", pinned)).is_empty());
        // A claim is no client's say.
        let claim = "      - { name: a, upstream: u, filters: [auth, by-claim] }\n";
        assert!(warned(&config("0.0.0.0:8080", claim)).is_empty());
    }

    #[test]
    fn a_priority_claim_needs_a_jwt_filter_before_it() {
        let yaml = config(
            "127.0.0.1:8080",
            "      - { name: a, upstream: u, filters: [by-claim, auth] }\n",
        );
        assert_eq!(
            crate::parse("k.yaml", &yaml).unwrap_err().to_string(),
            "k.yaml:5:43: concurrency_limit filter \"by-claim\" takes priority from claim \"tier\" but route \"a\" has no jwt filter before it"
        );
        // With its own priority the route never reads the claim.
        let pinned = config(
            "127.0.0.1:8080",
            "      - { name: a, upstream: u, filters: [by-claim], priority: low }\n",
        );
        let cfg = crate::parse("k.yaml", &pinned).expect("valid");
        assert_eq!(
            cfg.listeners[0].routes[0].priority,
            Some(crate::types::PriorityClass::Low)
        );
    }

    #[test]
    fn route_priority_values() {
        let yaml = config(
            "127.0.0.1:8080",
            "      - { name: a, upstream: u, priority: urgent }\n",
        );
        assert_eq!(
            crate::parse("k.yaml", &yaml).unwrap_err().to_string(),
            "k.yaml:5:43: expected one of high, normal, low, found \"urgent\""
        );
    }
}
