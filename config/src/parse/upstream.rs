//! `upstreams:`: endpoints, protocol, pool, health checks, outlier detection, TLS.

use std::time::Duration;

use crate::error::Errors;
use crate::node::Node;
use crate::read::{self, Map};
use crate::types::{
    Endpoint, HealthCheck, LoadBalancing, OutlierDetection, Pool, Upstream, UpstreamProtocol,
    UpstreamTls,
};

pub(crate) const KEYS: &[&str] = &[
    "endpoints",
    "protocol",
    "connect_timeout",
    "load_balancing",
    "pool",
    "dns_refresh",
    "health_check",
    "outlier_detection",
    "tls",
];

/// `protocol` and `load_balancing`: the words, in the order the parser maps them.
pub(crate) const PROTOCOLS: &[&str] = &["http1", "http2"];
pub(crate) const LOAD_BALANCING: &[&str] = &["round_robin", "least_request", "p2c_ewma"];
pub(crate) const POOL_KEYS: &[&str] = &[
    "idle_timeout",
    "max_idle_per_endpoint",
    "max_connections_per_endpoint",
];
pub(crate) const HEALTH_CHECK_KEYS: &[&str] = &[
    "path",
    "interval",
    "timeout",
    "unhealthy_after",
    "healthy_after",
];
pub(crate) const OUTLIER_KEYS: &[&str] =
    &["consecutive_failures", "eject_for", "max_ejected_percent"];
pub(crate) const TLS_KEYS: &[&str] = &["ca", "server_name", "cert", "key"];

pub fn upstream(name: &str, node: &Node, errs: &mut Errors) -> Option<Upstream> {
    let place = format!("in upstream {name:?}");
    let m = Map::new(node, &place, KEYS, errs)?;
    let endpoints = m.req("endpoints", errs, |n, e| {
        let items = read::list(n, e)?;
        if items.is_empty() {
            e.at(n.mark, format!("upstream {name:?} has no endpoints"));
        }
        Some(
            items
                .iter()
                .filter_map(|i| endpoint(i, e))
                .collect::<Vec<_>>(),
        )
    });
    let protocol = m
        .opt("protocol", errs, |n, e| read::choice(n, PROTOCOLS, e))
        .map_or(UpstreamProtocol::Http1, |i| {
            [UpstreamProtocol::Http1, UpstreamProtocol::Http2][i]
        });
    let connect_timeout = m
        .opt("connect_timeout", errs, read::positive_duration)
        .unwrap_or(Duration::from_secs(1));
    let load_balancing = m
        .opt("load_balancing", errs, |n, e| {
            read::choice(n, LOAD_BALANCING, e)
        })
        .map_or(LoadBalancing::P2cEwma, |i| {
            [
                LoadBalancing::RoundRobin,
                LoadBalancing::LeastRequest,
                LoadBalancing::P2cEwma,
            ][i]
        });
    let pool = m
        .opt("pool", errs, |n, e| pool(name, n, e))
        .unwrap_or(Pool {
            idle_timeout: Duration::from_secs(90),
            max_idle_per_endpoint: 64,
            max_connections_per_endpoint: 1024,
        });
    let dns_refresh = m
        .opt("dns_refresh", errs, read::positive_duration)
        .unwrap_or(Duration::from_secs(30));
    let health_check = m.opt("health_check", errs, |n, e| health_check(name, n, e));
    let outlier_detection = m.opt("outlier_detection", errs, |n, e| outlier(name, n, e));
    let tls = m.opt("tls", errs, |n, e| tls(name, n, e));
    Some(Upstream {
        name: name.to_string(),
        endpoints: endpoints?,
        protocol,
        connect_timeout,
        load_balancing,
        pool,
        dns_refresh,
        health_check,
        outlier_detection,
        tls,
    })
}

/// `host:port`, `10.0.0.1:80`, `[::1]:80` (host kept without brackets).
fn endpoint(node: &Node, errs: &mut Errors) -> Option<Endpoint> {
    let text = read::string(node, errs)?;
    let parsed = text.rsplit_once(':').and_then(|(host, port)| {
        let port = port.parse::<u16>().ok().filter(|p| *p > 0)?;
        let host = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Some(v6) => v6.parse::<std::net::Ipv6Addr>().ok().map(|_| v6)?,
            None if valid_host(host) => host,
            None => return None,
        };
        Some(Endpoint {
            host: host.to_ascii_lowercase(),
            port,
        })
    });
    if parsed.is_none() {
        errs.at(
            node.mark,
            format!("expected an endpoint like \"host:port\" or \"10.0.0.1:8080\", found {text:?}"),
        );
    }
    parsed
}

fn valid_host(host: &str) -> bool {
    !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
}

fn pool(upstream: &str, node: &Node, errs: &mut Errors) -> Option<Pool> {
    let place = format!("in pool of upstream {upstream:?}");
    let m = Map::new(node, &place, POOL_KEYS, errs)?;
    Some(Pool {
        idle_timeout: m
            .opt("idle_timeout", errs, read::positive_duration)
            .unwrap_or(Duration::from_secs(90)),
        max_idle_per_endpoint: m
            .opt("max_idle_per_endpoint", errs, read::usize_)
            .unwrap_or(64),
        max_connections_per_endpoint: m
            .opt("max_connections_per_endpoint", errs, read::u32_)
            .filter(|n| *n > 0)
            .unwrap_or(1024),
    })
}

fn health_check(upstream: &str, node: &Node, errs: &mut Errors) -> Option<HealthCheck> {
    let place = format!("in health_check of upstream {upstream:?}");
    let m = Map::new(node, &place, HEALTH_CHECK_KEYS, errs)?;
    let path = m.req("path", errs, |n, e| {
        let p = read::nonempty(n, e)?;
        if !p.starts_with('/') {
            e.at(n.mark, format!("path must start with \"/\", found {p:?}"));
            return None;
        }
        Some(p)
    });
    let count = |key: &str, default: u32, errs: &mut Errors| {
        m.opt(key, errs, read::at_least(1))
            .map_or(default, |n| u32::try_from(n).unwrap_or(u32::MAX))
    };
    let unhealthy_after = count("unhealthy_after", 3, errs);
    let healthy_after = count("healthy_after", 2, errs);
    let interval = m
        .opt("interval", errs, read::positive_duration)
        .unwrap_or(Duration::from_secs(5));
    let timeout = m
        .opt("timeout", errs, read::positive_duration)
        .unwrap_or(Duration::from_secs(1));
    Some(HealthCheck {
        path: path?,
        interval,
        timeout,
        unhealthy_after,
        healthy_after,
    })
}

fn outlier(upstream: &str, node: &Node, errs: &mut Errors) -> Option<OutlierDetection> {
    let place = format!("in outlier_detection of upstream {upstream:?}");
    let m = Map::new(node, &place, OUTLIER_KEYS, errs)?;
    let max_ejected_percent = m.opt("max_ejected_percent", errs, |n, e| {
        let p = read::u32_(n, e)?;
        if p > 100 {
            e.at(
                n.mark,
                format!("max_ejected_percent is a percentage, at most 100, found {p}"),
            );
            return None;
        }
        Some(p)
    });
    Some(OutlierDetection {
        consecutive_failures: m
            .opt("consecutive_failures", errs, read::at_least(1))
            .map_or(5, |n| u32::try_from(n).unwrap_or(u32::MAX)),
        eject_for: m
            .opt("eject_for", errs, read::positive_duration)
            .unwrap_or(Duration::from_secs(30)),
        max_ejected_percent: max_ejected_percent.unwrap_or(50),
    })
}

fn tls(upstream: &str, node: &Node, errs: &mut Errors) -> Option<UpstreamTls> {
    let place = format!("in tls of upstream {upstream:?}");
    let m = Map::new(node, &place, TLS_KEYS, errs)?;
    let tls = UpstreamTls {
        ca: m.opt("ca", errs, read::nonempty),
        server_name: m.opt("server_name", errs, read::nonempty),
        cert: m.opt("cert", errs, read::nonempty),
        key: m.opt("key", errs, read::nonempty),
    };
    match (m.key_mark("cert"), m.key_mark("key")) {
        (Some(mark), None) => errs.at(mark, "cert needs key (client certificate for mutual TLS)"),
        (None, Some(mark)) => errs.at(mark, "key needs cert (client certificate for mutual TLS)"),
        _ => {}
    }
    Some(tls)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::load;

    fn run(yaml: &str) -> (Option<Upstream>, String) {
        let node = load(yaml).unwrap();
        let mut errs = Errors::new("f");
        let out = upstream("u", &node, &mut errs);
        (out, errs.finish().to_string())
    }

    #[test]
    fn defaults() {
        let (u, e) = run("endpoints: [a.svc:80, \"[::1]:81\", 10.0.0.1:82]\n");
        assert_eq!(e, "");
        let u = u.unwrap();
        assert_eq!(
            u.endpoints[1],
            Endpoint {
                host: "::1".into(),
                port: 81
            }
        );
        assert_eq!(u.protocol, UpstreamProtocol::Http1);
        assert_eq!(u.load_balancing, LoadBalancing::P2cEwma);
        assert_eq!(u.pool.max_idle_per_endpoint, 64);
        assert_eq!(u.dns_refresh, Duration::from_secs(30));
        assert!(u.health_check.is_none());
    }

    #[test]
    fn errors() {
        let (_, e) = run("endpoints: []\nhealth_check: {path: healthz, interval: 0s}\n");
        assert_eq!(
            e,
            "f:1:12: upstream \"u\" has no endpoints\n\
             f:2:22: path must start with \"/\", found \"healthz\"\n\
             f:2:41: expected a duration greater than zero"
        );
        let (_, e) = run("endpoints: [nohost, \"a b:1\", x:0, x:99999]\ntls: {cert: c}\n");
        assert_eq!(e.lines().count(), 5, "{e}");
    }
}
