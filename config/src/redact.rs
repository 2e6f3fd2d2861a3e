//! The config as YAML for the admin `/config` endpoint, secrets hidden.
//!
//! Rendered from the typed [`Config`], never from the file's text: only what
//! the parser read can appear (anchors resolved, `x-` keys and everything
//! else the parser dropped absent), with every default filled in, in the
//! words the file would use (`10s`, `64KiB`, `100/s`). The result reads back
//! as the same config, redactions aside.
//!
//! Shown as `<redacted>`: jwt `secret`, private keys (`key` of a `tls`
//! section), `admin.token`, every value that had a `${VAR}` substituted in
//! (found in the marked tree the value was read from), and the user-info,
//! query and fragment of every URL (and the query of a health check path).

use std::time::Duration;

use crate::node::{Node, Value};
use crate::types::{
    CircuitBreaker, ConcurrencyLimit, Condition, Config, EscapedSlashes, Filter, FilterKind,
    JwksSource, Jwt, ListenerProtocol, LoadBalancing, PathMatch, PriorityClass, PrioritySource,
    RateLimit, RateLimitKey, Retry, RetryMethods, Route, RouteMatch, TokenSource, Upstream,
    UpstreamProtocol,
};

pub(crate) const REDACTED: &str = "<redacted>";

use crate::GRPC_CODE_NAMES as GRPC_CODES;

/// `cfg` as YAML; `root` is the tree it was read from (after `${VAR}`
/// substitution), used only to find which values were substituted.
pub fn redacted_yaml(cfg: &Config, root: &Node) -> String {
    let r = Render::new(root);
    let mut out = String::new();
    if let Y::Map(entries) = r.config(cfg, Src::Exact(root)) {
        write_map(&entries, 0, &mut out);
    }
    out
}

/// A YAML value before it is written.
pub(crate) enum Y {
    /// Written as is: numbers, booleans, durations, sizes, fixed words.
    Plain(String),
    /// Free text: plain when that reads back the same, else double-quoted.
    Str(String),
    Redacted,
    Map(Vec<(String, Y)>),
    Seq(Vec<Y>),
}

/// Where in the file a typed value was read from.
#[derive(Clone, Copy)]
pub(crate) enum Src<'n> {
    /// This node.
    Exact(&'n Node),
    /// Somewhere inside this node (the exact place is not known): counts as
    /// substituted when anything inside it is.
    Within(&'n Node),
    /// Not written: a default.
    Absent,
}

impl<'n> Src<'n> {
    pub(crate) fn key(self, key: &str) -> Src<'n> {
        match self {
            Src::Exact(n) => match &n.value {
                Value::Map(_) => n.get(key).map_or(Src::Absent, Src::Exact),
                _ => Src::Within(n),
            },
            other => other,
        }
    }

    /// A key compared without case (header names are kept lower case).
    fn key_nocase(self, key: &str) -> Src<'n> {
        match self {
            Src::Exact(n) => match &n.value {
                Value::Map(entries) => entries
                    .iter()
                    .find(|(k, _)| k.scalar().is_some_and(|s| s.text.eq_ignore_ascii_case(key)))
                    .map_or(Src::Within(n), |(_, v)| Src::Exact(v)),
                _ => Src::Within(n),
            },
            other => other,
        }
    }

    /// Item `i` of a list read into `len` typed values; when the file's list
    /// has another length (items merged or dropped), the whole list.
    pub(crate) fn item(self, i: usize, len: usize) -> Src<'n> {
        match self {
            Src::Exact(n) => match &n.value {
                Value::Seq(items) if items.len() == len => Src::Exact(&items[i]),
                _ => Src::Within(n),
            },
            other => other,
        }
    }

    fn substituted(self) -> bool {
        match self {
            Src::Exact(n) | Src::Within(n) => any_substituted(n),
            Src::Absent => false,
        }
    }
}

fn any_substituted(node: &Node) -> bool {
    match &node.value {
        Value::Scalar(s) => s.substituted,
        Value::Seq(items) => items.iter().any(any_substituted),
        Value::Map(entries) => entries
            .iter()
            .any(|(k, v)| any_substituted(k) || any_substituted(v)),
    }
}

fn collect_substituted(node: &Node, out: &mut Vec<String>) {
    match &node.value {
        Value::Scalar(s) => {
            if s.substituted && !s.text.is_empty() {
                out.push(s.text.to_lowercase());
            }
        }
        Value::Seq(items) => items.iter().for_each(|n| collect_substituted(n, out)),
        Value::Map(entries) => entries.iter().for_each(|(k, v)| {
            collect_substituted(k, out);
            collect_substituted(v, out);
        }),
    }
}

/// An ordered mapping under construction.
#[derive(Default)]
pub(crate) struct M(Vec<(String, Y)>);

impl M {
    pub(crate) fn put(&mut self, key: &str, value: Y) -> &mut Self {
        self.0.push((key.to_string(), value));
        self
    }
    pub(crate) fn opt(&mut self, key: &str, value: Option<Y>) -> &mut Self {
        if let Some(v) = value {
            self.put(key, v);
        }
        self
    }
    pub(crate) fn done(&mut self) -> Y {
        Y::Map(std::mem::take(&mut self.0))
    }
}

pub(crate) struct Render {
    /// Every scalar text that had a `${VAR}` substituted in, lower case: a
    /// second guard, so that a string derived from one is hidden even where
    /// its place in the file was not found.
    substituted: Vec<String>,
}

impl Render {
    pub(crate) fn new(root: &Node) -> Self {
        let mut substituted = Vec::new();
        collect_substituted(root, &mut substituted);
        Render { substituted }
    }

    /// Free text read from `src`.
    pub(crate) fn s(&self, text: &str, src: Src) -> Y {
        if src.substituted() || self.derived_from_substituted(text) {
            return Y::Redacted;
        }
        Y::Str(redact_url(text))
    }

    /// A number, boolean or fixed word read from `src`.
    pub(crate) fn p(&self, text: impl Into<String>, src: Src) -> Y {
        if src.substituted() {
            return Y::Redacted;
        }
        Y::Plain(text.into())
    }

    pub(crate) fn strs(&self, items: &[String], src: Src) -> Y {
        Y::Seq(
            items
                .iter()
                .enumerate()
                .map(|(i, t)| self.s(t, src.item(i, items.len())))
                .collect(),
        )
    }

    fn derived_from_substituted(&self, text: &str) -> bool {
        let lower = text.to_lowercase();
        self.substituted
            .iter()
            .any(|s| lower == *s || (s.len() >= 4 && lower.contains(s.as_str())))
    }

    fn config(&self, cfg: &Config, src: Src) -> Y {
        // Every field is named: a new one must be rendered (or skipped) here
        // on purpose.
        let Config {
            file: _,
            admin,
            shutdown_grace,
            log,
            tracing,
            listeners,
            upstreams,
            filters,
            data_dir,
            queues,
            stores,
            redacted_yaml: _,
            words: _,
        } = cfg;
        let a = src.key("admin");
        let crate::types::Admin {
            listen,
            token,
            header_timeout,
            allowed_hosts,
        } = admin;
        let admin = M::default()
            .put("listen", self.s(&listen.to_string(), a.key("listen")))
            .opt("token", token.as_ref().map(|_| Y::Redacted))
            .put(
                "header_timeout",
                self.p(duration(*header_timeout), a.key("header_timeout")),
            )
            .put(
                "allowed_hosts",
                self.strs(allowed_hosts, a.key("allowed_hosts")),
            )
            .done();
        let l = src.key("log");
        let log = M::default()
            .put("level", self.s(&log.level, l.key("level")))
            .put(
                "format",
                self.p(
                    match log.format {
                        crate::types::LogFormat::Json => "json",
                        crate::types::LogFormat::Text => "text",
                    },
                    l.key("format"),
                ),
            )
            .put(
                "access_log",
                self.p(log.access_log.to_string(), l.key("access_log")),
            )
            .done();
        let ts = src.key("tracing");
        let crate::types::Tracing { start_traces, otlp } = tracing;
        let tracing = M::default()
            .put(
                "start_traces",
                self.p(start_traces.to_string(), ts.key("start_traces")),
            )
            .opt("otlp", otlp.as_ref().map(|o| self.otlp(o, ts.key("otlp"))))
            .done();
        let ls = src.key("listeners");
        let listeners = Y::Map(
            listeners
                .iter()
                .map(|l| (l.name.clone(), self.listener(l, ls.key(&l.name))))
                .collect(),
        );
        let us = src.key("upstreams");
        let upstreams = Y::Map(
            upstreams
                .iter()
                .map(|u| (u.name.clone(), self.upstream(u, us.key(&u.name))))
                .collect(),
        );
        let qs = src.key("queues");
        let queues_y = Y::Map(
            queues
                .iter()
                .map(|q| (q.name.clone(), self.queue(q, qs.key(&q.name))))
                .collect(),
        );
        let ss = src.key("stores");
        let stores_y = Y::Map(
            stores
                .iter()
                .map(|st| (st.name.clone(), self.store(st, ss.key(&st.name))))
                .collect(),
        );
        let fs = src.key("filters");
        let filters = Y::Map(
            filters
                .iter()
                .map(|f| (f.name.clone(), self.filter(f, fs.key(&f.name))))
                .collect(),
        );
        M::default()
            .put("admin", admin)
            .put(
                "shutdown_grace",
                self.p(duration(*shutdown_grace), src.key("shutdown_grace")),
            )
            .put("log", log)
            .put("tracing", tracing)
            .put("listeners", listeners)
            .put("upstreams", upstreams)
            .put("filters", filters)
            .put("data_dir", self.s(data_dir, src.key("data_dir")))
            .put("queues", queues_y)
            .put("stores", stores_y)
            .done()
    }

    pub(crate) fn listener(&self, l: &crate::types::Listener, src: Src) -> Y {
        let crate::types::Listener {
            name: _,
            listen,
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
        } = l;
        let protocol = match protocol {
            ListenerProtocol::Auto => "auto",
            ListenerProtocol::Http1 => "http1",
            ListenerProtocol::Http2 => "http2",
        };
        let escaped = match escaped_slashes {
            EscapedSlashes::Reject => "reject",
            EscapedSlashes::Decode => "decode",
            EscapedSlashes::Keep => "keep",
        };
        let tls = tls.as_ref().map(|t| {
            let ts = src.key("tls");
            M::default()
                .put("cert", self.s(&t.cert, ts.key("cert")))
                .put("key", Y::Redacted)
                .opt(
                    "client_ca",
                    t.client_ca.as_ref().map(|c| self.s(c, ts.key("client_ca"))),
                )
                .put(
                    "allowed_identities",
                    self.strs(&t.allowed_identities, ts.key("allowed_identities")),
                )
                .put(
                    "identity_header",
                    self.s(&t.identity_header, ts.key("identity_header")),
                )
                .done()
        });
        let rs = src.key("routes");
        let routes = Y::Seq(
            routes
                .iter()
                .enumerate()
                .map(|(i, r)| self.route(r, rs.item(i, routes.len())))
                .collect(),
        );
        M::default()
            .put("listen", self.s(&listen.to_string(), src.key("listen")))
            .put("protocol", self.p(protocol, src.key("protocol")))
            .put(
                "header_read_timeout",
                self.p(
                    duration(*header_read_timeout),
                    src.key("header_read_timeout"),
                ),
            )
            .put(
                "max_header_bytes",
                self.p(size(*max_header_bytes), src.key("max_header_bytes")),
            )
            .opt(
                "max_request_body",
                max_request_body.map(|b| self.p(size(b), src.key("max_request_body"))),
            )
            .put(
                "idle_timeout",
                self.p(duration(*idle_timeout), src.key("idle_timeout")),
            )
            .put(
                "stream_idle_timeout",
                self.p(
                    duration(*stream_idle_timeout),
                    src.key("stream_idle_timeout"),
                ),
            )
            .put(
                "merge_slashes",
                self.p(merge_slashes.to_string(), src.key("merge_slashes")),
            )
            .put(
                "escaped_slashes",
                self.p(escaped, src.key("escaped_slashes")),
            )
            .put("upgrades", self.strs(upgrades, src.key("upgrades")))
            .put(
                "request_body_timeout",
                self.p(
                    duration(*request_body_timeout),
                    src.key("request_body_timeout"),
                ),
            )
            .put(
                "http2",
                M::default()
                    .put(
                        "max_concurrent_streams",
                        self.p(
                            http2_max_concurrent_streams.to_string(),
                            src.key("http2").key("max_concurrent_streams"),
                        ),
                    )
                    .done(),
            )
            .opt("tls", tls)
            .put("routes", routes)
            .done()
    }

    pub(crate) fn route(&self, r: &Route, src: Src) -> Y {
        let Route {
            name,
            matcher,
            upstream,
            timeout,
            filters,
            max_request_body,
            case_sensitive,
            priority,
            queue,
        } = r;
        let matcher = (*matcher != RouteMatch::default())
            .then(|| self.route_match(matcher, src.key("match")));
        M::default()
            .put("name", self.s(name, src.key("name")))
            .opt("match", matcher)
            .put("upstream", self.s(upstream, src.key("upstream")))
            .opt(
                "timeout",
                timeout.map(|t| self.p(duration(t), src.key("timeout"))),
            )
            .put("filters", self.strs(filters, src.key("filters")))
            .opt(
                "max_request_body",
                max_request_body.map(|b| self.p(size(b), src.key("max_request_body"))),
            )
            .put(
                "case_sensitive",
                self.p(case_sensitive.to_string(), src.key("case_sensitive")),
            )
            .opt(
                "priority",
                priority.map(|p| self.p(priority_word(p), src.key("priority"))),
            )
            .opt("queue", queue.as_ref().map(|q| self.s(q, src.key("queue"))))
            .done()
    }

    fn route_match(&self, m: &RouteMatch, src: Src) -> Y {
        let RouteMatch {
            path,
            methods,
            headers,
            host,
        } = m;
        let mut out = M::default();
        match path {
            Some(PathMatch::Exact(p)) => out.put("path", self.s(p, src.key("path"))),
            Some(PathMatch::Prefix(p)) => out.put("path_prefix", self.s(p, src.key("path_prefix"))),
            Some(PathMatch::Regex(p)) => out.put("path_regex", self.s(p, src.key("path_regex"))),
            None => &mut out,
        };
        if let Some(methods) = methods {
            out.put("methods", self.strs(methods, src.key("methods")));
        }
        if !headers.is_empty() {
            let hs = src.key("headers");
            let headers = headers
                .iter()
                .map(|(k, v)| (k.clone(), self.s(v, hs.key_nocase(k))))
                .collect();
            out.put("headers", Y::Map(headers));
        }
        out.opt("host", host.as_ref().map(|h| self.s(h, src.key("host"))));
        out.done()
    }

    pub(crate) fn upstream(&self, u: &Upstream, src: Src) -> Y {
        let Upstream {
            name: _,
            endpoints,
            protocol,
            connect_timeout,
            load_balancing,
            pool,
            dns_refresh,
            health_check,
            outlier_detection,
            tls,
        } = u;
        let es = src.key("endpoints");
        let endpoints = Y::Seq(
            endpoints
                .iter()
                .enumerate()
                .map(|(i, e)| self.s(&e.to_string(), es.item(i, endpoints.len())))
                .collect(),
        );
        let protocol = match protocol {
            UpstreamProtocol::Http1 => "http1",
            UpstreamProtocol::Http2 => "http2",
        };
        let lb = match load_balancing {
            LoadBalancing::RoundRobin => "round_robin",
            LoadBalancing::LeastRequest => "least_request",
            LoadBalancing::P2cEwma => "p2c_ewma",
        };
        let ps = src.key("pool");
        let pool = M::default()
            .put(
                "idle_timeout",
                self.p(duration(pool.idle_timeout), ps.key("idle_timeout")),
            )
            .put(
                "max_idle_per_endpoint",
                self.p(
                    pool.max_idle_per_endpoint.to_string(),
                    ps.key("max_idle_per_endpoint"),
                ),
            )
            .done();
        let health_check = health_check.as_ref().map(|h| {
            let hs = src.key("health_check");
            let path = match self.s(&h.path, hs.key("path")) {
                Y::Str(p) => Y::Str(redact_query(&p)),
                other => other,
            };
            M::default()
                .put("path", path)
                .put("interval", self.p(duration(h.interval), hs.key("interval")))
                .put("timeout", self.p(duration(h.timeout), hs.key("timeout")))
                .put(
                    "unhealthy_after",
                    self.p(h.unhealthy_after.to_string(), hs.key("unhealthy_after")),
                )
                .put(
                    "healthy_after",
                    self.p(h.healthy_after.to_string(), hs.key("healthy_after")),
                )
                .done()
        });
        let outlier = outlier_detection.as_ref().map(|o| {
            let os = src.key("outlier_detection");
            M::default()
                .put(
                    "consecutive_failures",
                    self.p(
                        o.consecutive_failures.to_string(),
                        os.key("consecutive_failures"),
                    ),
                )
                .put(
                    "eject_for",
                    self.p(duration(o.eject_for), os.key("eject_for")),
                )
                .put(
                    "max_ejected_percent",
                    self.p(
                        o.max_ejected_percent.to_string(),
                        os.key("max_ejected_percent"),
                    ),
                )
                .done()
        });
        let tls = tls.as_ref().map(|t| {
            let ts = src.key("tls");
            M::default()
                .opt("ca", t.ca.as_ref().map(|c| self.s(c, ts.key("ca"))))
                .opt(
                    "server_name",
                    t.server_name
                        .as_ref()
                        .map(|n| self.s(n, ts.key("server_name"))),
                )
                .opt("cert", t.cert.as_ref().map(|c| self.s(c, ts.key("cert"))))
                .opt("key", t.key.as_ref().map(|_| Y::Redacted))
                .done()
        });
        M::default()
            .put("endpoints", endpoints)
            .put("protocol", self.p(protocol, src.key("protocol")))
            .put(
                "connect_timeout",
                self.p(duration(*connect_timeout), src.key("connect_timeout")),
            )
            .put("load_balancing", self.p(lb, src.key("load_balancing")))
            .put("pool", pool)
            .put(
                "dns_refresh",
                self.p(duration(*dns_refresh), src.key("dns_refresh")),
            )
            .opt("health_check", health_check)
            .opt("outlier_detection", outlier)
            .opt("tls", tls)
            .done()
    }

    pub(crate) fn filter(&self, f: &Filter, src: Src) -> Y {
        let kind = f.kind.kind_name();
        let ks = src.key(kind);
        let settings = match &f.kind {
            FilterKind::Jwt(j) => self.jwt(j, ks),
            FilterKind::RateLimit(r) => self.rate_limit(r, ks),
            FilterKind::Retry(r) => self.retry(r, ks),
            FilterKind::CircuitBreaker(b) => self.breaker(b, ks),
            FilterKind::ConcurrencyLimit(c) => self.concurrency(c, ks),
            FilterKind::Authorize(a) => self.authorize(a, ks),
        };
        M::default().put(kind, settings).done()
    }

    fn otlp(&self, o: &crate::types::Otlp, src: Src) -> Y {
        let crate::types::Otlp {
            endpoint,
            protocol,
            headers,
            timeout,
            service_name,
            resource,
            sampling,
            max_queue,
        } = o;
        // Export headers carry credentials (tracing.md): every value hidden.
        let headers = Y::Map(
            headers
                .iter()
                .map(|(k, _)| (k.clone(), Y::Redacted))
                .collect(),
        );
        let rs = src.key("resource");
        let resource = Y::Map(
            resource
                .iter()
                .map(|(k, v)| (k.clone(), self.s(v, rs.key(k))))
                .collect(),
        );
        M::default()
            .put("endpoint", self.s(endpoint, src.key("endpoint")))
            .put("protocol", self.p(protocol.word(), src.key("protocol")))
            .put("headers", headers)
            .put("timeout", self.p(duration(*timeout), src.key("timeout")))
            .put(
                "service_name",
                self.s(service_name, src.key("service_name")),
            )
            .put("resource", resource)
            .put(
                "sampling",
                self.p(sampling.to_string(), src.key("sampling")),
            )
            .put(
                "max_queue",
                self.p(max_queue.to_string(), src.key("max_queue")),
            )
            .done()
    }

    fn jwt(&self, j: &Jwt, src: Src) -> Y {
        let Jwt {
            issuers,
            audiences,
            algorithms,
            jwks,
            secret,
            leeway,
            from,
            required_claims,
            forward_claims,
            forward_token,
            cache,
        } = j;
        let js = src.key("jwks");
        let jwks = jwks.as_ref().map(|j| match j {
            JwksSource::File(f) => M::default().put("file", self.s(f, js.key("file"))).done(),
            JwksSource::Url { url, refresh } => M::default()
                .put("url", self.s(url, js.key("url")))
                .put("refresh", self.p(duration(*refresh), js.key("refresh")))
                .done(),
        });
        let fs = src.key("from");
        let from = match from {
            TokenSource::Header { name, prefix } => M::default()
                .put("header", self.s(name, fs.key("header")))
                .put("prefix", self.s(prefix, fs.key("prefix")))
                .done(),
            TokenSource::Query(q) => M::default().put("query", self.s(q, fs.key("query"))).done(),
            TokenSource::Cookie(c) => M::default()
                .put("cookie", self.s(c, fs.key("cookie")))
                .done(),
        };
        let cs = src.key("forward_claims");
        let forward_claims = Y::Map(
            forward_claims
                .iter()
                .map(|(claim, header)| (claim.clone(), self.s(header, cs.key(claim))))
                .collect(),
        );
        M::default()
            .put("issuer", self.strs(issuers, src.key("issuer")))
            .put("audiences", self.strs(audiences, src.key("audiences")))
            .put("algorithms", self.strs(algorithms, src.key("algorithms")))
            .opt("jwks", jwks)
            .opt("secret", secret.as_ref().map(|_| Y::Redacted))
            .put("leeway", self.p(duration(*leeway), src.key("leeway")))
            .put("from", from)
            .put(
                "required_claims",
                self.strs(required_claims, src.key("required_claims")),
            )
            .put("forward_claims", forward_claims)
            .put(
                "forward_token",
                self.p(forward_token.to_string(), src.key("forward_token")),
            )
            .put("cache", self.p(cache.to_string(), src.key("cache")))
            .done()
    }

    fn rate_limit(&self, r: &RateLimit, src: Src) -> Y {
        let RateLimit {
            key,
            rate,
            burst,
            max_keys,
            store,
            on_store_error,
        } = r;
        let key = match key {
            RateLimitKey::Global => "global".to_string(),
            RateLimitKey::ClientIp => "client_ip".to_string(),
            RateLimitKey::Header(h) => format!("header:{h}"),
            RateLimitKey::JwtClaim(c) => format!("jwt:{c}"),
        };
        let per = match rate.per.as_secs() {
            1 => "s",
            60 => "m",
            _ => "h",
        };
        M::default()
            .put("key", self.s(&key, src.key("key")))
            .put(
                "rate",
                self.p(format!("{}/{per}", rate.count), src.key("rate")),
            )
            .put("burst", self.p(burst.to_string(), src.key("burst")))
            .put(
                "max_keys",
                self.p(max_keys.to_string(), src.key("max_keys")),
            )
            .put(
                "store",
                self.s(store.as_deref().unwrap_or("local"), src.key("store")),
            )
            .put(
                "on_store_error",
                self.p(
                    match on_store_error {
                        crate::store::OnStoreError::Local => "local",
                        crate::store::OnStoreError::Allow => "allow",
                        crate::store::OnStoreError::Deny => "deny",
                    },
                    src.key("on_store_error"),
                ),
            )
            .done()
    }

    pub(crate) fn conditions(&self, list: &[Condition], src: Src) -> Y {
        Y::Seq(
            list.iter()
                .enumerate()
                .map(|(i, c)| {
                    let word = match c {
                        Condition::ConnectFailure => "connect_failure".to_string(),
                        Condition::Reset => "reset".to_string(),
                        Condition::Timeout => "timeout".to_string(),
                        Condition::Status5xx => "5xx".to_string(),
                        Condition::Status(code) => code.to_string(),
                        Condition::Grpc(code) => usize::try_from(*code)
                            .ok()
                            .and_then(|i| GRPC_CODES.get(i))
                            .map_or_else(|| code.to_string(), |n| n.to_string()),
                    };
                    self.p(word, src.item(i, list.len()))
                })
                .collect(),
        )
    }

    fn retry(&self, r: &Retry, src: Src) -> Y {
        let Retry {
            attempts,
            retry_on,
            methods,
            per_try_timeout,
            backoff_base,
            backoff_max,
            budget_ratio,
            budget_min_per_second,
            max_body_bytes,
            max_buffered_bytes,
        } = r;
        // `on` is an alias of `retry_on`.
        let on = match src.key("retry_on") {
            Src::Absent => src.key("on"),
            given => given,
        };
        let methods = match methods {
            RetryMethods::Idempotent => self.p("idempotent", src.key("methods")),
            RetryMethods::List(list) => self.strs(list, src.key("methods")),
        };
        let bs = src.key("backoff");
        let backoff = M::default()
            .put("base", self.p(duration(*backoff_base), bs.key("base")))
            .put("max", self.p(duration(*backoff_max), bs.key("max")))
            .done();
        let gs = src.key("budget");
        let budget = M::default()
            .put("ratio", self.p(budget_ratio.to_string(), gs.key("ratio")))
            .put(
                "min_per_second",
                self.p(budget_min_per_second.to_string(), gs.key("min_per_second")),
            )
            .done();
        M::default()
            .put(
                "attempts",
                self.p(attempts.to_string(), src.key("attempts")),
            )
            .put("retry_on", self.conditions(retry_on, on))
            .put("methods", methods)
            .opt(
                "per_try_timeout",
                per_try_timeout.map(|t| self.p(duration(t), src.key("per_try_timeout"))),
            )
            .put("backoff", backoff)
            .put("budget", budget)
            .put(
                "max_body_bytes",
                self.p(size(*max_body_bytes), src.key("max_body_bytes")),
            )
            .put(
                "max_buffered_bytes",
                self.p(size(*max_buffered_bytes), src.key("max_buffered_bytes")),
            )
            .done()
    }

    fn breaker(&self, b: &CircuitBreaker, src: Src) -> Y {
        let CircuitBreaker {
            consecutive_failures,
            failure_rate,
            open_for,
            max_open_for,
            half_open_requests,
            failure_on,
        } = b;
        let failure_rate = failure_rate.as_ref().map(|f| {
            let fs = src.key("failure_rate");
            M::default()
                .put(
                    "threshold",
                    self.p(f.threshold.to_string(), fs.key("threshold")),
                )
                .put(
                    "min_requests",
                    self.p(f.min_requests.to_string(), fs.key("min_requests")),
                )
                .put("window", self.p(duration(f.window), fs.key("window")))
                .done()
        });
        M::default()
            .put(
                "consecutive_failures",
                self.p(
                    consecutive_failures.unwrap_or(0).to_string(),
                    src.key("consecutive_failures"),
                ),
            )
            .opt("failure_rate", failure_rate)
            .put("open_for", self.p(duration(*open_for), src.key("open_for")))
            .put(
                "max_open_for",
                self.p(duration(*max_open_for), src.key("max_open_for")),
            )
            .put(
                "half_open_requests",
                self.p(
                    half_open_requests.to_string(),
                    src.key("half_open_requests"),
                ),
            )
            .put(
                "failure_on",
                self.conditions(failure_on, src.key("failure_on")),
            )
            .done()
    }

    fn authorize(&self, a: &crate::authorize::Authorize, src: Src) -> Y {
        use crate::authorize::{AuthzDecision, AuthzMode, ClaimValue, Conditions};
        let crate::authorize::Authorize {
            mode,
            default,
            rules,
            external,
        } = a;
        let word = |d: &AuthzDecision| match d {
            AuthzDecision::Allow => "allow",
            AuthzDecision::Deny => "deny",
        };
        let rs = src.key("rules");
        let rules = Y::Seq(
            rules
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    let rsrc = rs.item(i, rules.len());
                    let c = rsrc.key(word(&r.decision));
                    let Conditions {
                        methods,
                        hosts,
                        paths,
                        headers,
                        identities,
                        claims,
                        authenticated,
                        source_ips,
                    } = &r.conditions;
                    let list = |items: &[String], key: &str| {
                        (!items.is_empty()).then(|| self.strs(items, c.key(key)))
                    };
                    let pairs =
                        |items: Vec<(String, Y)>| (!items.is_empty()).then_some(Y::Map(items));
                    let headers = pairs(
                        headers
                            .iter()
                            .map(|(h, v)| (h.clone(), self.strs(v, c.key("headers").key(h))))
                            .collect(),
                    );
                    let claims = pairs(
                        claims
                            .iter()
                            .map(|(name, values)| {
                                let csrc = c.key("claims").key(name);
                                let vals = values
                                    .iter()
                                    .map(|v| match v {
                                        ClaimValue::Str(t) => self.s(t, csrc),
                                        ClaimValue::Number(n) => self.p(n.to_string(), csrc),
                                        ClaimValue::Bool(b) => self.p(b.to_string(), csrc),
                                    })
                                    .collect();
                                (name.clone(), Y::Seq(vals))
                            })
                            .collect(),
                    );
                    let ips: Vec<String> = source_ips.iter().map(|n| n.to_string()).collect();
                    let conditions = M::default()
                        .opt("methods", list(methods, "methods"))
                        .opt("hosts", list(hosts, "hosts"))
                        .opt("paths", list(paths, "paths"))
                        .opt("headers", headers)
                        .opt("identities", list(identities, "identities"))
                        .opt("claims", claims)
                        .opt(
                            "authenticated",
                            authenticated.map(|b| self.p(b.to_string(), c.key("authenticated"))),
                        )
                        .opt("source_ips", list(&ips, "source_ips"))
                        .done();
                    M::default()
                        .put("name", self.s(&r.name, rsrc.key("name")))
                        .put(word(&r.decision), conditions)
                        .done()
                })
                .collect(),
        );
        let external = external.as_ref().map(|e| {
            let es = src.key("external");
            M::default()
                .put("url", self.s(&e.url, es.key("url")))
                .put("timeout", self.p(duration(e.timeout), es.key("timeout")))
                .put("on_error", self.p(word(&e.on_error), es.key("on_error")))
                .put("cache", self.p(duration(e.cache), es.key("cache")))
                .put(
                    "include_headers",
                    self.strs(&e.include_headers, es.key("include_headers")),
                )
                .done()
        });
        M::default()
            .put(
                "mode",
                self.p(
                    match mode {
                        AuthzMode::Enforce => "enforce",
                        AuthzMode::Audit => "audit",
                    },
                    src.key("mode"),
                ),
            )
            .put("default", self.p(word(default), src.key("default")))
            .put("rules", rules)
            .opt("external", external)
            .done()
    }

    pub(crate) fn priority_source(&self, p: &PrioritySource, ps: Src) -> Y {
        match p {
            PrioritySource::Header(h) => M::default()
                .put("header", self.s(h, ps.key("header")))
                .done(),
            PrioritySource::Claim(c) => {
                M::default().put("claim", self.s(c, ps.key("claim"))).done()
            }
        }
    }

    fn concurrency(&self, c: &ConcurrencyLimit, src: Src) -> Y {
        let ConcurrencyLimit {
            max_in_flight,
            max_queue,
            queue_timeout,
            priority,
        } = c;
        let priority = priority
            .as_ref()
            .map(|p| self.priority_source(p, src.key("priority")));
        M::default()
            .put(
                "max_in_flight",
                self.p(max_in_flight.to_string(), src.key("max_in_flight")),
            )
            .put(
                "max_queue",
                self.p(max_queue.to_string(), src.key("max_queue")),
            )
            .put(
                "queue_timeout",
                self.p(duration(*queue_timeout), src.key("queue_timeout")),
            )
            .opt("priority", priority)
            .done()
    }
}

pub fn priority_word(p: PriorityClass) -> &'static str {
    match p {
        PriorityClass::High => "high",
        PriorityClass::Normal => "normal",
        PriorityClass::Low => "low",
    }
}

/// `2s`, `250ms`, `5m`, `1h`; `1.5005s` when not a whole millisecond.
pub fn duration(d: Duration) -> String {
    let ms = d.as_millis();
    if d.is_zero() {
        "0s".into()
    } else if d.subsec_nanos().checked_rem(1_000_000) != Some(0) {
        format!("{}s", d.as_secs_f64())
    } else if ms.checked_rem(3_600_000) == Some(0) {
        format!("{}h", ms / 3_600_000)
    } else if ms.checked_rem(60_000) == Some(0) {
        format!("{}m", ms / 60_000)
    } else if ms.checked_rem(1000) == Some(0) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// `64KiB`, `10MiB`, `10KB`, `123`.
pub fn size(bytes: u64) -> String {
    const UNITS: [(u64, &str); 6] = [
        (1 << 30, "GiB"),
        (1 << 20, "MiB"),
        (1 << 10, "KiB"),
        (1_000_000_000, "GB"),
        (1_000_000, "MB"),
        (1_000, "KB"),
    ];
    if bytes == 0 {
        return "0".into();
    }
    UNITS
        .iter()
        .find(|(unit, _)| bytes.checked_rem(*unit) == Some(0))
        .map_or_else(
            || bytes.to_string(),
            |(unit, name)| format!("{}{name}", bytes / unit),
        )
}

/// A URL (`scheme://...`) without its user-info, query and fragment:
/// `https://user:pass@host/jwks?key=abc` → `https://<redacted>@host/jwks?<redacted>`.
/// Text that is not a URL is returned as is. (`kaname explain` shows URLs
/// through it too.)
pub fn redact_url(text: &str) -> String {
    let Some(i) = text.find("://") else {
        return text.to_string();
    };
    let (scheme, rest) = text.split_at(i + 3);
    // Up to the query or fragment; an `@` anywhere in it ends user-info (a
    // `/` in a password that should have been escaped is hidden too).
    let end = rest.find(['?', '#']).unwrap_or(rest.len());
    let (before, tail) = rest.split_at(end);
    let mut out = scheme.to_string();
    match before.rfind('@') {
        Some(at) => {
            out.push_str(REDACTED);
            out.push_str(&before[at..]);
        }
        None => out.push_str(before),
    }
    out.push_str(&redact_query(tail));
    out
}

/// `/path?query#fragment` → `/path?<redacted>#<redacted>`.
fn redact_query(text: &str) -> String {
    let Some(i) = text.find(['?', '#']) else {
        return text.to_string();
    };
    let (path, tail) = text.split_at(i);
    let mut out = path.to_string();
    if tail.starts_with('?') {
        out.push('?');
        out.push_str(REDACTED);
    }
    if tail.contains('#') {
        out.push('#');
        out.push_str(REDACTED);
    }
    out
}

fn write_map(entries: &[(String, Y)], indent: usize, out: &mut String) {
    for (k, v) in entries {
        out.push_str(&" ".repeat(indent));
        write_key(k, v, indent, out);
    }
}

fn write_key(key: &str, value: &Y, indent: usize, out: &mut String) {
    out.push_str(&quoted(key));
    out.push(':');
    write_value(value, indent + 2, out);
}

/// A value after `key:` or `-`; nested blocks at `indent`.
fn write_value(value: &Y, indent: usize, out: &mut String) {
    match value {
        Y::Plain(t) => {
            out.push(' ');
            out.push_str(t);
            out.push('\n');
        }
        Y::Str(t) => {
            out.push(' ');
            out.push_str(&quoted(t));
            out.push('\n');
        }
        Y::Redacted => {
            out.push_str(" \"");
            out.push_str(REDACTED);
            out.push_str("\"\n");
        }
        Y::Map(entries) if entries.is_empty() => out.push_str(" {}\n"),
        Y::Seq(items) if items.is_empty() => out.push_str(" []\n"),
        Y::Map(entries) => {
            out.push('\n');
            write_map(entries, indent, out);
        }
        Y::Seq(items) => {
            out.push('\n');
            for item in items {
                out.push_str(&" ".repeat(indent));
                out.push('-');
                match item {
                    // `- key: value`, the other keys under the first.
                    Y::Map(entries) if !entries.is_empty() => {
                        out.push(' ');
                        let (k, v) = &entries[0];
                        write_key(k, v, indent + 2, out);
                        write_map(&entries[1..], indent + 2, out);
                    }
                    other => write_value(other, indent + 2, out),
                }
            }
        }
    }
}

/// Plain when that reads back as the same string; else double-quoted (JSON
/// escapes are valid YAML).
pub(crate) fn quoted(text: &str) -> String {
    let safe_start = text
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '/' || c == '_' || c == '.');
    let word = matches!(
        text.to_ascii_lowercase().as_str(),
        "true" | "false" | "yes" | "no" | "on" | "off" | "y" | "n" | "null" | "~"
    );
    let safe = safe_start
        && !word
        && !text.ends_with(':')
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_./:@+-".contains(c));
    if safe {
        return text.to_string();
    }
    let mut q = String::with_capacity(text.len() + 2);
    q.push('"');
    for c in text.chars() {
        match c {
            '"' => q.push_str("\\\""),
            '\\' => q.push_str("\\\\"),
            '\n' => q.push_str("\\n"),
            '\t' => q.push_str("\\t"),
            c if c.is_control() => q.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => q.push(c),
        }
    }
    q.push('"');
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "ADMIN_TOKEN" => Some("admin-token-from-env-5d1".into()),
            "API_VERSION" => Some("version-from-env-77".into()),
            "GRACE" => Some("17s".into()),
            "JWKS_PASS" => Some("jwks-pass-from-env".into()),
            _ => None,
        }
    }

    fn parse(text: &str) -> Config {
        crate::parse_with_env("f", text, &env).unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    /// Every section and value kind: rendered, it reads back the same.
    const RICH: &str = r#"
admin: { listen: "[::1]:9902", header_timeout: 1500ms, allowed_hosts: [Orders, orders.shop.svc] }
shutdown_grace: 90s
log: { level: "kaname=debug,hyper=info", format: text, access_log: false }
tracing:
  start_traces: true
  otlp:
    endpoint: http://collector:4318
    protocol: http/protobuf
    timeout: 2s
    service_name: orders-sidecar
    resource: { deployment.environment: prod, "team": "a: b" }
    sampling: 0.25
    max_queue: 100
data_dir: /var/lib/kaname
queues:
  reports:
    max_depth: 7
    max_body_bytes: 2KiB
    priority: { claim: tier }
    delivery: { concurrency: 3, attempts: 4, per_try_timeout: 2s, backoff: { base: 10ms, max: 1s }, retry_on: [5xx, 429, reset] }
    keep_finished: 2h
    max_result_bytes: 100
listeners:
  "in bound":
    listen: 0.0.0.0:8443
    protocol: http1
    header_read_timeout: 2.5s
    max_header_bytes: 10KB
    max_request_body: 123
    idle_timeout: 1h
    merge_slashes: false
    escaped_slashes: keep
    upgrades: [WebSocket, "connect-udp"]
    request_body_timeout: 1m
    http2: { max_concurrent_streams: 7 }
    routes:
      - name: "a: b"
        match:
          path_regex: ^/v[0-9]+/
          methods: [get, POST]
          headers: { X-Api: "2", x-quote: "say \"hi\"", x-yes: "yes" }
          host: orders.shop.svc
        upstream: orders
        timeout: 250ms
        filters: [auth, per-user, retries, breaker, protect]
        max_request_body: 1MiB
        case_sensitive: false
        priority: low
      - match: { path: /exact }
        upstream: orders
        queue: reports
      - upstream: orders
  out:
    listen: 127.0.0.1:15001
    protocol: http2
    routes: [{ match: { path_prefix: "/" }, upstream: payments }]
upstreams:
  orders:
    endpoints: ["[::1]:3000", Orders.Local:80]
    protocol: http2
    connect_timeout: 100ms
    load_balancing: least_request
    pool: { idle_timeout: 2m, max_idle_per_endpoint: 3 }
    dns_refresh: 7s
    health_check: { path: /healthz, interval: 2s, timeout: 300ms, unhealthy_after: 4, healthy_after: 1 }
    outlier_detection: { consecutive_failures: 2, eject_for: 5s, max_ejected_percent: 100 }
  payments:
    endpoints: [10.0.0.1:443]
    load_balancing: round_robin
    tls: { ca: /ca.pem, server_name: payments.svc }
filters:
  auth:
    jwt:
      issuer: https://issuer.example/
      audiences: [orders, "123"]
      algorithms: [rs256, EdDSA]
      jwks: { url: "https://keys.example/jwks.json", refresh: 30s }
      leeway: 5s
      from: { header: X-Token, prefix: "Tok " }
      required_claims: [sub, scope]
      forward_claims: { sub: x-user, "scope": X-Scope }
      forward_token: true
      cache: false
  byfile:
    jwt:
      issuer: [a, b]
      algorithms: [ES256]
      jwks: { file: /etc/jwks.json }
      from: { cookie: session }
  byquery:
    jwt: { algorithms: [PS512], jwks: { file: /j.json }, from: { query: access_token } }
  per-user: { rate_limit: { key: jwt:sub, rate: 5/m, burst: 9, max_keys: 10 } }
  per-ip: { rate_limit: { key: client_ip, rate: 1/h } }
  per-hdr: { rate_limit: { key: "header:X-Key", rate: 100/s } }
  everyone: { rate_limit: { key: global, rate: 3/s } }
  retries:
    retry:
      attempts: 4
      on: [connect_failure, reset, timeout, 5xx, 429, unavailable, data_loss, ok]
      methods: [GET, put]
      per_try_timeout: 1.25s
      backoff: { base: 10ms, max: 1s }
      budget: { ratio: 0.25, min_per_second: 0 }
      max_body_bytes: 2GiB
  default-retries: { retry: {} }
  breaker:
    circuit_breaker:
      consecutive_failures: 0
      failure_rate: { threshold: 0.5, min_requests: 7, window: 30s }
      open_for: 1s
      max_open_for: 2m
      half_open_requests: 3
      failure_on: [503, deadline_exceeded]
  default-breaker: { circuit_breaker: {} }
  protect: { concurrency_limit: { max_in_flight: 8, max_queue: 2, queue_timeout: 0s, priority: { header: X-Prio } } }
  by-claim: { concurrency_limit: { max_in_flight: 1, priority: { claim: tier } } }
"#;

    #[test]
    fn reads_back_the_same() {
        let cfg = parse(RICH);
        let yaml = &cfg.redacted_yaml;
        assert!(!yaml.contains(REDACTED), "nothing to redact here:\n{yaml}");
        let back = parse(yaml);
        assert_eq!(back, cfg, "{yaml}");
        assert_eq!(&back.redacted_yaml, yaml);
        // Defaults are shown.
        assert!(yaml.contains("max_header_bytes: 10KB\n"), "{yaml}");
        assert!(yaml.contains("retry_on:\n"), "{yaml}");
        assert!(yaml.contains("header_timeout: 1500ms\n"), "{yaml}");
        assert!(
            yaml.contains("allowed_hosts:\n    - orders\n    - orders.shop.svc\n"),
            "{yaml}"
        );
        assert!(yaml.contains("  - name: \"a: b\"\n"), "{yaml}");
    }

    #[test]
    fn grpc_names_match_the_parser() {
        let all: Vec<&str> = GRPC_CODES.to_vec();
        let text = format!(
            "listeners: {{ l: {{ listen: 127.0.0.1:1, routes: [{{ upstream: u }}] }} }}\n\
             upstreams: {{ u: {{ endpoints: [127.0.0.1:2] }} }}\n\
             filters: {{ r: {{ retry: {{ retry_on: [{}] }} }} }}\n",
            all.join(", ")
        );
        let cfg = parse(&text);
        let FilterKind::Retry(r) = &cfg.filters[0].kind else {
            panic!()
        };
        let codes: Vec<Condition> = (0..all.len() as u32).map(Condition::Grpc).collect();
        assert_eq!(r.retry_on, codes);
        assert_eq!(parse(&cfg.redacted_yaml), cfg);
    }

    #[test]
    fn secrets_never_appear() {
        let text = r#"
x-secrets:
  jwt: &jwt_secret "anchored-jwt-secret-0123456789abcdefghij"
  note: "only-in-an-x-key-4f1e"
admin:
  listen: 127.0.0.1:9901
  token: ${ADMIN_TOKEN}
shutdown_grace: ${GRACE}
tracing:
  otlp:
    endpoint: http://collector:4317
    headers: { Authorization: "Bearer literal-otlp-token-9f" }
queues:
  q:
    callback: { allowed_hosts: [hooks], secret: literal-callback-secret-77 }
listeners:
  main:
    listen: 127.0.0.1:8080
    tls: { cert: /c.pem, key: /private/tls.key }
    routes:
      - name: visible-route
        match: { path_prefix: /, headers: { X-Api-Version: "${API_VERSION}" } }
        upstream: app
        filters: [hs]
upstreams:
  app:
    endpoints: [127.0.0.1:3000]
    health_check: { path: "/health?key=hc-query-secret" }
    tls: { cert: /u.pem, key: /private/upstream.key }
filters:
  hs:
    jwt: { algorithms: [HS256], secret: *jwt_secret }
  remote:
    jwt:
      algorithms: [RS256]
      issuer: "https://iss-user:iss-pass@issuer.example/#frag-secret"
      jwks: { url: "https://jwks-user:jwks-pass-literal@keys.example/jwks?key=jwks-query-abc" }
  env-url:
    jwt: { algorithms: [ES256], jwks: { url: "https://${JWKS_PASS}.keys.example/jwks" } }
"#;
        let cfg = parse(text);
        let yaml = &cfg.redacted_yaml;
        for secret in [
            "anchored-jwt-secret",
            "only-in-an-x-key",
            "x-secrets",
            "admin-token-from-env",
            "version-from-env",
            "17s",
            "jwks-user",
            "jwks-pass",
            "jwks-query",
            "key=",
            "iss-user",
            "iss-pass",
            "frag-secret",
            "hc-query-secret",
            "private",
            "literal-otlp-token",
            "literal-callback-secret",
        ] {
            assert!(!yaml.contains(secret), "{secret:?} shown:\n{yaml}");
        }
        for shown in [
            "visible-route",
            "token: \"<redacted>\"",
            "shutdown_grace: \"<redacted>\"",
            "x-api-version: \"<redacted>\"",
            "secret: \"<redacted>\"",
            "key: \"<redacted>\"",
            "url: \"https://<redacted>@keys.example/jwks?<redacted>\"",
            "url: \"<redacted>\"",
            "https://<redacted>@issuer.example/#<redacted>",
            "path: \"/health?<redacted>\"",
            "cert: /c.pem",
            "authorization: \"<redacted>\"",
        ] {
            assert!(yaml.contains(shown), "{shown:?} not shown:\n{yaml}");
        }
        // Debug does not print the token either.
        assert!(!format!("{cfg:?}").contains("admin-token-from-env"));
        assert!(!format!("{cfg:?}").contains("literal-otlp-token"));
    }

    #[test]
    fn a_value_derived_from_a_variable_is_hidden_wherever_it_is() {
        // The upgrade list is lower-cased and deduplicated, so its items do
        // not line up with the file's: every item is hidden.
        let text = "listeners:\n  l:\n    listen: 127.0.0.1:1\n    upgrades: [websocket, WebSocket, \"${API_VERSION}\"]\n    routes: [{ upstream: u }]\nupstreams: { u: { endpoints: [127.0.0.1:2] } }\n";
        let cfg = parse(text);
        let yaml = &cfg.redacted_yaml;
        assert!(!yaml.contains("version-from-env"), "{yaml}");
        assert!(
            yaml.contains("upgrades:\n      - \"<redacted>\"\n      - \"<redacted>\"\n"),
            "{yaml}"
        );
    }

    #[test]
    fn urls() {
        assert_eq!(
            redact_url("https://user:pass@host/jwks?key=abc"),
            "https://<redacted>@host/jwks?<redacted>"
        );
        assert_eq!(redact_url("http://host:80/a/b"), "http://host:80/a/b");
        assert_eq!(
            redact_url("https://u:p/ss@host/x"),
            "https://<redacted>@host/x"
        );
        assert_eq!(
            redact_url("https://host/x#f?g"),
            "https://host/x#<redacted>"
        );
        assert_eq!(redact_url("not a url"), "not a url");
        assert_eq!(redact_query("/health"), "/health");
        assert_eq!(
            redact_query("/health?a=b#c"),
            "/health?<redacted>#<redacted>"
        );
    }

    #[test]
    fn words() {
        assert_eq!(duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(duration(Duration::from_secs(7200)), "2h");
        assert_eq!(duration(Duration::from_secs(90)), "90s");
        assert_eq!(duration(Duration::from_micros(1500)), "0.0015s");
        assert_eq!(size(65536), "64KiB");
        assert_eq!(size(10_000), "10KB");
        assert_eq!(size(123), "123");
        assert_eq!(quoted("on"), "\"on\"");
        assert_eq!(quoted("2"), "\"2\"");
        assert_eq!(quoted("orders-api"), "orders-api");
    }
}
