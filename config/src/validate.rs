//! Checks that span sections: names that must resolve, addresses used
//! twice, filter order; and the non-fatal warnings.

use std::net::SocketAddr;

use crate::error::Errors;
use crate::parse::Marks;
use crate::suggest::did_you_mean;
use crate::types::{Config, FilterKind, PathMatch, RateLimitKey, UpstreamProtocol};

pub fn cross_check(cfg: &Config, marks: &Marks, errs: &mut Errors) {
    addresses(cfg, marks, errs);
    let mut route_names: Vec<(&str, &str)> = Vec::new();
    for (listener, lm) in cfg.listeners.iter().zip(&marks.listeners) {
        for (route, rm) in listener.routes.iter().zip(&lm.routes) {
            if let Some((_, other)) = route_names.iter().find(|(n, _)| *n == route.name) {
                errs.at(
                    rm.name,
                    format!(
                        "duplicate route name {:?} (also in listener {other:?})",
                        route.name
                    ),
                );
            }
            route_names.push((&route.name, &listener.name));
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
                    _ => {}
                }
            }
        }
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
    out
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

#[cfg(test)]
mod tests {
    use super::*;

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
