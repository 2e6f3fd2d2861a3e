//! `listeners:`: addresses, limits, TLS and routes.

use std::net::SocketAddr;
use std::time::Duration;

use super::{listen_addr, ListenerMarks, RouteMarks};
use crate::error::Errors;
use crate::node::{Mark, Node};
use crate::read::{self, Map};
use crate::types::{
    EscapedSlashes, Listener, ListenerProtocol, ListenerTls, PathMatch, Route, RouteMatch,
};

pub(crate) const LISTENER_KEYS: &[&str] = &[
    "listen",
    "protocol",
    "header_read_timeout",
    "max_header_bytes",
    "max_request_body",
    "idle_timeout",
    "tls",
    "routes",
    "merge_slashes",
    "escaped_slashes",
    "upgrades",
    "request_body_timeout",
    "http2",
    "stream_idle_timeout",
];

/// `protocol`, `escaped_slashes` and a route's `priority`: the words, in
/// the order the parser maps them.
pub(crate) const PROTOCOLS: &[&str] = &["auto", "http1", "http2"];
pub(crate) const ESCAPED_SLASHES: &[&str] = &["reject", "decode", "keep"];
pub(crate) const PRIORITIES: &[&str] = &["high", "normal", "low"];
pub(crate) const HTTP2_KEYS: &[&str] = &["max_concurrent_streams"];
pub(crate) const TLS_KEYS: &[&str] = &[
    "cert",
    "key",
    "client_ca",
    "allowed_identities",
    "identity_header",
];

pub fn listener(
    name: &str,
    name_mark: Mark,
    node: &Node,
    errs: &mut Errors,
) -> Option<(Listener, ListenerMarks)> {
    let place = format!("in listener {name:?}");
    let m = Map::new(node, &place, LISTENER_KEYS, errs)?;
    let listen_node = m.required("listen", errs);
    let listen = listen_node.and_then(|n| listen_addr(n, errs));
    let protocol = m
        .opt("protocol", errs, |n, e| read::choice(n, PROTOCOLS, e))
        .map_or(ListenerProtocol::Auto, |i| {
            [
                ListenerProtocol::Auto,
                ListenerProtocol::Http1,
                ListenerProtocol::Http2,
            ][i]
        });
    let header_read_timeout = m
        .opt("header_read_timeout", errs, read::positive_duration)
        .unwrap_or(Duration::from_secs(10));
    let max_header_bytes = m
        .opt("max_header_bytes", errs, read::size)
        .unwrap_or(64 * 1024);
    let max_request_body = m.opt("max_request_body", errs, read::size);
    let idle_timeout = m
        .opt("idle_timeout", errs, read::positive_duration)
        .unwrap_or(Duration::from_secs(300));
    let tls = m.opt("tls", errs, |n, e| tls(name, n, e));
    let merge_slashes = m.opt("merge_slashes", errs, read::boolean).unwrap_or(true);
    let escaped_slashes = m
        .opt("escaped_slashes", errs, |n, e| {
            read::choice(n, ESCAPED_SLASHES, e)
        })
        .map_or(EscapedSlashes::Reject, |i| {
            [
                EscapedSlashes::Reject,
                EscapedSlashes::Decode,
                EscapedSlashes::Keep,
            ][i]
        });
    let request_body_timeout = m
        .opt("request_body_timeout", errs, read::positive_duration)
        .unwrap_or(Duration::from_secs(30));
    let stream_idle_timeout = m
        .opt("stream_idle_timeout", errs, read::positive_duration)
        .unwrap_or(Duration::from_secs(300));
    let http2_max_concurrent_streams = m
        .opt("http2", errs, |n, e| http2_settings(name, n, e))
        .flatten()
        .unwrap_or(100);
    let upgrades = m
        .opt("upgrades", errs, upgrade_tokens)
        .unwrap_or_else(|| vec!["websocket".to_string()]);

    let mut routes = Vec::new();
    let mut route_marks = Vec::new();
    if let Some(list) = m.required("routes", errs).and_then(|n| read::list(n, errs)) {
        if list.is_empty() {
            errs.at(
                m.key_mark("routes").unwrap_or(name_mark),
                format!("listener {name:?} has no routes"),
            );
        }
        for (i, item) in list.iter().enumerate() {
            if let Some((r, rm)) = route(name, i + 1, item, errs) {
                routes.push(r);
                route_marks.push(rm);
            }
        }
    }
    let listener = Listener {
        name: name.to_string(),
        // Kept with a placeholder so its routes are still checked.
        listen: listen.unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0))),
        protocol,
        header_read_timeout,
        max_header_bytes,
        max_request_body,
        idle_timeout,
        tls,
        routes,
        merge_slashes,
        escaped_slashes,
        upgrades,
        request_body_timeout,
        http2_max_concurrent_streams,
        stream_idle_timeout,
    };
    let marks = ListenerMarks {
        listen: listen.and(listen_node.map(|n| n.mark)),
        routes: route_marks,
    };
    Some((listener, marks))
}

/// `http2: { max_concurrent_streams: 100 }`.
fn http2_settings(listener: &str, node: &Node, errs: &mut Errors) -> Option<Option<u32>> {
    let place = format!("in http2 of listener {listener:?}");
    let m = Map::new(node, &place, HTTP2_KEYS, errs)?;
    let n = m.opt("max_concurrent_streams", errs, read::u32_);
    if let (Some(0), Some(mark)) = (n, m.key_mark("max_concurrent_streams")) {
        errs.at(mark, "max_concurrent_streams must be at least 1");
        return Some(None);
    }
    Some(n)
}

/// `upgrades: [websocket]`: protocol names as `Upgrade` carries them
/// (RFC 9110 §7.8), kept lower case. `h2c` is refused: RFC 9113 retires it,
/// and a tunnel of HTTP/2 inside it would pass by routing and filters.
fn upgrade_tokens(node: &Node, errs: &mut Errors) -> Option<Vec<String>> {
    let list = read::list(node, errs)?;
    let mut out = Vec::new();
    for item in list {
        let Some(word) = read::nonempty(item, errs) else {
            continue;
        };
        let word = word.to_ascii_lowercase();
        let token = word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~/".contains(&b));
        if !token {
            errs.at(
                item.mark,
                format!("upgrade {word:?} is not a protocol token"),
            );
        } else if word == "h2c" || word.starts_with("h2c/") {
            errs.at(
                item.mark,
                "upgrade \"h2c\" cannot be allowed: its tunnel would bypass routes and filters (RFC 9113 retires it; use HTTP/2 with prior knowledge)",
            );
        } else if !out.contains(&word) {
            out.push(word);
        }
    }
    Some(out)
}

fn tls(listener: &str, node: &Node, errs: &mut Errors) -> Option<ListenerTls> {
    let place = format!("in tls of listener {listener:?}");
    let m = Map::new(node, &place, TLS_KEYS, errs)?;
    let cert = m.req("cert", errs, read::nonempty);
    let key = m.req("key", errs, read::nonempty);
    let client_ca = m.opt("client_ca", errs, read::nonempty);
    let allowed_identities = m
        .opt("allowed_identities", errs, read::strings)
        .unwrap_or_default();
    if client_ca.is_none() {
        if let Some(mark) = m.key_mark("allowed_identities") {
            errs.at(mark, "allowed_identities needs client_ca (mutual TLS)");
        }
    }
    let identity_header = m
        .opt("identity_header", errs, read::header_name)
        .unwrap_or_else(|| "x-client-identity".into());
    Some(ListenerTls {
        cert: cert?,
        key: key?,
        client_ca,
        allowed_identities,
        identity_header,
    })
}

pub(crate) const ROUTE_KEYS: &[&str] = &[
    "name",
    "match",
    "upstream",
    "timeout",
    "filters",
    "max_request_body",
    "case_sensitive",
    "priority",
    "queue",
];

fn route(listener: &str, n: usize, node: &Node, errs: &mut Errors) -> Option<(Route, RouteMarks)> {
    // The name first, so that every other message can use it.
    let given = node
        .get("name")
        .and_then(|n| n.scalar())
        .map(|s| s.text.clone());
    let name = given
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| format!("{listener}-{n}"));
    let place = format!("in route {name:?}");
    let m = Map::new(node, &place, ROUTE_KEYS, errs)?;
    if let Some(n) = m.get("name") {
        read::nonempty(n, errs);
    }
    let matcher = m
        .opt("match", errs, |n, e| route_match(&name, n, e))
        .unwrap_or_default();
    let upstream_node = m.required("upstream", errs);
    let upstream = upstream_node.and_then(|n| read::nonempty(n, errs));
    let timeout = m.opt("timeout", errs, read::positive_duration);
    let max_request_body = m.opt("max_request_body", errs, read::size);
    let case_sensitive = m.opt("case_sensitive", errs, read::boolean).unwrap_or(true);
    let priority = m
        .opt("priority", errs, |n, e| read::choice(n, PRIORITIES, e))
        .map(|i| {
            use crate::types::PriorityClass as P;
            [P::High, P::Normal, P::Low][i]
        });
    let queue_node = m.get("queue");
    let queue = queue_node.and_then(|n| read::nonempty(n, errs));
    let mut filters = Vec::new();
    let mut filter_marks = Vec::new();
    if let Some(items) = m.opt("filters", errs, read::list) {
        for item in items {
            if let Some(f) = read::nonempty(item, errs) {
                if filters.contains(&f) {
                    errs.at(
                        item.mark,
                        format!("route {name:?} lists filter {f:?} twice"),
                    );
                    continue;
                }
                filters.push(f);
                filter_marks.push(item.mark);
            }
        }
    }
    let route = Route {
        name,
        matcher,
        // Empty when missing or wrong (already reported): not checked again.
        upstream: upstream.unwrap_or_default(),
        timeout,
        filters,
        max_request_body,
        case_sensitive,
        priority,
        queue,
    };
    let marks = RouteMarks {
        name: m.key_mark("name").unwrap_or(m.mark),
        upstream: upstream_node.map_or(m.mark, |n| n.mark),
        filters: filter_marks,
        queue: queue_node.map(|n| n.mark),
    };
    Some((route, marks))
}

pub(crate) const MATCH_KEYS: &[&str] = &[
    "path",
    "path_prefix",
    "path_regex",
    "methods",
    "headers",
    "host",
];

fn route_match(route: &str, node: &Node, errs: &mut Errors) -> Option<RouteMatch> {
    let m = Map::new(
        node,
        &format!("in match of route {route:?}"),
        MATCH_KEYS,
        errs,
    )?;
    // In file order: the second one written is the one reported.
    let mut given: Vec<(&str, Mark)> = ["path", "path_prefix", "path_regex"]
        .into_iter()
        .filter_map(|k| m.key_mark(k).map(|mark| (k, mark)))
        .collect();
    given.sort_by_key(|(_, mark)| *mark);
    let given: Vec<&str> = given.iter().map(|(k, _)| *k).collect();
    if given.len() > 1 {
        let second = m.key_mark(given[1]).unwrap_or(m.mark);
        errs.at(
            second,
            format!(
                "route {route:?} match has both {} and {}; use one",
                given[0], given[1]
            ),
        );
    }
    let path = given.first().and_then(|key| {
        let n = m.get(key)?;
        let text = read::nonempty(n, errs)?;
        match *key {
            "path_regex" => match regex::Regex::new(&text) {
                Ok(_) => Some(PathMatch::Regex(text)),
                Err(e) => {
                    errs.at(
                        n.mark,
                        format!("path_regex {text:?} does not compile: {}", regex_error(&e)),
                    );
                    None
                }
            },
            _ if !text.starts_with('/') => {
                errs.at(
                    n.mark,
                    format!("{key} must start with \"/\", found {text:?}"),
                );
                None
            }
            "path" => Some(PathMatch::Exact(text)),
            _ => Some(PathMatch::Prefix(text)),
        }
    });
    let methods = m.opt("methods", errs, read::methods);
    let mut headers = Vec::new();
    if let Some(h) = m.get("headers") {
        if let Some(map) = Map::any(h, &format!("in headers of route {route:?}"), errs) {
            for (key, key_mark, value) in map.entries() {
                let key_node = Node {
                    mark: key_mark,
                    value: crate::node::Value::Scalar(crate::node::Scalar {
                        text: key.to_string(),
                        plain: false,
                        substituted: false,
                    }),
                };
                if let (Some(k), Some(v)) = (
                    read::header_name(&key_node, errs),
                    read::string(value, errs),
                ) {
                    headers.push((k, v));
                }
            }
        }
    }
    let host = m
        .opt("host", errs, read::nonempty)
        .map(|h| strip_port(&h.to_ascii_lowercase()));
    Some(RouteMatch {
        path,
        methods,
        headers,
        host,
    })
}

/// `host:8080` -> `host`; IPv6 `[::1]:80` -> `[::1]`.
fn strip_port(host: &str) -> String {
    match host.rsplit_once(':') {
        Some((h, port))
            if !h.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit())
                && (!h.contains(':') || h.ends_with(']')) =>
        {
            h.to_string()
        }
        _ => host.to_string(),
    }
}

/// The last line of a regex error: `unclosed group` rather than the whole drawing.
pub fn regex_error(e: &regex::Error) -> String {
    let text = e.to_string();
    let last = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    last.trim().trim_start_matches("error: ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::load;

    fn listener_errors(yaml: &str) -> (Option<Listener>, String) {
        let node = load(yaml).unwrap();
        let mut errs = Errors::new("f");
        let out = listener("in", Mark::new(1, 1), &node, &mut errs).map(|(l, _)| l);
        (out, errs.finish().to_string())
    }

    #[test]
    fn defaults_and_route_names() {
        let (l, e) = listener_errors("listen: 0.0.0.0:8080\nroutes:\n  - upstream: a\n  - name: b\n    upstream: a\n  - upstream: a\n");
        assert_eq!(e, "");
        let l = l.unwrap();
        assert_eq!(l.protocol, ListenerProtocol::Auto);
        assert_eq!(l.header_read_timeout, Duration::from_secs(10));
        assert_eq!(l.max_header_bytes, 65536);
        assert_eq!(l.idle_timeout, Duration::from_secs(300));
        let names: Vec<_> = l.routes.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["in-1", "b", "in-3"]);
        assert_eq!(l.routes[0].matcher, RouteMatch::default());
    }

    #[test]
    fn match_checks() {
        let (_, e) = listener_errors(
            "listen: 0.0.0.0:8080\nroutes:\n  - upstream: a\n    match: {path: /a, path_regex: \"(\", methods: [get, \"P T\"], headers: {X-A: 1, \"b c\": 2}}\n",
        );
        assert_eq!(
            e,
            "f:4:23: route \"in-1\" match has both path and path_regex; use one\n\
             f:4:55: invalid method \"P T\"\n\
             f:4:81: invalid header name \"b c\""
        );
        let (_, e) = listener_errors(
            "listen: 0.0.0.0:8080\nroutes:\n  - upstream: a\n    match: {path_regex: \"(\"}\n",
        );
        assert_eq!(
            e,
            "f:4:25: path_regex \"(\" does not compile: unclosed group"
        );
        let (_, e) = listener_errors(
            "listen: 0.0.0.0:8080\nroutes:\n  - upstream: a\n    match: {path_prefix: api}\n",
        );
        assert_eq!(
            e,
            "f:4:26: path_prefix must start with \"/\", found \"api\""
        );
    }

    #[test]
    fn match_values() {
        let (l, e) = listener_errors(
            "listen: 0.0.0.0:8080\nroutes:\n  - upstream: a\n    match: {path_prefix: /api/, methods: [get], headers: {X-V: 2}, host: Orders:80}\n",
        );
        assert_eq!(e, "");
        let m = &l.unwrap().routes[0].matcher;
        assert_eq!(m.path, Some(PathMatch::Prefix("/api/".into())));
        assert_eq!(m.methods, Some(vec!["GET".to_string()]));
        assert_eq!(m.headers, vec![("x-v".to_string(), "2".to_string())]);
        assert_eq!(m.host.as_deref(), Some("orders"));
    }

    #[test]
    fn tls_and_missing() {
        let (_, e) = listener_errors("tls: {cert: a, allowed_identities: [x]}\nroutes: []\n");
        assert_eq!(
            e,
            "f:1:1: missing key \"listen\" in listener \"in\"\n\
             f:1:6: missing key \"key\" in tls of listener \"in\"\n\
             f:1:16: allowed_identities needs client_ca (mutual TLS)\n\
             f:2:1: listener \"in\" has no routes"
        );
    }
}
