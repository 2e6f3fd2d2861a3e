//! From the marked tree to the typed [`Config`], one section per file.
//!
//! Each section reports its own errors and keeps going; what could not be
//! read is left at its default or left out, since a config with any error is
//! discarded anyway. Positions needed by the cross-checks are kept in
//! [`Marks`].

// Each section's key list is `pub(crate)`: the schema's tests hold
// `kaname schema` to them (src/schema/tests.rs).
pub(crate) mod authorize;
pub(crate) mod circuit_breaker;
pub(crate) mod condition;
pub(crate) mod filter;
pub(crate) mod jwt;
pub(crate) mod listener;
pub(crate) mod queue;
pub(crate) mod retry;
pub(crate) mod store;
pub(crate) mod tracing;
pub(crate) mod upstream;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use crate::error::Errors;
use crate::node::{Mark, Node};
use crate::read::{self, Map};
use crate::types::{Admin, Config, Log, LogFormat, Tracing};

/// Where things were written, for checks that span sections.
#[derive(Debug, Default)]
pub struct Marks {
    /// One per entry of `Config::listeners`.
    pub listeners: Vec<ListenerMarks>,
    /// Every upstream and filter name defined, even those with errors.
    pub upstream_names: Vec<String>,
    pub filter_names: Vec<String>,
    pub queue_names: Vec<String>,
}

#[derive(Debug, Default)]
pub struct ListenerMarks {
    /// None when the address was missing or wrong (already reported).
    pub listen: Option<Mark>,
    /// One per route of the listener.
    pub routes: Vec<RouteMarks>,
}

#[derive(Debug, Default)]
pub struct RouteMarks {
    /// The `name` key, or the route itself when it has none.
    pub name: Mark,
    pub upstream: Mark,
    /// One per filter name of the route.
    pub filters: Vec<Mark>,
    /// The `queue` key's value, when there is one.
    pub queue: Option<Mark>,
}

pub(crate) const TOP_KEYS: &[&str] = &[
    "admin",
    "shutdown_grace",
    "log",
    "tracing",
    "listeners",
    "upstreams",
    "filters",
    "data_dir",
    "queues",
    "stores",
];

/// Reads the whole file. `redacted_yaml` is left empty for the caller.
pub fn config(file: &str, root: &Node, errs: &mut Errors) -> (Config, Marks) {
    let mut marks = Marks::default();
    let mut cfg = Config {
        file: file.to_string(),
        admin: Admin {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9901),
            token: None,
            header_timeout: Admin::DEFAULT_HEADER_TIMEOUT,
            allowed_hosts: Vec::new(),
        },
        shutdown_grace: Duration::from_secs(30),
        log: Log {
            level: "info".into(),
            format: LogFormat::Json,
            access_log: true,
        },
        tracing: Tracing::default(),
        listeners: Vec::new(),
        upstreams: Vec::new(),
        filters: Vec::new(),
        data_dir: "./kaname-data".into(),
        queues: Vec::new(),
        stores: Vec::new(),
        redacted_yaml: String::new(),
        words: Default::default(),
    };
    if root.is_null() {
        errs.at(
            root.mark,
            "the file is empty; expected a mapping with at least \"listeners\"",
        );
        return (cfg, marks);
    }
    let place = "at the top level";
    let Some(top) = Map::any(root, place, errs) else {
        return (cfg, marks);
    };
    for (key, mark, _) in top.entries() {
        // `x-...` keys are free for anchors (as in docker compose files).
        if !TOP_KEYS.contains(&key) && !key.starts_with("x-") {
            let hint = crate::suggest::did_you_mean(key, TOP_KEYS.iter().copied());
            errs.at(mark, format!("unknown key {key:?} {place}{hint}"));
        }
    }
    if let Some(node) = top.get("admin") {
        admin(node, &mut cfg.admin, errs);
    }
    if let Some(d) = top.opt("shutdown_grace", errs, read::duration) {
        cfg.shutdown_grace = d;
    }
    if let Some(node) = top.get("log") {
        log(node, &mut cfg.log, errs);
    }
    if let Some(node) = top.get("tracing") {
        if let Some(t) = tracing::tracing(node, errs) {
            cfg.tracing = t;
        }
    }
    if let Some(node) = top.required("listeners", errs) {
        if let Some(map) = Map::any(node, "in listeners", errs) {
            if map.entries().next().is_none() {
                errs.at(
                    node.mark,
                    "listeners is empty; define at least one listener",
                );
            }
            for (name, name_mark, body) in map.entries() {
                if let Some((l, m)) = listener::listener(name, name_mark, body, errs) {
                    cfg.listeners.push(l);
                    marks.listeners.push(m);
                }
            }
        }
    }
    if let Some(map) = top
        .get("upstreams")
        .and_then(|n| Map::any(n, "in upstreams", errs))
    {
        for (name, _, body) in map.entries() {
            marks.upstream_names.push(name.to_string());
            if let Some(u) = upstream::upstream(name, body, errs) {
                cfg.upstreams.push(u);
            }
        }
    }
    if let Some(map) = top
        .get("filters")
        .and_then(|n| Map::any(n, "in filters", errs))
    {
        for (name, name_mark, body) in map.entries() {
            marks.filter_names.push(name.to_string());
            if let Some(f) = filter::filter(name, name_mark, body, errs) {
                cfg.filters.push(f);
            }
        }
    }
    if let Some(d) = top.opt("data_dir", errs, queue::data_dir) {
        cfg.data_dir = d;
    }
    if let Some(map) = top
        .get("queues")
        .and_then(|n| Map::any(n, "in queues", errs))
    {
        for (name, name_mark, body) in map.entries() {
            marks.queue_names.push(name.to_string());
            if let Some(q) = queue::queue(name, name_mark, body, errs) {
                cfg.queues.push(q);
            }
        }
    }
    let mut store_names = Vec::new();
    if let Some(map) = top
        .get("stores")
        .and_then(|n| Map::any(n, "in stores", errs))
    {
        for (name, name_mark, body) in map.entries() {
            store_names.push(name.to_string());
            if let Some(s) = store::store(name, name_mark, body, errs) {
                cfg.stores.push(s);
            }
        }
    }
    store::check_names(&top, &store_names, errs);
    (cfg, marks)
}

pub(crate) const ADMIN_KEYS: &[&str] = &["listen", "token", "header_timeout", "allowed_hosts"];

fn admin(node: &Node, admin: &mut Admin, errs: &mut Errors) {
    let Some(m) = Map::new(node, "in admin", ADMIN_KEYS, errs) else {
        return;
    };
    if let Some(addr) = m.opt("listen", errs, listen_addr) {
        admin.listen = addr;
    }
    admin.token = m.opt("token", errs, admin_token);
    if let Some(d) = m.opt("header_timeout", errs, read::positive_duration) {
        admin.header_timeout = d;
    }
    if let Some(items) = m.get("allowed_hosts").and_then(|n| read::list(n, errs)) {
        admin.allowed_hosts = items.iter().filter_map(|n| allowed_host(n, errs)).collect();
    }
}

/// An `admin.allowed_hosts` entry: a host name as a `Host` header carries
/// it, without the port (`orders`, `orders.shop.svc`); lower-cased.
fn allowed_host(node: &Node, errs: &mut Errors) -> Option<String> {
    let name = read::string(node, errs)?;
    if !is_host_name(&name) {
        let hint = if name.contains(':') {
            " (without a port: any port is accepted)"
        } else {
            ""
        };
        errs.at(
            node.mark,
            format!("admin.allowed_hosts: expected a host name like \"orders\" or \"orders.shop.svc\" (letters, digits, '-' and '.'), found {name:?}{hint}"),
        );
        return None;
    }
    Some(name.to_ascii_lowercase())
}

/// Dot-separated labels of letters, digits and `-` (not at either end of a
/// label), each 1 to 63 characters, 253 in all (RFC 1123).
fn is_host_name(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// A bearer token as `Authorization: Bearer <token>` carries it. Messages
/// never show the value (it is usually a `${VAR}`).
fn admin_token(node: &Node, errs: &mut Errors) -> Option<String> {
    let token = read::string(node, errs)?;
    if token.is_empty() {
        errs.at(node.mark, "admin.token is empty; remove it or set a token");
        return None;
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        errs.at(
            node.mark,
            "admin.token must be printable ASCII without spaces (it is sent as \"Authorization: Bearer <token>\")",
        );
        return None;
    }
    Some(token)
}

pub(crate) const LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error", "off"];
pub(crate) const LOG_KEYS: &[&str] = &["level", "format", "access_log"];
/// `log.format`, in the order the parser maps them.
pub(crate) const LOG_FORMATS: &[&str] = &["json", "text"];

fn log(node: &Node, log: &mut Log, errs: &mut Errors) {
    let Some(m) = Map::new(node, "in log", LOG_KEYS, errs) else {
        return;
    };
    if let Some(n) = m.get("level") {
        if let Some(level) = read::string(n, errs) {
            let lower = level.to_ascii_lowercase();
            // A tracing filter directive (`kaname=debug,hyper=info`) is taken as is.
            if LEVELS.contains(&lower.as_str()) || level.contains('=') {
                log.level = if level.contains('=') { level } else { lower };
            } else {
                let hint = crate::suggest::did_you_mean(&level, LEVELS.iter().copied());
                errs.at(
                    n.mark,
                    format!("expected a log level (trace, debug, info, warn, error) or a filter like \"kaname=debug\", found {level:?}{hint}"),
                );
            }
        }
    }
    if let Some(i) = m.opt("format", errs, |n, e| read::choice(n, LOG_FORMATS, e)) {
        log.format = if i == 0 {
            LogFormat::Json
        } else {
            LogFormat::Text
        };
    }
    if let Some(b) = m.opt("access_log", errs, read::boolean) {
        log.access_log = b;
    }
}

/// `0.0.0.0:8443`, `[::1]:80`, `localhost:8080` (taken as 127.0.0.1).
pub fn listen_addr(node: &Node, errs: &mut Errors) -> Option<SocketAddr> {
    let text = read::string(node, errs)?;
    let parsed = text.parse::<SocketAddr>().ok().or_else(|| {
        let port = text.strip_prefix("localhost:")?.parse::<u16>().ok()?;
        Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port))
    });
    if parsed.is_none() {
        errs.at(
            node.mark,
            format!("expected an address like \"0.0.0.0:8443\" or \"[::1]:80\", found {text:?}"),
        );
    }
    parsed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::load;

    fn errors(yaml: &str) -> String {
        let node = load(yaml).unwrap();
        let mut errs = Errors::new("f");
        let _ = config("f", &node, &mut errs);
        errs.finish().to_string()
    }

    #[test]
    fn top_level() {
        assert_eq!(
            errors("listner: {}\nx-anchors: 1\n"),
            "f:1:1: unknown key \"listner\" at the top level; did you mean \"listeners\"?\n\
             f:1:1: missing key \"listeners\" at the top level"
        );
        assert_eq!(
            errors(""),
            "f:1:1: the file is empty; expected a mapping with at least \"listeners\""
        );
        assert_eq!(
            errors("[1]"),
            "f:1:1: expected a mapping at the top level, found a list"
        );
        assert_eq!(
            errors("listeners: {}\nlog: {level: verbose}\n")
                .lines()
                .count(),
            2
        );
    }

    #[test]
    fn allowed_hosts() {
        let node = load(
            "admin: { allowed_hosts: [Orders, payments.shop.svc, 10.0.0.5] }\nlisteners: {}\n",
        )
        .unwrap();
        let mut errs = Errors::new("f");
        let (cfg, _) = config("f", &node, &mut errs);
        assert_eq!(
            cfg.admin.allowed_hosts,
            ["orders", "payments.shop.svc", "10.0.0.5"]
        );
        let e = errors(
            "admin:\n  allowed_hosts:\n    - ok\n    - \"orders:9901\"\n    - \"a b\"\n    - -x\n    - a..b\n    - \"\"\n    - \"[::1]\"\nlisteners: {}\n",
        );
        let lines: Vec<&str> = e.lines().collect();
        assert!(
            lines[0].starts_with("f:4:7: admin.allowed_hosts: expected a host name"),
            "{e}"
        );
        assert!(
            lines[0].ends_with("found \"orders:9901\" (without a port: any port is accepted)"),
            "{e}"
        );
        for (i, line) in ["f:5:7:", "f:6:7:", "f:7:7:", "f:8:7:", "f:9:7:"]
            .iter()
            .enumerate()
        {
            assert!(lines[i + 1].starts_with(line), "{e}");
        }
        assert!(errors("admin: { allowed_hosts: orders }\nlisteners: {}\n")
            .contains("f:1:25: expected a list"));
    }

    #[test]
    fn addresses() {
        let mut errs = Errors::new("f");
        let n = load("localhost:8080").unwrap();
        assert_eq!(
            listen_addr(&n, &mut errs).map(|a| a.to_string()).as_deref(),
            Some("127.0.0.1:8080")
        );
        let n = load("\"[::1]:80\"").unwrap();
        assert_eq!(
            listen_addr(&n, &mut errs).map(|a| a.to_string()).as_deref(),
            Some("[::1]:80")
        );
        let n = load("example.com:80").unwrap();
        assert_eq!(listen_addr(&n, &mut errs), None);
        assert_eq!(errs.finish().0.len(), 1);
    }
}
